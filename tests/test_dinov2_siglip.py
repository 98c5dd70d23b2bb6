"""The invariants of ARCHITECTURE.md §2 on tiny DINOv2 (+registers) and SigLIP / SigLIP 2 vision towers."""

from __future__ import annotations

import pytest
import torch
from models import block_inputs, pixels
from transformers import Dinov2Backbone, Dinov2Config, Dinov2ForImageClassification
from vision_models import dinov2, dinov2_registers, siglip2_inputs, siglip2_vision, siglip_full, siglip_vision

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.adapters.runner import record_sources
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs

MODELS = {
    "dinov2": dinov2,
    "dinov2-cls": lambda: dinov2(Dinov2ForImageClassification),
    "dinov2-swiglu": lambda: dinov2(swiglu=True),
    "dinov2-eager": lambda: dinov2(impl="eager"),
    "dinov2-reg4": dinov2_registers,
    "siglip": siglip_vision,
    "siglip-eager": lambda: siglip_vision(impl="eager"),
    "siglip-full": siglip_full,
}
FAMILY = {"dinov2": "hf-dinov2", "siglip": "hf-siglip-vision"}
PROTECTED = {"dinov2-reg4": 5}
CLS_METHODS = [("evit", {"keep": 0.5}), ("evit", {"keep": 0.5, "fuse": False})]
REDUCING = [
    ("tome", {"r": 3}),
    ("tome", {"keep": 0.4, "schedule": "decreasing"}),
    ("topk-norm", {"keep": 0.5}),
    ("random", {"keep": 0.5, "fuse": True}),
    ("tome", {"r": 4, "layers": [1, 3], "metric": "hidden"}),
    *CLS_METHODS,
]
IDENTITY = [("tome", {"r": 0}), ("tome", {"keep": 1.0}), ("random", {"r": 0})]


def is_siglip(name: str) -> bool:
    return name.startswith("siglip")


def cases(methods, models=MODELS):
    """(model, method, params) for the given models and every method their family supports."""
    return [(n, m, p) for n in models for m, p in methods if not (is_siglip(n) and (m, p) in CLS_METHODS)]


def run(model, x) -> tuple[torch.Tensor, ...]:
    """Every output a user reads: tokens, and the pooled / classifier output where the model has one."""
    with torch.inference_mode():
        if hasattr(model, "get_image_features"):
            return (model.get_image_features(pixel_values=x).pooler_output,)
        out = model(pixel_values=x)
    if hasattr(out, "logits"):
        return (out.logits,)
    pooled = getattr(out, "pooler_output", None)
    return (out.last_hidden_state,) if pooled is None else (out.last_hidden_state, pooled)


def assert_equal(a, b):
    assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("name", list(MODELS))
def test_family_and_protected(name):
    model = MODELS[name]()
    fam, _ = resolve_family(model)
    assert fam.name == FAMILY[name.split("-")[0]]
    assert fam.default_protected(model) == PROTECTED.get(name, 0 if is_siglip(name) else 1)


@pytest.mark.parametrize("name,method,params", cases(IDENTITY))
def test_reducing_nothing_is_exact(name, method, params):
    model, x = MODELS[name](), pixels()
    ref = run(model, x)
    with tr.patched(model, method, **params):
        assert_equal(run(model, x), ref)


@pytest.mark.parametrize("name", list(MODELS))
def test_split_block_equals_block(name):
    model, x = MODELS[name](), pixels()
    fam, layers = resolve_family(model)
    args, kwargs = block_inputs(layers[1], lambda: run(model, x))
    mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    with torch.inference_mode():
        ref = layers[1](*args, **kwargs)
        assert torch.equal(fam.mlp(layers[1], fam.attention(layers[1], args[0], mask).x), ref)


@pytest.mark.parametrize("name,method,params", cases(REDUCING))
def test_unpatch_restores_exactly_and_widths_match_the_schedule(name, method, params):
    model, x = MODELS[name](), pixels()
    ref = run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fam, layers = resolve_family(model)
    widths: list[int] = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1])) for layer in layers]
    tr.patch(model, method, **params)
    reduced = run(model, x)
    assert [r.shape for r in reduced] == [r.shape for r in ref]
    assert all(torch.isfinite(r).all() for r in reduced)
    prot = fam.default_protected(model)
    lengths = torch.full((3,), 64 + prot)
    expect = [w for _, w in layer_widths(lengths, len(layers), tr.make_method(method, **params), prot)]
    assert widths == expect and widths[-1] < 64 + prot
    tr.unpatch(model)
    for h in hooks:
        h.remove()
    assert all("forward" not in layer.__dict__ for layer in layers)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert_equal(run(model, x), ref)


