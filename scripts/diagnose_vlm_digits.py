"""Why PyramidDrop, FoPru and the dynamic visual-token exit fall below random pruning on the digits VLM.

Every digit of a testbed scene is one known token (``Scene.cells``), so a score can be judged directly: the
share of digit tokens among its top-k. Prints that share for the signals the three methods rank by (the LLM's
last-token attention in layers 0 and 1; the vision tower's attention received, FoPru's score, and its [CLS]
row), then accuracy on the held-out questions for the runs that separate a bug from the method's rule:
PyramidDrop against FastV at its first stage's layer, PyramidDrop with later stages, the dynamic exit against
an independent reference (every visual key masked out from the exit layer on), FoPru on the tower's first
block. About 15 s on one thread.

    python scripts/diagnose_vlm_digits.py [--questions 200]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from tokenreduce.bench.vlm_testbed import GRID, accuracy, answer_ids, batches, heldout, load_vlm_digits
from tokenreduce.vlm.bench import _patched
from tokenreduce.vlm.methods import make_vlm_method
from tokenreduce.vlm.methods.fopru import FoPru


@dataclass(frozen=True)
class FoPruFirstBlock(FoPru):
    """FoPru's score read from the tower block before the feature layer's (a probe, not registered)."""

    def vision_offsets(self, feature_block: int) -> tuple[int, ...]:
        return (-1,)


def cells(example) -> list[int]:
    return [r * GRID + c for r, c in example.scene.cells if r >= 0]


@torch.no_grad()
def coverage(model, tok, examples, ks=(64, 32)) -> dict[str, float]:
    """Share of digit tokens among the top-k of each score, over ``examples``."""
    hit: dict[str, list[int]] = {}

    def add(key, score, digits, k):
        top = set(torch.topk(score, k).indices.tolist())
        h = hit.setdefault(key, [0, 0])
        h[0] += sum(c in top for c in digits)
        h[1] += len(digits)

    for idx, x in batches(tok, examples, 50):
        llm = model(**x, output_attentions=True).attentions
        tower = model.model.vision_tower(x["pixel_values"], output_attentions=True).attentions
        vis = x["input_ids"][0] == model.config.image_token_id
        for j, i in enumerate(idx):
            digits = cells(examples[i])
            last, first = tower[-1][j].mean(0), tower[0][j].mean(0)
            for k in ks:
                for layer in (0, 1):
                    row = llm[layer][j].mean(0)[-1][vis]
                    add(f"LLM layer {layer}, last token's attention (top {k})", row, digits, k)
                add(f"tower last block, attention received = fopru (top {k})", last.sum(0)[1:], digits, k)
                add(f"tower last block, [CLS] row (top {k})", last[0, 1:], digits, k)
                add(f"tower first block, attention received (top {k})", first.sum(0)[1:], digits, k)
    return {key: a / b for key, (a, b) in hit.items()}


@torch.no_grad()
def exit_reference(model, tok, examples, layer: int) -> list[int]:
    """Greedy answers when no query attends to a visual key (but its own) from decoder ``layer`` on."""
    layers = model.model.language_model.layers
    vis: dict[str, torch.Tensor] = {}

    def pre(module, args, kwargs):
        v = vis["v"]
        n = v.shape[1]
        hidden = v[:, None, None, :] & ~torch.eye(n, dtype=torch.bool)  # visual keys, each but to itself
        allow = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & ~hidden
        kwargs["attention_mask"] = torch.zeros(v.shape[0], 1, n, n).masked_fill(~allow, torch.finfo(torch.float32).min)
        return args, kwargs

    hooks = [layers[i].register_forward_pre_hook(pre, with_kwargs=True) for i in range(layer, len(layers))]
    out = [0] * len(examples)
    try:
        for idx, x in batches(tok, examples, 50):
            vis["v"] = x["input_ids"] == model.config.image_token_id
            for i, p in zip(idx, model(**x).logits[:, -1].argmax(-1).tolist()):
                out[i] = p
    finally:
        for h in hooks:
            h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_vlm_digits()
    model.set_attn_implementation("eager")  # attention weights for the coverage and the masked reference
    examples = heldout(args.questions)
    n_digits = sum(len(cells(e)) for e in examples)
    print(f"digit tokens among the top-k of each score ({n_digits} digit tokens; random keeps k/144)")
    for key, share in coverage(model, tok, examples).items():
        print(f"  {share:.3f}  {key}")

    def acc(ids):
        a = accuracy(tok, examples, ids)
        return " ".join(f"{k} {a[k]:.3f}" for k in ("corner", "count", "largest", "exists", "overall"))

    def run(cfg):
        with _patched(model, cfg):
            return answer_ids(model, tok, examples)

    print("accuracy on the held-out questions")
    for t in (64, 32):
        for label, cfg in (
            (f"pdrop tokens={t} (stages 1/2/3)", make_vlm_method("pdrop", tokens=t)),
            (f"fastv tokens={t} layer=1", make_vlm_method("fastv", tokens=t, layer=1)),
            (f"pdrop tokens={t} layers=(2, 3)", make_vlm_method("pdrop", tokens=t, layers=(2, 3))),
            (f"fopru tokens={t}", make_vlm_method("fopru", tokens=t)),
            (f"fopru tokens={t}, tower's first block", FoPruFirstBlock(tokens=t)),
        ):
            print(f"  {label:<40} {acc(run(cfg))}")
        m = make_vlm_method("dyvte", tokens=t)
        got, exit_at = run(m), m.latest(GRID * GRID, len(model.model.language_model.layers))
        ref = exit_reference(model, tok, examples, exit_at)
        same = sum(a == b for a, b in zip(got, ref))
        print(f"  {f'dyvte tokens={t} (exit before layer {exit_at})':<40} {acc(got)}; "
              f"equal to the masked reference on {same}/{len(got)}")
    print(f"  {'all visual keys masked from layer 3 on':<40} {acc(exit_reference(model, tok, examples, 3))}")


if __name__ == "__main__":
    main()
