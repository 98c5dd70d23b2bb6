"""The adapter invariants (ARCHITECTURE.md §2) on tiny random timm EVA-style RoPE ViTs (``timm.models.eva.Eva``).

Same suite as tests/test_timm.py (reducing nothing is exact, the split block equals the block, unpatch bit for
bit, widths follow the schedule, batch independence, prefix tokens never reduced, analytic MACs =
FlopCounterMode, unsupported variants refused before compute), plus RoPE positions: after a reduction every
block equals timm's own block run on the current tokens with the RoPE table taken at their representatives'
original positions (kept tokens: their own; merged: the earliest token in the group).

Skipped unless timm is installed (README "Optional: timm": its own environment on this machine).
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from models import block_inputs, jitter_norms, pixels  # noqa: E402

import tokenreduce as tr  # noqa: E402
from tokenreduce.bench.flops import measured_flops  # noqa: E402
from tokenreduce.core.assign import attention_bias  # noqa: E402
from tokenreduce.encoder.adapters import timm_eva  # noqa: E402
from tokenreduce.encoder.adapters.patching import resolve_family  # noqa: E402
from tokenreduce.encoder.adapters.positions import representatives  # noqa: E402
from tokenreduce.encoder.adapters.runner import record_sources  # noqa: E402
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs  # noqa: E402

TINY = dict(pretrained=False, img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=4, num_classes=5)
PATCHES = (32 // 4) ** 2


def make(name: str = "eva02_tiny_patch14_224", eager: bool = False, **kwargs):
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        model = timm.create_model(name, **{**TINY, **kwargs})
        if eager:
            for blk in model.blocks:
                blk.attn.fused_attn = False
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():  # zero q/v biases and 1e-5 LayerScale at init would hide what attention does
            for mod in model.modules():
                for attr in ("q_bias", "v_bias", "gamma_1", "gamma_2"):
                    p = getattr(mod, attr, None)
                    if isinstance(p, torch.nn.Parameter):
                        p.copy_((0.5 if attr.startswith("gamma") else 0) + 0.1 * torch.randn(p.shape, generator=g))
        return jitter_norms(model)

    return build


def _gated(model: torch.nn.Module) -> torch.nn.Module:
    """EvaAttention's sigmoid output gate (``gated=True``; Eva itself does not expose it) on every block."""
    torch.manual_seed(3)
    for blk in model.blocks:
        blk.attn.gate = torch.nn.Linear(32, 32)
    return model


MODELS = {
    "eva02": make(),  # RoPE "cat", fused qkv with q/v biases, GluMlp (SwiGLU packed)
    "eva02-eager": make(eager=True),
    "eva02-unfused-scale": make(qkv_fused=False, scale_mlp=True, scale_attn_inner=True),  # SwiGLU, inner norms
    "eva01": make("eva_giant_patch14_224"),  # no RoPE
    # LayerScale, global average pool, [CLS] + 2 registers
    "rope-reg-gap": make("vit_medium_patch16_rope_reg1_gap_256", num_reg_tokens=2, class_token=True),
    "rope-mixed": make("vit_small_patch16_rope_mixed_224"),  # per-depth, per-head RoPE, AttentionRope
    "rope-mixed-eager": make("vit_small_patch16_rope_mixed_224", eager=True),
    "dinov3": make("vit_small_patch16_dinov3"),  # [CLS] + 4 registers, rotate-half RoPE
    "pe-core": make("vit_pe_core_tiny_patch16_384"),  # AttentionRope, attention-pool head
    "post-norm": make(use_post_norm=True),
    "qk-norm-gated": lambda: _gated(make("vit_small_patch16_dinov3", qk_norm=True)()),
}
PREFIX = {"dinov3": 5, "qk-norm-gated": 5, "rope-reg-gap": 3}
REDUCING = [
    ("tome", {"r": 3}),
    ("tome", {"keep": 0.4, "schedule": "decreasing"}),
    ("evit", {"keep": 0.5}),
    ("random", {"keep": 0.5, "fuse": True}),
]
IDENTITY = [("tome", {"r": 0}), ("tome", {"keep": 1.0}), ("evit", {"keep": 1.0})]


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
    assert fam.name == "timm-eva" and [a.block for a in layers] == list(model.blocks)
    assert fam.default_protected(model) == PREFIX.get(name, 1) == model.num_prefix_tokens
    d = fam.dims(model)
    assert (d.hidden, d.heads, d.head_dim, d.layers) == (32, 4, 8, 4)
    gated = isinstance(model.blocks[0].mlp, (timm.layers.GluMlp, timm.layers.SwiGLU))
    assert d.ffn_matrices == (3 if gated else 2)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method,params", IDENTITY)
