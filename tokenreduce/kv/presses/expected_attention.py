"""Expected attention: the attention future queries are expected to pay each key, from query statistics.

A. Devoto, M. Jeblick, S. Jégou, "Expected Attention: KV Cache Compression by Estimating Attention from
Future Queries Distribution", arXiv:2510.00636 (2025); kvpress's ``ExpectedAttentionPress``.

The queries of the prefill (before RoPE, the first ``sinks`` real tokens left out as outliers) are
summarized by their mean ``mu`` and covariance ``S`` per head. The next ``future`` positions' RoPE is
averaged into one matrix ``R`` (the mean over positions of cos I + sin P, P the model's ``rotate_half``),
so a future query is modelled as Gaussian with mean ``R mu`` and covariance ``R S R^T``. For a Gaussian
query the expected unnormalized attention is ``exp(s k.R mu + s^2 k.R S R^T k / 2)`` (``s`` the layer's
scaling); its softmax over the row's real keys, averaged over each GQA group, times the value norm
(``vnorm``) is the score. The future positions' rotation is extended from the last two positions'
``cos``/``sin`` (each channel's step angle and the rotary scaling are read from them), so any rotary
variant the model computed is used as is; a forward of one token, or a family whose queries are recorded
already rotated (GPT-2, GPT-NeoX, Phi-3, OLMo 2), gets no extra rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...registry import check_range
from .. import scoring
from ..select import real_rank
from .base import LayerView, ScoringPress, Shape, register


def future_rotation(cos: Tensor, sin: Tensor, future: int) -> tuple[Tensor, Tensor]:
    """Mean (cos, sin) (B, D) over the ``future`` positions after the last of ``cos``/``sin`` (B, q, D),
    each channel advancing by the angle between the last two positions (none when q == 1)."""
    c1, s1 = cos[:, -1].double(), sin[:, -1].double()
    if cos.shape[1] < 2:
        return c1.new_ones(c1.shape), c1.new_zeros(c1.shape)
    c0, s0 = cos[:, -2].double(), sin[:, -2].double()
    step = torch.atan2(s1 * c0 - c1 * s0, c1 * c0 + s1 * s0)  # per-channel angle per position
    scale, phase = torch.sqrt(c1 * c1 + s1 * s1), torch.atan2(s1, c1)
    t = torch.arange(1, future + 1, dtype=torch.float64, device=cos.device)
    angle = phase[:, None, :] + t[None, :, None] * step[:, None, :]  # (B, F, D)
    return (scale * torch.cos(angle).mean(1)).float(), (scale * torch.sin(angle).mean(1)).float()


def rotation_matrix(c: Tensor, s: Tensor) -> Tensor:
    """(B, D, D) matrix of ``x -> c * x + s * rotate_half(x)`` for per-channel (B, D) ``c``/``s``."""
    d = c.shape[-1]
    eye = torch.eye(d, device=c.device)
    p = scoring.rotate_half(eye).T  # P @ x == rotate_half(x)
    return c[:, :, None] * eye + s[:, :, None] * p


def query_moments(view: LayerView, skip: int, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Mean (B, H, D) and covariance (B, H, D, D) of the forward's pre-RoPE queries over its real tokens,
    the first ``skip`` real tokens of the row left out; accumulated ``chunk`` queries at a time."""
    b, q = view.hidden.shape[:2]
    d = view.keys.shape[-1]
    n = view.keys.shape[2]
    valid_q = view.valid[:, n - q:]
    use = (valid_q & (real_rank(view.valid)[:, n - q:] >= skip)).float()  # (B, q)
    total = first = second = None
    ones, zeros = view.cos.new_ones(b, 1, d), view.cos.new_zeros(b, 1, d)
    for s in range(0, q, chunk):
        e = min(q, s + chunk)
        h = view.hidden[:, s:e]
        x = scoring.window_queries(view.module, h, ones.expand(b, e - s, d), zeros.expand(b, e - s, d)).float()
        w = use[:, None, s:e, None]
        x = x * w
        f, g = x.sum(2), torch.einsum("bhqi,bhqj->bhij", x, x)
        first = f if first is None else first + f
        second = g if second is None else second + g
        c = w.sum(2)
        total = c if total is None else total + c
    count = total.clamp(min=1.0)  # (B, 1, 1)
    mu = first / count
    cov = second / count[..., None] - mu[..., :, None] * mu[..., None, :]
    return mu, cov


@register("expected_attention")
@dataclass(frozen=True)
class ExpectedAttention(ScoringPress):
    """Softmax of the expected attention logits of the next ``future`` queries, times the value norm.

    ``covariance``: include the queries' covariance (False = the mean query only); ``vnorm``: rescale by
    the value norms, ``(score + epsilon) * |v|``. The first ``sinks`` real tokens (4 by default, as kvpress)
    are kept and left out of the query statistics.
    """

    sinks: int = 4
    future: int = 512
    covariance: bool = True
    vnorm: bool = True
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "future", self.future, 1, hint=" (future positions averaged)")
        check_range(self.name, "epsilon", self.epsilon, 0.0)

    def score(self, view: LayerView) -> Tensor:
        mu, cov = query_moments(view, self.sinks)
        c, s = future_rotation(view.cos, view.sin, self.future)
        rot = rotation_matrix(c, s)[:, None]  # (B, 1, D, D)
        mu = (rot @ mu[..., None])[..., 0]  # (B, H, D)
        b, h, d = mu.shape
        hkv, n = view.keys.shape[1], view.keys.shape[2]
        keys = view.keys.float()[:, :, None].expand(b, hkv, h // hkv, n, d).reshape(b, h, n, d)
        scale = float(view.module.scaling)
        logits = torch.einsum("bhnd,bhd->bhn", keys, mu) * scale
        if self.covariance:
            cov = rot @ cov @ rot.transpose(-1, -2)
            logits = logits + 0.5 * scale * scale * torch.einsum("bhni,bhij,bhnj->bhn", keys, cov, keys)
        scored = view.valid & (real_rank(view.valid) >= self.sinks)  # sinks: kept, outside the softmax
        a = torch.softmax(logits.masked_fill(~scored[:, None], float("-inf")), dim=-1).nan_to_num_(0.0)
        out = scoring.group_mean(a, hkv)
        if self.vnorm:
            out = (out + self.epsilon) * view.values.float().norm(dim=-1)
        return out

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """Every query projected again (pre-RoPE) and summed into its second moment (``n * D^2`` per head), the
        mean query rotated, and each key's expected logit per query head; with ``covariance`` also the
        covariance rotated (two ``D^3`` products per head) and each key's quadratic form (``n * (D^2 + D)``
        per head)."""
        h, d = shape.heads, shape.head_dim
        macs = n * shape.hidden * h * d + h * n * d * d + h * d * d + h * n * d
        if self.covariance:
            macs += 2 * h * d ** 3 + h * n * (d * d + d)
        return macs
