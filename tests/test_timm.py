"""The adapter invariants (ARCHITECTURE.md §2) on tiny random timm Vision Transformers.

Skipped unless timm is installed (``pip install tokenreduce[timm]``).
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from models import block_inputs, jitter_norms  # noqa: E402

import tokenreduce as tr  # noqa: E402
from tokenreduce.bench.flops import measured_flops  # noqa: E402
from tokenreduce.encoder.adapters.patching import resolve_family  # noqa: E402
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs  # noqa: E402

TINY = dict(pretrained=False, img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=4, num_classes=5)
PATCHES = (32 // 4) ** 2


def _jitter(model: torch.nn.Module, eager: bool = False) -> torch.nn.Module:
    """Random LayerNorm gains and biases, so no ranking score is degenerate; optionally eager attention."""
    if eager:
        for blk in model.blocks:
            blk.attn.fused_attn = False
    return jitter_norms(model)


def make(name: str = "vit_tiny_patch16_224", eager: bool = False, **kwargs):
    def build():
        torch.manual_seed(0)
        return _jitter(timm.create_model(name, **{**TINY, **kwargs}), eager)

    return build


def _swiglu_scale_norm():
    from timm.layers import SwiGLUPacked

    return make(mlp_layer=SwiGLUPacked, scale_attn_norm=True, scale_mlp_norm=True)()


MODELS = {
    "vit": make(),
    "vit-eager": make(eager=True),
    "deit-distilled": make("deit_tiny_distilled_patch16_224"),
    "deit-distilled-eager": make("deit_tiny_distilled_patch16_224", eager=True),
    "vit-reg4": make(reg_tokens=4, class_token=True),
    "layerscale": make(init_values=1e-1),
    "qk-norm": make(qk_norm=True),
    "qk-norm-eager": make(qk_norm=True, eager=True),
    "deit3": make("deit3_small_patch16_224", init_values=1e-1),
    "swiglu-scale-norm": _swiglu_scale_norm,
}
PREFIX = {"deit-distilled": 2, "deit-distilled-eager": 2, "vit-reg4": 5}
REDUCING = [("tome", {"r": 3}), ("evit", {"keep": 0.5}), ("random", {"keep": 0.5})]


def pixels(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def features(model, x):
    with torch.inference_mode():
        return model.forward_features(x)


def logits(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("name", list(MODELS))
def test_family_and_prefix_tokens(name):
    model = MODELS[name]()
    fam, layers = resolve_family(model)
    assert fam.name == "timm-vit" and layers is model.blocks
    assert fam.default_protected(model) == PREFIX.get(name, 1) == model.num_prefix_tokens
    d = fam.dims(model)
    assert (d.hidden, d.heads, d.head_dim, d.layers) == (32, 4, 8, 4)
    assert (d.ffn, d.ffn_matrices) == ((64, 3) if name == "swiglu-scale-norm" else (128, 2))


@pytest.mark.parametrize("name", list(MODELS))
def test_reducing_nothing_is_exact(name):
    model, x = MODELS[name](), pixels()
    ref_f, ref_l = features(model, x), logits(model, x)
    with tr.patched(model, "tome", r=0):
        assert torch.equal(features(model, x), ref_f)
        assert torch.equal(logits(model, x), ref_l)


@pytest.mark.parametrize("name", list(MODELS))
def test_split_block_equals_block(name):
    """Our attention half + MLP half reproduce the timm block's own forward bit for bit."""
    model, x = MODELS[name](), pixels()
    fam, layers = resolve_family(model)
    args, kwargs = block_inputs(layers[1], lambda: features(model, x))
    with torch.inference_mode():
        ref = layers[1](*args, **kwargs)
        mid, q, k, _, scale = fam.attention(layers[1], args[0], None)
        assert torch.equal(fam.mlp(layers[1], mid), ref)
    assert q.shape == k.shape == (3, 4, PATCHES + PREFIX.get(name, 1), 8) and scale == 8**-0.5


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method,params", REDUCING)
def test_reduce_then_unpatch_restores_exactly(name, method, params):
    model, x = MODELS[name](), pixels()
    ref_f, ref_l = features(model, x), logits(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fam, layers = resolve_family(model)
    prefix = fam.default_protected(model)
    widths = []
    hooks = [blk.mlp.register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1])) for blk in layers]
    tr.patch(model, method, **params)
    reduced = features(model, x)
    assert reduced.shape == ref_f.shape == (3, PATCHES + prefix, 32)
    assert torch.isfinite(reduced).all() and torch.isfinite(logits(model, x)).all()
    expect = [
        w
        for _, w in layer_widths(
            torch.full((3,), PATCHES + prefix), len(layers), tr.make_method(method, **params), prefix
        )
    ]
    assert widths[: len(layers)] == expect and expect[-1] < PATCHES + prefix
    tr.unpatch(model)
    for h in hooks:
        h.remove()
    assert all("forward" not in blk.__dict__ for blk in layers)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(features(model, x), ref_f) and torch.equal(logits(model, x), ref_l)