@pytest.mark.parametrize(
    "name,method,params", cases([REDUCING[0], REDUCING[3], CLS_METHODS[0]], ["dinov2", "dinov2-reg4", "siglip"])
)
def test_batch_independence(name, method, params):
    """An image's output does not depend on the other images in its batch."""
    model, x = MODELS[name](), pixels()
    with tr.patched(model, method, **params):
        together = run(model, x)
        for i in range(x.shape[0]):
            alone = run(model, x[i : i + 1])
            for t, a in zip(together, alone):
                torch.testing.assert_close(t[i : i + 1], a, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name,method,params", cases([REDUCING[0], REDUCING[1], CLS_METHODS[0]], ["dinov2-swiglu", "dinov2-reg4", "siglip"])
)
def test_analytic_macs_match_flop_counter(name, method, params):
    """Blocks only: embeddings and heads are the same with and without reduction."""
    model, x = MODELS[name](), pixels()
    fam, _ = resolve_family(model)
    prot = fam.default_protected(model)
    lengths = torch.full((3,), 64 + prot)
    with torch.inference_mode():
        base = measured_flops(model, pixel_values=x)
    m = tr.make_method(method, **params) if method else None
    if m:
        tr.patch(model, m)
    with torch.inference_mode():
        measured = measured_flops(model, pixel_values=x)
    dims = fam.dims(model)
    delta = total_macs(encoder_cost(dims, lengths, m, prot)) - total_macs(encoder_cost(dims, lengths))
    assert measured - base == 2 * delta


def test_registers_and_cls_are_never_reduced():
    """[CLS] + 4 registers keep their own slots, at extreme budgets too: their outputs at the first
    reducing layer equal the unreduced ones, and the source map keeps them at slots 0..4."""
    model, x = dinov2_registers(), pixels()
    _, layers = resolve_family(model)
    seen: list[torch.Tensor] = []
    layers[0].mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    run(model, x)
    for method, params in (("tome", {"keep": 0.05}), ("evit", {"keep": 0.05}), ("random", {"keep": 0.05})):
        with tr.patched(model, method, **params), record_sources() as recs:
            run(model, x)
        assert seen[-1].shape[1] < seen[0].shape[1]
        assert torch.equal(seen[-1][:, :5], seen[0][:, :5])
        assert recs and all(torch.equal(r.src[:, :5], torch.arange(5).expand(3, 5)) for r in recs)
        assert all(bool(((r.src[:, 5:] >= 5) | (r.src[:, 5:] == -1)).all()) for r in recs)
        assert all(bool((r.sizes[:, :5] == 1).all()) for r in recs)


def test_siglip_refuses_cls_attention_methods():
    model = siglip_vision()
    with pytest.raises(ValueError, match="no protected \\[CLS\\]"):
        tr.patch(model, "evit", keep=0.5)
    assert tr.patch_info(model) is None


