"""Prefill cost of video methods on a Qwen2.5-VL-7B-shaped model, and the streaming session's memory.

``bench_video``: per method x share of the visual tokens kept, measured prefill MACs (``FlopCounterMode``: the
LLM layers built, the LM head, the method's own work), the LLM's analytic MACs at the full 28-layer depth,
median prefill time round-robin with the unreduced model in the same process, KV bytes at 28 layers (what each
layer stores: PruneVid's KV stage prunes every layer) and ``decode_read_ratio``, the KV entries a decoding step
attends to over 28 layers against the unreduced model's (DyCoke's decode stage reads fewer than are stored).
The rows of the methods' stages inside the LLM (:data:`STAGED`) use the papers' layers at 28 layers and the
built model's last layer when it has fewer; their 28-layer time estimate is left out (nan), since their layers
differ.
The vision tower is not run (every method reduces after it, so it is the same for all): the video's
encoder outputs are random tensors of the right shape, handed to the model as ``generate`` does.

``bench_stream``: a :class:`~.stream.VideoStream` fed that many random frames, its held tokens after every
frame, and at checkpoints the answer's prefill time and the process's peak RSS while answering (Linux: the
high-water mark reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ...bench.flops import measured_flops
from ..flops import DecoderShape, prefill_macs
from ..methods import make_vlm_method
from ..patch import patch_vlm
from .base import VideoMethod, VideoUnit
from .stream import VideoStream

QWEN25_7B = DecoderShape(3584, 18944, 28, 28, 4, 128, 152064)
KV_BYTES_PER_TOKEN = QWEN25_7B.layers * 2 * QWEN25_7B.kv_heads * QWEN25_7B.head_dim * 2  # K and V, bf16

# Rows of the methods' stages inside the LLM, at the papers' settings (the row's keep is the budget before the
# LLM): DyCoke L = 3, pruning 70 % of the video's KV entries while decoding; HoliTom K = 3, r = 0.5; PruneVid
# rating in layer 10, alpha = 0.4. On a model built with fewer layers the stage sits before its last layer.
STAGED = {
    "dycoke+kv": ("dycoke", {"kv_keep": 0.3, "kv_layer": 3}),
    "holitom+llm": ("holitom", {"llm_keep": 0.5, "llm_layer": 3}),
    "prunevid+kv": ("prunevid", {"kv_keep": 0.4, "kv_layer": 11}),
}


def make_video_method(name: str, keep: float, depth: int | None = None) -> VideoMethod:
    """A video method or a :data:`STAGED` row keeping ``keep`` before the LLM; ``depth``: the LLM's layers, to
    which a stage's layer is clamped (None: the paper's layer)."""
    base, params = STAGED.get(name, (name, {}))
    if depth is not None:
        params = {k: (min(v, depth - 1) if k.endswith("_layer") else v) for k, v in params.items()}
    method = make_vlm_method(base, keep=keep, **params)
    if not isinstance(method, VideoMethod):
        raise ValueError(f"{name} is not a video method")
    return method


def qwen25_7b(llm_layers: int = 1, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Qwen2.5-VL-7B's real widths (LLM 3584 / MLP 18944 / 28 heads / 4 KV heads / vocabulary 152064; vision
    merger out 3584) with ``llm_layers`` decoder layers and a one-block vision tower, random weights in
    ``dtype`` (bfloat16: the released weights' type). The LM head shares the embedding matrix (the real model's
    is separate; same MACs, 1.1 GB less memory)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=llm_layers,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                          "rope_theta": 1000000.0}),
        vision_config=dict(depth=1, hidden_size=1280, out_hidden_size=3584, num_heads=16, intermediate_size=3420,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[0], tokens_per_second=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()


def video_prompt(model: nn.Module, frames: int, grid: tuple[int, int], prefix: int = 14, question: int = 24,
                 seed: int = 0, motion: float = 0.5) -> dict:
    """Prompt ids (system text, <vision_start> video <vision_end>, question) and random encoder outputs for a
    video of ``frames`` temporal groups of ``grid`` LLM tokens; ``motion`` sets how much each frame departs
    from the one before (temporal methods need some redundancy to find)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    p = grid[0] * grid[1]
    text = _text_ids(cfg)
    ids = torch.cat([torch.randint(1, text, (prefix,), generator=g), torch.tensor([cfg.vision_start_token_id]),
                     torch.full((frames * p,), cfg.video_token_id), torch.tensor([cfg.vision_end_token_id]),
                     torch.randint(1, text, (question,), generator=g)])[None]
    width = cfg.text_config.hidden_size
    x = torch.randn(1, p, width, generator=g)
    out = [x]
    for _ in range(frames - 1):
        x = (x + motion * torch.randn(1, p, width, generator=g)) / (1 + motion**2) ** 0.5
        out.append(x)
    feats = torch.cat(out, 1)[0].to(model.dtype)
    m = cfg.vision_config.spatial_merge_size
    types = 2 * (ids == cfg.video_token_id).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types,
            "video_grid_thw": torch.tensor([[frames, grid[0] * m, grid[1] * m]]),
            "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=(feats,))}}


def _text_ids(cfg) -> int:
    """Ordinary token ids are drawn below the first special (vision) token id."""
    return min(cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id)


def _call(model: nn.Module, x: dict) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            inputs = {**x, "mm_encoder_outputs": dict(x["mm_encoder_outputs"])}  # the model writes into it
            return model(**inputs, logits_to_keep=1)

    return run


