"""The encoder invariants on tiny random configs of the families added for issue 19 ("Reach").

Each family runs the same suite as the original ones (tests/test_patching.py, tests/test_flops.py):
exactness when nothing is removed, the split block equals the block, unpatch restores bit for bit,
padding/batch independence, [CLS] never merged, per-layer widths and MACs equal to the analytic
counter (which FlopCounterMode checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from models import albert, deberta_v2, distilbert, electra, modernbert, mpnet, text_batch
from torch import nn

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.encoder.adapters import hf_deberta_v2, hf_modernbert, hf_mpnet
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.adapters.positions import gather_pairs, representatives
from tokenreduce.encoder.adapters.runner import record_sources
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs


def _projection_macs(model: nn.Module, x: dict) -> int:
    """MACs of an embedding-to-hidden projection (ELECTRA, ALBERT) over the padded batch."""
    proj = next(
        m for n, m in model.named_modules() if n.endswith(("embeddings_project", "embedding_hidden_mapping_in"))
    )
    return x["input_ids"].numel() * proj.in_features * proj.out_features


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    family: str
    mlp_in: Callable[[nn.Module], nn.Module]  # the module whose input is a block's MLP input
    outside_macs: Callable[[nn.Module, dict], int] = lambda model, x: 0  # matmuls outside the blocks


CASES = {
    "distilbert": Case(distilbert, "hf-distilbert", lambda layer: layer.ffn),
    "distilbert-eager": Case(lambda: distilbert("eager"), "hf-distilbert", lambda layer: layer.ffn),
    "albert": Case(albert, "hf-albert", lambda app: app.block.ffn, lambda m, x: _projection_macs(m, x)),
    "albert-eager": Case(
        lambda: albert("eager"), "hf-albert", lambda app: app.block.ffn, lambda m, x: _projection_macs(m, x)
    ),
    "albert-2x2": Case(
        lambda: albert(groups=2, inner=2), "hf-albert", lambda app: app.block.ffn, lambda m, x: _projection_macs(m, x)
    ),
    "mpnet": Case(mpnet, "hf-mpnet", lambda app: app.block.intermediate),
    "deberta-v3": Case(deberta_v2, "hf-deberta-v2", lambda app: app.block.intermediate),
    "deberta-c2p": Case(
        lambda: deberta_v2(share_att_key=False, pos_att_type=("c2p",)),
        "hf-deberta-v2",
        lambda app: app.block.intermediate,
    ),
    "modernbert": Case(modernbert, "hf-modernbert", lambda app: app.block.mlp),
    "modernbert-eager": Case(lambda: modernbert("eager"), "hf-modernbert", lambda app: app.block.mlp),
    "electra": Case(electra, "hf-bert", lambda layer: layer.intermediate, lambda m, x: _projection_macs(m, x)),
}
REDUCING = [
    ("tome", {"r": 3}),
    ("tome", {"keep": 0.4, "schedule": "decreasing"}),
    ("evit", {"keep": 0.5}),
    ("evit", {"keep": 0.5, "fuse": False}),
    ("topk-norm", {"keep": 0.5}),
    ("random", {"keep": 0.5}),
]
IDENTITY = [("tome", {"r": 0}), ("tome", {"keep": 1.0}), ("evit", {"keep": 1.0})]
LENGTHS = (20, 14, 9, 20)


def run(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("name", list(CASES))
def test_family_is_resolved(name):
    fam, _ = resolve_family(CASES[name].build())
    assert fam.name == CASES[name].family


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method,params", IDENTITY)
def test_reducing_nothing_is_exact(name, method, params):
    model, x = CASES[name].build(), text_batch()
    ref = run(model, x)
    with tr.patched(model, method, **params):
        assert torch.equal(run(model, x), ref)


def _block_calls(model: nn.Module, layers: nn.ModuleList, depth: int) -> tuple[nn.Module, tuple, dict]:
    """The real block run at ``depth`` and the (args, kwargs) it receives there (shared blocks run at several
    depths: take the call that belongs to ``depth``)."""
    real = [getattr(layer, "block", layer) for layer in layers]
    seen = []
    hook = real[depth].register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    try:
        run(model, text_batch())
    finally:
        hook.remove()
    args, kwargs = seen[[i for i, b in enumerate(real) if b is real[depth]].index(depth)]
    return real[depth], args, kwargs


@pytest.mark.parametrize("name", list(CASES))
def test_split_block_equals_block(name):
    """Our attention half + MLP half reproduce the block's own forward bit for bit (at depth 1)."""
    model = CASES[name].build()
    fam, layers = resolve_family(model)
    block, args, kwargs = _block_calls(model, layers, 1)
    mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    bias = args[2] if name.startswith("mpnet") else None  # MPNet's relative position bias, the block's 3rd input
    rel = (kwargs.get("relative_pos"), kwargs.get("rel_embeddings"))  # DeBERTa's relative positions
    rope = hf_modernbert.rotary(None, kwargs.get("position_embeddings"))  # ModernBERT's rotary tables
    with torch.inference_mode(), hf_mpnet.position_bias(bias), hf_deberta_v2.relative_positions(*rel), rope:
        ref = block(*args, **kwargs)
        ref = ref[0] if isinstance(ref, tuple) else ref
        assert torch.equal(fam.mlp(layers[1], fam.attention(layers[1], args[0], mask).x), ref)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method,params", REDUCING)
