"""The GPU table of ``scripts/gpu_check.sh``: throughput ratios vs the unreduced model on one device.

Rows (random weights of the real shapes, so nothing is downloaded; speed does not depend on the weights):

- ViT-B/16, 224 px, batch 64, float16: unreduced vs ToMe r=8 / r=13 with proportional attention as SDPA's
  float mask (the memory-efficient kernel), without it (``prop_attn=False``: no mask, flash-eligible), and
  under ``attn_implementation="flex_attention"`` (log sizes as a compiled score_mod). The ToMe README's V100
  figure for comparison: 309 -> 511 im/s (1.65x).
- all-MiniLM-L6-v2's shape, batch 256, float16, length-sorted batches of synthetic lengths 48-256: unreduced
  vs the README's ToMe setting (keep 0.4, decreasing, hidden-state matching, min 16 tokens), SDPA and flex.
- SmolLM2-135M's shape, decode after a 4096-token prefill: AdaKV keep 0.25 vs the full cache, tokens/s.

Timings: warm-up, then the median of interleaved runs (A, B, A, B...) with the device synchronized around
each run. ``--dry-run``: tiny shapes on the CPU in a few seconds (what CI runs; its numbers are not GPU
figures). Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median seconds per call of each function, timed round-robin after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _patched_call(model, x: dict, method: str | None, params: dict, impl: str) -> Callable[[], object]:
    """One forward of ``model`` on ``x`` under ``impl`` attention, patched with ``method`` for the call."""
    import tokenreduce

    def run():
        model.set_attn_implementation(impl)
        with torch.inference_mode():
            if method is None:
                return model(**x)
            with tokenreduce.patched(model, method, **params):
                return model(**x)

    return run


def encoder_rows(name: str, model, batches: list[dict], items: int, configs: list[tuple], device, args) -> list[dict]:
    """Throughput of each (label, method, params, impl) vs the unreduced model under SDPA."""
    rows, fns = [], {}
    for label, method, params, impl in [("unreduced", None, {}, "sdpa"), *configs]:
        calls = [_patched_call(model, x, method, params, impl) for x in batches]

        def run(calls=calls):
            for c in calls:
                c()

        try:
            run()  # fails here (not inside the timing loop) when a path does not work on this device
            fns[label] = run
        except Exception as e:  # noqa: BLE001 - recorded in the table, the other rows still run
            rows.append({"model": name, "config": label, "error": f"{type(e).__name__}: {e}"[:300]})
    med = interleaved(fns, device, args.repeats, args.warmup)
    base = med["unreduced"]
    for label, s in med.items():
        rows.append({"model": name, "config": label, "items_per_s": items / s, "ratio": base / s, "median_s": s})
    return rows


def vit_rows(device, dtype, args) -> list[dict]:
    from transformers import ViTConfig, ViTModel

    shape = (dict(image_size=64, patch_size=4, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=64) if args.dry_run else {})  # ViTConfig() is ViT-B/16 at 224 px
    batch = 4 if args.dry_run else 64
    torch.manual_seed(0)
    cfg = ViTConfig(attn_implementation="sdpa", **shape)
    model = ViTModel(cfg, add_pooling_layer=False).to(device, dtype).eval()
    x = {"pixel_values": torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype)}
    configs = []
    for r in (8, 13):
        configs += [(f"tome r={r} (SDPA, float mask)", "tome", {"r": r}, "sdpa"),
                    (f"tome r={r} prop_attn=False (SDPA, no mask)", "tome", {"r": r, "prop_attn": False}, "sdpa")]
        if args.flex:
            configs.append((f"tome r={r} (flex score_mod)", "tome", {"r": r}, "flex_attention"))
    name = "ViT (tiny)" if args.dry_run else "ViT-B/16 224px"
    return encoder_rows(name, model, [x], batch, configs, device, args)


def minilm_rows(device, dtype, args) -> list[dict]:
    from transformers import BertConfig, BertModel

    if args.dry_run:
        shape, batch, n, lo, hi = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, vocab_size=1000), 16, 32, 16, 64
    else:  # all-MiniLM-L6-v2
        shape, batch, n, lo, hi = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                       intermediate_size=1536, vocab_size=30522), 256, 1024, 48, 256
    torch.manual_seed(0)
    model = BertModel(BertConfig(attn_implementation="sdpa", **shape), add_pooling_layer=False).to(device, dtype)
    model.eval()
    g = torch.Generator().manual_seed(0)
    lengths = sorted(torch.randint(lo, hi + 1, (n,), generator=g).tolist())  # dynamic padding: sorted batches
    batches = []
    for s in range(0, n, batch):
        part = lengths[s : s + batch]
        width = max(part)
        ids = torch.randint(5, shape["vocab_size"], (len(part), width), generator=g)
        mask = (torch.arange(width)[None, :] < torch.tensor(part)[:, None]).long()
        batches.append({"input_ids": (ids * mask).to(device), "attention_mask": mask.to(device)})
    readme = {"keep": 0.4, "schedule": "decreasing", "metric": "hidden", "min_tokens": 16}
    configs = [("tome README setting (SDPA, float mask)", "tome", readme, "sdpa")]
    if args.flex:
        configs.append(("tome README setting (flex score_mod)", "tome", readme, "flex_attention"))
    name = "BERT (tiny)" if args.dry_run else f"all-MiniLM-L6-v2 shape, batch {batch}"
    return encoder_rows(name, model, batches, n, configs, device, args)


def decode_rows(device, dtype, args) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenreduce.kv import make_press
    from tokenreduce.kv.bench import speed_rows

    if args.dry_run:
        shape, context, steps = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=6, num_key_value_heads=2, vocab_size=97), 64, 4
    else:  # SmolLM2-135M
        shape, context, steps = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                     num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                     rope_theta=100000.0, tie_word_embeddings=True), 4096, 64
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=8192, attn_implementation="sdpa", **shape)
    model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    ids = torch.randint(1, cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    name = "Llama (tiny)" if args.dry_run else f"SmolLM2-135M shape, {context}-token context"
    try:
        (row,) = speed_rows(model, ids, [make_press("adakv", keep=0.25)], steps=steps, repeats=args.repeats)
    except Exception as e:  # noqa: BLE001 - recorded in the table
        return [{"model": name, "config": "adakv keep=0.25", "error": f"{type(e).__name__}: {e}"[:300]}]
    full, pressed = row["decode_ms_per_token_full"], row["decode_ms_per_token"]
    return [{"model": name, "config": "full cache", "items_per_s": 1e3 / full, "ratio": 1.0},
            {"model": name, "config": "adakv keep=0.25", "items_per_s": 1e3 / pressed, "ratio": full / pressed,
             "kv_bytes_ratio": row["kv_bytes_ratio"]}]


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")


def markdown(report: dict) -> str:
    units = {"ViT": "images/s", "BERT": "texts/s", "all-MiniLM": "texts/s", "Llama": "tokens/s", "SmolLM2": "tokens/s"}
    lines = [f"# gpu_check ({report['mode']})", "",
             f"device: {report['device']} · torch {report['torch']} · dtype {report['dtype']} · "
             f"load before/after: {report['load_before']} / {report['load_after']} · wall {report['wall_s']:.0f} s", ""]
    if report["mode"] == "dry-run":
        lines += ["Dry run: tiny shapes on the CPU; these numbers are not GPU figures.", ""]
    tests = report.get("tests")
    if tests:
        lines += [f"tests (TOKENREDUCE_TEST_DEVICE={tests.get('device')}): exit {tests.get('rc')}, "
                  f"{tests.get('summary', '')}", ""]
    lines += ["| model | config | throughput | unit | ratio vs unreduced |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        unit = next((u for k, u in units.items() if r["model"].startswith(k)), "items/s")
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | error: {r['error']} |  |  |")
        else:
            lines.append(f"| {r['model']} | {r['config']} | {r['items_per_s']:.1f} | {unit} | {r['ratio']:.3f} |")
    lines += ["", "ToMe README (V100, ViT-B/16, fp16): 309 -> 511 im/s = 1.65x.", ""]
    return "\n".join(lines)


def tests_summary(rc: int | None, log: Path | None, device: str) -> dict | None:
    if rc is None:
        return None
    summary = ""
    if log is not None and log.is_file():
        tail = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        summary = next((ln.strip("= ") for ln in reversed(tail) if " in " in ln and ("passed" in ln or "failed" in ln)),
                       tail[-1] if tail else "")
    return {"rc": rc, "summary": summary, "device": device}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (seconds; not GPU figures)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; dry run 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3; dry run 1)")
    p.add_argument("--tests-rc", type=int, default=None, help="exit status of the test run, for the report")
    p.add_argument("--tests-log", type=Path, default=None)
    p.add_argument("--tests-device", default="cuda")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.dry_run else 10)
    args.warmup = args.warmup or (1 if args.dry_run else 3)
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny shapes: thread hand-offs would cost more than the matmuls
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_check: no CUDA device; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    args.flex = device.type == "cuda"  # compiled flex kernels; eager flex on the CPU is a slow reference
    dtype = torch.float16
    start, before = time.time(), load()
    rows: list[dict] = []
    report: dict = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for part in (vit_rows, minilm_rows, decode_rows):
        rows += part(device, dtype, args)
        report = {  # written after every part: a run cut short by a timeout keeps what it measured
            "mode": "dry-run" if args.dry_run else "gpu", "device": device_name(device), "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."), "repeats": args.repeats, "warmup": args.warmup,
            "load_before": before, "load_after": load(), "wall_s": time.time() - start, "rows": rows,
            "tests": tests_summary(args.tests_rc, args.tests_log, args.tests_device),
            "complete": part is decode_rows,
        }
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(report))
        print(f"gpu_check: {part.__name__} done ({time.time() - start:.0f} s)", flush=True)
    print(markdown(report))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
