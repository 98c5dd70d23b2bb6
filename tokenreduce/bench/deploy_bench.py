"""Deployment benchmark: a patched ViT under eager PyTorch, ``torch.compile`` and ONNX Runtime.

For each runtime the unreduced and the reduced model are timed interleaved in the same process
(median of ``repeats``), so each speedup compares like with like; the ONNX rows also report the
largest absolute difference between ONNX Runtime's and PyTorch's outputs.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from ..encoder.adapters import patch
from ..encoder.methods import make_method
from .report import machine_info
from .text_bench import RunConfig
from .timing import time_pair

RUNTIMES = ("eager", "compile", "onnxruntime")


def _runner(model: nn.Module, runtime: str, x: torch.Tensor, workdir: Path) -> tuple[Callable[[], Any], float | None]:
    """A zero-argument callable running ``model`` on ``x`` in ``runtime``, and the ONNX max diff."""
    if runtime == "eager":
        return (lambda: model(pixel_values=x).last_hidden_state), None
    if runtime == "compile":
        compiled = torch.compile(model, fullgraph=True)
        return (lambda: compiled(pixel_values=x).last_hidden_state), None
    import onnxruntime as ort

    from ..deploy import export_onnx

    path = workdir / f"m{id(model)}.onnx"
    diff = export_onnx(model, x, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"pixel_values": x.numpy()}
    return (lambda: sess.run(None, feed)), diff


def run_deploy_bench(
    model: nn.Module,
    configs: Sequence[RunConfig],
    runtimes: Sequence[str] = RUNTIMES,
    batch_size: int = 8,
    repeats: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Speedup of each config against the unreduced model, per runtime."""
    for r in runtimes:
        if r not in RUNTIMES:
            raise ValueError(f"unknown runtime {r!r}; choose from {RUNTIMES}")
    methods = [make_method(c.method, **c.params) for c in configs]  # validate first
    size = int(model.config.image_size)
    x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(False), torch.no_grad():
        work = Path(tmp)
        steps = [(rt, c, m) for rt in runtimes for c, m in zip(configs, methods)]
        for runtime, cfg, m in tqdm(steps, desc="deploy", disable=not progress, unit="cfg"):
            reduced = patch(copy.deepcopy(model), m)
            base_fn, base_diff = _runner(model, runtime, x, work)
            red_fn, diff = _runner(reduced, runtime, x, work)
            tb, tr = time_pair(base_fn, red_fn, repeats=repeats, warmup=2)
            rows.append(
                {
                    "runtime": runtime,
                    "config": cfg.label,
                    "base_ms": tb.median_s * 1e3,
                    "reduced_ms": tr.median_s * 1e3,
                    "speedup": tb.median_s / tr.median_s,
                    "onnx_max_abs_diff": diff,
                    "onnx_base_max_abs_diff": base_diff,
                }
            )
            torch._dynamo.reset()
    meta = {
        "machine": machine_info(),
        "model": type(model).__name__,
        "batch_size": batch_size,
        "image_size": size,
        "repeats": repeats,
        "timing": "median of interleaved runs, reduced vs unreduced in the same runtime",
    }
    return {"meta": meta, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """``tokenreduce bench deploy``: ViT-B/16 (random weights) under eager, compile and ONNX Runtime."""
    import argparse

    from .report import format_table, write_results
    from .vision_bench import vit_b16

    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,prog="tokenreduce bench deploy", description=main.__doc__)
    p.add_argument("--r", default="8,13", help="ToMe r values (comma-separated)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, default=12, help="ViT depth (12 = ViT-B/16)")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.csv")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        configs = [RunConfig("tome", {"r": int(v)}) for v in a.r.split(",") if v]
        rows = run_deploy_bench(
            vit_b16(a.layers),
            configs,
            [r for r in a.runtimes.split(",") if r],
            a.batch_size,
            a.repeats,
            not a.no_progress,
        )
    except (ValueError, ImportError) as e:
        return user_error(e)
    shown = [
        {**r, "onnx_max_abs_diff": "" if r["onnx_max_abs_diff"] is None else f"{r['onnx_max_abs_diff']:.1e}"}
        for r in rows["rows"]
    ]
    print(format_table(shown, ["runtime", "config", "base_ms", "reduced_ms", "speedup", "onnx_max_abs_diff"]))
    m = rows["meta"]["machine"]
    print(
        f"\nViT-B/16 random weights, batch {a.batch_size}; {m['cpu']}, {m['torch_threads']} threads; "
        f"{rows['meta']['timing']}"
    )
    if a.out:
        j, c = write_results(rows, Path(a.out))
        print(f"\nwrote {j} and {c}")
    return 0