def test_unpatch_restores_exactly(name, method, params):
    model, x = CASES[name].build(), text_batch()
    ref = run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tr.patch(model, method, **params)
    reduced = run(model, x)
    assert reduced.shape == ref.shape and torch.isfinite(reduced).all()
    assert not torch.equal(reduced, ref)
    tr.unpatch(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(run(model, x), ref)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method,params", REDUCING)
def test_padding_and_batch_independence(name, method, params):
    """A row's output depends neither on the rest of its batch nor on how much it is padded."""
    model, full = CASES[name].build(), text_batch(lengths=LENGTHS)
    with tr.patched(model, method, **params):
        together = run(model, full)
        for i, ln in enumerate(LENGTHS):
            alone = run(model, {k: v[i : i + 1, :ln] for k, v in full.items()})
            torch.testing.assert_close(together[i, :ln], alone[0], atol=2e-5, rtol=1e-4)
            padded = {k: torch.nn.functional.pad(v[i : i + 1, :ln], (0, 7)) for k, v in full.items()}
            torch.testing.assert_close(run(model, padded)[0, :ln], alone[0], atol=2e-5, rtol=1e-4)


def _mlp_inputs(model: nn.Module, case: Case) -> list[torch.Tensor]:
    """Hook every application of the blocks' MLP input (a shared module fires once per application)."""
    _, layers = resolve_family(model)
    seen: list[torch.Tensor] = []
    for mod in {id(case.mlp_in(layer)): case.mlp_in(layer) for layer in layers}.values():
        mod.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    return seen


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method,params", REDUCING)
def test_token_counts_match_the_schedule(name, method, params):
    case = CASES[name]
    model, x = case.build(), text_batch()
    fam, layers = resolve_family(model)
    seen = _mlp_inputs(model, case)
    with tr.patched(model, method, **params):
        run(model, x)
    m = tr.make_method(method, **params)
    expect = [w for _, w in layer_widths(x["attention_mask"].sum(1), len(layers), m, fam.default_protected(model))]
    assert [t.shape[1] for t in seen] == expect


@pytest.mark.parametrize("name", list(CASES))
def test_cls_is_never_reduced(name):
    """At the first reducing layer [CLS]'s slot holds exactly its unreduced value, at extreme budgets."""
    case = CASES[name]
    model, x = case.build(), text_batch()
    seen = _mlp_inputs(model, case)
    run(model, x)
    first = seen[0]
    for method, params in (("tome", {"keep": 0.05}), ("evit", {"keep": 0.05}), ("random", {"keep": 0.05})):
        seen.clear()
        with tr.patched(model, method, **params):
            run(model, x)
        assert seen[0].shape[1] < first.shape[1]
        assert torch.equal(seen[0][:, :1], first[:, :1])


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "method,params", [(None, {}), ("tome", {"r": 3}), ("tome", {"keep": 0.3}), ("evit", {"keep": 0.4})]
)
def test_flops_match_flop_counter(name, method, params):
    case = CASES[name]
    model, x = case.build(), text_batch()
    fam, _ = resolve_family(model)
    m = tr.make_method(method, **params) if method else None
    if m:
        tr.patch(model, m)
    with torch.no_grad():  # not inference_mode: FlopCounterMode's module tracker fails on DeBERTa's rel_embeddings
        measured = measured_flops(model, **x)
    relative = fam.relative_cost(model) if hasattr(fam, "relative_cost") else None  # DeBERTa's position terms
    lengths = x["attention_mask"].sum(1)
    analytic = total_macs(encoder_cost(fam.dims(model), lengths, m, fam.default_protected(model), relative=relative))
    assert measured == 2 * (analytic + case.outside_macs(model, x))


