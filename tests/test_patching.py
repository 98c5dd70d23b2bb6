"""The invariants of ARCHITECTURE.md §2 on tiny random configurations of every supported family."""

from __future__ import annotations

import threading

import pytest
import torch
from models import bert, block_inputs, clip_full, clip_vision, deit, pixels, roberta, text_batch, vit, xlmr
from transformers import ViTForImageClassification

import tokenreduce as tr
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.cost import layer_widths

TEXT = {"bert": bert, "roberta": roberta, "xlmr": xlmr, "bert-eager": lambda: bert("eager")}
VISION = {
    "vit": vit,
    "vit-cls": lambda: vit(ViTForImageClassification),
    "deit": deit,
    "clip-vision": clip_vision,
    "clip-full": clip_full,
    "vit-eager": lambda: vit(impl="eager"),
}
REDUCING = [
    ("tome", {"r": 3}),
    ("tome", {"keep": 0.4, "schedule": "decreasing"}),
    ("evit", {"keep": 0.5}),
    ("evit", {"keep": 0.5, "fuse": False}),
    ("topk-norm", {"keep": 0.5}),
    ("random", {"keep": 0.5}),
    ("tome", {"keep": 0.5, "prop_attn": False}),
    ("tome", {"r": 4, "layers": [1, 3]}),
    ("tome", {"keep": 0.3, "metric": "hidden", "min_tokens": 6}),
]
IDENTITY = [("tome", {"r": 0}), ("tome", {"keep": 1.0}), ("evit", {"keep": 1.0}), ("random", {"r": 0})]


def run(model, inputs):
    with torch.inference_mode():
        if "pixel_values" in inputs and hasattr(model, "get_image_features"):
            return model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def inputs_for(name):
    return text_batch() if name in TEXT else {"pixel_values": pixels()}


ALL = {**TEXT, **VISION}


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("method,params", IDENTITY)
def test_reducing_nothing_is_exact(name, method, params):
    model, x = ALL[name](), inputs_for(name)
    ref = run(model, x)
    with tr.patched(model, method, **params):
        assert torch.equal(run(model, x), ref)


@pytest.mark.parametrize("name", list(ALL))
def test_split_block_equals_block(name):
    """Our attention half + MLP half of each block reproduce the block's own forward bit for bit."""
    model, x = ALL[name](), inputs_for(name)
    fam, layers = resolve_family(model)
    args, kwargs = block_inputs(layers[1], lambda: run(model, x))
    h = args[0]
    mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    with torch.inference_mode():
        ref = layers[1](*args, **kwargs)
        mid = fam.attention(layers[1], h, mask).x
        assert torch.equal(fam.mlp(layers[1], mid), ref)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("method,params", REDUCING)
def test_unpatch_restores_exactly(name, method, params):
    model, x = ALL[name](), inputs_for(name)
    ref = run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, layers = resolve_family(model)
    tr.patch(model, method, **params)
    reduced = run(model, x)
    assert reduced.shape == ref.shape
    assert torch.isfinite(reduced).all()
    tr.unpatch(model)
    assert all("forward" not in layer.__dict__ for layer in layers)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(run(model, x), ref)
    tr.unpatch(model)  # no-op


def test_double_patch_is_an_error_and_context_manager_unpatches_on_error():
    model = bert()
    tr.patch(model, "tome", r=2)
    with pytest.raises(RuntimeError, match="already patched"):
        tr.patch(model, "evit", keep=0.5)
    tr.unpatch(model)
    with pytest.raises(ZeroDivisionError), tr.patched(model, "tome", r=2):
        raise ZeroDivisionError
    assert tr.patch_info(model) is None


