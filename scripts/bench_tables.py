"""Render benchmark result JSON files (``--out`` of ``tokenreduce bench``) as Markdown tables.

python scripts/bench_tables.py results/nq_stsb.json
"""

from __future__ import annotations

import json
import sys

from tokenreduce.bench.report import markdown_table


def main(path: str) -> None:
    res = json.load(open(path))
    rows, meta = res["rows"], res["meta"]
    if "image_size" in meta:
        cols = ["config", "flops_ratio", "gmacs_per_image", "speedup", "throughput", "final_tokens"]
        heads = ["config", "MAC ratio", "GMACs/image", "speedup", "images/s", "tokens after last layer"]
    else:
        metrics = [k for k in rows[0] if k.count(":") == 1]
        metrics += sorted({k for r in rows for k in r if k.endswith(":flops_ratio")})
        fid = [f"{t}:fidelity_cos" for t in meta["tasks"]]
        mem = ["mem_ratio"] if "allocator" in meta.get("memory", "") else []  # older runs sampled RSS: unreliable
        cols = ["config", "flops_ratio", "speedup", "throughput", *mem, *metrics, *fid, "pareto"]
        heads = [
            "config",
            "MAC ratio",
            "speedup",
            "texts/s",
            *(["peak mem ratio"] if mem else []),
            *metrics,
            *(f"{t} cos" for t in meta["tasks"]),
            "Pareto",
        ]
    print(markdown_table(rows, cols, heads))
    m = meta["machine"]
    print(
        f"\n{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}, transformers {m['transformers']}; "
        f"MACs analytic (FLOPs = 2 x MACs); speedup = median of {meta['repeats']} runs interleaved with the "
        f"unreduced model; wall time of the run {meta.get('wall_s', 0):.0f} s."
    )


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