def test_albert_is_patched_per_application_not_per_module():
    """One AlbertLayer runs at all 4 depths: the patch lists 4 applications, each reducing by its own depth's
    budget, installs the loop on AlbertTransformer and never gives the shared layer a forward of its own."""
    model, x = albert(), text_batch()
    owner, shared = model.encoder, model.encoder.albert_layer_groups[0].albert_layers[0]
    _, layers = resolve_family(model)
    assert len(layers) == 4 and all(app.block is shared for app in layers)
    seen = _mlp_inputs(model, CASES["albert"])
    run(model, x)
    full = [t.shape[1] for t in seen]
    seen.clear()
    with tr.patched(model, "tome", r=4, layers=[1, 3]):
        assert "forward" in owner.__dict__ and "forward" not in shared.__dict__
        run(model, x)
    n = full[0]  # depth 1 and 3 reduce between attention and MLP
    assert [t.shape[1] for t in seen] == [n, n - 4, n - 4, n - 8]
    assert "forward" not in owner.__dict__


def test_albert_groups_run_in_the_models_order():
    """2 groups of 2 inner layers over 4 depths: 8 applications, in AlbertTransformer's order."""
    model = albert(groups=2, inner=2)
    _, layers = resolve_family(model)
    groups = model.encoder.albert_layer_groups
    expect = [groups[0].albert_layers[0], groups[0].albert_layers[1]] * 2 + [
        groups[1].albert_layers[0],
        groups[1].albert_layers[1],
    ] * 2
    assert [app.block for app in layers] == expect


def _mpnet_bias_at(model: nn.Module, pos: torch.Tensor) -> torch.Tensor:
    """MPNet's relative position bias (B, H, n, n) for tokens at positions ``pos`` (B, n), from its own buckets."""
    enc = model.encoder
    bucket = enc.relative_position_bucket(pos[:, None, :] - pos[:, :, None], num_buckets=32)
    return enc.relative_attention_bias(bucket).permute(0, 3, 1, 2)


def test_mpnet_representatives_and_gathered_bias():
    src = torch.tensor([[0, 1, 1, 2, 1, -1], [0, 2, 1, 1, -1, -1]])
    assert representatives(src, 4).tolist() == [[0, 1, 3, 0], [0, 2, 1, 0]]  # slot 3 holds no token: 0
    model = mpnet()
    full = _mpnet_bias_at(model, torch.arange(6).expand(2, 6))
    rep = torch.tensor([[0, 1, 3, 5], [0, 4, 2, 1]])
    torch.testing.assert_close(gather_pairs(full, rep), _mpnet_bias_at(model, rep), rtol=0, atol=0)


@pytest.mark.parametrize("method,params", [("tome", {"r": 3}), ("evit", {"keep": 0.5})])
def test_mpnet_reduced_tokens_keep_their_representatives_positions(method, params):
    """Every block after a reduction gets the bias of MPNet's own buckets at each token's representative
    (the earliest original token of its group), read from the source records; outer records still fill."""
    model, x = mpnet(), text_batch()
    seen: list[tuple[int, torch.Tensor]] = []
    with tr.patched(model, method, **params), record_sources() as records:
        fam = tr.patch_info(model).family
        attention = fam.attention
        fam.attention = lambda layer, h, mask: (
            seen.append((layer.depth, hf_mpnet._BIAS.get())),
            attention(layer, h, mask),
        )[1]
        run(model, x)
    assert [r.layer for r in records] == [0, 1, 2, 3] and [d for d, _ in seen] == [0, 1, 2, 3]
    for (depth, bias), rec in zip(seen[1:], records):
        n = bias.shape[-1]
        rep = torch.zeros(rec.src.shape[0], n, dtype=torch.long)
        for b, row in enumerate(rec.src.tolist()):
            for i, slot in reversed(list(enumerate(row))):
                if slot >= 0:
                    rep[b, slot] = i
        assert torch.equal(bias, _mpnet_bias_at(model, rep)), depth


