"""Train the VLM quality testbed: a small LLaVA (CLIP tower + MLP projector + Llama) on digit scenes.

    python scripts/train_vlm_digits.py    # rewrites tokenreduce/assets/vlm_digits/: config.json,
                                          # model.safetensors, tokenizer + processor files, testbed.json

Scenes and questions: :mod:`tokenreduce.bench.vlm_testbed` (96x96 canvases, 144 visual tokens of 8 px + [CLS],
3-4 digits each, one token per digit; corner / count / largest / exists questions, one-word answers). Training
scenes are drawn fresh every step from the train split's digit samples; validation and held-out questions use
the test split's. Everything is trained here from random initialisation: a ``CLIPVisionModel`` tower, the
projector, a Llama decoder over a word-level tokenizer. Two stages, fixed seeds, deterministic on one thread:

1. the tower and projector alone (``--vision-steps``): auxiliary heads, not saved, name each projected visual
   token's digit (or background) and quadrant, and read from the tower's pooled [CLS] which digits the scene
   holds (so [CLS] attention, which FasterVLM/VisionZip rank by, means something). Digit and background
   patches are averaged separately: with a plain mean over patches, "background everywhere" wins for a long
   time (digits are ~3 % of the tokens).
2. everything: cross-entropy of the answer word at the last prompt position plus the auxiliary losses; one
   batch holds every question type (right-padded prompts, which a causal decoder never attends to from the
   real positions; the tower runs once per batch). Count/exists questions ask about a present or an absent
   digit with equal odds and some scenes repeat a digit, so the answer cannot come from a prior. AdamW,
   warm-up + cosine; every ``--val-every`` steps the model answers validation questions (test-split digits,
   their own seed, not the held-out ones) and training stops once they reach ``--stop-at``.

One torch thread by default (on the shared 2-core machine two threads were 2.5-9x slower per step under load).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from tokenreduce.bench.vlm_testbed import (
    ASSET_DIR,
    CANVAS,
    CORNERS,
    DIGIT,
    GRID,
    IMAGE_TOKEN,
    PATCH,
    QTYPES,
    QUAD,
    Example,
    Scene,
    _digit_pixels,
    accuracy,
    answer_ids,
    ask,
    build_processor,
    build_tokenizer,
    heldout,
    load_vlm_digits,
    make_examples,
    pixels,
    prompt,
    question_text,
)


def make_model(tokenizer, seed: int, width: int, layers: int, vision_width: int, vision_layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=2 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=CANVAS,
        patch_size=PATCH,
        projection_dim=vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=GRID * GRID,
    )
    return LlavaForConditionalGeneration(cfg)


def patch_labels(examples: list[Example]) -> torch.Tensor:
    """(B, 144) per-patch targets: the digit a patch covers, 10 for background."""
    out = torch.full((len(examples), GRID, GRID), 10, dtype=torch.long)
    span = max(1, DIGIT // PATCH)
    for b, e in enumerate(examples):
        for d, (r, c) in zip(e.scene.labels, e.scene.cells):
            if d >= 0:
                out[b, r : r + span, c : c + span] = d
    return out.view(len(examples), -1)


QUADRANT = torch.tensor([[2 * (r >= GRID // 2) + (c >= GRID // 2) for c in range(GRID)] for r in range(GRID)]).flatten()


def digit_sets(examples: list[Example]) -> torch.Tensor:
    """(B, 10) multi-hot: which digits each scene holds (the [CLS] target, so [CLS] attention finds digits)."""
    out = torch.zeros(len(examples), 10)
    for b, e in enumerate(examples):
        for d in e.scene.labels:
            if d >= 0:
                out[b, d] = 1.0
    return out


def training_scene(digits: np.ndarray, by_label: list[np.ndarray], rng: np.random.RandomState, dup: float) -> Scene:
    """A scene like :func:`make_scene`'s, except that with probability ``dup`` some digits share a label, so
    counts of 2-4 are common enough to learn (in the held-out scenes they are rare)."""
    image = np.zeros((CANVAS, CANVAS), np.uint8)
    filled = sorted(rng.choice(4, size=rng.randint(3, 5), replace=False).tolist())
    labs = [int(rng.randint(10)) for _ in filled]
    if rng.rand() < dup:
        same = rng.choice(len(filled), size=rng.randint(2, len(filled) + 1), replace=False)
        for i in same:
            labs[i] = labs[same[0]]
    quad_labels, cells = [-1] * 4, [(-1, -1)] * 4
    span = (QUAD - DIGIT) // PATCH + 1
    for q, lab in zip(filled, labs):
        i = by_label[lab][rng.randint(len(by_label[lab]))]
        r = (q // 2) * (QUAD // PATCH) + rng.randint(span)
        c = (q % 2) * (QUAD // PATCH) + rng.randint(span)
        image[r * PATCH : r * PATCH + DIGIT, c * PATCH : c * PATCH + DIGIT] = digits[i]
        quad_labels[q], cells[q] = lab, (r, c)
    return Scene(image, tuple(quad_labels), tuple(cells))


def training_question(scene: Scene, qtype: str, rng: np.random.RandomState) -> Example:
    """Like :func:`ask`, but count/exists ask about a present digit or an absent one with equal odds (``ask``
    picks any digit half the time, so "no"/"0" answers dominate and a prior scores well without the image)."""
    if qtype in ("corner", "largest"):
        return ask(scene, qtype, rng)
    present = [d for d in scene.labels if d >= 0]
    if rng.rand() < 0.5:
        d = int(rng.choice(present))
    else:
        d = int(rng.choice([k for k in range(10) if k not in present]))
    answer = str(present.count(d)) if qtype == "count" else ("yes" if d in present else "no")
    return Example(scene, qtype, question_text(qtype, d), answer)


def question_argument(e: Example) -> int:
    """The digit a count/exists question names, 10 + the corner's index for corner questions, -100 for largest."""
    if e.qtype == "corner":
        return 10 + next(i for i, c in enumerate(CORNERS) if c in e.question)
    digit = re.search(r"\d", e.question)
    return int(digit.group()) if digit else -100