def bench_video(model: nn.Module, x: dict, methods: list[str], fractions: list[float], repeats: int = 3,
                progress: Callable[[str], None] | None = None, count: bool = True) -> list[dict]:
    """Rows per method x kept share (and the unreduced baseline first); times are round-robin medians after one
    warm-up prefill. ``count``: measure MACs with ``FlopCounterMode`` (one more prefill per row); otherwise
    ``macs`` is the formula's (which the tests hold equal to the counter)."""
    grid_thw = x["video_grid_thw"][0].tolist()
    m = model.config.vision_config.spatial_merge_size
    video = (grid_thw[0], grid_thw[1] // m, grid_thw[2] // m)
    n_vis = video[0] * video[1] * video[2]
    ids = x["input_ids"][0]
    n = len(ids)
    text_after = n - 1 - int((ids == model.config.video_token_id).nonzero().max())
    layers = model.config.text_config.num_hidden_layers
    configs: list[tuple[str, VideoMethod | None]] = [("unreduced", None)]
    configs += [(name, make_video_method(name, f, layers)) for name in methods for f in fractions]
    full = [None] + [make_video_method(name, f) for name in methods for f in fractions]  # at 28 layers
    shape = DecoderShape.of(model.config.text_config)
    rows = []
    for (name, method), method28 in zip(configs, full):
        row = {"method": name, "keep": 1.0 if method is None else method.keep}
        row["visual_tokens"] = n_vis if method is None else method.kept_video(video[0], video[1:])
        row["llm_macs_formula"] = prefill_macs(shape, method, n, [video], text_after)
        row["macs"], row["macs_measured"] = row["llm_macs_formula"], count
        if count:
            handle = None if method is None else patch_vlm(model, method)
            try:
                row["macs"] = measured_flops(_call(model, x)) // 2
            finally:
                if handle is not None:
                    handle.remove()
        row["llm28_macs"] = prefill_macs(QWEN25_7B, method28, n, [video], text_after)
        mb_per_entry = KV_BYTES_PER_TOKEN / QWEN25_7B.layers / 2**20  # one token in one layer
        stored = [n] * QWEN25_7B.layers if method28 is None else method28.cache_counts(n, [video], QWEN25_7B.layers)
        read = stored if method28 is None else method28.decode_counts(n, [video], QWEN25_7B.layers)
        row["kv_mb_28l_bf16"] = sum(stored) * mb_per_entry
        row["decode_read_ratio"] = sum(read) / (n * QWEN25_7B.layers)  # KV entries a decoding step attends to
        row["times"] = []
        rows.append(row)
        if progress:
            progress(f"{name} macs")
    _call(model, x)()  # warm-up
    for _ in range(repeats):
        for row, (name, method) in zip(rows, configs):
            handle = None if method is None else patch_vlm(model, method)
            try:
                t0 = time.perf_counter()
                _call(model, x)()
                row["times"].append(time.perf_counter() - t0)
            finally:
                if handle is not None:
                    handle.remove()
            if progress:
                progress(f"{name} time")
    feats = x["mm_encoder_outputs"]["video"].pooler_output[0]
    start = int((ids == model.config.video_token_id).nonzero().min())
    query = model.get_input_embeddings()(ids[start + n_vis :])
    for row, (_name, method) in zip(rows, configs):  # the reducer alone, on the same features
        times = []
        for _ in range(repeats if method is not None else 0):
            unit = VideoUnit(feats, video[0], video[1:], method.video_budget(video[0], video[1:]), query)
            t0 = time.perf_counter()
            with torch.no_grad():
                method.reduce_video(unit)
            times.append(time.perf_counter() - t0)
        row["reduce_s"] = statistics.median(times) if times else 0.0
    base = rows[0]
    for row, (_name, method) in zip(rows, configs):
        row["prefill_s"] = statistics.median(row["times"])
        row["spread_s"] = max(row["times"]) - min(row["times"])
        row["macs_ratio"] = row["macs"] / base["macs"]
        row["llm28_macs_ratio"] = row["llm28_macs"] / base["llm28_macs"]
        row["time_ratio"] = row["prefill_s"] / base["prefill_s"]
        # 28 layers, estimated from the measured parts: the reducer once, the layers' share of the rest 28 times
        per_layer = max(0.0, row["prefill_s"] - row["reduce_s"]) / layers
        row["time28_ratio_est"] = (row["reduce_s"] + QWEN25_7B.layers * per_layer) / (
            QWEN25_7B.layers * base["prefill_s"] / layers)
        if method is not None and method.llm_stage() is not None:  # its layers differ: no per-layer estimate
            row["time28_ratio_est"] = float("nan")
        del row["times"]
    return rows


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_stream(model: nn.Module, frames: int, grid: tuple[int, int], budget: int, recent: int = 2,
                 old: float = 0.25, checkpoints: tuple[int, ...] = (), motion: float = 0.5, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Held tokens after every frame, and at each checkpoint frame the answer's prefill time and peak RSS."""
    g = torch.Generator().manual_seed(seed)
    width = model.config.text_config.hidden_size
    prompt = torch.randint(1, _text_ids(model.config), (14,), generator=g)
    question = torch.randint(1, _text_ids(model.config), (24,), generator=g)
    s = VideoStream(model, budget=budget, recent=recent, old=old, prompt=prompt)
    p = grid[0] * grid[1]
    x = torch.randn(p, width, generator=g)
    answers = []
    for f in range(1, frames + 1):
        x = (x + motion * torch.randn(p, width, generator=g)) / (1 + motion**2) ** 0.5
        s.add_features(x.to(model.dtype), grid)
        if f in checkpoints:
            ok = _peak_reset()
            t0 = time.perf_counter()
            s.logits(question)
            dt = time.perf_counter() - t0
            answers.append({"frame": f, "held": s.held, "unreduced_tokens": f * p, "prefill_s": dt,
                            "peak_rss_mb": _peak_mb() if ok else float("nan")})
            if progress:
                progress(f"frame {f}")
    return {"held": s.history, "answers": answers, "entries": [e.frames for e in s.entries]}