@pytest.mark.parametrize("name", ["deberta-v3", "deberta-c2p"])
def test_deberta_pruned_tokens_keep_their_positions(name):
    """After pruning at block 0, every later block equals DeBERTa's own block run on the kept tokens with the
    encoder's relative-position table gathered at their original positions (one row: the model's own
    disentangled attention takes one table per batch)."""
    model, x = CASES[name].build(), text_batch(lengths=(20,))
    enc = model.encoder
    kept, seen = _kept_after_first_reduction(model, x, r=8)
    full = enc.get_rel_pos(enc.layer[0].attention.self.query_proj.weight.new_zeros(1, 20, 1))
    rel = full[:, kept][:, :, kept]
    mask = torch.ones(1, 1, len(kept), len(kept), dtype=torch.bool)
    with torch.inference_mode():
        for depth, (h, out) in seen.items():
            ref = enc.layer[depth](h, mask, relative_pos=rel, rel_embeddings=enc.get_rel_embedding())[0]
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert len(seen) == 2


def _kept_after_first_reduction(model: nn.Module, x: dict, **params) -> tuple[torch.Tensor, dict]:
    """Patch with pruning at block 0 only; the original positions of the kept tokens in slot order, and
    (input, output) of the applications after block 0 but before the last (which restores the length)."""
    tr.patch(model, "random", layers=[0], **params)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for app in tr.patch_info(model).layers[1:-1]:
        app.register_forward_hook(lambda m, a, out: seen.__setitem__(m.depth, (a[0], out)))
    with record_sources() as records:
        run(model, x)
    (rec,) = records
    kept = torch.tensor([i for _, i in sorted((s, i) for i, s in enumerate(rec.src[0].tolist()) if s >= 0)])
    return kept, seen


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_modernbert_pruned_tokens_keep_rotary_positions_and_windows(impl):
    """After pruning at block 0, later blocks (global and local) equal ModernBERT's own blocks run on the kept
    tokens with rotary tables at their original positions and the local window measured between them."""
    model, x = modernbert(impl), text_batch(lengths=(20,))
    kept, seen = _kept_after_first_reduction(model, x, r=8)
    assert sorted(seen) == [1, 2] and len(kept) == 12
    window = (kept[:, None] - kept[None, :]).abs() <= model.config.sliding_window
    assert not window.all()  # the window really cuts some kept pairs
    with torch.inference_mode():
        for depth, (h, out) in seen.items():
            layer = model.layers[depth]
            rope = model.rotary_emb(h, kept[None], layer.attention_type)
            local = layer.attention_type == "sliding_attention"
            mask = window[None, None] if local else None
            if mask is not None and impl == "eager":
                mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
            ref = layer(h, attention_mask=mask, position_embeddings=rope)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_refusals_name_the_reason():
    """DeBERTa-v2 xlarge's convolution over neighbours and ModernBERT under FlashAttention are refused before
    anything changes."""
    conv = deberta_v2(conv_kernel_size=3)
    with pytest.raises(TypeError, match="convolution over neighbouring sequence positions"):
        tr.patch(conv, "tome", r=1)
    flash = modernbert()
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(TypeError, match="FlashAttention does not take"):
        tr.patch(flash, "tome", r=1)
    for model in (conv, flash):
        assert tr.patch_info(model) is None and all("forward" not in m.__dict__ for m in model.modules())


def test_mpnet_output_attentions_is_refused_while_patched():
    model, x = mpnet(), text_batch()
    with tr.patched(model, "tome", r=2), pytest.raises(ValueError, match="output_attentions"):
        model(**x, output_attentions=True)
    assert "forward" not in model.encoder.__dict__
