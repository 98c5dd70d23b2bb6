"""Quality of diffusion token reduction on a model trained here: a class-conditional pixel-space DiT on
digit canvases (``tokenreduce/assets/dit_digits``, made by ``scripts/train_diffusion_digits.py``).

The model works on 16 x 16 canvases (the 32 x 32 canvas averaged over 2 x 2 pixels, :func:`encode`;
decoded by bilinear upsampling, :func:`decode`). Samples are drawn with DDIM and classifier-free
guidance (the conditional and the unconditional half in one batch of two, as diffusers' ``DiTPipeline``
runs them), from per-sample seeded noise, so a sample does not depend on how many others are drawn with
it. Each sample is judged by the bundled digits ViT (``tokenreduce/assets/vit_digits``: 32 x 32
canvases in [-1, 1], background -1, the format the decoded samples have): class accuracy against the
requested label, and the pixel error against the
unreduced model's sample from the same noise. A tool module: nothing in the library imports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "dit_digits"
CLASSES = 10  # the null (unconditional) label is CLASSES, as in DiT's label embedding
TRAIN_STEPS = 1000  # the diffusion schedule's length (squaredcos_cap_v2 betas, epsilon prediction)
SCHEDULE = {"num_train_timesteps": TRAIN_STEPS, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"}


SIZE = 16  # the model's canvas: the 32 x 32 canvas averaged over 2 x 2 pixels (see encode / decode)


def encode(x: Tensor) -> Tensor:
    """(N, 1, 32, 32) canvases -> (N, 1, 16, 16): the mean of each 2 x 2 pixel block (a fixed "autoencoder";
    the digits are 8 x 8 scans upsampled to 20 x 20, so little is lost)."""
    return torch.nn.functional.avg_pool2d(x, 2)


def decode(z: Tensor) -> Tensor:
    """(N, 1, 16, 16) -> (N, 1, 32, 32), bilinear: the digits ViT's input format."""
    return torch.nn.functional.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)


def make_digits_dit(hidden: int = 64, layers: int = 6, head_dim: int = 32, patch: int = 2, seed: int = 0) -> nn.Module:
    """The architecture trained here: diffusers' ``DiTTransformer2DModel`` on 1-channel 16 x 16 canvases,
    ``patch`` x ``patch`` patches (an 8 x 8 token grid at patch 2), 10 classes plus the null label."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(num_attention_heads=hidden // head_dim, attention_head_dim=head_dim, in_channels=1,
                                 out_channels=1, num_layers=layers, sample_size=SIZE, patch_size=patch,
                                 num_embeds_ada_norm=CLASSES, norm_num_groups=1)


def load_digits_dit(asset_dir: Path = ASSET_DIR) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    if not (Path(asset_dir) / "config.json").exists():
        raise FileNotFoundError(f"no trained digits DiT at {asset_dir}; run scripts/train_diffusion_digits.py")
    return DiTTransformer2DModel.from_pretrained(str(asset_dir)).eval()


def digits_info(asset_dir: Path = ASSET_DIR) -> dict[str, Any]:
    """What training recorded (``training.json``): the command, steps, loss, wall time, its own quality check."""
    path = Path(asset_dir) / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def sample_noise(n: int, seed: int) -> Tensor:
    """(n, 1, 16, 16) starting noise; sample ``i`` from its own generator (seed, i), so it is the same
    whatever ``n`` is."""
    return torch.stack([torch.randn(1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                        for i in range(n)])


@torch.no_grad()
def sample_digits(
    model: nn.Module, labels: Tensor, seed: int = 0, steps: int = 25, guidance: float = 3.0, batch: int = 50,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """DDIM samples of ``labels``, decoded to (N, 1, 32, 32) in [-1, 1], with classifier-free guidance ``guidance``;
    the model sees [unconditional; conditional] as one batch per step. ``progress(k)`` after every step
    of every chunk of ``batch`` samples."""
    from diffusers import DDIMScheduler

    noise = sample_noise(len(labels), seed)
    out = []
    for i in range(0, len(labels), batch):
        sched = DDIMScheduler(**SCHEDULE, clip_sample=True, set_alpha_to_one=True)
        sched.set_timesteps(steps)
        x, lab = noise[i:i + batch].clone(), labels[i:i + batch]
        cls = torch.cat([torch.full_like(lab, CLASSES), lab])
        for t in sched.timesteps:
            eps = model(torch.cat([x, x]), timestep=t.expand(2 * len(x)), class_labels=cls).sample
            uncond, cond = eps.chunk(2)
            x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
            if progress is not None:
                progress(1)
        out.append(decode(x.clamp(-1, 1)).clamp(-1, 1))
    return torch.cat(out)


def balanced_labels(n: int) -> Tensor:
    """``n`` labels cycling 0..9."""
    return torch.arange(n) % CLASSES


def judge(classifier: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Any]:
    """Class accuracy of generated ``images`` under the digits ViT, and its per-sample predictions."""
    from ..bench.vision_testbed import predict_logits

    pred = predict_logits(classifier, images).argmax(-1)
    return {"accuracy": float((pred == labels).float().mean()), "pred": pred}


def pixel_error(images: Tensor, reference: Tensor) -> Tensor:
    """Per-sample mean absolute pixel difference (images in [-1, 1], so at most 2)."""
    return (images - reference).abs().flatten(1).mean(1)


__all__ = ["ASSET_DIR", "CLASSES", "SCHEDULE", "SIZE", "balanced_labels", "decode", "encode",
           "digits_info", "judge", "load_digits_dit",
           "make_digits_dit", "pixel_error", "sample_digits", "sample_noise"]