@pytest.mark.parametrize("name", list(TEXT))
@pytest.mark.parametrize("method,params", REDUCING)
def test_padding_and_batch_independence(name, method, params):
    """A sentence's output does not depend on what else is in its batch or how much it is padded."""
    model = TEXT[name]()
    full = text_batch(lengths=(20, 14, 9, 20))
    with tr.patched(model, method, **params):
        together = run(model, full)
        for i, ln in enumerate((20, 14, 9, 20)):
            alone = run(model, {k: v[i : i + 1, :ln] for k, v in full.items()})
            torch.testing.assert_close(together[i, :ln], alone[0], atol=2e-5, rtol=1e-4)
            padded = {k: torch.nn.functional.pad(v[i : i + 1, :ln], (0, 7)) for k, v in full.items()}
            torch.testing.assert_close(run(model, padded)[0, :ln], alone[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("method,params", REDUCING)
def test_token_counts_match_the_schedule(name, method, params):
    """Each block's MLP sees exactly the width the analytic counter predicts."""
    model, x = ALL[name](), inputs_for(name)
    fam, layers = resolve_family(model)
    widths = []
    for layer in layers:
        mlp = layer.intermediate if hasattr(layer, "intermediate") else layer.mlp
        mlp.register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1]))
    tr.patch(model, method, **params)
    run(model, x)
    if name in TEXT:
        lengths = x["attention_mask"].sum(1)
    else:
        lengths = torch.full((3,), (32 // 4) ** 2 + fam.default_protected(model))
    m = tr.make_method(method, **params)
    expect = [w for _, w in layer_widths(lengths, len(layers), m, fam.default_protected(model))]
    assert widths == expect


def test_protected_tokens_are_kept():
    """[CLS] (and DeiT's distillation token) are never merged or pruned, even at extreme budgets:
    at the first reducing layer their slots still hold exactly their unreduced values."""
    for make, prot in ((bert, 1), (deit, 2)):
        model = make()
        _, layers = resolve_family(model)
        first = layers[0].intermediate if hasattr(layers[0], "intermediate") else layers[0].mlp
        captured = []
        first.register_forward_pre_hook(lambda m, a, c=captured: c.append(a[0]))
        x = text_batch() if make is bert else {"pixel_values": pixels()}
        run(model, x)
        for method, params in (
            ("tome", {"keep": 0.05}),
            ("evit", {"keep": 0.05}),
            ("random", {"keep": 0.05}),
            ("topk-norm", {"keep": 0.05, "fuse": True}),
        ):
            with tr.patched(model, method, **params):
                run(model, x)
            assert captured[-1].shape[1] < captured[0].shape[1]
            assert torch.equal(captured[-1][:, :prot], captured[0][:, :prot])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "nope"}, "unknown method"),
        ({"method": "tome"}, "give r"),
        ({"method": "tome", "keep": 0.0}, r"keep must be in \(0, 1\]"),
        ({"method": "tome", "keep": 1.5}, r"keep must be in \(0, 1\]"),
        ({"method": "tome", "r": -1}, "non-negative"),
        ({"method": "tome", "r": 2, "keep": 0.5}, "exactly one"),
        ({"method": "tome", "r": [1, 2]}, "4 layers"),
        ({"method": "tome", "r": 1, "layers": [9]}, "out of range"),
        ({"method": "tome", "r": 1, "schedule": "zigzag"}, "schedule must be one of"),
        ({"method": "evit", "keep": 0.5, "bogus": 1}, "unknown parameter"),
    ],
)
def test_bad_parameters_fail_before_compute(kwargs, match):
    model = bert()
    calls = []
    model.embeddings.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        tr.patch(model, **kwargs)
    assert tr.patch_info(model) is None and not calls


def test_unsupported_model_names_supported_families():
    with pytest.raises(TypeError, match="supported: hf-bert"):
        tr.patch(torch.nn.Linear(3, 3), "tome", r=1)


def test_threads_do_not_interfere():
    a, b = bert(), bert()
    xa, xb = text_batch(seed=1), text_batch(seed=2)
    tr.patch(a, "tome", r=3)
    tr.patch(b, "evit", keep=0.3)
    ref_a, ref_b = run(a, xa), run(b, xb)
    results: dict[str, list] = {"a": [], "b": []}

    def work(model, x, key):
        for _ in range(5):
            results[key].append(run(model, x))

    threads = [threading.Thread(target=work, args=(a, xa, "a")), threading.Thread(target=work, args=(b, xb, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, ref_a) for r in results["a"]) and len(results["a"]) == 5
    assert all(torch.equal(r, ref_b) for r in results["b"]) and len(results["b"]) == 5


def test_mean_pooling_of_restored_output_is_size_weighted():
    """With restore_length, mean pooling over the original mask = size-weighted mean of groups."""
    model = bert()
    x = text_batch()
    with tr.patched(model, "tome", keep=0.3, restore_length=False):
        reduced = run(model, x)
    with tr.patched(model, "tome", keep=0.3):
        full = run(model, x)
    m = x["attention_mask"][..., None].float()
    pooled = (full * m).sum(1) / m.sum(1)
    # every restored token equals one of the reduced tokens
    for b in range(full.shape[0]):
        for i in range(int(m[b].sum())):
            assert (reduced[b] == full[b, i]).all(-1).any()
    assert torch.isfinite(pooled).all()
