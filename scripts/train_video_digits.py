"""Train the video quality testbed: a small Qwen2-VL (ViT tower + Qwen2 decoder with 3-D M-RoPE) on moving digits.

    python scripts/train_video_digits.py    # rewrites tokenreduce/assets/video_digits/: config.json,
                                            # model.safetensors, tokenizer + processor files, testbed.json

Videos and questions: :mod:`tokenreduce.bench.video_testbed` (8 frames of 32x32, 16 tokens of 8 px per frame,
128 per video; 1-3 digits entering one after another and moving left or right; first / last / count /
direction questions, one-word answers). Training videos are drawn fresh every step from the train split's digit
samples; validation and held-out questions use the test split's. Everything is trained here from random
initialisation. Two stages, fixed seeds, deterministic on one thread:

1. the tower alone (``--vision-steps``): an auxiliary head, not saved, names each visual token's digit (or
   background); digit and background tokens are averaged separately (digits are ~1 % of the tokens).
2. everything: cross-entropy of the answer word at the last prompt position plus auxiliary losses: the tower's
   per-token digit, and after the decoder's middle layer (a) per visual token, which of the video's digits it
   shows (first, second, third, background) and which way its digit moved since the frame before, (b) at the
   last position, the number of digits and the first and last digit. Without such
   targets a small decoder sits on the answer prior for a long time (the image testbed's lesson). One batch
   holds every question type (right-padded prompts, which a causal decoder never attends to from the real
   positions); one forward of the model's own path per step. AdamW, warm-up + cosine; every ``--val-every``
   steps the model answers validation questions (test-split digits, their own seed, not the held-out ones) and
   training stops once they reach ``--stop-at``.

One torch thread by default (the machine is shared; two threads were several times slower under load).
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

from tokenreduce.bench.video_testbed import (
    ASSET_DIR,
    FRAMES,
    GRID,
    IMAGE_TOKEN,
    PATCH,
    QTYPES,
    SIZE,
    TOKENS,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    Example,
    Video,
    _digit_pixels,
    accuracy,
    answer_ids,
    ask,
    build_tokenizer,
    digits_for,
    heldout,
    load_video_digits,
    make_examples,
    make_video,
    prompt,
    save_processor,
    video_pixels,
)


def make_model(tok, seed: int, width: int, layers: int, vision_width: int, vision_layers: int, theta: float):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    heads = 4
    half = width // heads // 2  # rotary frequencies per head: time gets half, height and width a quarter each
    section = [half // 2, half // 4, half - half // 2 - half // 4]
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": theta},
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(depth=vision_layers, embed_dim=vision_width, hidden_size=width, num_heads=4, mlp_ratio=2,
                           patch_size=PATCH, spatial_merge_size=1, temporal_patch_size=1, in_channels=3),
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_id=tok.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_start_token_id=tok.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tok.convert_tokens_to_ids(VISION_END),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg)


def token_targets(videos: list[Video]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per visual token (B, 128), frame-major: its digit (10 = background), which of the video's digits it shows
    (0-2, 3 = background), and its digit's move since the frame before (0 left, 1 right; -100 where there is no
    frame before or no digit)."""
    digit = torch.full((len(videos), FRAMES, GRID, GRID), 10, dtype=torch.long)
    order = torch.full_like(digit, 3)
    move = torch.full_like(digit, -100)
    for b, v in enumerate(videos):
        for i, lab in enumerate(v.labels):
            for t in range(v.starts[i], v.ends[i] + 1):
                r, c = v.cell(i, t)
                digit[b, t, r, c] = lab
                order[b, t, r, c] = i
                if t > v.starts[i]:
                    move[b, t, r, c] = int(v.moves[i] > 0)
    return digit.view(len(videos), -1), order.view(len(videos), -1), move.view(len(videos), -1)


