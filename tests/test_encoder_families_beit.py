"""The encoder invariants on tiny BEiT, Data2Vec-vision (relative position bias, LayerScale) and ViT-MAE configs.

Same suite as tests/test_dinov2_siglip.py: exactness when nothing is removed, the split block equals the
block, unpatch bit for bit, widths follow the schedule, batch independence, [CLS] never reduced, analytic
MACs = FlopCounterMode; plus BEiT's positions: after a reduction every block equals the model's own block
run on the kept tokens with the relative bias taken at their original positions.
"""

from __future__ import annotations

import pytest
import torch
from models import pixels
from transformers import BeitForImageClassification, ViTMAEForPreTraining, ViTMAEModel
from vision_models import beit, data2vec, mae

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.encoder.adapters import hf_beit
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.adapters.runner import record_sources
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs

MODELS = {
    "beit": beit,
    "beit-eager": lambda: beit(impl="eager"),
    "beit-shared": lambda: beit(own=False, shared=True),
    "beit-both": lambda: beit(shared=True),
    "beit-cls-meanpool": lambda: beit(BeitForImageClassification, use_mean_pooling=True),
    "data2vec": data2vec,
    "data2vec-eager": lambda: data2vec("eager"),
    "data2vec-both": lambda: data2vec(shared=True),
    "mae": mae,
}
FAMILY = {"beit": "hf-beit", "data2vec": "hf-data2vec-vision", "mae": "hf-vit"}
REDUCING = [
    ("tome", {"r": 3}),
    ("tome", {"keep": 0.4, "schedule": "decreasing"}),
    ("evit", {"keep": 0.5}),
    ("random", {"keep": 0.5, "fuse": True}),
]
IDENTITY = [("tome", {"r": 0}), ("tome", {"keep": 1.0}), ("evit", {"keep": 1.0})]
N = 65  # [CLS] + 8×8 patches


def run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mae_model = isinstance(model, (ViTMAEModel, ViTMAEForPreTraining))  # MAE shuffles patches by noise: fix it
    kwargs = {"noise": torch.arange(64.0).expand(x.shape[0], 64)} if mae_model else {}
    with torch.inference_mode():
        out = model(pixel_values=x, **kwargs)
    if hasattr(out, "logits"):
        return (out.logits,)
    pooled = getattr(out, "pooler_output", None)
    return (out.last_hidden_state,) if pooled is None else (out.last_hidden_state, pooled)


def _mlp(block: torch.nn.Module) -> torch.nn.Module:
    return block.mlp if hasattr(block, "mlp") else block.intermediate


def _blocks(layers) -> list[torch.nn.Module]:
    return [getattr(layer, "block", layer) for layer in layers]


@pytest.mark.parametrize("name", list(MODELS))
def test_family_and_protected(name):
    model = MODELS[name]()
    fam, layers = resolve_family(model)
    assert fam.name == FAMILY[name.split("-")[0]] and fam.default_protected(model) == 1 and len(layers) == 4


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method,params", IDENTITY)
def test_reducing_nothing_is_exact(name, method, params):
    model, x = MODELS[name](), pixels()
    ref = run(model, x)
    with tr.patched(model, method, **params):
        out = run(model, x)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


@pytest.mark.parametrize("name", list(MODELS))
def test_split_block_equals_block(name):
    """Attention half + MLP half = the block's own forward, bit for bit, at depth 1 with the model's biases."""
    model, x = MODELS[name](), pixels()
    fam, layers = resolve_family(model)
    block = _blocks(layers)[1]
    seen = []
    hook = block.register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    run(model, x)
    hook.remove()
    args, kwargs = seen[0]
    with torch.inference_mode():
        ref = block(*args, **kwargs)
        ref = ref[0] if isinstance(ref, tuple) else ref
        if name.startswith("mae"):
            got = fam.mlp(block, fam.attention(block, args[0], args[1] if len(args) > 1 else None).x)
        else:
            window = (8, 8)
            if name.startswith("beit"):
                own = block.relative_position_bias
                terms, mask = ((own(window, False, dim_size=N),) if own else ()), kwargs.get("attention_mask")
            else:
                sa = block.attention.attention
                own = sa.relative_position_bias(window, False, dim_size=N) if sa.has_relative_position_bias else None
                shared = kwargs.get("relative_position_bias", args[2] if len(args) > 2 else None)
                terms, mask = tuple(t for t in (own, shared) if t is not None), None
            with hf_beit.position_terms(terms):
                got = fam.mlp(layers[1], fam.attention(layers[1], args[0], mask).x)
        assert torch.equal(got, ref)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method,params", REDUCING)
def test_unpatch_restores_exactly_and_widths_match_the_schedule(name, method, params):
    model, x = MODELS[name](), pixels()
    ref = run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fam, layers = resolve_family(model)
    widths: list[int] = []
    hooks = [_mlp(b).register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1])) for b in _blocks(layers)]
    tr.patch(model, method, **params)
    reduced = run(model, x)
    assert [r.shape for r in reduced] == [r.shape for r in ref] and all(torch.isfinite(r).all() for r in reduced)
    assert not torch.equal(reduced[0], ref[0])
    expect = [w for _, w in layer_widths(torch.full((3,), N), 4, tr.make_method(method, **params), 1)]
    assert widths == expect and widths[-1] < N
    tr.unpatch(model)
    for h in hooks:
        h.remove()
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(run(model, x), ref))


