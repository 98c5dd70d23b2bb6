"""Deployment: patched models compile without graph breaks and export to ONNX with matching outputs."""

from __future__ import annotations

import pytest
import torch
from models import pixels, vit

import tokenreduce as tr
from tokenreduce.core.assign import _apply_one_hot, apply_assignment
from tokenreduce.core.schedule import Schedule

STATIC = [
    ("tome", {"r": 4}),
    ("tome", {"keep": 0.4, "schedule": "decreasing"}),
    ("evit", {"keep": 0.5}),
    ("topk-norm", {"keep": 0.5}),
]


def _graph_breaks(model, x) -> tuple[int, int]:
    import torch._dynamo as dynamo

    dynamo.reset()
    with torch.no_grad():
        e = dynamo.explain(model)(pixel_values=x)
    return e.graph_count, e.graph_break_count


@pytest.mark.parametrize("method,params", STATIC)
def test_compiles_to_one_graph_without_breaks(method, params):
    model, x = vit(), pixels()
    with tr.patched(model, method, **params):
        graphs, breaks = _graph_breaks(model, x)
    assert (graphs, breaks) == (1, 0)


@pytest.mark.parametrize("method,params", STATIC[:2])
def test_compiled_output_matches_eager(method, params):
    model, x = vit(), pixels()
    with tr.patched(model, method, **params), torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        torch._dynamo.reset()
        out = torch.compile(model, backend="aot_eager", fullgraph=True)(pixel_values=x).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_static_budget_equals_per_row_budget():
    for keep in (None, 0.1, 0.37, 0.5, 0.9, 1.0):
        for shape in ("constant", "decreasing"):
            for cap in (0.5, 0.9):
                for layers in (None, (0, 2)):
                    for r in [None] if keep else [0, 3, (1, 0, 2, 5)]:
                        s = Schedule(r=r, keep=keep, shape=shape, layers=layers, min_tokens=3)
                        for n0 in (0, 1, 2, 7, 50, 196, 577):
                            per_row = s.removals(torch.tensor([n0]), 4, cap)[:, 0].tolist()
                            assert s.removals_static(n0, 4, cap) == per_row


def test_one_hot_merge_equals_index_add():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 5, generator=g)
    sizes = torch.rand(3, 9, generator=g) + 0.5
    sizes[2, 7:] = 0  # padding
    dst = torch.tensor([[0, 1, 1, 2, 3, 3, 3, 4, -1], [0, 0, 1, 2, 2, 3, 4, -1, -1], [0, 1, 2, 3, 4, 4, 1, 5, -1]])
    a = apply_assignment(x, sizes, dst, 6)
    b = _apply_one_hot(x, sizes, sizes, dst, 6)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize(
    "method,params", [pytest.param(None, {}, marks=pytest.mark.slow), ("tome", {"r": 4}), ("evit", {"keep": 0.5})]
)
def test_onnx_export_matches_pytorch(tmp_path, method, params):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tokenreduce.deploy import export_onnx

    model, x = vit(), pixels()
    if method:
        tr.patch(model, method, **params)
    diff = export_onnx(model, x, tmp_path / "m.onnx")
    assert diff is not None and diff < 1e-4
    # the exported graph takes another batch size (dynamic batch), and still matches
    import onnxruntime as ort

    x2 = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pixel_values": x2.numpy()})[0]
    with torch.no_grad():
        ref = model(pixel_values=x2).last_hidden_state
    assert (torch.from_numpy(out) - ref).abs().max() < 1e-4


def test_onnx_export_from_one_image(tmp_path):
    """A one-image example exports a graph that takes any batch (it failed with 'Invalid ranges [2:1]')."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from tokenreduce.deploy import export_onnx

    model, x = vit(), pixels()
    tr.patch(model, "tome", r=4)
    assert export_onnx(model, x[:1], tmp_path / "one.onnx") < 1e-4
    out = ort.InferenceSession(str(tmp_path / "one.onnx")).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
    assert (torch.from_numpy(out) - ref).abs().max() < 1e-4
