"""Q-Filters: score keys by their projection on the principal direction of the model's own queries.

N. Godey, A. Devoto, Y. Zhao, S. Scardapane, P. Minervini, É. de la Clergerie, B. Sagot, "Q-Filters:
Leveraging QK Geometry for Efficient KV Cache Compression", arXiv:2503.02812 (2025).

Queries of a head are strongly anisotropic: most of them point along one direction ``u`` (the first
right singular vector of the head's queries, signed so the mean query projects positively), so
``q . k ~ (q . u)(k . u)`` and keys with a large ``k . u`` get attention from most queries. The score is
``k . u`` per KV head (``u`` from the queries of its GQA group, after RoPE, as the cached keys are).
No attention is computed and no query of the prompt is needed, so it also serves as a scorer.

``filters``: a file saved by :func:`save_filters` from :func:`tokenreduce.kv.calibrate.calibrate_qfilters`
(a few prompts through the model; the paper's offline calibration), loaded and checked at
construction and against the model. Empty (the default): each layer's directions come from the
prefill's own real queries (calibrated on the context itself, per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import scoring
from .base import LayerView, ScoringPress, Shape, register

KEY = "qfilters"  # tensor name in the file: (layers, kv heads, head dim) float32


def query_moments(queries: Tensor, weight: Tensor, n_kv_heads: int) -> tuple[Tensor, Tensor]:
    """Sums over the weighted queries (B, H, q, D) of each KV head's group: first moment (B, Hkv, D) and
    uncentered second moment (B, Hkv, D, D); ``weight`` (B, q) is 1 for queries to count, else 0."""
    b, h, q, d = queries.shape
    x = (queries.float() * weight[:, None, :, None]).reshape(b, n_kv_heads, (h // n_kv_heads) * q, d)
    return x.sum(2), x.transpose(-1, -2) @ x


def directions(first: Tensor, second: Tensor) -> Tensor:
    """Unit principal directions (..., D) of queries with these moments (the top eigenvector of the second
    moment = the first right singular vector), signed so the mean query projects positively."""
    _, vecs = torch.linalg.eigh(second.double())
    u = vecs[..., -1]  # eigenvalues ascending
    sign = torch.where((first.double() * u).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return (u * sign).float()


def save_filters(path: str | Path, filters: Tensor) -> None:
    """Save calibrated directions (layers, kv heads, head dim) for ``QFilters(filters=path)``."""
    if filters.ndim != 3:
        raise ValueError(f"qfilters: directions must be (layers, kv heads, head dim), got shape {tuple(filters.shape)}")
    save_file({KEY: filters.detach().float().contiguous().cpu()}, str(path))


def load_filters(path: str | Path) -> Tensor:
    """Directions saved by :func:`save_filters`; ValueError naming the problem if the file is not one."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"qfilters: filters file {str(path)!r} not found (make one with "
                         "tokenreduce.kv.calibrate.calibrate_qfilters and save_filters)")
    try:
        t = load_file(str(p))[KEY]
    except Exception as e:  # noqa: BLE001 - any unreadable file is refused with its reason
        raise ValueError(f"qfilters: {str(path)!r} is not a Q-Filters file ({type(e).__name__}: {e})") from None
    if t.ndim != 3 or not torch.isfinite(t).all():
        raise ValueError(f"qfilters: {str(path)!r} must hold finite (layers, kv heads, head dim) directions")
    return t


@register("qfilters")
@dataclass(frozen=True)
class QFilters(ScoringPress):
    """``k . u`` with ``u`` each KV head's principal query direction (from ``filters``, or the prefill's queries)."""

    filters: str = ""  # a file from save_filters; "" = directions from the prefill's own queries

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filters:
            object.__setattr__(self, "_directions", load_filters(self.filters))  # not a field: equality is the path

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        if not self.filters:
            return
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        want = (cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads), dim)
        got = tuple(self._directions.shape)
        if got != want:
            raise ValueError(f"qfilters: {self.filters!r} holds directions for (layers, kv heads, head dim) = {got}, "
                             f"this model needs {want}: calibrate on this model")

    def layer_directions(self, view: LayerView) -> Tensor:
        """(B, Hkv, D) directions for the view's layer."""
        if self.filters:
            u = self._directions[view.layer].to(view.keys.device)
            return u[None].expand(view.keys.shape[0], -1, -1)
        b, q = view.hidden.shape[:2]
        n = view.keys.shape[2]
        weight = view.valid[:, n - q:].float()
        first = second = None
        for s in range(0, q, 512):
            e = min(q, s + 512)
            x = scoring.window_queries(view.module, view.hidden[:, s:e], view.cos[:, s:e], view.sin[:, s:e])
            f, g = query_moments(x, weight[:, s:e], view.n_kv_heads)
            first, second = (f, g) if first is None else (first + f, second + g)
        return directions(first, second)

    def score(self, view: LayerView) -> Tensor:
        u = self.layer_directions(view)
        return torch.einsum("bhnd,bhd->bhn", view.keys.float(), u)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """Each key's projection on its head's direction; without a file also every query projected again and
        the queries' second moment per KV head (the eigendecomposition, D x D per KV head, is not a matmul)."""
        score = n * shape.kv_heads * shape.head_dim
        if self.filters:
            return score
        return score + n * shape.hidden * shape.heads * shape.head_dim + n * shape.heads * shape.head_dim ** 2
