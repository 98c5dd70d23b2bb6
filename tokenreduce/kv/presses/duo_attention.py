"""DuoAttention-style heads: retrieval heads keep their context, streaming heads only sinks + recent tokens.

G. Xiao, J. Tang, J. Zuo, J. Guo, S. Yang, H. Tang, Y. Fu, S. Han, "DuoAttention: Efficient Long-Context
LLM Inference with Retrieval and Streaming Heads", ICLR 2025 (arXiv:2410.10819).

Each KV head has a retrieval score; the ``streaming`` share of heads with the lowest scores become
streaming heads, which keep their first ``stream_sinks`` and last ``stream_recent`` real tokens; the
others are retrieval heads. The scores come from ``heads``: a file saved by :func:`save_heads` from
:func:`tokenreduce.kv.calibrate.calibrate_duo` (synthetic retrieval prompts through the model: how much
attention each head pays to a needle it has to look up; the paper optimizes gates on synthetic passkey
data instead), ranked across all layers as the paper does. Without a file, each row's heads are ranked
within each layer by how much attention the last ``window`` queries pay outside the sinks + recent
window (on the fly).

Storage is ragged (per-head lengths) and ``keep`` is the layer's budget shared among its heads: the
streaming heads' sinks + recent entries first, then the retrieval heads' entries (ranked by ``scorer``,
SnapKV's by default, when the budget cannot hold them all), then the streaming heads' others. With
``keep = 1 - streaming * (1 - (stream_sinks + stream_recent) / n)`` and heads spread evenly over layers
this is DuoAttention's cache exactly; a smaller ``keep`` also trims retrieval heads, a larger one gives
streaming heads more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ...registry import check_range
from ..select import real_rank
from .base import LayerView, RaggedPress, ScoringPress, Shape, register, window_macs
from .common import check_window, compose_scorer

KEY = "duo_heads"  # tensor name in the file: (layers, kv heads) retrieval scores


def save_heads(path: str | Path, scores: Tensor) -> None:
    """Save per-(layer, KV head) retrieval scores for ``DuoAttention(heads=path)``."""
    if scores.ndim != 2:
        raise ValueError(f"duo_attention: head scores must be (layers, kv heads), got shape {tuple(scores.shape)}")
    save_file({KEY: scores.detach().float().contiguous().cpu()}, str(path))


def load_heads(path: str | Path) -> Tensor:
    """Scores saved by :func:`save_heads`; ValueError naming the problem if the file is not one."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"duo_attention: heads file {str(path)!r} not found (make one with "
                         "tokenreduce.kv.calibrate.calibrate_duo and save_heads)")
    try:
        t = load_file(str(p))[KEY]
    except Exception as e:  # noqa: BLE001 - any unreadable file is refused with its reason
        raise ValueError(f"duo_attention: {str(path)!r} is not a DuoAttention heads file ({type(e).__name__}: {e})") \
            from None
    if t.ndim != 2 or not torch.isfinite(t).all():
        raise ValueError(f"duo_attention: {str(path)!r} must hold finite (layers, kv heads) scores")
    return t


def streaming_heads(scores: Tensor, share: float) -> Tensor:
    """Bool mask, True for the ``round(share * count)`` lowest-scored heads over all of ``scores`` (..., ties by
    index), per leading row when ``scores`` is (B, Hkv)."""
    flat = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores[None]
    k = round(share * flat.shape[-1])
    order = flat.argsort(dim=-1, stable=True)
    out = torch.zeros_like(flat, dtype=torch.bool)
    out.scatter_(-1, order[:, :k], True)
    return out.view(scores.shape) if scores.ndim > 1 else out[0]


@register("duo_attention")
@dataclass(frozen=True)
class DuoAttention(RaggedPress, ScoringPress):
    """The ``streaming`` share of KV heads keep ``stream_sinks`` + ``stream_recent`` tokens; ``keep``: layer budget."""

    heads: str = ""  # a file from save_heads; "" = heads ranked on the fly within each layer
    streaming: float = 0.5
    stream_sinks: int = 16
    stream_recent: int = 64
    window: int = 64  # on-the-fly ranking: the last queries whose attention is measured
    scorer: ScoringPress | str = "snapkv"  # ranks the retrieval heads' entries; a name becomes the press object
    min_share: float = 0.0  # per-head floor as a share of an even split (0 lets streaming heads shrink)

    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "streaming", self.streaming, 0.0, 1.0, hint=" (share of KV heads made streaming)")
        check_range(self.name, "stream_sinks", self.stream_sinks, 0)
        check_range(self.name, "stream_recent", self.stream_recent, 0)
        check_window(self.name, self.window)
        object.__setattr__(self, "scorer", compose_scorer(self, self.scorer))
        if self.heads:
            scores = load_heads(self.heads)
            object.__setattr__(self, "_streaming", streaming_heads(scores, self.streaming))  # not a field

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        if not self.heads:
            return
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        want = (cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads))
        if tuple(self._streaming.shape) != want:
            raise ValueError(f"duo_attention: {self.heads!r} scores (layers, kv heads) = {tuple(self._streaming.shape)}"
                             f", this model has {want}: calibrate on this model")

    def layer_streaming(self, view: LayerView) -> Tensor:
        """(B, Hkv) bool: the streaming heads of the view's layer for each row."""
        b = view.keys.shape[0]
        if self.heads:
            return self._streaming[view.layer].to(view.keys.device)[None].expand(b, -1)
        a = view.window_attention(self.window).mean(2)  # (B, H, N)
        a = a.view(b, view.n_kv_heads, -1, a.shape[-1]).mean(2)
        far = view.key_valid & ~self.stream_window(view.key_valid)
        return streaming_heads((a * (far if far.ndim == 3 else far[:, None])).sum(-1), self.streaming)

    def stream_window(self, valid: Tensor) -> Tensor:
        """The first ``stream_sinks`` and last ``stream_recent`` real entries of each row (``valid`` (B, N)), or of
        each row's KV head (``valid`` (B, Hkv, N): a ragged layer pressed again)."""
        rank = real_rank(valid)
        n_real = valid.sum(-1, keepdim=True)
        return valid & ((rank < self.stream_sinks) | (rank >= n_real - self.stream_recent))

    def score(self, view: LayerView) -> Tensor:
        assert isinstance(self.scorer, ScoringPress)  # made a press in __post_init__
        inner = self.scorer.score(view).float()
        valid = view.key_valid if view.key_valid.ndim == 3 else view.key_valid[:, None, :]
        real = valid.expand_as(inner) & torch.isfinite(inner)
        top = inner.masked_fill(~real, float("-inf")).amax(dim=(1, 2), keepdim=True)
        low = inner.masked_fill(~real, float("inf")).amin(dim=(1, 2), keepdim=True)
        top, low = top.nan_to_num(0.0, 0.0, 0.0), low.nan_to_num(0.0, 0.0, 0.0)  # no finite score: 0
        inner = torch.where(torch.isposinf(inner), top + 1.0, inner)  # the scorer's window: its best, finite
        streaming = self.layer_streaming(view)[:, :, None]  # (B, Hkv, 1)
        s = torch.where(streaming, inner, inner + (top - low) + 2.0)  # every retrieval entry above every streaming one
        window = self.stream_window(valid)
        return s.masked_fill(streaming & window, float("inf"))

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The scorer's, plus (heads ranked on the fly, no file) the window's attention that ranks the heads."""
        assert isinstance(self.scorer, ScoringPress)
        own = 0 if self.heads else window_macs(shape, min(self.window, n), n)
        return own + self.scorer.scoring_macs(shape, n)
