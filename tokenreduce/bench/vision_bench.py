"""Vision-encoder speed benchmark: a ViT (random weights are fine for speed) at a fixed batch.

Reports, per config, the FLOP ratio (analytic MACs at each layer's token count), the throughput
ratio against the unreduced model timed interleaved in the same process, and the token count
left after the last layer.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..encoder.adapters import patch, unpatch
from ..encoder.adapters.patching import resolve_family
from ..encoder.cost import encoder_cost, layer_widths, total_macs
from ..encoder.methods import make_method
from .memory import peak_memory
from .report import machine_info
from .text_bench import RunConfig
from .timing import time_pair


def vit_b16(num_layers: int = 12, image_size: int = 224, seed: int = 0) -> torch.nn.Module:
    """ViT-B/16 architecture (Dosovitskiy et al. 2021) with random weights, SDPA attention."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=image_size,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=num_layers,
        num_attention_heads=12,
        intermediate_size=3072,
        attn_implementation="sdpa",
    )
    return ViTModel(cfg, add_pooling_layer=False).eval()


def run_vision_bench(
    model: torch.nn.Module,
    configs: Sequence[RunConfig],
    batch_size: int = 8,
    image_size: int = 224,
    repeats: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Time and count each config against the unreduced model on random images."""
    fam, _ = resolve_family(model)
    dims = fam.dims(model)
    protected = fam.default_protected(model)
    image_size = int(model.config.image_size)
    patch_size = int(model.config.patch_size)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    n_tokens = (image_size // patch_size) ** 2 + protected
    lengths = torch.full((batch_size,), n_tokens)
    base_macs = total_macs(encoder_cost(dims, lengths))

    @torch.inference_mode()
    def run() -> torch.Tensor:
        return model(pixel_values=pixels).last_hidden_state

    ref = run()[:, 0]
    base_mem = peak_memory(run)["peak_bytes"]
    rows: list[dict[str, Any]] = [
        {
            "config": "none",
            "flops_ratio": 1.0,
            "gmacs_per_image": base_macs / batch_size / 1e9,
            "speedup": 1.0,
            "final_tokens": n_tokens,
        }
    ]
    for cfg in tqdm(configs, desc="configs", disable=not progress, unit="cfg"):
        m = make_method(cfg.method, **cfg.params)

        def reduced(m=m) -> torch.Tensor:
            patch(model, m)
            try:
                return run()
            finally:
                unpatch(model)

        cls = reduced()[:, 0]
        mem = peak_memory(reduced)["peak_bytes"]
        tb, tr = time_pair(run, reduced, repeats=repeats)
        mac = total_macs(encoder_cost(dims, lengths, m, protected))
        rows.append(
            {
                "config": cfg.label,
                "flops_ratio": mac / base_macs,
                "gmacs_per_image": mac / batch_size / 1e9,
                "speedup": tb.median_s / tr.median_s,
                "time_s": tr.median_s,
                "base_time_s": tb.median_s,
                "throughput": batch_size / tr.median_s,
                "base_throughput": batch_size / tb.median_s,
                "final_tokens": layer_widths(lengths, dims.layers, m, protected)[-1][1],
                "cls_cosine": torch.nn.functional.cosine_similarity(cls, ref, dim=-1).mean().item(),
                "mem_ratio": mem / base_mem if base_mem > 0 else None,
            }
        )
    if len(rows) > 1:  # the baseline's throughput: median over its interleaved timings
        rows[0]["throughput"] = statistics.median(r["base_throughput"] for r in rows[1:])
    meta = {
        "machine": machine_info(),
        "model": type(model).__name__,
        "layers": dims.layers,
        "hidden": dims.hidden,
        "batch_size": batch_size,
        "image_size": image_size,
        "repeats": repeats,
        "flops_unit": "MACs (FLOPs = 2 x MACs)",
        "weights": "random (speed only)",
        "memory": "peak tensor memory of one batch (allocator events)",
        "base_mem_bytes": base_mem,
    }
    return {"meta": meta, "rows": rows}