def balanced_ce(logits: torch.Tensor, labels: torch.Tensor, background: int) -> torch.Tensor:
    """Mean cross-entropy over digit tokens plus that over background tokens (a plain mean lets "background
    everywhere" win for a long time: digits are ~1 % of the tokens)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    fg = labels != background
    return ce[fg].mean() + ce[~fg].mean()


class Heads(torch.nn.Module):
    """Auxiliary heads, not saved (see the module docstring)."""

    def __init__(self, width: int, move_weight: float = 1.0):
        super().__init__()
        self.move_weight = move_weight
        self.digit = torch.nn.Linear(width, 11)
        self.order = torch.nn.Linear(width, 4)
        self.move = torch.nn.Linear(width, 2)
        self.count = torch.nn.Linear(width, 3)
        self.first = torch.nn.Linear(width, 10)
        self.last = torch.nn.Linear(width, 10)

    def vision_loss(self, tokens: torch.Tensor, videos: list[Video]) -> tuple[torch.Tensor, float]:
        digit, _, _ = token_targets(videos)
        logits = self.digit(tokens).flatten(0, 1)
        labels = digit.flatten()
        fg = labels != 10
        return balanced_ce(logits, labels, 10), (logits.argmax(-1)[fg] == labels[fg]).float().mean().item()

    def decoder_loss(self, visual: torch.Tensor, last: torch.Tensor, examples: list[Example]
                     ) -> tuple[torch.Tensor, float]:
        """(loss, accuracy of the per-token move) from ``visual`` (B, 128, width) and ``last`` (B, width): the
        middle layer's output at the visual tokens and at the last prompt position."""
        videos = [e.video for e in examples]
        _, order, move = token_targets(videos)
        loss = balanced_ce(self.order(visual).flatten(0, 1), order.flatten(), 3)
        move_logits, move = self.move(visual).flatten(0, 1), move.flatten()
        loss = loss + self.move_weight * F.cross_entropy(move_logits, move, ignore_index=-100)
        known = move >= 0
        move_hit = (move_logits.argmax(-1)[known] == move[known]).float().mean().item()
        loss = loss + F.cross_entropy(self.count(last), torch.tensor([len(v.labels) - 1 for v in videos]))
        loss = loss + F.cross_entropy(self.first(last), torch.tensor([v.labels[0] for v in videos]))
        return loss + F.cross_entropy(self.last(last), torch.tensor([v.labels[-1] for v in videos])), move_hit


