"""Speed, memory and MACs of diffusion token reduction per denoising step, against the unreduced model in
the same process; and the quality table on the digits DiT trained here (:mod:`.bench_digits`).

Speed models (random weights, real layer sizes, SDPA attention, batch 2 = one classifier-free-guidance
step): ``unet-512`` / ``unet-1024`` (Stable Diffusion 1.5's U-Net, latent 64² / 128², 77 text tokens)
and ``dit-256`` / ``dit-512`` (DiT-XL/2, latent 32² / 64², class-conditional). Per config: one U-Net or
transformer call timed in rounds that visit every config in turn (base, a, b, ..., base, a, b, ...),
so load drift hits all alike; the median per config, its ratio to the base's median; peak tensor memory
(``bench.memory.peak_memory``: allocator events under the profiler, one extra call per config) and its
ratio; analytic MACs of the blocks (:mod:`.cost`, owned by each method) plus everything outside them
(convolutions, embeddings, counted from the shapes of one unreduced call), as a step ratio.
A tool module: nothing in the library imports it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..bench.run_config import RunConfig
from .adapter import _named
from .cost import step_cost, total_macs

SPEED_MODELS = ("unet-512", "unet-1024", "dit-256", "dit-512")
QUALITY_MODELS = ("dit-digits",)  # the DiT trained here (tokenreduce/assets/dit_digits)
TEXT_TOKENS = 77  # SD's CLIP text length


class Config(RunConfig):
    """One reduced configuration (``method`` None: the unreduced baseline); its label keeps the parameters'
    given order, as the diffusion tables always have (the encoder benches sort them)."""

    sort_params: ClassVar[bool] = False


def speed_model(name: str) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any], tuple[int, int]]:
    """(model, args, kwargs, latent size) of a speed model: SD-1.5's U-Net or DiT-XL/2, random weights."""
    import diffusers

    torch.manual_seed(0)
    family, _, res = name.partition("-")
    if name not in SPEED_MODELS:
        raise ValueError(f"unknown speed model {name!r}; choose from {', '.join(SPEED_MODELS)}")
    latent = int(res) // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g)
    if family == "unet":  # SD 1.5: diffusers' default U-Net layout with CLIP-L's 768-wide text
        model = diffusers.UNet2DConditionModel(sample_size=latent, cross_attention_dim=768).eval()
        kw = {"encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 768, generator=g)}
        return model, (x, torch.tensor([500, 500])), kw, (latent, latent)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4,
                                            out_channels=8, num_layers=28, sample_size=latent, patch_size=2).eval()
    return model, (x,), {"timestep": torch.tensor([500, 500]), "class_labels": torch.tensor([1000, 207])}, (latent,
                                                                                                             latent)


