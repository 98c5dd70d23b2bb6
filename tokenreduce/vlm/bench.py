"""Prefill cost and agreement of visual-token methods on a LLaVA model, against the unpruned model in-process.

Per method x budget: measured prefill MACs (FlopCounterMode, vision tower + scoring included), the LLM's
analytic MACs on the full LLaVA-1.5-7B depth (paper layer settings), median prefill time (round-robin
with the unpruned model so drift hits all alike), KV-cache bytes, next-token KL and greedy agreement.
Without pretrained weights the two quality columns only show that pruning changes the output.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..bench.flops import measured_flops
from ..kv.bench import kl_rows
from .families import Llava, find_vlm
from .flops import DecoderShape, prefill_macs, token_counts
from .methods import VisualMethod, make_vlm_method
from .patch import patch_vlm

BEFORE = ["fastervlm", "visionzip", "visual-tome", "visual-random", "visual-pool"]
INSIDE = ["fastv", "pdrop", "text-guided"]
LLAVA15_7B = DecoderShape(4096, 11008, 32, 32, 32, 128, 32000)


def llava15_config(llm_layers: int = 8, vision_layers: int = 6):
    """LLaVA-1.5-7B's real layer sizes (CLIP ViT-L/14-336 + Vicuna-7B) with fewer layers, for CPU."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=llm_layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=31999)


def random_llava(cfg, seed: int = 0) -> nn.Module:
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(cfg).eval()