def test_reducing_nothing_is_exact(name, method, params):
    model, x = MODELS[name](), pixels()
    ref_f, ref_l = features(model, x), logits(model, x)
    with tr.patched(model, method, **params):
        assert torch.equal(features(model, x), ref_f)
        assert torch.equal(logits(model, x), ref_l)


@pytest.mark.parametrize("name", list(MODELS))
def test_split_block_equals_block(name):
    """Our attention half + MLP half reproduce timm's block (with its RoPE table) bit for bit."""
    model, x = MODELS[name](), pixels()
    fam, layers = resolve_family(model)
    args, kwargs = block_inputs(model.blocks[1], lambda: features(model, x))
    with torch.inference_mode(), timm_eva.block_rope(kwargs["rope"], None):
        ref = model.blocks[1](*args, **kwargs)
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
    hooks = [blk.mlp.register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1])) for blk in model.blocks]
    tr.patch(model, method, **params)
    assert "forward_features" in model.__dict__
    reduced = features(model, x)
    assert reduced.shape == ref_f.shape == (3, PATCHES + prefix, 32)
    assert torch.isfinite(reduced).all() and torch.isfinite(logits(model, x)).all()
    assert not torch.allclose(reduced, ref_f)
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
    assert all("forward" not in m.__dict__ and "forward_features" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(features(model, x), ref_f) and torch.equal(logits(model, x), ref_l)


@pytest.mark.parametrize("name", ["eva02", "rope-mixed", "dinov3", "pe-core"])
@pytest.mark.parametrize("method,params", [REDUCING[0], REDUCING[2], REDUCING[3]])
def test_batch_independence(name, method, params):
    model, x = MODELS[name](), pixels()
    with tr.patched(model, method, **params):
        together = logits(model, x), features(model, x)
        for i in range(x.shape[0]):
            for t, a in zip(together, (logits(model, x[i : i + 1]), features(model, x[i : i + 1]))):
                torch.testing.assert_close(t[i : i + 1], a, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["eva02", "rope-reg-gap", "dinov3", "post-norm"])
def test_prefix_tokens_are_kept(name):
    """[CLS] and register tokens are never merged or pruned: at block 0's MLP their slots hold exactly their
    unreduced values even at extreme budgets."""
    model, x = MODELS[name](), pixels()
    prefix = PREFIX.get(name, 1)
    captured = []
    model.blocks[0].mlp.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    features(model, x)
    for method, params in (("tome", {"keep": 0.05}), ("evit", {"keep": 0.05}), ("random", {"keep": 0.05})):
        with tr.patched(model, method, **params):
            features(model, x)
        assert captured[-1].shape[1] < captured[0].shape[1]
        assert torch.equal(captured[-1][:, :prefix], captured[0][:, :prefix])


@pytest.mark.parametrize("name", ["eva02", "eva02-eager", "eva02-unfused-scale", "rope-reg-gap", "dinov3", "pe-core"])
@pytest.mark.parametrize("method,params", [(None, {}), REDUCING[0], REDUCING[2]])
def test_flops_match_flop_counter(name, method, params):
    """Blocks only: the patch embedding and the head cost the same with and without reduction; RoPE, norms and
    gates are elementwise (not counted by FlopCounterMode, not by the analytic model)."""
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
    conv = 2 * 3 * PATCHES * 32 * 3 * 4 * 4
    assert base == 2 * total_macs(encoder_cost(dims, lengths)) + conv


def _rope_at(model: torch.nn.Module, depth: int, rep: torch.Tensor, prefix: int) -> torch.Tensor | None:
    """timm's RoPE table for block ``depth`` (the model's own ``get_embed``), each row's rows taken at that row's
    original patch indices ``rep - prefix``, stacked into the batched layout timm broadcasts (B, 1|H, n, 2d)."""
    if model.rope is None:
        return None
    dynamic = model.dynamic_img_size or not hasattr(model.rope, "feat_shape")  # as Eva._pos_embed asks for it
    rope = model.rope.get_embed(shape=list(model.patch_embed.grid_size)) if dynamic else model.rope.get_embed()
    if model.rope_mixed:
        rope = rope[depth]
    rows = [rope[..., (r[prefix:] - prefix).tolist(), :] for r in rep]
    return torch.stack([t if t.dim() == 3 else t[None] for t in rows])


@pytest.mark.parametrize("name", ["eva02", "eva02-eager", "rope-mixed", "dinov3", "post-norm", "rope-reg-gap"])
@pytest.mark.parametrize("method,params", [("random", {"layers": [0], "r": 20}), ("tome", {"layers": [0], "r": 20})])
def test_reduced_tokens_keep_their_rope_positions(name, method, params):
    """Reduce at block 0 only; every later block (but the last, which restores the length) equals timm's own
    block run on the current tokens, with the RoPE table taken at each token's representative's original patch
    (pruning: the kept tokens' own positions; ToMe: the earliest token of each merged group) and, for ToMe, the
    proportional-attention bias log(size) as the attention mask."""
    model, x = MODELS[name](), pixels(batch=2)
    prefix = PREFIX.get(name, 1)
    tr.patch(model, method, **params)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for app in tr.patch_info(model).layers[1:3]:
        app.register_forward_hook(lambda m, a, out: seen.__setitem__(m.depth, (a[0], out)))
    with record_sources() as records:
        features(model, x)
    (rec,) = records
    rep = representatives(rec.src, rec.sizes.shape[1])
    assert rep.shape == (2, PATCHES + prefix - 20) and torch.equal(rep[:, :prefix], torch.arange(prefix).expand(2, -1))
    if method == "random":  # every kept token alone, at its own position
        assert (rec.sizes == 1).all()
        assert all(torch.equal(rec.src[b][rep[b]], torch.arange(rep.shape[1])) for b in range(2))
    else:
        assert (rec.sizes > 1).any()
    mask = attention_bias(rec.sizes, True, x.dtype) if method == "tome" else None
    with torch.inference_mode():
        for depth in (1, 2):
            h, out = seen[depth]
            ref = model.blocks[depth](h, rope=_rope_at(model, depth, rep, prefix), attn_mask=mask)
            assert torch.equal(out, ref)
        if model.rope is not None:  # and the positions matter: at the slots' own indices the block differs
            h, out = seen[1]
            own = torch.arange(h.shape[1]).expand(2, -1)
            wrong = model.blocks[1](h, rope=_rope_at(model, 1, own, prefix), attn_mask=mask)
            assert (out - wrong).abs().max() > 1e-5


def test_a_group_led_by_a_prefix_token_is_not_rotated():
    """With ``protected=0`` a prefix token may be merged into a patch group (or pruned around): a slot whose
    representative is a prefix token is left unrotated, every other slot takes its representative's angle."""
    from timm.layers import apply_rot_embed_cat

    model = MODELS["dinov3"]()
    att = model.blocks[0].attn
    rope = model.rope.get_embed(shape=list(model.patch_embed.grid_size))
    q, k = torch.randn(2, 2, 4, 6, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    pos = torch.tensor([[3, 9, 0, 40, 68, 5], [7, 4, 6, 50, 12, 1]])  # 5 prefix tokens: 0..4 are not rotated
    rq, rk = timm_eva._rotate(att, q, k, q, rope, pos)
    for b in range(2):
        for s, p in enumerate(pos[b].tolist()):
            for got, src in ((rq, q), (rk, k)):
                want = src[b, :, s] if p < 5 else apply_rot_embed_cat(src[b, :, s : s + 1], rope[p - 5 : p - 4],
                                                                      half=att.rotate_half)[:, 0]
                assert torch.equal(got[b, :, s], want)
    with tr.patched(model, "tome", keep=0.3, protected=0):
        out = features(model, pixels())
    assert torch.isfinite(out).all()


def test_wrapped_model_is_found():
    """An Eva held inside another module (e.g. open_clip's ``trunk``) is found and patched."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = MODELS["dinov3"]()

        def forward(self, x):
            return self.trunk(x)

    model, x = Wrapper(), pixels()
    ref = model(x)
    fam, layers = resolve_family(model)
    assert fam.name == "timm-eva" and layers.owner is model.trunk and fam.default_protected(model) == 5
    with tr.patched(model, "tome", r=3), torch.inference_mode():
        out = model(x)
        assert out.shape == ref.shape and not torch.allclose(out, ref)
    assert torch.equal(model(x), ref)


def test_grouped_query_attention_is_refused_before_compute():
    model = make("vit_small_patch16_rope_mixed_224", qkv_fused=False, num_kv_heads=2)()
    calls = []
    model.patch_embed.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(TypeError, match=r"grouped-query attention .*4 query heads, 2 key/value heads"):
        tr.patch(model, "tome", r=1)
    assert tr.patch_info(model) is None and not calls and "forward_features" not in model.__dict__


def test_unknown_block_is_refused_with_its_name():
    model = MODELS["eva02"]()

    class MyBlock(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, rope=None, attn_mask=None, is_causal=False):
            return self.inner(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)

    model.blocks[2] = MyBlock(model.blocks[2])
    with pytest.raises(TypeError, match="unsupported timm block .*MyBlock.*EvaBlock"):
        tr.patch(model, "tome", r=1)
    assert tr.patch_info(model) is None


def test_patched_eva_refuses_an_attention_mask():
    model, x = MODELS["eva02"](), pixels()
    with tr.patched(model, "tome", r=2), pytest.raises(ValueError, match="attn_mask"):
        model(x, attn_mask=torch.ones(3, 1, 65, 65, dtype=torch.bool))


def test_vision_transformer_adapter_does_not_claim_eva():
    from tokenreduce.encoder.adapters.timm_vit import TimmViT

    assert TimmViT().find_layers(MODELS["eva02"]()) is None


@pytest.mark.parametrize("name,prefix", [("eva02", 1), ("dinov3", 5)])
def test_visualize_timm_eva(name, prefix):
    """The patch-group picture works for timm EVA models: geometry and prefix tokens come from the model."""
    from tokenreduce.viz import trace

    model = MODELS[name]()
    image = (torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    t = trace(model, image, "tome", r=5, stages=2)
    assert t.spec[:3] == (32, 4, prefix) and t.spec.kind == "timm"
    assert (
        t.stages[-1].tokens
        == layer_widths(torch.tensor([64 + prefix]), 4, tr.make_method("tome", r=5), prefix)[-1][1] - prefix
    )
    assert tr.patch_info(model) is None and "forward_features" not in model.__dict__


@pytest.mark.parametrize("name", ["eva02", "dinov3", "rope-mixed"])
def test_every_encoder_method(name):
    """Every registered encoder method: nothing removed is exact, keep=0.5 runs, changes the output, stays finite."""
    from tokenreduce.encoder.methods import methods

    model, x = MODELS[name](), pixels()
    ref = features(model, x)
    for method in methods():
        with tr.patched(model, method, keep=1.0):
            assert torch.equal(features(model, x), ref), method
        with tr.patched(model, method, keep=0.5):
            out = features(model, x)
        assert torch.isfinite(out).all() and not torch.equal(out, ref), method


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision(dtype, device):
    """bf16 / fp16 (the RoPE table stays float32, as timm keeps it): exact at keep=1, dtype kept when reducing."""
    model = MODELS["eva02"]().to(device, dtype)
    x = pixels().to(device, dtype)
    ref = features(model, x)
    for method in ("tome", "evit", "random"):
        with tr.patched(model, method, keep=1.0):
            assert torch.equal(features(model, x), ref)
        with tr.patched(model, method, keep=0.5):
            out = features(model, x)
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_training_with_patch_dropout():
    """Training mode with timm's patch dropout (the RoPE table then arrives per row, already gathered at the kept
    patches): a reduced forward and backward run, gradients reach the patch embedding."""
    model = make(patch_drop_rate=0.25)().train()
    with tr.patched(model, "tome", keep=0.5):
        model(pixels()).sum().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_compiled_patched_model_runs_the_loop_eagerly():
    """Under torch.compile the patched loop is left uncompiled (positions need the source records): the
    compiled model gives the eager patched output (the compiled head to float rounding)."""
    model, x = MODELS["eva02"](), pixels()
    with torch.no_grad(), tr.patched(model, "tome", keep=0.5):
        ref = model(x)
        torch.testing.assert_close(torch.compile(model)(x), ref, rtol=1e-6, atol=1e-6)