@pytest.mark.parametrize("name", ["beit", "beit-both", "data2vec-both", "mae"])
@pytest.mark.parametrize("method,params", [REDUCING[0], REDUCING[2], REDUCING[3]])
def test_batch_independence(name, method, params):
    model, x = MODELS[name](), pixels()
    with tr.patched(model, method, **params):
        together = run(model, x)
        for i in range(x.shape[0]):
            for t, a in zip(together, run(model, x[i : i + 1])):
                torch.testing.assert_close(t[i : i + 1], a, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["beit", "data2vec-both", "mae"])
def test_cls_is_never_reduced(name):
    model, x = MODELS[name](), pixels()
    _, layers = resolve_family(model)
    seen: list[torch.Tensor] = []
    _mlp(_blocks(layers)[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    run(model, x)
    for method, params in (("tome", {"keep": 0.05}), ("evit", {"keep": 0.05}), ("random", {"keep": 0.05})):
        with tr.patched(model, method, **params):
            run(model, x)
        assert seen[-1].shape[1] < seen[0].shape[1]
        torch.testing.assert_close(seen[-1][:, :1], seen[0][:, :1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["beit-both", "data2vec-eager", "mae"])
@pytest.mark.parametrize("method,params", [(None, {}), REDUCING[0], REDUCING[2]])
def test_analytic_macs_match_flop_counter(name, method, params):
    """Blocks only: embeddings and heads cost the same with and without reduction."""
    model, x = MODELS[name](), pixels()
    fam, _ = resolve_family(model)
    lengths = torch.full((3,), N)
    with torch.no_grad():
        base = measured_flops(model, pixel_values=x)
    m = tr.make_method(method, **params) if method else None
    if m:
        tr.patch(model, m)
    with torch.no_grad():
        measured = measured_flops(model, pixel_values=x)
    dims = fam.dims(model)
    delta = total_macs(encoder_cost(dims, lengths, m, 1)) - total_macs(encoder_cost(dims, lengths))
    assert measured - base == 2 * delta


@pytest.mark.parametrize("name", ["beit-both", "data2vec-both"])
def test_pruned_tokens_keep_their_relative_positions(name):
    """Prune at block 0 only; every later block (but the last, which restores the length) equals the model's own
    block run on the kept tokens with the full relative bias (its own table + the shared one) at their positions."""
    model, x = MODELS[name](), pixels(batch=1)
    tr.patch(model, "random", layers=[0], r=20)
    apps = tr.patch_info(model).layers
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for app in apps[1:-1]:
        app.register_forward_hook(lambda m, a, out: seen.__setitem__(m.depth, (a[0], out)))
    with record_sources() as records:
        run(model, x)
    (rec,) = records
    kept = torch.tensor([i for _, i in sorted((s, i) for i, s in enumerate(rec.src[0].tolist()) if s >= 0)])
    assert len(kept) == N - 20 and kept[0] == 0
    window = (8, 8)
    owner = apps.owner
    with torch.inference_mode():
        shared = (owner.shared_position_bias if name.startswith("beit") else owner.relative_position_bias)(
            window, interpolate_pos_encoding=False, dim_size=N
        )
        for depth, (h, out) in seen.items():
            block = apps[depth].block
            beit_block = name.startswith("beit")
            own_mod = block.relative_position_bias if beit_block else block.attention.attention.relative_position_bias
            full = own_mod(window, False, dim_size=N) + shared
            bias = full[:, :, kept][:, :, :, kept]
            ref = _block_with_bias(name, block, h, bias)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert len(seen) == 2


def _block_with_bias(name: str, block: torch.nn.Module, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The model's own block on ``h`` with relative bias ``bias`` and no position table of its own."""
    if name.startswith("beit"):
        saved, block.relative_position_bias = block.relative_position_bias, None
        try:
            return block(h, attention_mask=bias)
        finally:
            block.relative_position_bias = saved
    sa = block.attention.attention
    sa.has_relative_position_bias = False
    try:
        return block(h, False, bias)[0]
    finally:
        sa.has_relative_position_bias = True


def test_mae_pretraining_patches_the_encoder_not_the_decoder():
    model = mae(ViTMAEForPreTraining)
    _, layers = resolve_family(model)
    assert layers is model.vit.layers
    ref = run(model, pixels())
    with tr.patched(model, "tome", r=3):
        out = run(model, pixels())
        assert all("forward" not in layer.__dict__ for layer in model.decoder.decoder_layers)
    assert out[0].shape == ref[0].shape and not torch.equal(out[0], ref[0])


def test_patched_beit_refuses_hidden_states_and_attentions():
    model = beit()
    with tr.patched(model, "tome", r=3), pytest.raises(ValueError, match="output_hidden_states"):
        model(pixel_values=pixels(), output_hidden_states=True)