def patch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over digit patches plus that over background patches: digits cover ~3 % of the
    patches, and a plain mean lets "background everywhere" win (the first version learned digits 5x slower)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    fg = labels != 10
    return ce[fg].mean() + ce[~fg].mean()


class Heads(torch.nn.Module):
    """Auxiliary heads, not saved: each projected visual token names its digit (or background) and its quadrant;
    the tower's pooled [CLS] names the digits the scene holds (so [CLS] attention, which FasterVLM/VisionZip
    rank by, means something)."""

    def __init__(self, width: int, vision_width: int):
        super().__init__()
        self.patch = torch.nn.Linear(width, 11)
        self.quadrant = torch.nn.Linear(width, 4)
        self.cls = torch.nn.Linear(vision_width, 10)
        self.argument = torch.nn.Linear(width, 10 + len(CORNERS))
        self.counts = torch.nn.Linear(width, 10 * 5)

    def decoder_loss(self, middle: torch.Tensor, examples: list[Example]) -> torch.Tensor:
        """At the last prompt position after the decoder's middle layer: which digit or corner the question names,
        and how many of each digit the scene holds. Without them the decoder
        sat for ~1,000 steps answering count and exists from a prior (it must first learn to bring the question's
        digit to the last position, and only then does looking it up in the visual tokens pay)."""
        arg = torch.tensor([question_argument(e) for e in examples])
        counts = torch.tensor([[e.scene.labels.count(d) for d in range(10)] for e in examples])
        loss = F.cross_entropy(self.argument(middle), arg, ignore_index=-100)
        return loss + F.cross_entropy(self.counts(middle).view(-1, 5), counts.flatten())

    def loss(self, tokens: torch.Tensor, cls: torch.Tensor, examples: list[Example]) -> tuple[torch.Tensor, float]:
        labels = patch_labels(examples).flatten()
        logits = self.patch(tokens).flatten(0, 1)
        quad = self.quadrant(tokens).flatten(0, 1)
        loss = patch_loss(logits, labels) + F.cross_entropy(quad, QUADRANT.repeat(len(examples)))
        loss = loss + F.binary_cross_entropy_with_logits(self.cls(cls), digit_sets(examples))
        fg = labels != 10
        return loss, (logits.argmax(-1)[fg] == labels[fg]).float().mean().item()