@pytest.mark.parametrize("name", ["vit", "deit-distilled", "vit-reg4", "qk-norm-eager"])
def test_prefix_tokens_are_kept(name):
    """[CLS], distillation and register tokens are never merged or pruned: at block 0's MLP their
    slots hold exactly their unreduced values even at extreme budgets."""
    model, x = MODELS[name](), pixels()
    prefix = PREFIX.get(name, 1)
    captured = []
    model.blocks[0].norm2.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    features(model, x)
    for method, params in (("tome", {"keep": 0.05}), ("evit", {"keep": 0.05}), ("random", {"keep": 0.05})):
        with tr.patched(model, method, **params):
            features(model, x)
        assert captured[-1].shape[1] < captured[0].shape[1]
        assert torch.equal(captured[-1][:, :prefix], captured[0][:, :prefix])


@pytest.mark.parametrize("name", ["vit", "vit-eager", "deit-distilled", "vit-reg4", "layerscale", "swiglu-scale-norm"])
@pytest.mark.parametrize("method,params", [(None, {}), *REDUCING])
def test_flops_match_flop_counter(name, method, params):
    """Blocks only: the patch-embedding convolution and the rest of forward_features are unchanged."""
    model, x = MODELS[name](), pixels()
    fam, _ = resolve_family(model)
    prefix = fam.default_protected(model)
    lengths = torch.full((3,), PATCHES + prefix)
    dims = fam.dims(model)
    with torch.inference_mode():
        base = measured_flops(model.forward_features, x)
    m = tr.make_method(method, **params) if method else None
    with tr.patched(model, m or "tome", **({} if m else {"r": 0})), torch.inference_mode():
        measured = measured_flops(model.forward_features, x)
    delta = total_macs(encoder_cost(dims, lengths, m, prefix)) - total_macs(encoder_cost(dims, lengths))
    assert measured - base == 2 * delta
    # and the blocks are all of it, apart from the patch embedding (a conv) and nothing else
    conv = 2 * 3 * PATCHES * 32 * 3 * 4 * 4
    assert base == 2 * total_macs(encoder_cost(dims, lengths)) + conv


def test_wrapped_model_is_found():
    """A timm ViT held inside another module (e.g. open_clip's ``trunk``) is found."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = MODELS["deit-distilled"]()

        def forward(self, x):
            return self.trunk.forward_features(x)

    model, x = Wrapper(), pixels()
    ref = model(x)
    fam, layers = resolve_family(model)
    assert fam.name == "timm-vit" and layers is model.trunk.blocks and fam.default_protected(model) == 2
    with tr.patched(model, "tome", r=3), torch.inference_mode():
        assert model(x).shape == ref.shape


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"attn_layer": "diff"}, "DiffAttention"),
        ({"block_fn": "ResPostBlock"}, "ResPostBlock"),
        ({"block_fn": "ParallelScalingBlock"}, "ParallelScalingBlock"),
    ],
)
def test_unsupported_blocks_are_named(kwargs, match):
    from timm.models import vision_transformer as vt

    if "block_fn" in kwargs:
        kwargs = {"block_fn": getattr(vt, kwargs["block_fn"])}
    model = make(**kwargs)()
    with pytest.raises(TypeError, match=match):
        tr.patch(model, "tome", r=1)
    assert tr.patch_info(model) is None


def test_other_timm_models_are_not_claimed():
    model = timm.create_model(
        "cait_xxs24_224", pretrained=False, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5
    )
    with pytest.raises(TypeError, match="unsupported model Cait"):
        tr.patch(model, "tome", r=1)


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "eva_giant_patch14_224"])
def test_eva_goes_to_its_own_adapter(name):
    """EVA / EVA-02 (RoPE inside every block) are not VisionTransformers: tests/test_timm_eva.py covers them."""
    model = timm.create_model(name, **{**TINY, "depth": 2})
    assert resolve_family(model)[0].name == "timm-eva"


@pytest.mark.parametrize("name,prefix", [("vit", 1), ("vit-reg4", 5)])
def test_visualize_timm(name, prefix):
    """The patch-group picture works for timm ViTs: geometry and prefix tokens come from the model."""
    from tokenreduce.viz import trace

    model = MODELS[name]()
    image = (torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    t = trace(model, image, "tome", r=5, stages=2)
    assert t.spec[:3] == (32, 4, prefix) and t.spec.kind == "timm"
    assert (
        t.stages[-1].tokens
        == layer_widths(torch.tensor([64 + prefix]), 4, tr.make_method("tome", r=5), prefix)[-1][1] - prefix
    )
    assert tr.patch_info(model) is None