def outside_macs(model: nn.Module, call: Callable[[], Any]) -> int:
    """MACs of every convolution and linear layer outside the transformer blocks in one ``call``, from
    the shapes it sees (conv: output elements x in/groups x kernel; linear: rows x in x out)."""
    inside = {id(m) for b in model.modules() if _named(b, ("BasicTransformerBlock",)) for m in b.modules()}
    total = [0]

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += out.numel() * (mod.in_channels // mod.groups) * k
        else:
            total[0] += args[0].numel() // mod.in_features * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in inside]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def speed_configs(methods: list[str], ratios: list[float], family: str) -> list[Config]:
    """Every method x ratio that applies to ``family`` (ToDo has no ratio: its 2 x 2 pooling, 3/4 of the keys)."""
    out = []
    for m in methods:
        if m == "todo":
            out.append(Config("todo", {"stride": (2, 2)}))
        elif m == "dit-merge" and family != "dit":
            continue
        else:
            out += [Config(m, {"ratio": r}) for r in ratios]
    return out


def bench_speed(
    name: str, configs: list[Config], repeats: int = 3, memory: bool = True,
    progress: Callable[[str], None] | None = None, built: tuple | None = None, context: int | None = None,
) -> list[dict[str, Any]]:
    """Rows (base first) for speed model ``name``: per-step time, MACs and peak-memory ratios vs unreduced.
    ``built``: (model, args, kwargs, latent size) instead of :func:`speed_model`'s (tests use tiny ones)."""
    from ..api import patch, unpatch
    from ..bench.memory import peak_memory

    model, args, kwargs, latent = built or speed_model(name)
    if context is None:
        context = TEXT_TOKENS if name.startswith("unet") else 0
    batch = args[0].shape[0]
    everything = [Config(None), *configs]

    def call(cfg: Config) -> Callable[[], Any]:
        def run() -> Any:
            if cfg.method is not None:
                patch(model, cfg.method, **cfg.params)
            try:
                with torch.no_grad():
                    return model(*args, **kwargs)
            finally:
                if cfg.method is not None:
                    unpatch(model)
        return run

    def tick(label: str) -> None:
        if progress is not None:
            progress(label)

    rest = outside_macs(model, lambda: model(*args, **kwargs))  # also the warm-up
    tick("warm-up")
    times: dict[str, list[float]] = {c.label: [] for c in everything}
    for _ in range(repeats):
        for c in everything:
            t0 = time.perf_counter()
            call(c)()
            times[c.label].append(time.perf_counter() - t0)
            tick(c.label)
    peaks = {}
    if memory:
        for c in everything:
            peaks[c.label] = peak_memory(call(c))["peak_bytes"]
            tick(f"memory {c.label}")
    base_blocks = total_macs(step_cost(model, latent, batch, None, context))
    base_t = statistics.median(times["none"])
    rows = []
    for c in everything:
        blocks = total_macs(step_cost(model, latent, batch, c.method, context, **c.params)) if c.method else base_blocks
        t = statistics.median(times[c.label])
        row = {"model": name, "method": c.method or "none", "params": {k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in c.params.items()},
               "config": c.label, "step_s": t, "step_s_min": min(times[c.label]), "step_s_max": max(times[c.label]),
               "speedup": base_t / t, "step_macs": blocks + rest, "block_gmacs": blocks / 1e9,
               "step_gmacs": (blocks + rest) / 1e9,
               "macs_ratio": (blocks + rest) / (base_blocks + rest), "block_macs_ratio": blocks / base_blocks}
        if memory:
            row.update(peak_mb=peaks[c.label] / 2**20, memory_ratio=peaks[c.label] / peaks["none"])
        rows.append(row)
    return rows


def bench_macs(name: str, configs: list[Config]) -> list[dict[str, Any]]:
    """Rows (base first) of analytic step MACs only: the model is built on the meta device (no weights,
    no compute), its outside-the-blocks MACs read from the shapes of one meta call. Instant at any size."""
    with torch.device("meta"):
        model, args, kwargs, latent = speed_model(name)
    args = tuple(a.to("meta") for a in args)
    kwargs = {k: v.to("meta") for k, v in kwargs.items()}
    context = TEXT_TOKENS if name.startswith("unet") else 0
    rest = outside_macs(model, lambda: model(*args, **kwargs))
    base = total_macs(step_cost(model, latent, args[0].shape[0], None, context))
    rows = []
    for c in [Config(None), *configs]:
        blocks = total_macs(step_cost(model, latent, args[0].shape[0], c.method, context, **c.params)) if c.method \
            else base
        rows.append({"model": name, "method": c.method or "none", "config": c.label, "step_macs": blocks + rest,
                     "step_gmacs": (blocks + rest) / 1e9, "block_gmacs": blocks / 1e9,
                     "macs_ratio": (blocks + rest) / (base + rest), "block_macs_ratio": blocks / base,
                     "macs_speedup_bound": (base + rest) / (blocks + rest)})
    return rows


def bench_quality(
    configs: list[Config], samples: int = 100, steps: int = 25, guidance: float = 3.0, seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Rows (base first) of the digits DiT: ViT class accuracy of the samples, per-sample pixel error vs the
    unreduced sample from the same noise, step MACs ratio; and the samples of every config."""
    from ..api import patched
    from ..bench.vision_testbed import load_digits_vit
    from .bench_digits import balanced_labels, judge, load_digits_dit, pixel_error, sample_digits

    model, vit = load_digits_dit(), load_digits_vit()
    labels = balanced_labels(samples)
    images: dict[str, torch.Tensor] = {}
    rows = []
    size = (32, 32)
    base_macs = total_macs(step_cost(model, size, 2 * samples, None))
    for c in [Config(None), *configs]:
        if c.method is None:
            out = sample_digits(model, labels, seed, steps, guidance, progress=progress)
        else:
            with patched(model, c.method, **c.params):
                out = sample_digits(model, labels, seed, steps, guidance, progress=progress)
        images[c.label] = out
        err = pixel_error(out, images["none"])
        macs = total_macs(step_cost(model, size, 2 * samples, c.method, **c.params)) if c.method else base_macs
        rows.append({"method": c.method or "none", "params": {k: list(v) if isinstance(v, tuple) else v
                                                              for k, v in c.params.items()},
                     "config": c.label, "accuracy": judge(vit, out, labels)["accuracy"],
                     "pixel_err_mean": float(err.mean()), "pixel_err_max": float(err.max()),
                     "block_macs_ratio": macs / base_macs})
    return rows, images


def quality_configs(methods: list[str], ratios: list[float]) -> list[Config]:
    """Every method x ratio on the digits DiT (ToDo: 2 x 2 and 2 x 1 pooling; the threshold variant at 0.5)."""
    out = []
    for m in methods:
        if m == "todo":
            out += [Config("todo", {"stride": (2, 1)}), Config("todo", {"stride": (2, 2)})]
        elif m == "tomesd-threshold":
            out += [Config(m, {"ratio": r, "threshold": 0.5}) for r in ratios]
        else:
            out += [Config(m, {"ratio": r}) for r in ratios]
    return out


def sample_grid(images: dict[str, torch.Tensor], per_row: int = 10, scale: int = 2) -> Any:
    """A PIL image: one row of the first ``per_row`` samples per config, labelled on the left."""
    from PIL import Image, ImageDraw

    labels = list(images)
    cell = 32 * scale
    pad = 190
    img = Image.new("L", (pad + per_row * cell, len(labels) * cell), 255)
    draw = ImageDraw.Draw(img)
    for r, label in enumerate(labels):
        x = images[label][:per_row, 0]
        x = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        for i in range(len(x)):
            img.paste(Image.fromarray(x[i].numpy()), (pad + i * cell, r * cell))
        draw.text((4, r * cell + cell // 2 - 6), label, fill=0)
    return img


def measure_point(
    model: str, task: str, method: str | None, params: dict[str, Any], repeats: int = 3, seed: int = 0,
    threads: int | None = None, progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(metrics, meta, machine) of one sweep point: ``diffusion-speed`` on a speed model, or
    ``diffusion-quality[:SAMPLES]`` on ``dit-digits``; ``method`` None = the unreduced model alone. The
    baseline's values are kept under ``base:`` keys; timings use the sweep's names (``speedup``, ``time_s``)."""
    from ..bench.report import machine_info

    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    configs = [] if method is None else [Config(method, params)]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        name, _, count = task.partition(":")
        if name == "diffusion-speed":
            rows = bench_speed(model, configs, repeats)
            row, base = rows[-1], rows[0]
            metrics = {"speedup": row["speedup"], "time_s": row["step_s"], "base_time_s": base["step_s"],
                       "macs_ratio": row["macs_ratio"], "block_macs_ratio": row["block_macs_ratio"],
                       "step_gmacs": row["step_gmacs"], "memory_ratio": row["memory_ratio"],
                       "peak_mb": row["peak_mb"], "base:peak_mb": base["peak_mb"]}
        else:
            rows, _ = bench_quality(configs, int(count or 100), seed=seed)
            row, base = rows[-1], rows[0]
            metrics = {"accuracy": row["accuracy"], "pixel_err_mean": row["pixel_err_mean"],
                       "pixel_err_max": row["pixel_err_max"], "block_macs_ratio": row["block_macs_ratio"],
                       "base:accuracy": base["accuracy"]}
    finally:
        torch.set_num_threads(before)
    meta = {"task": task, "flops_unit": "MACs", "timing": "median of interleaved rounds, one call per config"}
    return metrics, meta, machine_info()


__all__ = ["QUALITY_MODELS", "SPEED_MODELS", "Config", "bench_macs", "bench_quality", "bench_speed", "measure_point",
           "outside_macs", "quality_configs", "sample_grid", "speed_configs", "speed_model"]
