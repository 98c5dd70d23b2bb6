"""The RULER-style suite through kvpress 0.5.5's presses and tokenreduce's, side by side on the same samples.

Not part of the package or the tests. Install kvpress beside ours as ``scripts/kvpress_compare.py`` says
(``pip install --no-deps --target /tmp/kvpress kvpress==0.5.5 "cachetools<6"``), then e.g.

    PYTHONPATH=/tmp/kvpress python scripts/kvpress_ruler.py --length 4096 --samples 2 --keep 0.25,0.1 \\
        --out results/kvpress_ruler_4k

Samples come from ``tokenreduce.bench.ruler.make_suite`` (same seed, length and tasks as ``tokenreduce bench
ruler``). Each sample's context is prefilled once, keeping every attention layer's inputs
(``capture_prefill``); for each press and keep, tokenreduce's press compresses a copy of that cache
(``press_cache``, as the suite does) and kvpress's press runs its own ``forward_hook`` on another copy, layer
by layer, with the same inputs its hook would receive inside a prefill (hidden states, RoPE, cache position).
A prefill's outputs do not depend on the cache compression of the layers before (the hook runs after the
layer's attention), so this equals kvpress's ``with press(model): model(...)`` without one prefill per press;
``--verify`` checks that on one short sample (same kept entries, bit for bit). Query-agnostic: the question
is fed after compression; tokenreduce answers through its Session (as ``bench ruler``), kvpress's cache the
way its pipeline's ``generate_answer`` decodes (question at positions after the full context length, no mask,
greedy, the suite's token budget; both stop at the first EOS, see :func:`kvpress_answer`).
Both are scored by the suite's own scorer. One JSON record per (sample, press, keep) is appended to
OUT.records.jsonl as it is made; OUT.json/OUT.md hold the paired tables (also the kept entries the two
caches share, per layer and head).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(__file__))
from kvpress_compare import import_kvpress  # noqa: E402

from tokenreduce.bench.ruler import TASKS, make_suite  # noqa: E402
from tokenreduce.bench.ruler_run import NEW_TOKENS, _answer  # noqa: E402
from tokenreduce.kv import cache as kvc  # noqa: E402
from tokenreduce.kv.bench import capture_prefill, press_cache  # noqa: E402
from tokenreduce.kv.presses import label, parse_press  # noqa: E402
from tokenreduce.kv.ragged import ragged_attention_for  # noqa: E402

# name -> (kvpress press for a compression ratio, tokenreduce spec): equal parameters where both expose them
# (kvpress defaults: SnapKV/PyramidKV window 64 kernel 5, PyramidKV beta 20 (4 here, see below),
# ExpectedAttention 512 future positions, 4 sinks, covariance and value norms on, StreamingLLM 4 sinks,
# ChunkKV chunks of 20 on SnapKV, AdaKV safeguard 0.2 on SnapKV).
PAIRS = {
    "snapkv": (lambda kp, r: kp.SnapKVPress(compression_ratio=r, window_size=64, kernel_size=5),
               "snapkv:window=64:kernel=5"),
    "tova": (lambda kp, r: kp.TOVAPress(compression_ratio=r), "tova"),
    "expected_attention": (lambda kp, r: kp.ExpectedAttentionPress(
        compression_ratio=r, n_future_positions=512, n_sink=4, use_covariance=True, use_vnorm=True, epsilon=0.0),
        "expected_attention:future=512:sinks=4:covariance=true:vnorm=true:epsilon=0.0"),
    "keydiff": (lambda kp, r: kp.KeyDiffPress(compression_ratio=r), "keydiff"),
    "knorm": (lambda kp, r: kp.KnormPress(compression_ratio=r), "key_norm"),
    "streaming_llm": (lambda kp, r: kp.StreamingLLMPress(compression_ratio=r, n_sink=4), "streaming_llm:sinks=4"),
    # kvpress's budgets fall linearly from 2K - K/beta to K/beta (K = keep * N): our slope = 1 - 1/beta. Its
    # default beta=20 falls back to SnapKV's uniform budgets unless K/beta >= window_size (64), i.e. below
    # N * keep = 1280, so at 4k tokens and keep <= 0.25 it *is* SnapKV; beta=4 keeps a real pyramid down
    # to N * keep = 256 (4k tokens at keep 0.1)
    "pyramidkv": (lambda kp, r: kp.PyramidKVPress(compression_ratio=r, window_size=64, kernel_size=5, beta=4),
                  "pyramidkv:slope=0.75"),
    "chunkkv": (lambda kp, r: kp.ChunkKVPress(press=kp.SnapKVPress(compression_ratio=r), chunk_length=20),
                "chunkkv:chunk=20"),
    "adakv": (lambda kp, r: kp.AdaKVPress(press=kp.SnapKVPress(compression_ratio=r), alpha_safeguard=0.2),
              "adakv:min_share=0.2"),
}


def _ids(tok, text: str, special: bool) -> torch.Tensor:
    return torch.tensor([tok.encode(text, add_special_tokens=special)], dtype=torch.long)


def kept_rows(cache, masked=None) -> list[list[torch.Tensor]]:
    """Per layer and KV head, a fingerprint of each key row held (the key projected on a fixed direction, in
    float64: equal rows give equal values), without all-zero filler rows and kvpress's masked rows."""
    out = []
    for i in range(kvc.n_layers(cache)):
        keys = cache.layers[i].keys[0]  # (Hkv, L, D)
        direction = torch.linspace(1.0, 2.0, keys.shape[-1], dtype=torch.float64)
        sig = keys.double() @ direction
        real = keys.abs().sum(-1) > 0
        if masked is not None and masked[i] is not None:
            _, heads, entries = masked[i]
            real[heads, entries] = False
        out.append([sig[h][real[h]] for h in range(keys.shape[0])])
    return out


