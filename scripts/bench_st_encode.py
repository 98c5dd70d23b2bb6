"""sentence-transformers ``encode()`` with and without tokenreduce, the way its users call it.

``SentenceTransformer.encode`` keeps its own length sorting, batching, pooling and normalisation; the
patch only changes the wrapped transformer. Measured on all-MiniLM-L6-v2 (its PyPI package) with NQ
passages from ../shared/data: passage throughput of ``encode(batch_size=32)`` (median of interleaved
runs, unpatched and patched alternating in one process) and retrieval MRR with the patched passages
against unpatched queries.

    python scripts/bench_st_encode.py [--questions 300] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer

import tokenreduce
from tokenreduce.bench.metrics import retrieval_metrics
from tokenreduce.bench.tasks import load_task
from tokenreduce.prompt.text_encoder import default_model_path

SETTINGS = {
    "tome README (keep 0.4, decreasing, hidden, min_tokens 16)":
        dict(method="tome", keep=0.4, schedule="decreasing", metric="hidden", min_tokens=16),
    "tome keep 0.3 (decreasing, hidden, min_tokens 16)":
        dict(method="tome", keep=0.3, schedule="decreasing", metric="hidden", min_tokens=16),
    "evit keep 0.5 (decreasing, min_tokens 16)": dict(method="evit", keep=0.5, schedule="decreasing", min_tokens=16),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    task = load_task(f"nq:{a.questions}")
    model = SentenceTransformer(str(default_model_path()), device="cpu")
    enc = dict(batch_size=32, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    q = model.encode(task.queries, **enc)
    base_p = model.encode(task.passages, **enc)
    base = retrieval_metrics(q, base_p, task.gold)["mrr"]
    print(f"load {os.getloadavg()[0]:.2f}; {len(task.passages)} passages; unreduced MRR {base:.4f}")
    print("| setting | speedup (encode) | passages/s | MRR | rel. change | cos to unreduced |")
    print("|---|---|---|---|---|---|")
    for label, s in SETTINGS.items():
        params = dict(s)
        method = params.pop("method")
        times_b, times_r = [], []
        model.encode(task.passages, **enc)  # warm-up
        for _ in range(a.repeats):
            t = time.perf_counter()
            model.encode(task.passages, **enc)
            times_b.append(time.perf_counter() - t)
            with tokenreduce.patched(model, method, **params):
                t = time.perf_counter()
                emb = model.encode(task.passages, **enc)
                times_r.append(time.perf_counter() - t)
        mrr = retrieval_metrics(q, emb, task.gold)["mrr"]
        cos = torch.nn.functional.cosine_similarity(emb, base_p).mean().item()
        tb, tr = statistics.median(times_b), statistics.median(times_r)
        print(f"| {label} | {tb / tr:.2f}x | {len(task.passages) / tr:.0f} (unreduced {len(task.passages) / tb:.0f}) "
              f"| {mrr:.4f} | {100 * (mrr - base) / base:+.2f} % | {cos:.4f} |")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