def visual_tokens(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected visual tokens (B, 144, width), the tower's pooled [CLS] (B, vision width)), the model's own path."""
    seen: dict[str, torch.Tensor] = {}
    hook = model.model.vision_tower.register_forward_hook(lambda m, i, o: seen.__setitem__("cls", o.pooler_output))
    try:
        out = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                             vision_feature_select_strategy="default", return_dict=True)
    finally:
        hook.remove()
    feats = out.pooler_output
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    return feats.reshape(len(pixel_values), GRID * GRID, -1), seen["cls"]


def answer_logits(model, tok, examples: list[Example]) -> tuple[torch.Tensor, ...]:
    """(answer logits (B, vocab), the middle decoder layer's output at the last position, visual tokens, pooled
    [CLS]) for prompts of any lengths in one batch: right
    padding, which a causal decoder never attends to from the real positions, so every row equals its unpadded
    forward; the tower runs once for the batch."""
    seqs = [tok(prompt(e.question), add_special_tokens=False)["input_ids"] for e in examples]
    n = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in seqs])
    last = torch.tensor([len(s) - 1 for s in seqs])
    tokens, cls = visual_tokens(model, pixels([e.scene for e in examples]))
    emb = model.get_input_embeddings()(ids)
    first = seqs[0].index(tok.convert_tokens_to_ids(IMAGE_TOKEN))  # the image block: same place in every prompt
    emb = torch.cat([emb[:, :first], tokens.to(emb.dtype), emb[:, first + GRID * GRID :]], 1)
    out = model.model.language_model(inputs_embeds=emb, output_hidden_states=True)
    rows = torch.arange(len(examples))
    middle = out.hidden_states[len(out.hidden_states) // 2][rows, last]
    return model.lm_head(out.last_hidden_state[rows, last]), middle, tokens, cls


def validate(model, tok, examples: list[Example]) -> dict[str, float]:
    model.eval()
    acc = accuracy(tok, examples, answer_ids(model, tok, examples))
    model.train()
    return acc


def train(a) -> tuple[torch.nn.Module, object, dict]:
    tok = build_tokenizer()
    model = make_model(tok, a.seed, a.width, a.layers, a.vision_width, a.vision_layers)
    heads = Heads(a.width, a.vision_width)
    digits, labels = _digit_pixels("train")
    by_label = [np.flatnonzero(labels == k) for k in range(10)]
    rng = np.random.RandomState(a.seed)
    # validation: scenes of the test split's digits with their own seed (not the held-out questions)
    val = make_examples("test", a.val, a.seed + 999)
    log: dict = {"vision_steps": a.vision_steps, "steps": 0, "val": []}
    model.train()
    t0 = time.perf_counter()

    # 1. the tower and projector alone learn to name each patch's digit (cheap: no decoder)
    vparams = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
               *heads.parameters()]
    opt = torch.optim.AdamW(vparams, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    hits: list[float] = []
    for step in range(a.vision_steps):
        scenes = [training_scene(digits, by_label, rng, a.dup) for _ in range(a.batch_size)]
        ex = [Example(s, "largest", "", "") for s in scenes]
        tokens, cls = visual_tokens(model, pixels(scenes))
        loss, hit = heads.loss(tokens, cls, ex)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vparams, 1.0)
        opt.step()
        sched.step()
        hits.append(hit)
        if step % 25 == 24:
            print(f"vision step {step + 1}/{a.vision_steps}: digit-patch accuracy {np.mean(hits[-25:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    # 2. everything, on the answer word (plus the auxiliary losses), question types in turn within each batch
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (a.steps - warm)))
    )
    losses: list[float] = []
    for step in range(a.steps):
        ex = [training_question(training_scene(digits, by_label, rng, a.dup), QTYPES[i % len(QTYPES)], rng)
              for i in range(a.batch_size)]
        logits, middle, tokens, cls = answer_logits(model, tok, ex)
        target = torch.tensor(tok.convert_tokens_to_ids([e.answer for e in ex]))
        qa = F.cross_entropy(logits, target)
        aux, hit = heads.loss(tokens, cls, ex)
        aux = aux + heads.decoder_loss(middle, ex)
        opt.zero_grad()
        (qa + a.aux_weight * aux).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(qa.item())
        hits.append(hit)
        log["steps"] = step + 1
        if step % 25 == 24:
            print(f"step {step + 1}/{a.steps}: answer loss {np.mean(losses[-25:]):.4f}, digit-patch accuracy "
                  f"{np.mean(hits[-25:]):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if (step + 1) % a.val_every == 0:
            acc = validate(model, tok, val)
            log["val"].append({"step": step + 1, **{k: round(v, 4) for k, v in acc.items()}})
            print("  validation " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
            if acc["overall"] >= a.stop_at:  # early stop: the target is reached with margin
                break
    log["final_answer_loss"] = float(np.mean(losses[-25:]))
    return model.eval(), tok, log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_vlm_digits.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSET_DIR), help="checkpoint folder")
    p.add_argument("--vision-steps", type=int, default=150, help="steps training the tower + projector alone first")
    p.add_argument("--steps", type=int, default=2000, help="most joint steps (fewer when validation hits --stop-at)")
    p.add_argument("--batch-size", type=int, default=32, help="scenes per step (question types in turn)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the auxiliary per-token losses")
    p.add_argument("--dup", type=float, default=0.3, help="share of training scenes with repeated digits")
    p.add_argument("--width", type=int, default=64, help="Llama hidden size")
    p.add_argument("--layers", type=int, default=4, help="Llama layers")
    p.add_argument("--vision-width", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=200, help="validation questions (test-split digits, own seed)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--stop-at", type=float, default=0.93, help="stop once validation accuracy reaches this")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is); one is fastest on a "
                   "shared machine (two threads measured 2.5-9x slower per step under load ~8 on 2 cores)")
    p.add_argument("--eval", type=int, default=400, help="held-out questions scored at the end")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, log = train(a)
    wall = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    build_processor(tok).save_pretrained(str(out))
    # score what was written, loaded back exactly as the bench loads it
    model, tok = load_vlm_digits(out)
    ex = heldout(a.eval)
    acc = accuracy(tok, ex, answer_ids(model, tok, ex))
    info = {
        "testbed": "vlm_digits",
        "scenes": f"{CANVAS}x{CANVAS} canvas, {GRID}x{GRID} patches of {PATCH} px (+[CLS]); 3-4 scikit-learn "
        "8x8 digits, one per quadrant, patch-aligned",
        "questions": list(QTYPES),
        "heldout_questions": len(ex),
        "heldout_accuracy": acc,
        "parameters": sum(t.numel() for t in model.parameters()),
        "training": {
            "vision_steps": a.vision_steps,
            "steps": log["steps"],
            "max_steps": a.steps,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "aux_weight": a.aux_weight,
            "dup": a.dup,
            "seed": a.seed,
            "final_answer_loss": round(log["final_answer_loss"], 4),
            "validation": log["val"],
            "threads": torch.get_num_threads(),
            "wall_s": round(wall, 1),
            "torch": torch.__version__,
        },
        "command": " ".join(["python scripts/train_vlm_digits.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    (out / "testbed.json").write_text(json.dumps(info, indent=2) + "\n")
    print("held-out accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f"; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