def synthetic_inputs(model: nn.Module, prefix: int = 35, question: int = 40, seed: int = 0) -> dict:
    """A LLaVA-1.5-style prompt: system text, one image's placeholders, a question; random pixels."""
    cfg = model.config
    vc = cfg.vision_config
    n_img = (vc.image_size // vc.patch_size) ** 2
    g = torch.Generator().manual_seed(seed)
    hi = min(cfg.text_config.vocab_size, cfg.image_token_id) - 1
    ids = torch.cat(
        [
            torch.randint(2, hi, (prefix,), generator=g),
            torch.full((n_img,), cfg.image_token_id),
            torch.randint(2, hi, (question,), generator=g),
        ]
    )[None]
    pixels = torch.randn(1, 3, vc.image_size, vc.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def processor_inputs(model_path: str, image_path: str, prompt: str) -> dict:
    """Real inputs for a local checkpoint: its own processor, an image file and a question.

    Uses the processor's chat template when it has one, else LLaVA-1.5's ``USER: <image>\n... ASSISTANT:``.
    """
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_path)
    image = Image.open(image_path).convert("RGB")
    if getattr(proc, "chat_template", None):
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = proc.apply_chat_template(chat, add_generation_prompt=True)
    else:
        text = f"USER: {proc.image_token}\n{prompt} ASSISTANT:"
    return dict(proc(images=image, text=text, return_tensors="pt"))


def _kv_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def _run(model: nn.Module, x: dict, steps: int) -> tuple[torch.Tensor, list[int], int]:
    """Prefill (last-token logits, KV bytes) and ``steps`` greedy tokens."""
    out = model(**x, use_cache=True, logits_to_keep=1)
    logits, kv = out.logits[0, -1], _kv_bytes(out.cache)
    toks = [int(logits.argmax())]
    for _ in range(steps - 1):
        out = model(input_ids=torch.tensor([[toks[-1]]], device=logits.device), cache=out.cache, use_cache=True)
        toks.append(int(out.logits[0, -1].argmax()))
    return logits, toks, kv


def _counted(model: nn.Module, x: dict, steps: int):
    """MACs of one prefill plus its decode steps, and what :func:`_run` returns."""
    box: list = []
    flops = measured_flops(lambda: box.append(_run(model, x, steps)))
    return flops // 2, box[0]


def bench_vlm(
    model: nn.Module,
    x: dict,
    methods: Iterable[str],
    tokens: Iterable[int],
    repeats: int = 3,
    steps: int = 8,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (method, visual tokens kept per image), plus the unpruned baseline row."""
    family = find_vlm(model)
    if type(family) is not Llava:  # one fixed-grid image; LLaVA-NeXT's crops would need their own layouts
        raise ValueError("bench vlm runs on LLaVA-1.5-style models (LlavaForConditionalGeneration)")
    configs: list[VisualMethod | None] = [None] + [make_vlm_method(m, tokens=t) for t in tokens for m in methods]
    grid = _grid(model)
    n, text_after = x["input_ids"].shape[1], int(x["input_ids"].shape[1] - 1 - _last_image(x, family.image_token_id))
    shape = DecoderShape.of(model.config.text_config)
    vision_width = model.config.vision_config.hidden_size
    base_logits, base_toks, rows = None, None, []
    for cfg in configs:
        if progress:
            progress(cfg.name if cfg else "unpruned")
        with _patched(model, cfg):
            macs, (logits, toks, kv) = _counted(model, x, steps)
        if cfg is None:
            base_logits, base_toks, base_kv, base_macs = logits, toks, kv, macs
        full = LLAVA15_7B
        rows.append(
            {
                "method": cfg.name if cfg else "unpruned",
                "stage": cfg.stage if cfg else "-",
                "visual_tokens": cfg.tokens if cfg else grid[0] * grid[1],
                "llm_avg_tokens": round(_avg_tokens(shape, cfg, n, grid), 1),
                "macs": macs,
                "macs_ratio": round(macs / base_macs, 3),
                "llm7b_macs_ratio": round(
                    prefill_macs(full, cfg, n, [grid], text_after, vision_width=vision_width)
                    / prefill_macs(full, None, n, [grid], text_after),
                    3,
                ),
                "kv_ratio": round(kv / base_kv, 3),
                "kl_next": float(kl_rows(base_logits[None], logits[None])[0]),
                "greedy_agree": sum(a == b for a, b in zip(toks, base_toks)) / len(toks),
            }
        )
    times = _round_robin(model, x, configs, repeats, progress)
    for row, t in zip(rows, times):
        row["prefill_s"] = round(statistics.median(t), 3)
        row["time_ratio"] = round(statistics.median(t) / statistics.median(times[0]), 3)
    return rows


def _round_robin(
    model: nn.Module, x: dict, configs: list, repeats: int, progress, per_config: bool = True
) -> list[list[float]]:
    """Prefill times per config, visiting every config once per round (warm-up round untimed).

    ``progress`` is called once per config per round (``per_config``), or once per round: each CLI's
    bar total is counted in those steps."""
    times: list[list[float]] = [[] for _ in configs]
    for r in range(repeats + 1):
        if progress and not per_config:
            progress(f"timing round {r}/{repeats}")
        for i, cfg in enumerate(configs):
            if progress and per_config:
                progress(f"timing round {r}/{repeats}: {cfg.name if cfg else 'unpruned'}")
            with _patched(model, cfg), torch.no_grad():
                t0 = time.perf_counter()
                model(**x, use_cache=True, logits_to_keep=1)
                dt = time.perf_counter() - t0
            if r:
                times[i].append(dt)
    return times


class _patched:
    def __init__(self, model, cfg):
        self.model, self.cfg, self.h = model, cfg, None

    def __enter__(self):
        if self.cfg is not None:
            self.h = patch_vlm(self.model, self.cfg)

    def __exit__(self, *exc):
        if self.h is not None:
            self.h.remove()


def _grid(model) -> tuple[int, int]:
    vc = model.config.vision_config
    g = vc.image_size // vc.patch_size
    return g, g


def _last_image(x: dict, image_token: int) -> int:
    return int((x["input_ids"][0] == image_token).nonzero().max())


def _avg_tokens(shape: DecoderShape, cfg, n: int, grid) -> float:
    counts = token_counts(cfg, n, [grid], shape.layers)
    return sum(counts) / len(counts)
