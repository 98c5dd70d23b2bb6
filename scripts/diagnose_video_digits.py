"""Which video tokens each method keeps on the moving-digits video model, judged against where the digits are.

Every digit of a testbed video is one known token per frame it is visible in (``Video.cell``), so a reduction
can be judged directly: per method x kept share, the share of digit tokens the LLM still gets (the kept
columns the patched prefill records in its cache; a merging method's merged token counts as its target's
place only) and the share of digits seen in at least one frame. Then QuoTA's rating signal: the cosine of
digit and background tokens to the question's word embeddings (QuoTA keeps the tokens closest to the query).
About 16 s of CPU on one thread (36 s wall at load 5).

    python scripts/diagnose_video_digits.py [--model tokenreduce/assets/video_digits] [--questions 100]
"""

from __future__ import annotations

import argparse

import torch

from tokenreduce.bench.video_testbed import ASSET_DIR, FRAMES, GRID, batches, heldout, load_video_digits
from tokenreduce.vlm.bench import _patched
from tokenreduce.vlm.state import get_state
from tokenreduce.vlm.video.bench import make_video_method
from tokenreduce.vlm.video.methods import VIDEO_METHODS
from tokenreduce.vlm.video.ops import unit


def digit_tokens(example) -> list[list[int]]:
    """Per digit of the video, its token indices within the video (frame-major), one per visible frame."""
    v = example.video
    return [[t * GRID * GRID + c[0] * GRID + c[1] for t in range(FRAMES) if (c := v.cell(i, t)) is not None]
            for i in range(len(v.labels))]


@torch.no_grad()
def kept_digits(model, tok, examples, method) -> tuple[float, float]:
    """(share of digit tokens kept, share of digits kept in at least one frame) under ``method``."""
    tokens = [0, 0]
    seen: list[float] = []
    for idx, x in batches(tok, examples, 50):
        start = int((x["input_ids"][0] == model.config.video_token_id).nonzero().min())
        with _patched(model, method):
            cols = get_state(model(**x, use_cache=True, logits_to_keep=1).cache).cols[0]
        for j, i in enumerate(idx):
            kept = {c - start for c in cols[j].tolist()}
            digits = digit_tokens(examples[i])
            tokens[0] += sum(t in kept for d in digits for t in d)
            tokens[1] += sum(len(d) for d in digits)
            seen.append(sum(any(t in kept for t in d) for d in digits) / len(digits))
    return tokens[0] / tokens[1], sum(seen) / len(seen)


@torch.no_grad()
def query_cosines(model, tok, examples) -> tuple[float, float]:
    """Mean cosine to the question's token embeddings (QuoTA's token score) of digit and of background tokens."""
    digit, background = [], []
    for e in examples:
        x = next(iter(batches(tok, [e], 1)))[1]
        feats = model.model.get_video_features(x["pixel_values_videos"], x["video_grid_thw"])
        emb = torch.cat(list(getattr(feats, "pooler_output", feats)))
        ids = x["input_ids"][0]
        end = int((ids == model.config.video_token_id).nonzero().max()) + 1
        score = (unit(emb) @ unit(model.get_input_embeddings()(ids[end:])).T).mean(1)
        mask = torch.zeros(len(score), dtype=torch.bool)
        mask[[t for d in digit_tokens(e) for t in d]] = True
        digit.append(score[mask].mean())
        background.append(score[~mask].mean())
    return float(torch.stack(digit).mean()), float(torch.stack(background).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ASSET_DIR))
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--keep", default="0.5,0.25,0.1")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, tok = load_video_digits(a.model)
    examples = heldout(a.questions)
    depth = model.config.text_config.num_hidden_layers
    print(f"{a.questions} held-out videos; digit tokens kept / digits seen at least once:")
    for name in VIDEO_METHODS:
        row = []
        for k in (float(s) for s in a.keep.split(",")):
            method = make_video_method(name, k, depth)
            tokens, digits = kept_digits(model, tok, examples, method)
            row.append(f"keep {k}: {tokens:.2f} / {digits:.2f}")
        print(f"  {name:13s} " + "   ".join(row) + ("   (merges: places of merged tokens)" if method.merges else ""))
    d, b = query_cosines(model, tok, examples)
    print(f"QuoTA's token score (mean cosine to the question's word embeddings): digit tokens {d:+.3f}, "
          f"background tokens {b:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
