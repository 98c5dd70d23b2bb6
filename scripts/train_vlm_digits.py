"""Train the VLM quality testbed: a small LLaVA (CLIP tower + MLP projector + Llama) on digit scenes.

    python scripts/train_vlm_digits.py    # rewrites tokenreduce/assets/vlm_digits/: config.json,
                                          # model.safetensors, tokenizer + processor files, testbed.json

Scenes and questions: :mod:`tokenreduce.bench.vlm_testbed` (96x96 canvases, 144 visual tokens + [CLS],
3-4 digits each; corner / count / largest / exists questions, one-word answers). Training scenes are drawn
fresh every step from the train split's digit samples; the held-out questions use the test split's.
Everything is trained here from random initialisation: a ``CLIPVisionModel`` tower, the projector, a Llama
decoder over a word-level tokenizer. Loss: cross-entropy of the answer word at the last prompt position,
plus an auxiliary per-patch loss (a linear head, not saved, reads each projected visual token and names the
digit it covers or "background"; a second one reads the tower's pooled [CLS] and names the digits the scene
holds, so [CLS] attention, which FasterVLM/VisionZip rank by, means something). AdamW, warm-up + cosine,
fixed seeds, one torch thread by default (on the shared 2-core machine two threads were 2.5-9x slower per
step under load).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from tokenreduce.bench.vlm_testbed import (
    ASSET_DIR,
    CANVAS,
    DIGIT,
    GRID,
    IMAGE_TOKEN,
    PATCH,
    QTYPES,
    Example,
    _digit_pixels,
    accuracy,
    answer_ids,
    ask,
    batch_inputs,
    build_processor,
    build_tokenizer,
    heldout,
    load_vlm_digits,
    make_scene,
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
    half = DIGIT // PATCH
    for b, e in enumerate(examples):
        for d, (r, c) in zip(e.scene.labels, e.scene.cells):
            if d >= 0:
                out[b, r : r + half, c : c + half] = d
    return out.view(len(examples), -1)


def digit_sets(examples: list[Example]) -> torch.Tensor:
    """(B, 10) multi-hot: which digits each scene holds (the [CLS] target, so [CLS] attention finds digits)."""
    out = torch.zeros(len(examples), 10)
    for b, e in enumerate(examples):
        for d in e.scene.labels:
            if d >= 0:
                out[b, d] = 1.0
    return out


def train(a) -> tuple[torch.nn.Module, object, list[float]]:
    tok = build_tokenizer()
    model = make_model(tok, a.seed, a.width, a.layers, a.vision_width, a.vision_layers)
    if a.init:  # continue from a checkpoint of the same shape (fresh optimizer and schedule)
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(a.init, dtype=torch.float32)
    patch_head = torch.nn.Linear(a.width, 11)  # per visual token: its digit or background (not saved)
    cls_head = torch.nn.Linear(a.vision_width, 10)  # the tower's [CLS]: which digits the scene holds (not saved)
    digits, labels = _digit_pixels("train")
    rng = np.random.RandomState(a.seed)
    params = [*model.parameters(), *patch_head.parameters(), *cls_head.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warm = a.steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (a.steps - warm)))
    )
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    per = a.batch_size // len(QTYPES)
    seen: dict[str, torch.Tensor] = {}  # the tower's pooled [CLS] and the projected visual tokens, by hooks
    model.model.vision_tower.register_forward_hook(lambda m, i, o: seen.__setitem__("cls", o.pooler_output))
    model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o))
    for step in range(a.steps):
        opt.zero_grad()
        total = 0.0
        for qtype in QTYPES:  # one sub-batch per question type: prompts of one length, no padding
            ex = [ask(make_scene(digits, labels, rng), qtype, rng) for _ in range(per)]
            x = batch_inputs(tok, ex)
            out = model(**x, logits_to_keep=1)
            target = torch.tensor(tok.convert_tokens_to_ids([e.answer for e in ex]))
            loss = F.cross_entropy(out.logits[:, -1], target)
            feats = seen["tokens"].reshape(len(ex), GRID * GRID, -1)
            loss = loss + a.aux_weight * F.cross_entropy(patch_head(feats).flatten(0, 1), patch_labels(ex).flatten())
            loss = loss + a.aux_weight * F.binary_cross_entropy_with_logits(cls_head(seen["cls"]), digit_sets(ex))
            (loss / len(QTYPES)).backward()
            total += loss.item() / len(QTYPES)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        if step % 25 == 24 or step == a.steps - 1:
            recent = sum(losses[-25:]) / len(losses[-25:])
            print(f"step {step + 1}/{a.steps}: loss {recent:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval(), tok, losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_vlm_digits.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSET_DIR), help="checkpoint folder")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="scenes per step (a quarter per question type)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--aux-weight", type=float, default=0.5, help="weight of the per-patch digit loss")
    p.add_argument("--width", type=int, default=64, help="Llama hidden size")
    p.add_argument("--layers", type=int, default=4, help="Llama layers")
    p.add_argument("--vision-width", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="start from this checkpoint folder instead of random weights")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is); one is fastest on a "
                   "shared machine (two threads measured 2.5-9x slower per step under load ~8 on 2 cores)")
    p.add_argument("--eval", type=int, default=400, help="held-out questions scored at the end")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, losses = train(a)
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
            "steps": a.steps,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "aux_weight": a.aux_weight,
            "seed": a.seed,
            "final_loss": sum(losses[-25:]) / len(losses[-25:]),
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
