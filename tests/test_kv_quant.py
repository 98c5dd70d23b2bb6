"""Mixed-precision (ZipCache-style) KV: quantizer vs a loop reference, bytes held, exactness, batching."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import COMMON, compressed_session, random_ids, tiny_lm

from tokenreduce.kv import apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv.mixed import MixedLayer, salient_positions
from tokenreduce.kv.quant import channel_scale, dequantize, dequantize_into, pack4, quantize, unpack4

HEAD_DIM = COMMON["hidden_size"] // COMMON["num_attention_heads"]


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _loop_quantize(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Straightforward per-group min/max quantize + dequantize of a 2D tensor (rows x channels)."""
    out = torch.empty_like(x)
    qmax = 2**bits - 1
    for r in range(x.shape[0]):
        for c in range(0, x.shape[1], group):
            g = x[r, c : c + group]
            lo = float(g.min().half())
            scale = float(torch.tensor((float(g.max()) - float(g.min())) / qmax).half()) or 1.0
            for j in range(group):
                code = min(max(round((float(g[j]) - lo) / scale), 0), qmax)
                out[r, c + j] = code * scale + lo
    return out


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_matches_loop_reference_and_error_bound(bits):
    x = torch.randn(12, 16) * torch.linspace(0.1, 5, 16)  # channels of very different ranges
    q = quantize(x, bits, group=8)
    got = dequantize(q)
    torch.testing.assert_close(got, _loop_quantize(x, bits, 8), rtol=0, atol=1e-5)
    step = (x.view(12, 2, 8).amax(-1) - x.view(12, 2, 8).amin(-1)) / (2**bits - 1)
    bound = step.repeat_interleave(8, -1) * 0.5 + 1e-3 * x.abs().amax()  # half a step + fp16 parameter rounding
    assert bool(((got - x).abs() <= bound).all())
    assert q.codes.shape == (12, 16 * bits // 8) and q.codes.dtype == torch.uint8


def test_pack4_round_trip_and_layout():
    codes = torch.arange(16, dtype=torch.uint8).repeat(3).view(3, 16)
    packed = pack4(codes)
    assert packed.shape == (3, 8)
    assert int(packed[0, 0]) == 0x10 and int(packed[0, 7]) == 0xFE  # (0, 1) and (14, 15)
    assert torch.equal(unpack4(packed), codes)


def test_constant_groups_are_exact():
    x = torch.full((2, 8), 3.0)
    assert torch.equal(dequantize(quantize(x, 4, 4)), x)


@pytest.mark.parametrize(("bits", "group", "salient", "channels"),
                         [(8, 8, 0.25, False), (4, 4, 0.1, False), (4, 8, 0.0, False), (4, 8, 0.1, True)])
def test_bytes_held_equal_the_formula(model, bits, group, salient, channels):
    n = 64
    press = make_press("zipcache", bits=bits, group=group, salient=salient, key_channels=channels)
    s = compressed_session(model, random_ids(1, n, seed=2), press)
    hkv, layers, d = COMMON["num_key_value_heads"], COMMON["num_hidden_layers"], HEAD_DIM
    sal = math.ceil(salient * n - 1e-9)
    per_head = (
        sal * d * 4 * 2  # salient keys + values, float32
        + sal * 4  # their int32 positions
        + (n - sal) * (d * bits // 8 + 2 * (d // group) * 2) * 2  # codes + float16 scale/zero, keys + values
        + (d * 2 if channels else 0)  # float16 key channel divisors
    )
    assert all(isinstance(layer, MixedLayer) for layer in s.cache.layers)
    assert kv_bytes(s.cache) == per_head * hkv * layers
    full = n * d * 4 * 2 * hkv * layers
    if bits == 4 and salient == 0.0 and not channels:
        assert kv_bytes(s.cache) / full == (d // 2 + 2 * (d // group) * 2) / (d * 4)


def test_all_salient_reproduces_the_full_cache(model):
    ids = random_ids(2, 40)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    q = random_ids(2, 5, seed=1)
    base = generate_ids(model, ids, mask, q, max_new_tokens=6)
    for aware in (False, True):
        press = make_press("zipcache", bits=8, group=8, salient=1.0)
        assert torch.equal(generate_ids(model, ids, mask, q, press, max_new_tokens=6, query_aware=aware), base)
    with torch.no_grad():
        ref = model(input_ids=ids[:1], use_cache=True).cache
    s = compressed_session(model, ids[:1], make_press("zipcache", bits=8, group=8, salient=1.0))
    for i, layer in enumerate(s.cache.layers):  # stored entries are bit-identical, not just close
        k, v = layer.prefix()
        assert torch.equal(k, ref.layers[i].keys) and torch.equal(v, ref.layers[i].values)


def test_quantized_prefix_is_close_and_8_bits_beat_4(model):
    ids, cont = random_ids(1, 48, seed=3), random_ids(1, 6, seed=4)
    with torch.no_grad():
        ref = model(input_ids=cont, position_ids=torch.arange(48, 54)[None],
                    cache=model(input_ids=ids, use_cache=True).cache).logits
    err = {}
    for bits in (8, 4):
        s = compressed_session(model, ids, make_press("zipcache", bits=bits, group=4, salient=0.0))
        err[bits] = float((s.feed(cont) - ref).abs().max())
    assert 0 < err[8] < err[4] and err[8] < 0.05


def test_channel_separable_keys_tame_an_outlier_channel():
    """Keys with one large channel: per-token groups lose the small channels, channel division keeps them;
    the divisors ignore padding entries and the round trip equals a hand-written reference."""
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 40, 16, generator=g)
    keys[..., 3] *= 60.0
    values = torch.randn(1, 2, 40, 16, generator=g)
    idx = torch.zeros(1, 2, 0, dtype=torch.long)  # nothing salient
    valid = torch.ones(1, 40, dtype=torch.bool)
    plain, split = (MixedLayer(keys, values, idx, 4, 8, valid, c) for c in (False, True))
    small = [i for i in range(16) if i != 3]
    err = {name: float((layer.prefix()[0] - keys)[..., small].abs().mean()) for name, layer in
           (("plain", plain), ("split", split))}
    assert err["split"] < 0.5 * err["plain"], err
    c = keys.abs().amax(dim=2, keepdim=True).sqrt().half().float()  # reference: divide, quantize, multiply
    assert torch.equal(split.prefix()[0], dequantize(quantize(keys / c, 4, 8)) * c)
    padded = valid.clone()
    padded[0, :5] = False
    keys_big = keys.clone()
    keys_big[..., :5, :] = 1e4  # padding entries must not set the divisors
    assert torch.equal(MixedLayer(keys_big, values, idx, 4, 8, padded, True).kc, channel_scale(keys[..., 5:, :]))


@pytest.mark.parametrize(("bits", "channels", "dtype", "share"),
                         [(4, False, torch.float32, 0.2), (8, False, torch.float32, 0.2),
                          (4, True, torch.float32, 0.1), (4, False, torch.bfloat16, 0.2),
                          (8, True, torch.float16, 0.0), (4, False, torch.float32, 1.0)])
def test_dense_entries_equal_a_per_head_reference(bits, channels, dtype, share):
    """The entries attention gets (written in place, no reorder) equal, bit for bit, a loop over (row, head)
    putting each salient entry and each dequantized one back at its position, then the tail."""
    g = torch.Generator().manual_seed(1)
    b, h, n, d = 2, 3, 37, 16
    keys, values = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(2))
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, :6] = False
    idx = salient_positions(torch.randn(b, h, n, generator=g), valid, share)
    layer = MixedLayer(keys, values, idx, bits, 8, valid, channels)
    tail = torch.randn(b, h, 3, d, generator=g).to(dtype)
    got = layer.update(tail, -tail)
    for x, q, c, t, out in ((layer.kf, layer.kq, layer.kc, tail, got[0]), (layer.vf, layer.vq, None, -tail, got[1])):
        deq = dequantize(q) if c is None else dequantize(q) * c.float()
        ref = torch.empty(b, h, n, d, dtype=dtype)
        for i in range(b):
            for j in range(h):
                sal = idx[i, j].tolist()
                others = [p for p in range(n) if p not in sal]
                ref[i, j, sal] = x[i, j]
                ref[i, j, others] = deq[i, j].to(dtype)
        assert torch.equal(out, torch.cat([ref, t], dim=2))
    assert all(torch.equal(x, y[:, :, :n]) for x, y in zip(layer.prefix(), got))
    assert all(torch.equal(x, y) for x, y in zip(layer.dense_kv(), got))


