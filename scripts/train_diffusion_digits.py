"""Train the diffusion quality testbed: a small class-conditional pixel-space DiT on digit canvases.

    python scripts/train_diffusion_digits.py     # rewrites tokenreduce/assets/dit_digits/: config.json,
                                                 # diffusion_pytorch_model.safetensors, training.json

Model (``tokenreduce.diffusion.bench_digits.make_digits_dit``): diffusers' ``DiTTransformer2DModel``,
1-channel 16 x 16 canvases, patch 2 (an 8 x 8 grid of 64 tokens), hidden 64, 2 heads, 6 blocks, 10
classes + the null label (dropped 10 % of the time in training, DiT's own label dropout), about 0.55M
parameters (2.4 MB float32). Data: scikit-learn digits, the training split of the digits ViT testbed
(``tokenreduce.bench.vision_testbed``: 1,348 images, 8 x 8 -> 20 x 20 bilinear on a 32 x 32 canvas,
background -1), each moved by a random integer shift of up to ``--shift`` px. Diffusion: 1,000-step
``squaredcos_cap_v2`` schedule, epsilon prediction, MSE; AdamW (lr 1e-3, 100 warm-up steps, cosine), 1,500 steps,
batch 64, an EMA of the weights (decay 0.995) is what is saved. One torch thread: reproducible, and on
the shared 2-core box two threads under load were 5x slower per step than one.

At the end it samples 200 digits (20 per class, DDIM 25 steps, guidance 3) with the saved weights and
scores them with the bundled digits ViT; the accuracy goes in ``training.json`` with the loss, wall time
and command. ``tokenreduce bench diffusion --table quality`` measures the same for every reduction method.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from tokenreduce.bench.vision_testbed import load_digits_vit, preprocess, raw_split, shift_images
from tokenreduce.diffusion.bench_digits import (
    ASSET_DIR,
    SCHEDULE,
    balanced_labels,
    decode,
    encode,
    judge,
    make_digits_dit,
    sample_digits,
)


def train(steps: int, seed: int, lr: float, batch_size: int, shift: int, log) -> tuple[torch.nn.Module, list[float]]:
    from diffusers import DDPMScheduler

    model = make_digits_dit(seed=seed).train()
    ema = copy.deepcopy(model).eval()
    images, labels = raw_split("train")
    x0, y = preprocess(images), torch.from_numpy(labels)
    sched = DDPMScheduler(**SCHEDULE)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = min(100, steps // 10)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=g)
        moves = torch.randint(-shift, shift + 1, (batch_size, 2), generator=g)
        clean = encode(shift_images(x0[idx], moves))
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, SCHEDULE["num_train_timesteps"], (batch_size,), generator=g)
        loss = F.mse_loss(model(sched.add_noise(clean, noise, t), timestep=t, class_labels=y[idx]).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_at.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 99 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return ema, losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_diffusion_digits.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSET_DIR), help="folder for the weights, config.json, training.json")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shift", type=int, default=2, help="random placement of the digit, +- px (at most 6)")
    p.add_argument("--samples", type=int, default=200, help="samples judged by the digits ViT at the end")
    p.add_argument("--threads", type=int, default=1, help="1 keeps runs reproducible on any machine")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    model, losses = train(a.steps, a.seed, a.lr, a.batch_size, a.shift, log)
    wall = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    from tokenreduce.diffusion.bench_digits import load_digits_dit

    labels = balanced_labels(a.samples)
    images = sample_digits(load_digits_dit(out), labels, seed=0)  # exactly as the bench will load it
    vit = load_digits_vit()
    acc = judge(vit, images, labels)["accuracy"]
    from tokenreduce.bench.vision_testbed import digits_split

    real, real_labels = digits_split("test")
    ceiling = judge(vit, decode(encode(real)), real_labels)["accuracy"]  # the 16 x 16 round trip on real digits
    info = {
        "model": "DiTTransformer2DModel, 1 x 16 x 16 canvases (32 x 32 averaged over 2 x 2), patch 2 "
                 "(8 x 8 tokens), hidden 64, 2 heads, 6 blocks",
        "dataset": "scikit-learn digits, the digits ViT testbed's train split (1,348), 8x8 -> 20x20 on 32x32, "
                   f"random shift +-{a.shift} px",
        "schedule": SCHEDULE,
        "training": {"steps": a.steps, "seed": a.seed, "lr": a.lr, "batch_size": a.batch_size, "ema": 0.995,
                     "final_loss_100": sum(losses[-100:]) / len(losses[-100:]), "threads": a.threads,
                     "wall_s": round(wall, 1), "torch": torch.__version__},
        "check": {"samples": a.samples, "sampler": "DDIM 25 steps, guidance 3, seed 0", "vit_accuracy": acc,
                  "vit_accuracy_real_test_digits_round_trip": ceiling},
        "command": " ".join(["python scripts/train_diffusion_digits.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"trained {a.steps} steps in {wall:.0f} s; digits ViT accuracy of {a.samples} samples {acc:.3f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
