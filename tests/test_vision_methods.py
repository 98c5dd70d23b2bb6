"""The invariants of ARCHITECTURE.md §2 and the FLOP cross-check for ats, mctf, pitome, zero-tprune,
diffrate and pool, on tiny random configurations (the shared matrices in test_patching.py /
test_flops.py list the older methods explicitly)."""

from __future__ import annotations

import pytest
import torch
from models import bert, clip_vision, deit, pixels, text_batch, vit

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs

REDUCING = [
    ("ats", {"keep": 0.5}),
    ("ats", {"r": 6, "layers": [1, 2]}),
    ("mctf", {"keep": 0.5}),
    ("mctf", {"r": 5, "info": "cls", "metric": "keys"}),
    ("pitome", {"keep": 0.4, "schedule": "decreasing"}),
    ("zero-tprune", {"keep": 0.4}),
    ("zero-tprune", {"r": 7, "similarity_share": 1.0, "iters": 3}),
    ("diffrate", {"keep": 0.4}),
    ("diffrate", {"prune": [3, 0, 2, 1], "merge": [2, 4, 0, 3]}),
    ("diffrate", {"kept": [50, 41, 30, 30]}),
]
POOL = [("pool", {"window": 2}), ("pool", {"keep": 0.5, "at_layer": 2}), ("pool", {"window": [3, 3], "at_layer": 1})]
IDENTITY = [
    ("ats", {"r": 0}),
    ("ats", {"keep": 1.0}),
    ("mctf", {"keep": 1.0}),
    ("pitome", {"r": 0}),
    ("zero-tprune", {"keep": 1.0}),
    ("diffrate", {"prune": [0, 0, 0, 0], "merge": [0, 0, 0, 0]}),
    ("diffrate", {"keep": 1.0}),
    ("pool", {"window": 1}),
    ("pool", {"keep": 1.0}),
]
VISION = {"vit": vit, "deit": deit, "clip-vision": clip_vision, "vit-eager": lambda: vit(impl="eager")}


def run(model, inputs):
    with torch.inference_mode():
        out = model(**inputs)
    return out.last_hidden_state


def mlp_widths(model):
    """Record the width each block's MLP sees (hooks are removed by the caller via the handles)."""
    _, layers = resolve_family(model)
    widths: list[int] = []
    hooks = [
        (layer.intermediate if hasattr(layer, "intermediate") else layer.mlp).register_forward_pre_hook(
            lambda m, a: widths.append(a[0].shape[1])
        )
        for layer in layers
    ]
    return widths, hooks


@pytest.mark.parametrize(
    "name,method,params", [(n, *c) for n in ("vit", "bert") for c in IDENTITY] + [("deit", *c) for c in IDENTITY[::3]]
)
def test_reducing_nothing_is_exact(name, method, params):
    model = bert() if name == "bert" else VISION[name]()
    x = text_batch() if name == "bert" else {"pixel_values": pixels()}
    ref = run(model, x)
    with tr.patched(model, method, **params):
        assert torch.equal(run(model, x), ref)


@pytest.mark.parametrize("method,params", [IDENTITY[0], IDENTITY[2]])
def test_reducing_nothing_is_exact_eager(method, params):
    model, x = VISION["vit-eager"](), {"pixel_values": pixels()}
    ref = run(model, x)
    with tr.patched(model, method, **params):
        assert torch.equal(run(model, x), ref)


@pytest.mark.parametrize(
    "make,method,params",
    [(mk, *c) for mk in (vit, deit) for c in REDUCING + POOL] + [(clip_vision, *c) for c in REDUCING[::3] + POOL[:1]],
)
def test_widths_flops_and_unpatch(make, method, params):
    """One patched run: each MLP sees the schedule's width (ATS: at most that, at least one token);
    analytic MACs (incl. each reducer's own matmuls) == what PyTorch executes (ATS at its measured
    widths); unpatching restores the model exactly."""
    model, px = make(), {"pixel_values": pixels()}
    fam, layers = resolve_family(model)
    prot = fam.default_protected(model)
    lengths = torch.full((3,), 64 + prot)
    ref = run(model, px)
    with torch.inference_mode():
        base = measured_flops(model, **px)
    m = tr.make_method(method, **params)
    widths, hooks = mlp_widths(model)
    with tr.patched(model, m), torch.inference_mode():
        measured = measured_flops(model, **px)
        out = model(**px).last_hidden_state
    for h in hooks:
        h.remove()
    widths = widths[: len(layers)]
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)
    assert all("forward" not in layer.__dict__ for layer in layers)
    assert torch.equal(run(model, px), ref)
    nominal = [w for _, w in layer_widths(lengths, len(layers), m, prot)]
    if method == "ats":
        assert all(prot + 1 <= w <= n for w, n in zip(widths, nominal))
    else:
        assert widths == nominal
    actual = list(zip([64 + prot] + widths[:-1], widths)) if method == "ats" else None
    dims = fam.dims(model)
    delta = total_macs(encoder_cost(dims, lengths, m, prot, widths=actual)) - total_macs(encoder_cost(dims, lengths))
    assert measured - base == 2 * delta


