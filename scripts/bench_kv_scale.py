"""KV cache at scale (issue 18, items 1-3): chunked-prefill memory and quality, decode time of per-head
storage and ZipCache, KVzip's scoring cost. Prints one JSON line per row.

    python scripts/bench_kv_scale.py memory   # SmolLM2-135M, 8000 tokens, compress every 1000, keep 0.25
    python scripts/bench_kv_scale.py quality  # SmolLM2-135M, 3 x 1000 tokens, chunks of 125 vs one shot
    python scripts/bench_kv_scale.py decode   # Llama-3-8B-shaped layers (2, random), batch 8, 4096 entries
    python scripts/bench_kv_scale.py kvzip --layers-lm 8 --tokens 2000,8000 --repeats 3 --presses kvzip
        # KVzip's scoring pass vs a plain prefill (time, peak memory) at each length, one row per length

``--threads`` (default 2) sets torch's threads. Memory is tensor allocations (allocator events, as
the encoder bench measures), independent of load; times are interleaved medians, load-sensitive.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["memory", "quality", "decode", "kvzip"])
    ap.add_argument("--tokens", default=None, help="context length (kvzip: a comma-separated list)")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2, help="decode: Llama-3-8B-shaped layers")
    ap.add_argument("--layers-lm", type=int, default=0, help="SmolLM2: keep only its first N layers (0 = all 30)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--presses", default=None, help="comma-separated specs (default: each mode's list)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    a = ap.parse_args()
    lengths = [int(x) for x in a.tokens.split(",")] if a.tokens else []
    if len(lengths) > 1 and a.what != "kvzip":
        ap.error("only kvzip takes several --tokens")
    a.tokens = lengths[0] if lengths else None
    torch.set_num_threads(a.threads)
    from tokenreduce.kv import bench
    from tokenreduce.kv.data import haystack, windows
    from tokenreduce.kv.presses import parse_press

    start = time.time()
    print(json.dumps({"load": os.getloadavg(), "threads": a.threads, "what": a.what}), flush=True)
    if a.what == "decode":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                          num_hidden_layers=a.layers, vocab_size=1024, max_position_embeddings=8192,
                          rope_theta=500000.0, attn_implementation="sdpa")
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        specs = a.presses or "snapkv,adakv,pyramidkv,zipcache:bits=4,zipcache:bits=8"
        presses = [parse_press(x, a.keep) for x in specs.split(",")]
        for row in bench.decode_time_rows(model, a.batch, a.tokens or 4096, presses, steps=a.steps,
                                          repeats=a.repeats):
            print(json.dumps(row), flush=True)
    else:
        from tokenreduce.llm import load_causal_lm

        model, tok = load_causal_lm()
        if a.layers_lm:  # SmolLM2's first layers only (real weights): same per-layer shapes, less compute
            model.model.layers = model.model.layers[: a.layers_lm]
            model.config.num_hidden_layers = a.layers_lm
            if getattr(model.config, "layer_types", None):
                model.config.layer_types = model.config.layer_types[: a.layers_lm]
        text = haystack(a.data_dir)[0]
        if a.what == "memory":
            ids = windows(tok, text, 1, a.tokens or 8000, 16, seed=10)[0].context
            presses = [parse_press(x, a.keep) for x in (a.presses or "snapkv,adakv").split(",")]
            for row in bench.chunked_memory_rows(model, ids, presses, a.chunk or 1000):
                print(json.dumps(row), flush=True)
        elif a.what == "quality":
            samples = windows(tok, text, a.samples, a.tokens or 1000, 32, seed=10)
            specs = a.presses or "snapkv,streaming_llm,key_norm,tova,h2o,adakv,pyramidkv,zipcache:bits=4"
            presses = [parse_press(x, a.keep) for x in specs.split(",")]
            for row in bench.chunked_quality_rows(model, samples, presses, a.chunk or 125):
                print(json.dumps(row), flush=True)
        else:
            for n in lengths or [2000]:
                ids = windows(tok, text, 1, n, 16, seed=10)[0].context
                for spec in (a.presses or "kvzip,kvzip:window=256:sinks=4:recent=128:min_share=0.0").split(","):
                    row = bench.kvzip_cost_row(model, ids, parse_press(spec, a.keep), tok, repeats=a.repeats)
                    print(json.dumps({**row, "load": os.getloadavg()}), flush=True)
    print(json.dumps({"load": os.getloadavg(), "seconds": time.time() - start}), flush=True)


if __name__ == "__main__":
    main()