def test_dequantize_into_equals_dequantize():
    x = torch.randn(3, 5, 32) * 4
    for bits in (4, 8):
        q = quantize(x, bits, 8)
        out = torch.full((3, 6, 32), float("nan"))[:, 1:]  # a strided view
        assert torch.equal(dequantize_into(q, out), dequantize(q)) and torch.equal(out, dequantize(q))
    with pytest.raises(TypeError, match="float32"):
        dequantize_into(q, torch.empty(3, 5, 32, dtype=torch.float16))


def test_salient_positions_pick_each_rows_best_and_pad_with_padding():
    scores = torch.tensor([[[5.0, 1, 4, 3, 2, 0]], [[9.0, 9, 1, 5, 2, 3]]])  # (B=2, Hkv=1, N=6)
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    idx = salient_positions(scores, valid, 0.5)  # row 0: 3 of 6; row 1: 2 of 4 + 1 padding entry
    assert idx.tolist() == [[[0, 2, 3]], [[0, 3, 5]]]


def test_batch_composition_does_not_change_a_row(model):
    ids = random_ids(2, 40)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    q = random_ids(2, 5, seed=1)
    for press in (make_press("zipcache", bits=4, group=4, salient=0.2), make_press("zipcache", keep=0.5, group=8),
                  make_press("zipcache", bits=4, group=8, salient=0.1, key_channels=True)):
        both = generate_ids(model, ids, mask, q, press, max_new_tokens=5)
        alone = generate_ids(model, ids[1:, 9:], None, q[1:], press, max_new_tokens=5)
        assert torch.equal(both[1:], alone)