def first_of_each(configs):
    """The first config of each method runs by default, the others with ``-m slow``."""
    out, seen = [], set()
    for c in configs:
        out.append(c if c[0] not in seen else pytest.param(*c, marks=pytest.mark.slow))
        seen.add(c[0])
    return out


@pytest.mark.parametrize("method,params", first_of_each(REDUCING))
def test_padding_and_batch_independence(method, params):
    """A sentence's output does not depend on what else is in its batch or how much it is padded."""
    model = bert()
    lengths = (20, 14, 9, 20)
    full = text_batch(lengths=lengths)
    if "kept" in params:
        params = {**params, "kept": [15, 12, 9, 7]}
    with tr.patched(model, method, **params):
        together = run(model, full)
        for i, ln in enumerate(lengths):
            alone = run(model, {k: v[i : i + 1, :ln] for k, v in full.items()})
            torch.testing.assert_close(together[i, :ln], alone[0], atol=2e-5, rtol=1e-4)
            padded = {k: torch.nn.functional.pad(v[i : i + 1, :ln], (0, 7)) for k, v in full.items()}
            torch.testing.assert_close(run(model, padded)[0, :ln], alone[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method,params", REDUCING + POOL)
def test_protected_tokens_are_kept(method, params):
    """DeiT's [CLS] and distillation tokens hold exactly their unreduced values at the first reducing
    layer, even at extreme budgets (to rounding for MCTF / Zero-TPrune, whose reducing layers compute
    the attention explicitly instead of with SDPA, to score from the same probabilities)."""
    model = deit()
    x = {"pixel_values": pixels()}
    if "keep" in params and method != "pool":
        params = {**params, "keep": 0.05}
    m = tr.make_method(method, **params)
    first = int(torch.nonzero(m.budget().removals(torch.full((3,), 64), 4, cap=m.cap).sum(1))[0])
    _, layers = resolve_family(model)
    seen = []
    layers[first].mlp.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
    run(model, x)
    with tr.patched(model, m):
        run(model, x)
    assert seen[1].shape[1] < seen[0].shape[1]
    if m.attention_stat() is None:
        assert torch.equal(seen[1][:, :2], seen[0][:, :2])
    else:
        torch.testing.assert_close(seen[1][:, :2], seen[0][:, :2], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "impl,method,params",
    [("sdpa", *c) for c in REDUCING if c[0] != "ats" and "kept" not in c[1]] + [("eager", "mctf", {"keep": 0.5})],
)
def test_text_flops_match_flop_counter(impl, method, params):
    model = bert(impl, pooling=False)
    x = text_batch()
    fam, _ = resolve_family(model)
    m = tr.make_method(method, **params)
    with tr.patched(model, m), torch.inference_mode():
        measured = measured_flops(model, **x)
    assert measured == 2 * total_macs(encoder_cost(fam.dims(model), x["attention_mask"].sum(1), m, 1))


def test_pool_needs_a_grid():
    model = bert()
    with tr.patched(model, "pool", window=2), pytest.raises(ValueError, match="not a square grid"):
        run(model, text_batch())
    with pytest.raises(ValueError, match="grid"), tr.patched(vit(), "pool", window=2, grid=(4, 8)) as model:
        run(model, {"pixel_values": pixels()})


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("pool", {"r": 2}, "window"),
        ("pool", {}, "exactly one of window"),
        ("pool", {"window": 0}, "positive"),
        ("pool", {"window": 2, "at_layer": 9}, "out of range"),
        ("ats", {"keep": 0.5, "protected": 0}, "protected"),
        ("mctf", {"keep": 0.5, "info": "bogus"}, "info must be one of"),
        ("mctf", {"keep": 0.5, "tau_info": 0}, "temperatures"),
        ("pitome", {"keep": 0.5, "margin": 2.0}, "margin"),
        ("zero-tprune", {"keep": 0.5, "iters": 0}, "iters"),
        ("zero-tprune", {"keep": 0.5, "similarity_share": 1.5}, "similarity_share"),
        ("diffrate", {"keep": 0.5, "prune": [1, 1, 1, 1], "merge": [1, 1, 1, 1]}, "exactly one"),
        ("diffrate", {"prune": [1, 1], "merge": [1, 1, 1, 1]}, "one entry per layer"),
        ("diffrate", {"prune": [1, 1, 1], "merge": [1, 1, 1]}, "3 entries"),
        ("diffrate", {"kept": [10, 20, 5, 5]}, "must not increase"),
        ("diffrate", {"kept": [10, 5]}, "2 entries"),
    ],
)
def test_bad_parameters_fail_before_compute(method, params, match):
    model = vit()
    calls = []
    model.embeddings.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        tr.patch(model, method, **params)
    assert tr.patch_info(model) is None and not calls
