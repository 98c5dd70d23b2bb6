"""Visual-token pruning and a KV press, alone and composed, on a LLaVA-1.5-7B-shaped model (random weights).

Four configurations of one model, in one process: neither, FasterVLM (576 -> ``--tokens`` visual tokens),
SnapKV (``--keep`` of the prefill cache), and both in one run (the press compresses the pruned prefill).
Per configuration: the analytic LLM prefill MACs of the full 32-layer LLaVA-1.5-7B decoder (the methods' own
cost functions: ``tokenreduce.vlm.flops.prefill_macs`` with FasterVLM's ``token_counts``/``extra_macs``, plus
``SnapKV.scoring_macs`` per layer; vision tower excluded), the analytic decode MACs per token at the cache
length left, the KV bytes this model holds after prefill, and the decode time per token: median over
``--rounds`` rounds that visit every configuration once (interleaved, after an untimed warm-up round), each
decoding ``--steps`` greedy tokens from a copy of that configuration's prefilled cache.

    python scripts/bench_vlm_kv.py   # 8 LLM / 6 vision layers (as `tokenreduce bench vlm`), 651-token prompt
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

import tokenreduce
from tokenreduce.kv import SnapKV, apply_press
from tokenreduce.kv import cache as kvc
from tokenreduce.vlm.bench import LLAVA15_7B, llava15_config, random_llava, synthetic_inputs
from tokenreduce.vlm.flops import DecoderShape, layer_macs, prefill_macs, token_counts
from tokenreduce.vlm.methods import make_vlm_method

GRID = (24, 24)  # CLIP ViT-L/14 at 336 px: 576 visual tokens


def decode_macs(s: DecoderShape, entries: int) -> int:
    """One decode token over ``entries`` cached entries: every layer's projections, MLP and attention
    (``layer_macs`` counts a token's attention over itself; add the cached keys), and the LM head."""
    per_layer = layer_macs(s, 1) + 2 * entries * s.heads * s.head_dim
    return s.layers * per_layer + s.hidden * s.vocab


def configs(tokens: int, keep: float, window: int) -> dict[str, tuple[object | None, SnapKV | None]]:
    method, press = make_vlm_method("fastervlm", tokens=tokens), SnapKV(keep=keep, window=window)
    return {"neither": (None, None), f"fastervlm {tokens}": (method, None), f"snapkv {keep}": (None, press),
            f"fastervlm {tokens} + snapkv {keep}": (method, press)}


@contextlib.contextmanager
def applied(model, method, press):
    """The configuration's hooks: visual pruning first, then the press (composed through one provenance map)."""
    with contextlib.ExitStack() as stack:
        if method is not None:
            stack.enter_context(tokenreduce.patched(model, method))
        if press is not None:
            stack.enter_context(apply_press(model, press))
        yield


@torch.no_grad()
def prefill(model, x: dict, method, press):
    """The prefilled cache, the first greedy token, and the number of tokens seen."""
    with applied(model, method, press):
        out = model(**x, use_cache=True, logits_to_keep=1)
    return out.cache, out.logits[:, -1].argmax(-1, keepdim=True), x["input_ids"].shape[1]


@torch.no_grad()
def decode(model, method, press, cache, first, seen: int, steps: int) -> float:
    """Seconds per token to decode ``steps`` greedy tokens from a copy of ``cache``."""
    cache, tok = kvc.clone(cache), first
    mask = torch.ones(1, seen, dtype=torch.long)
    with applied(model, method, press):
        t0 = time.perf_counter()
        for t in range(steps):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
            pos = torch.tensor([[seen + t]])  # positions count tokens seen, not cached entries
            out = model(input_ids=tok, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llm-layers", type=int, default=8)
    ap.add_argument("--vision-layers", type=int, default=6)
    ap.add_argument("--prefix", type=int, default=35, help="system-prompt tokens before the image")
    ap.add_argument("--question", type=int, default=40, help="question tokens after the image")
    ap.add_argument("--tokens", type=int, default=128, help="visual tokens FasterVLM keeps (of 576)")
    ap.add_argument("--keep", type=float, default=0.5, help="SnapKV's fraction of the prefill cache kept")
    ap.add_argument("--window", type=int, default=32, help="SnapKV's observation window (<= the question)")
    ap.add_argument("--steps", type=int, default=8, help="new tokens per timed decode")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = random_llava(llava15_config(args.llm_layers, args.vision_layers))
    x = synthetic_inputs(model, prefix=args.prefix, question=args.question)
    n, text_after = x["input_ids"].shape[1], args.question
    vision_width = model.config.vision_config.hidden_size
    cfgs = configs(args.tokens, args.keep, args.window)
    states = {name: prefill(model, x, m, p) for name, (m, p) in cfgs.items()}
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for r in range(args.rounds + 1):
        for name, (m, p) in cfgs.items():
            dt = decode(model, m, p, *states[name], args.steps)
            if r:
                times[name].append(dt)
    rows = []
    for name, (m, p) in cfgs.items():
        llm_tokens = token_counts(m, n, [GRID], LLAVA15_7B.layers)[-1]
        macs = prefill_macs(LLAVA15_7B, m, n, [GRID], text_after, vision_width=vision_width)
        if p is not None:
            macs += LLAVA15_7B.layers * p.scoring_macs(LLAVA15_7B, llm_tokens)
        entries = kvc.seq_length(states[name][0])
        rows.append({"config": name, "llm_tokens": llm_tokens, "kv_entries": entries, "prefill_macs": macs,
                     "decode_macs": decode_macs(LLAVA15_7B, entries), "kv_bytes": kvc.kv_bytes(states[name][0]),
                     "decode_s": statistics.median(times[name]), "spread": (min(times[name]), max(times[name]))})
    base = rows[0]
    print(f"# {n}-token prompt ({args.prefix} text + 576 image + {args.question} question), LLaVA-1.5-7B widths, "
          f"{args.llm_layers} LLM / {args.vision_layers} vision layers, random weights; nproc={os.cpu_count()}, "
          f"torch threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} at the end; "
          f"{time.perf_counter() - start:.0f} s in all")
    print("| config | LLM tokens | KV entries / layer | LLM prefill MACs (7B, 32 layers) | ratio | "
          "decode MACs / token (7B) | ratio | KV bytes after prefill (this model) | ratio | "
          f"decode ms / token (median of {args.rounds}, min-max) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['llm_tokens']} | {r['kv_entries']} | {r['prefill_macs'] / 1e12:.3f} T | "
              f"{r['prefill_macs'] / base['prefill_macs']:.3f} | {r['decode_macs'] / 1e9:.3f} G | "
              f"{r['decode_macs'] / base['decode_macs']:.4f} | {r['kv_bytes'] / 2**20:.1f} MiB | "
              f"{r['kv_bytes'] / base['kv_bytes']:.3f} | {1e3 * r['decode_s']:.0f} "
              f"({1e3 * r['spread'][0]:.0f}-{1e3 * r['spread'][1]:.0f}) | "
              f"{r['decode_s'] / base['decode_s']:.3f} |")


if __name__ == "__main__":
    main()