def overlap(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    """Share of entries both caches hold, over the larger count, averaged over layers and heads."""
    shares = [float(torch.isin(x, y).sum()) / max(len(x), len(y), 1) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
    return sum(shares) / len(shares)


@torch.no_grad()
def tr_answer(model, tok, pre, press, question: torch.Tensor, budget: int, rows: list | None = None) -> str:
    """tokenreduce's path, as ``bench ruler`` runs it: compress a copy, feed the question, decode greedily
    (``rows`` receives the compressed cache's :func:`kept_rows`)."""
    with ragged_attention_for(model, press):
        cache = press_cache(model, pre, press, tok)
        if rows is not None:
            rows.extend(kept_rows(cache))
        return _answer(model, cache, pre.n, pre.logits, question, tok, budget)[0]


def _layers(model):
    return model.model.layers


@torch.no_grad()
def kvpress_cache(model, pre, press) -> DynamicCache:
    """A copy of the prefill's cache compressed by kvpress's own hook, layer by layer, with the inputs the
    hook receives inside a prefill (``press(model)`` sets the press up: rotary embedding, model config)."""
    cache = DynamicCache(config=model.config)
    for i in range(kvc.n_layers(pre.cache)):
        k, v = kvc.layer_kv(pre.cache, i)
        cache.update(k.clone(), v.clone(), i)
    position = torch.arange(pre.n)
    with press(model):
        for layer in _layers(model):
            attn = layer.self_attn
            hidden, cos, sin = pre.inputs[attn.layer_idx]
            kwargs = {"hidden_states": hidden, "past_key_values": cache, "cache_position": position,
                      "position_embeddings": (cos, sin)}
            press.forward_hook(attn, [], kwargs, (None, None))
    return cache


@torch.no_grad()
def kvpress_answer(model, tok, cache, n: int, question: torch.Tensor, budget: int) -> str:
    """kvpress's pipeline decoding (``generate_answer``: the question at positions n.. without a mask, then
    greedy), with one change: the answer ends at the first EOS *including the first token* (kvpress 0.5.5
    checks only the later ones, so a model that ends at once goes on with a new chat turn, which the suite's
    decoding would have cut: same stopping rule on both sides).

    With per-layer cache lengths (a real PyramidKV pyramid) the one-call question feed fails on transformers
    5.25 (the mask is sized after layer 0); there the question is fed one token at a time (no mask needed, the
    same attention as one causal forward)."""
    steps = [question] if len({layer.keys.shape[-2] for layer in cache.layers}) == 1 else question.split(1, 1)
    pos = n
    for ids in steps:
        out = model(input_ids=ids, past_key_values=cache, logits_to_keep=1,
                    position_ids=torch.arange(pos, pos + ids.shape[1])[None])
        pos += ids.shape[1]
    new = [int(out.logits[0, -1].argmax())]
    while new[-1] != tok.eos_token_id and len(new) < budget:
        out = model(input_ids=torch.tensor([[new[-1]]]), past_key_values=cache, position_ids=torch.tensor([[pos]]))
        pos += 1
        new.append(int(out.logits[0, -1].argmax()))
    if new[-1] == tok.eos_token_id:
        new = new[:-1]
    return tok.decode(new, skip_special_tokens=True)


def clear_masks(model) -> None:
    """kvpress's AdaKV leaves ``masked_key_indices`` on the attention modules for decoding; drop them."""
    for layer in _layers(model):
        if getattr(layer.self_attn, "masked_key_indices", None) is not None:
            layer.self_attn.masked_key_indices = None


def _masks_raw(model) -> list:
    return [getattr(layer.self_attn, "masked_key_indices", None) for layer in _layers(model)]


def _masks(model) -> list:
    """AdaKV's masked (row, head, entry) triples per layer, as lists (None where a layer has none)."""
    return [None if getattr(layer.self_attn, "masked_key_indices", None) is None
            else [t.tolist() for t in layer.self_attn.masked_key_indices] for layer in _layers(model)]


@torch.no_grad()
def verify(kp, model, tok, sample, names, keep: float) -> list[dict]:
    """kvpress's hook replayed on the captured inputs vs its real ``with press(model)`` prefill: same cache."""
    ctx = _ids(tok, sample.context, True)
    pre = capture_prefill(model, ctx)
    out = []
    for name in names:
        make = PAIRS[name][0]
        replay = kvpress_cache(model, pre, make(kp, 1.0 - keep))
        replay_masks = _masks(model)
        clear_masks(model)
        real = DynamicCache(config=model.config)
        press = make(kp, 1.0 - keep)
        with press(model):
            model.model(input_ids=ctx, past_key_values=real, use_cache=True)
        real_masks = _masks(model)
        clear_masks(model)
        same = all(a.keys.shape == b.keys.shape for a, b in zip(replay.layers, real.layers))
        diff = max(max(float((a.keys - b.keys).abs().max()), float((a.values - b.values).abs().max()))
                   for a, b in zip(replay.layers, real.layers)) if same else None
        out.append({"verify": name, "keep": keep, "same_shapes": same, "max_abs_kv_diff": diff,
                    "same_masked_entries": replay_masks == real_masks,
                    "masked_entries": sum(len(m[0]) for m in real_masks if m is not None),
                    "layer_lengths": sorted({layer.keys.shape[-2] for layer in real.layers})})
        print(json.dumps(out[-1]), flush=True)
    return out


def pair_rows(records: list[dict]) -> list[dict]:
    """Per (press, keep): mean score x100 of each library, per task and averaged, and answer agreement."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["press"], r["keep"]), []).append(r)
    rows = []
    for (press, keep), recs in groups.items():
        row: dict = {"press": press, "keep": keep, "samples": len(recs)}
        for lib in ("kvpress", "tokenreduce"):
            per = {}
            for r in recs:
                per.setdefault(r["task"], []).append(r[f"{lib}_score"])
            row[f"{lib}_avg"] = 100.0 * sum(r[f"{lib}_score"] for r in recs) / len(recs)
            row[f"{lib}_tasks"] = {t: round(100.0 * sum(v) / len(v), 1) for t, v in per.items()}
        row["same_answer"] = sum(r["kvpress_prediction"].strip() == r["tokenreduce_prediction"].strip()
                                 for r in recs) / len(recs)
        row["same_score"] = sum(r["kvpress_score"] == r["tokenreduce_score"] for r in recs) / len(recs)
        ov = [r["kept_overlap"] for r in recs if "kept_overlap" in r]
        row["kept_overlap"] = sum(ov) / len(ov) if ov else None
        rows.append(row)
    order = {n: i for i, n in enumerate(["full", *PAIRS])}
    rows.sort(key=lambda r: (order.get(r["press"], 99), -r["keep"]))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| press | keep | kvpress avg | tokenreduce avg | same answer | same score | kept entries shared "
             "| samples |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ov = "" if r["kept_overlap"] is None else f"{r['kept_overlap']:.3f}"
        lines.append(f"| {r['press']} | {r['keep']} | {r['kvpress_avg']:.1f} | {r['tokenreduce_avg']:.1f} | "
                     f"{r['same_answer']:.2f} | {r['same_score']:.2f} | {ov} | {r['samples']} |")
    return "\n".join(lines)


def task_table(rows: list[dict]) -> str:
    """Per-task scores, kvpress / tokenreduce in each cell."""
    tasks = [t for t in TASKS if any(t in r["kvpress_tasks"] for r in rows)]
    lines = ["| press | keep | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for r in rows:
        cells = [f"{r['kvpress_tasks'][t]:.0f} / {r['tokenreduce_tasks'][t]:.0f}" if t in r["kvpress_tasks"] else ""
                 for t in tasks]
        lines.append(f"| {r['press']} | {r['keep']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--presses", default=",".join(PAIRS))
    ap.add_argument("--keep", default="0.25,0.1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="OUT.records.jsonl (incremental), OUT.json, OUT.md")
    ap.add_argument("--verify", action="store_true", help="only check the hook replay against real kvpress prefills")
    ap.add_argument("--records", default=None,
                    help="no run: the tables from OUT.records.jsonl files (comma-separated: merged)")
    a = ap.parse_args()
    names = [n for n in a.presses.split(",") if n]
    bad = [n for n in names if n not in PAIRS]
    if bad:
        ap.error(f"unknown presses {bad}; both libraries have: {', '.join(PAIRS)}")
    keeps = [float(k) for k in a.keep.split(",") if k]
    if a.records:
        records = [json.loads(x) for f in a.records.split(",") for x in Path(f).read_text().splitlines() if x]
        rows = pair_rows(records)
        print(markdown(rows))
        print(task_table(rows))
        if a.out:
            Path(a.out).with_suffix(".json").write_text(json.dumps(
                {"args": vars(a), "rows": rows, "records": records}, indent=1))
            Path(a.out).with_suffix(".md").write_text(markdown(rows) + "\n\n" + task_table(rows) + "\n")
        return
    torch.set_num_threads(a.threads)
    kp = import_kvpress()
    from tokenreduce.llm import load_causal_lm

    model, tok = load_causal_lm()
    tasks = [t for t in a.tasks.split(",") if t]
    start = time.time()
    print(json.dumps({"load": os.getloadavg(), "threads": a.threads, "length": a.length}), flush=True)
    if a.verify:
        sample = make_suite(tok, a.length, 1, tasks[:1], a.data_dir, seed=a.seed)[0]
        verify(kp, model, tok, sample, names, keeps[0])
        print(json.dumps({"seconds": round(time.time() - start, 1), "load": os.getloadavg()}), flush=True)
        return
    samples = make_suite(tok, a.length, a.samples, tasks, a.data_dir, seed=a.seed)
    part = Path(a.out).with_suffix(".records.jsonl") if a.out else None
    if part is not None:
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text("")
    records = []
    for i, s in enumerate(samples):
        t0 = time.perf_counter()
        ctx, q = _ids(tok, s.context, True), _ids(tok, s.question, False)
        pre = capture_prefill(model, ctx)
        budget = NEW_TOKENS[s.task]
        base = {"sample": i, "seed": s.meta.get("seed"), "task": s.task, "answers": list(s.answers), "n": pre.n}
        full_tr = tr_answer(model, tok, pre, None, q, budget)
        full_cache = kvpress_cache(model, pre, PAIRS["snapkv"][0](kp, 0.0))  # ratio 0: kvpress returns it as is
        full_kp = kvpress_answer(model, tok, full_cache, pre.n, q, budget)
        recs = [{**base, "press": "full", "keep": 1.0, "kvpress_prediction": full_kp, "kvpress_score": s.score(full_kp),
                 "tokenreduce_prediction": full_tr, "tokenreduce_score": s.score(full_tr),
                 "seconds": round(time.perf_counter() - t0, 2)}]
        for name in names:
            make, spec = PAIRS[name]
            for keep in keeps:
                t1 = time.perf_counter()
                cache = kvpress_cache(model, pre, make(kp, 1.0 - keep))
                kp_rows = kept_rows(cache, [m and [t.clone() for t in m] for m in _masks_raw(model)])
                kp_text = kvpress_answer(model, tok, cache, pre.n, q, budget)
                clear_masks(model)
                t2 = time.perf_counter()
                press = parse_press(spec, keep)
                tr_rows: list = []
                tr_text = tr_answer(model, tok, pre, press, q, budget, tr_rows)
                recs.append({**base, "press": name, "keep": keep, "tokenreduce_label": label(press),
                             "kvpress_prediction": kp_text, "kvpress_score": s.score(kp_text),
                             "tokenreduce_prediction": tr_text, "tokenreduce_score": s.score(tr_text),
                             "kept_overlap": round(overlap(kp_rows, tr_rows), 4),
                             "kvpress_seconds": round(t2 - t1, 2),
                             "tokenreduce_seconds": round(time.perf_counter() - t2, 2)})
        records += recs
        if part is not None:
            with part.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in recs)
        print(json.dumps({"sample": i, "task": s.task, "n": pre.n, "seconds": round(time.perf_counter() - t0, 1),
                          "load": os.getloadavg()}), flush=True)
    rows = pair_rows(records)
    wall = round(time.time() - start, 1)
    print(markdown(rows))
    print(task_table(rows))
    print(json.dumps({"seconds": wall, "load": os.getloadavg()}), flush=True)
    if a.out:
        Path(a.out).with_suffix(".json").write_text(json.dumps(
            {"args": vars(a), "seconds": wall, "rows": rows, "records": records}, indent=1))
        Path(a.out).with_suffix(".md").write_text(markdown(rows) + "\n\n" + task_table(rows) + "\n")


if __name__ == "__main__":
    main()
