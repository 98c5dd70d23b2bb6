"""Per-phase time of the RULER-style suite on one ``vt`` and one ``niah_single`` sample: prefill, SnapKV's press,
the answers with the full and the compressed cache (``bench/ruler_run.py``'s own steps).

Issue 18: the suite's first run saw SnapKV ~15x slower on the repetitive ``vt`` context. Same process, two
interleaved rounds, medians. ``python scripts/bench_ruler_phases.py [LENGTH] [THREADS]`` (defaults 512, 1).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from tokenreduce.bench.ruler import make_sample
from tokenreduce.bench.ruler_run import NEW_TOKENS, _answer, _ids
from tokenreduce.kv import make_press
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.llm import load_causal_lm


def main() -> None:
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    model, tok = load_causal_lm()
    press = make_press("snapkv", keep=0.25)
    samples = {t: make_sample(t, tok, length, 0) for t in ("vt", "niah_single")}
    times: dict[tuple[str, str], list[float]] = {}

    def timed(task: str, phase: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        times.setdefault((task, phase), []).append(time.perf_counter() - start)
        return out

    for rnd in range(2):
        for task, s in samples.items():
            ctx, q = _ids(tok, s.context, True), _ids(tok, s.question, False)
            pre = timed(task, "prefill", capture_prefill, model, ctx)
            full = press_cache(model, pre, None)
            a_full = timed(task, "answer_full", _answer, model, full, pre.n, pre.logits, q, tok, NEW_TOKENS[task])
            comp = timed(task, "press", press_cache, model, pre, press)
            a_snap = timed(task, "answer_snapkv", _answer, model, comp, pre.n, pre.logits, q, tok, NEW_TOKENS[task])
            print(rnd, task, pre.n, "full:", a_full, "snapkv:", a_snap, flush=True)
    print(f"threads {torch.get_num_threads()}, {length} tokens")
    for (task, phase), v in sorted(times.items()):
        print(f"{task:12s} {phase:14s} median {statistics.median(v):7.2f} s  runs {[round(x, 2) for x in v]}")


if __name__ == "__main__":
    main()
