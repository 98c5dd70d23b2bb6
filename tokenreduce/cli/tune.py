"""``tokenreduce tune DATA``: the token-reduction setting for your encoder and your data, measured here.

tokenreduce tune passages.txt                          # all-MiniLM-L6-v2, fidelity loss <= 1%
tokenreduce tune qa.jsonl --model ./my-encoder --max-loss 1% --out tune-report
tokenreduce tune passages.txt --min-fidelity 0.99 --methods tome,evit
tokenreduce tune notes.txt --model smollm2 --max-loss 5%     # a causal LM: KV presses x keep, vs the full cache

Every input is checked before the model loads; bad input is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..cli_errors import user_error
from .args import HelpFormatter, names

DEFAULT_STORE = "tokenreduce-tune.sqlite"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenreduce tune",
        description="Search methods x keep rates on your model and data; recommend the fastest setting within "
        "a quality tolerance, checked on a held-out part of the data. Resumable (points kept in --store).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", help="text file (one passage per line) or JSONL with 'text' and optional 'query'/'queries'")
    p.add_argument("--model", default=None, help="local HF encoder folder (default: all-MiniLM-L6-v2, bundled); "
                   "a causal LM folder, a .gguf file or 'smollm2' (bundled SmolLM2-135M) tunes KV presses instead")
    p.add_argument("--max-loss", default=None, help="relative quality loss allowed on --metric, e.g. 1%% (default 1%%)")
    p.add_argument("--min-fidelity", default=None, help="instead: floor on the mean cosine to the unreduced model "
                   "(causal LM: on greedy agreement with the full cache)")
    p.add_argument("--metric", default=None,
                   help="labeled data: mrr (default), recall@1, recall@10, fidelity; unlabeled: fidelity (default), "
                   "agreement; causal LM: agreement (default: greedy tokens as with the full cache), accuracy "
                   "(next token of the text)")
    p.add_argument("--methods", type=names, default=None, help="methods to search (default: every encoder method "
                   "that needs no grid; causal LM: the query-agnostic presses that take keep alone, see docs/TUNE.md)")
    p.add_argument("--holdout", type=float, default=0.3, help="share of the passages held out to check the pick")
    p.add_argument("--refine-methods", type=int, default=2, help="best methods refined by bisection on keep")
    p.add_argument("--refine-steps", type=int, default=3, help="bisection steps per refined method")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--timing-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per point (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--context-tokens", type=int, default=512, help="causal LM: tokens per window's compressed context")
    p.add_argument("--continuation-tokens", type=int, default=32, help="causal LM: tokens scored after each context")
    p.add_argument("--samples", type=int, default=8, help="causal LM: windows per split (at most)")
    p.add_argument("--decode-tokens", type=int, default=32,
                   help="causal LM: greedy tokens timed after prefill + compression")
    p.add_argument("--seed", type=int, default=0, help="split and timing-sample seed")
    p.add_argument("--store", default=None, help=f"results store (default: OUT/tune.sqlite with --out, else "
                   f"./{DEFAULT_STORE}); a killed tune resumes from it")
    p.add_argument("--out", default=None, help="write DIR/index.html (Pareto plot and table) and DIR/tune_pareto.png")
    p.add_argument("--no-progress", action="store_true")
    return p


def is_causal_lm(model: str | None) -> bool:
    """Whether ``--model`` names a causal LM ('smollm2', a .gguf file, or a folder whose config names a
    ``...ForCausalLM`` architecture) rather than an encoder."""
    import json

    if model is None:
        return False
    if model.lower() == "smollm2" or model.endswith(".gguf"):
        return True
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        return False
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in archs)


def _methods(chosen: list[str] | None) -> list[str]:
    from ..encoder.methods import make_method, methods
    from ..encoder.methods.base import REGISTRY

    valid = [m for m in methods() if not getattr(REGISTRY.get(m), "requires_grid", False)]
    if chosen is not None and not chosen:
        raise ValueError("--methods is empty")
    for m in chosen or []:
        if m not in methods():
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(valid)}")
        if m not in valid:
            raise ValueError(f"method {m!r} needs a token grid (images); tune takes {', '.join(valid)}")
        make_method(m, keep=0.5)
    return chosen or valid


def _check_ints(a: argparse.Namespace) -> None:
    for name in ("batch_size", "timing_batches", "repeats", "max_length", "refine_methods", "context_tokens",
                 "continuation_tokens", "samples", "decode_tokens"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.refine_steps < 0:
        raise ValueError(f"--refine-steps must be >= 0, got {a.refine_steps}")
    if a.threads is not None and a.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {a.threads}")


def _model_id(model: str | None) -> str:
    from ..bench.encoder import DEFAULT_MODEL, default_model_path

    if model in (None, DEFAULT_MODEL):
        default_model_path()  # FileNotFoundError naming the install command when it is missing
        return DEFAULT_MODEL
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} not found (or it has no config.json); give a local HF encoder")
    return str(path.resolve())


def _run(a: argparse.Namespace, argv: list[str]) -> int:
    from ..sweep import tune_data as td

    _check_ints(a)
    if a.continuation_tokens < 2:
        raise ValueError(f"--continuation-tokens must be >= 2 (one scored position needs a next token), "
                         f"got {a.continuation_tokens}")
    if is_causal_lm(a.model):
        return _run_causal(a, argv)
    records = td.read_data(a.data)
    labeled = any(r.queries for r in records)
    tol = td.make_tolerance(a.max_loss, a.min_fidelity, a.metric, labeled)
    tune_recs, held_recs = td.split(records, a.holdout, a.seed)
    methods = _methods(a.methods)
    model = _model_id(a.model)
    store_path = Path(a.store or (Path(a.out) / "tune.sqlite" if a.out else DEFAULT_STORE))

    from ..bench.encoder import load_text_encoder
    from ..sweep.store import Store
    from ..sweep.tune import TuneMeasurer, Tuner
    from ..sweep.tune_report import summary, write_page

    specs = (td.task_spec("tune", tune_recs), td.task_spec("heldout", held_recs))
    tasks = {specs[0]: td.to_task("tune", tune_recs, a.data), specs[1]: td.to_task("heldout", held_recs, a.data)}
    n_q = sum(len(r.queries) for r in tune_recs)
    print(f"tokenreduce tune: {model}; {a.data}: {len(tune_recs)} passages to tune on"
          + (f" ({n_q} queries)" if labeled else "") + f", {len(held_recs)} held out; {tol.describe()}",
          file=sys.stderr)
    settings: dict[str, Any] = {"batch_size": a.batch_size, "timing_batches": a.timing_batches, "repeats": a.repeats,
                                "seed": a.seed, "threads": a.threads, "max_length": a.max_length, "pooling": "mean"}
    with Store(store_path) as store:
        enc = load_text_encoder(None if model == "all-MiniLM-L6-v2" else model, max_length=a.max_length)
        measurer = TuneMeasurer(encoder=enc, tasks=tasks)
        tuner = Tuner(store, measurer, model, specs, tol, settings, methods, refine_methods=a.refine_methods,
                      refine_steps=a.refine_steps, progress=not a.no_progress)
        res = tuner.run()
    metric = tol.metric
    print(summary(res, metric))
    print(f"store: {store_path} (re-run the same command to resume; nothing stored is measured again)")
    if a.out:
        command = "tokenreduce tune " + " ".join(shlex.quote(x) for x in argv)
        paths = write_page(res, metric, a.out, f"tokenreduce tune: {Path(model).name}", command)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _causal_model(model: str) -> tuple[str | None, str]:
    """(path for load_causal_lm, id for the store) of a causal ``--model``."""
    from ..llm.load import DEFAULT_NAME

    if model.lower() == "smollm2":
        return None, DEFAULT_NAME
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model {path} not found (give a causal LM folder, a .gguf file or 'smollm2')")
    return str(path), str(path.resolve())


def _run_causal(a: argparse.Namespace, argv: list[str]) -> int:
    """``tune`` on a causal LM: KV presses x keep on windows of the user's text (:mod:`..sweep.tune_kv`)."""
    from ..sweep import tune_data as td
    from ..sweep import tune_kv as tk

    records = td.read_data(a.data)
    tol = tk.make_tolerance(a.max_loss, a.min_fidelity, a.metric)
    tune_recs, held_recs = td.split(records, a.holdout, a.seed)
    presses = tk.check_presses(a.methods)
    path, model = _causal_model(a.model)
    store_path = Path(a.store or (Path(a.out) / "tune.sqlite" if a.out else DEFAULT_STORE))

    from ..llm import load_causal_lm
    from ..sweep.store import Store
    from ..sweep.tune import Tuner
    from ..sweep.tune_report import summary, write_page

    lm, tok = load_causal_lm(path)
    args = (a.context_tokens, a.continuation_tokens, a.samples)
    samples = {td.task_spec("tune", tune_recs): tk.text_windows(tok, tune_recs, *args, "tuning"),
               td.task_spec("heldout", held_recs): tk.text_windows(tok, held_recs, *args, "held-out")}
    specs = tuple(samples)
    print(f"tokenreduce tune: {model} (causal LM: KV presses); {a.data}: {len(samples[specs[0]])} window(s) of "
          f"{a.context_tokens}+{a.continuation_tokens} tokens to tune on, {len(samples[specs[1]])} held out; "
          f"{tol.describe()}", file=sys.stderr)
    settings: dict[str, Any] = {"repeats": a.repeats, "seed": a.seed, "threads": a.threads,
                                "context_tokens": a.context_tokens, "continuation_tokens": a.continuation_tokens,
                                "samples": a.samples, "decode_tokens": a.decode_tokens}
    with Store(store_path) as store:
        measurer = tk.KVTuneMeasurer(lm, tok, samples)
        tuner = Tuner(store, measurer, model, specs, tol, settings, presses, refine_methods=a.refine_methods,
                      refine_steps=a.refine_steps, progress=not a.no_progress, coarse_keeps=tk.COARSE_KEEPS,
                      key_fn=tk.metric_key, cost_key="kv_bytes_ratio", family="kv")
        res = tuner.run()
    print(summary(res, tol.metric))
    print(f"store: {store_path} (re-run the same command to resume; nothing stored is measured again)")
    if a.out:
        command = "tokenreduce tune " + " ".join(shlex.quote(x) for x in argv)
        paths = write_page(res, tol.metric, a.out, f"tokenreduce tune: {Path(model).name} (KV presses)", command)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    try:
        return _run(a, argv)
    except (ValueError, TypeError, FileNotFoundError) as e:
        return user_error(e)