def test_bad_parameters_fail_before_compute(model):
    with pytest.raises(ValueError, match="bits must be one of"):
        make_press("zipcache", bits=3)
    with pytest.raises(ValueError, match="salient"):
        make_press("zipcache", salient=1.5)
    with pytest.raises(ValueError, match="scorer"):
        make_press("zipcache", scorer="adakv")
    with pytest.raises(ValueError, match="key_channels"):
        make_press("zipcache", key_channels="yes")
    with pytest.raises(ValueError, match="does not divide the head dimension"):
        with apply_press(model, make_press("zipcache", group=32)):
            pass


def test_normalized_attention_matches_eager_weights():
    """ZipCache's saliency from recomputed probe rows equals the same rule applied to eager attention."""
    from tokenreduce.kv.hooks import attention_modules
    from tokenreduce.kv.presses.base import LayerView
    from tokenreduce.kv.presses.zipcache import normalized_attention

    eager = tiny_lm("llama", impl="eager")
    n, window, stride = 30, 4, 7
    ids = random_ids(1, n, seed=6)
    got = {}

    def hook(mod, args, kwargs, out):
        got[mod.layer_idx] = (kwargs["hidden_states"], *kwargs["position_embeddings"])

    mods = attention_modules(eager)
    hs = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    with torch.no_grad():
        out = eager(input_ids=ids, use_cache=True, output_attentions=True)
    for h in hs:
        h.remove()
    probes = [p for p in range(n) if p >= n - window or p % stride == stride - 1]
    for i, m in enumerate(mods):
        keys, values = out.cache.layers[i].keys, out.cache.layers[i].values
        view = LayerView(m, i, len(mods), *got[i], keys, values, torch.ones(1, n, dtype=torch.bool))
        a = out.attentions[i][0]  # (H, N, N)
        ref = torch.stack([a[:, [p for p in probes if p >= j], j].mean(-1) for j in range(n)], -1)  # (H, N)
        ref = ref.view(2, -1, n).mean(1)[None]
        torch.testing.assert_close(normalized_attention(view, window, stride), ref, rtol=1e-4, atol=1e-6)