def test_siglip_dual_model_patches_only_the_vision_tower():
    model = siglip_full()
    ids = torch.randint(5, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model.get_text_features(input_ids=ids).pooler_output
    fam, layers = resolve_family(model)
    assert layers is model.vision_model.encoder.layers
    with tr.patched(model, "tome", r=3), torch.inference_mode():
        assert torch.equal(model.get_text_features(input_ids=ids).pooler_output, ref)
        assert all("forward" not in layer.__dict__ for layer in model.text_model.encoder.layers)
        out = model(input_ids=ids, pixel_values=pixels())
        assert torch.isfinite(out.logits_per_image).all()


def _probe_pool_with_sizes(head, tokens: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """SigLIP's pooling head over reduced tokens with proportional attention (log-size key bias),
    written out from its weights: probe query, softmax(q·kᵀ/√d + log s)·v, out proj, residual MLP."""
    mha, (b, n, c) = head.attention, tokens.shape
    h, d = mha.num_heads, c // mha.num_heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q = (head.probe @ wq.T + bq).view(1, 1, h, d).transpose(1, 2)
    k = (tokens @ wk.T + bk).view(b, n, h, d).transpose(1, 2)
    v = (tokens @ wv.T + bv).view(b, n, h, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / d**0.5 + torch.where(sizes > 0, sizes.log(), -torch.inf)[:, None, None, :]
    ctx = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, 1, c)
    out = mha.out_proj(ctx)
    return (out + head.mlp(head.layernorm(out)))[:, 0]


def test_siglip_pooling_head_reads_merged_groups_by_size():
    """Restored-length output into the attention-pooling head == proportional attention over the
    reduced tokens (each group counted by its size), computed independently."""
    model, x = siglip_vision(), pixels()
    with torch.inference_mode():
        with tr.patched(model, "tome", keep=0.3, restore_length=False), record_sources() as recs:
            reduced = model(pixel_values=x).last_hidden_state
        with tr.patched(model, "tome", keep=0.3):
            pooled = model(pixel_values=x).pooler_output
        sizes = recs[-1].sizes
        assert reduced.shape[1] == sizes.shape[1] < 64 and bool((sizes.sum(1) == 64).all())
        expect = _probe_pool_with_sizes(model.head, reduced, sizes)
    torch.testing.assert_close(pooled, expect, atol=1e-5, rtol=1e-4)


def test_siglip2_padding_and_batch_independence():
    """SigLIP 2 (NaFlex) pads images to the longest: padding never merges, and each image's output
    equals running it alone, unpadded."""
    model = siglip2_vision()
    shapes = ((8, 8), (6, 5), (4, 4))
    batch = siglip2_inputs(shapes)
    with torch.inference_mode():
        ref = model(**batch)
        with tr.patched(model, "tome", r=0):
            same = model(**batch)
        assert torch.equal(same.last_hidden_state, ref.last_hidden_state)
        assert torch.equal(same.pooler_output, ref.pooler_output)
        for method, params in (("tome", {"keep": 0.4}), ("random", {"keep": 0.5})):
            with tr.patched(model, method, **params):
                together = model(**batch)
                for i, (h, w) in enumerate(shapes):
                    n = h * w
                    alone = model(
                        pixel_values=batch["pixel_values"][i : i + 1, :n],
                        pixel_attention_mask=batch["pixel_attention_mask"][i : i + 1, :n],
                        spatial_shapes=batch["spatial_shapes"][i : i + 1],
                    )
                    torch.testing.assert_close(together.pooler_output[i], alone.pooler_output[0], atol=2e-5, rtol=1e-4)
                    torch.testing.assert_close(
                        together.last_hidden_state[i, :n], alone.last_hidden_state[0], atol=2e-5, rtol=1e-4
                    )


def test_dinov2_backbone_is_refused_clearly():
    cfg = Dinov2Config(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(TypeError, match="backbones"):
        tr.patch(Dinov2Backbone(cfg), "tome", r=2)


def test_dinov2_attention_mask_is_padding():
    """DINOv2 takes a token attention mask: masked patches act as padding. Under reduction they never
    merge into real tokens, so changing the pixels under them leaves every real token unchanged,
    and each image's result does not depend on its batch."""
    model, x = dinov2(), pixels()
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(3, 65, dtype=torch.long)
    for b in range(3):
        mask[b, 1 + torch.randperm(64, generator=g)[: 6 + 4 * b]] = 0
    other = x.clone()
    for b in range(3):
        for p in (mask[b, 1:] == 0).nonzero().flatten().tolist():
            i, j = divmod(p, 8)
            other[b, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = torch.randn(3, 4, 4, generator=g) * 3
    real = mask.bool()
    with torch.inference_mode():
        ref = model(pixel_values=x, attention_mask=mask).last_hidden_state
        with tr.patched(model, "tome", r=0):
            assert torch.equal(model(pixel_values=x, attention_mask=mask).last_hidden_state, ref)
        for method, params in (("tome", {"keep": 0.5}), ("random", {"keep": 0.5}), ("evit", {"keep": 0.5})):
            with tr.patched(model, method, **params):
                a = model(pixel_values=x, attention_mask=mask).last_hidden_state
                b = model(pixel_values=other, attention_mask=mask).last_hidden_state
                torch.testing.assert_close(a[real], b[real], atol=2e-5, rtol=1e-4)
                alone = model(pixel_values=x[1:2], attention_mask=mask[1:2]).last_hidden_state
                torch.testing.assert_close(a[1][real[1]], alone[0][real[1]], atol=2e-5, rtol=1e-4)


def _every_method():
    for m in tr.methods():
        yield pytest.param(m, dinov2_registers, id=f"{m}-dinov2-reg4")
        yield pytest.param(m, siglip_vision, id=f"{m}-siglip")


@pytest.mark.parametrize("method,make", list(_every_method()))
def test_every_registered_method(method, make):
    """Each method keeps [CLS] + registers in their own slots on DINOv2-reg, and on SigLIP either runs
    or is refused before compute because it needs a [CLS] token; unpatch is exact either way."""
    x = pixels()
    model = make()
    ref = run(model, x)
    try:
        tr.patch(model, method, keep=0.5)
    except ValueError as e:
        assert make is siglip_vision and "[CLS]" in str(e) and tr.patch_info(model) is None
        return
    try:
        with record_sources() as recs:
            out = run(model, x)
    finally:
        tr.unpatch(model)
    assert all(torch.isfinite(o).all() for o in out) and recs
    if make is dinov2_registers:
        assert all(torch.equal(r.src[:, :5], torch.arange(5).expand(3, 5)) for r in recs)
        assert all(bool(((r.src[:, 5:] >= 5) | (r.src[:, 5:] == -1)).all()) for r in recs)
    assert_equal(run(model, x), ref)