def forward(model, tok, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(answer logits (B, vocab), middle layer at the visual tokens (B, 128, width) and at the last position
    (B, width), the tower's visual tokens (B, 128, width)) for prompts of any lengths in one forward of the
    model's own path: right padding, which a causal decoder never attends to from the real positions (and the
    pads' M-RoPE positions come after every real one), so every row equals its unpadded forward."""
    seqs = [tok(prompt(e.question), add_special_tokens=False)["input_ids"] for e in examples]
    n = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in seqs])
    last = torch.tensor([len(s) - 1 for s in seqs])
    vid = ids == model.config.video_token_id
    seen: dict[str, torch.Tensor] = {}
    hook = model.model.visual.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o.pooler_output))
    try:
        out = model.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=2 * vid.long(),
            pixel_values_videos=video_pixels([e.video for e in examples]),
            video_grid_thw=torch.tensor([[FRAMES, GRID, GRID]] * len(examples)), output_hidden_states=True,
        )
    finally:
        hook.remove()
    rows = torch.arange(len(examples))
    mid = out.hidden_states[len(out.hidden_states) // 2]
    width = mid.shape[-1]
    visual = mid[vid].view(len(examples), TOKENS, width)
    logits = model.lm_head(out.last_hidden_state[rows, last])
    return logits, visual, mid[rows, last], seen["v"].view(len(examples), TOKENS, width)


def validate(model, tok, examples: list[Example]) -> dict[str, float]:
    model.eval()
    acc = accuracy(tok, examples, answer_ids(model, tok, examples))
    model.train()
    return acc


def train(a) -> tuple[torch.nn.Module, object, dict]:
    tok = build_tokenizer()
    model = make_model(tok, a.seed, a.width, a.layers, a.vision_width, a.vision_layers, a.theta)
    heads = Heads(a.width, a.move_weight)
    mix = a.mix.split(",")
    digits, labels = _digit_pixels("train")
    by_label = [np.flatnonzero(labels == k) for k in range(10)]
    rng = np.random.RandomState(a.seed)
    val = make_examples("test", a.val, a.seed + 999)  # test-split digits, own seed: not the held-out questions
    log: dict = {"vision_steps": a.vision_steps, "steps": 0, "val": []}
    model.train()
    t0 = time.perf_counter()

    def batch() -> list[Example]:
        out = []
        for i in range(a.batch_size):
            q = mix[i % len(mix)]
            out.append(ask(make_video(digits, labels, rng, digits_for(q, rng), by_label), q, rng))
        return out

    # 1. the tower alone learns to name each token's digit (cheap: no decoder)
    vparams = [*model.model.visual.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(vparams, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    hits: list[float] = []
    for step in range(a.vision_steps):
        videos = [e.video for e in batch()]
        grid = torch.tensor([[FRAMES, GRID, GRID]] * len(videos))
        tokens = model.model.visual(video_pixels(videos), grid_thw=grid).pooler_output
        loss, hit = heads.vision_loss(tokens.view(len(videos), TOKENS, -1), videos)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vparams, 1.0)
        opt.step()
        sched.step()
        hits.append(hit)
        if step % 25 == 24:
            print(f"vision step {step + 1}/{a.vision_steps}: digit-token accuracy {np.mean(hits[-25:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    # 2. everything, on the answer word plus the auxiliary losses, question types in turn within each batch
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (a.steps - warm)))
    )
    losses: list[float] = []
    moves: list[float] = []
    best = -1.0
    for step in range(a.steps):
        ex = batch()
        logits, visual, middle, tokens = forward(model, tok, ex)
        target = torch.tensor(tok.convert_tokens_to_ids([e.answer for e in ex]))
        qa = F.cross_entropy(logits, target)
        aux, hit = heads.vision_loss(tokens, [e.video for e in ex])
        dec, move_hit = heads.decoder_loss(visual, middle, ex)
        aux = aux + dec
        moves.append(move_hit)
        opt.zero_grad()
        (qa + a.aux_weight * aux).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(qa.item())
        hits.append(hit)
        log["steps"] = step + 1
        if step % 25 == 24:
            print(f"step {step + 1}/{a.steps}: answer loss {np.mean(losses[-25:]):.4f}, digit-token accuracy "
                  f"{np.mean(hits[-25:]):.3f}, per-token move accuracy {np.mean(moves[-25:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if (step + 1) % a.val_every == 0:
            acc = validate(model, tok, val)
            log["val"].append({"step": step + 1, **{k: round(v, 4) for k, v in acc.items()}})
            print("  validation " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
            if a.checkpoint and acc["overall"] > best:  # keep the best so far, in case time runs out
                best = acc["overall"]
                save(model, tok, Path(a.checkpoint))
            if acc["overall"] >= a.stop_at:  # early stop: the target is reached with margin
                break
    log["final_answer_loss"] = float(np.mean(losses[-25:]))
    return model.eval(), tok, log


def save(model, tok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    save_processor(tok, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_video_digits.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSET_DIR), help="checkpoint folder")
    p.add_argument("--vision-steps", type=int, default=100, help="steps training the tower alone first")
    p.add_argument("--steps", type=int, default=2500, help="most joint steps (fewer when validation hits --stop-at)")
    p.add_argument("--batch-size", type=int, default=32, help="videos per step (question types in turn)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the auxiliary losses")
    p.add_argument("--width", type=int, default=64, help="decoder hidden size")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--vision-width", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--theta", type=float, default=3.0, help="M-RoPE base (small, so the h/w frequencies turn "
                   "enough per patch to tell a move left from a move right)")
    p.add_argument("--mix", default="first,last,count,direction,direction", help="question types of a batch, in "
                   "turn (direction twice: it is the last type to be learned)")
    p.add_argument("--move-weight", type=float, default=3.0, help="weight of the per-token move loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=200, help="validation questions (test-split digits, own seed)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--stop-at", type=float, default=0.9, help="stop once validation accuracy reaches this")
    p.add_argument("--checkpoint", default="", help="also save the best model so far here at each validation")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    p.add_argument("--eval", type=int, default=400, help="held-out questions scored at the end")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, log = train(a)
    wall = time.perf_counter() - t0
    out = Path(a.out)
    save(model, tok, out)
    # score what was written, loaded back exactly as the bench loads it
    model, tok = load_video_digits(out)
    ex = heldout(a.eval)
    acc = accuracy(tok, ex, answer_ids(model, tok, ex))
    info = {
        "testbed": "video_digits",
        "videos": f"{FRAMES} frames of {SIZE}x{SIZE}, {GRID}x{GRID} tokens of {PATCH} px per frame ({TOKENS} per "
        "video; temporal patch 1, no merge); 1-3 scikit-learn 8x8 digits of distinct classes entering one after "
        "another, each visible 2-3 frames and moving one patch left or right per frame",
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
            "theta": a.theta,
            "mix": a.mix,
            "move_weight": a.move_weight,
            "seed": a.seed,
            "final_answer_loss": round(log["final_answer_loss"], 4),
            "validation": log["val"],
            "threads": torch.get_num_threads(),
            "wall_s": round(wall, 1),
            "torch": torch.__version__,
        },
        "command": " ".join(["python scripts/train_video_digits.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    (out / "testbed.json").write_text(json.dumps(info, indent=2) + "\n")
    print("held-out accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f"; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
