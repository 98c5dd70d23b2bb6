"""MCTF (training-free): token fusion by similarity × informativeness × size, matched both ways.

Lee, Choi and Kim, "Multi-criteria Token Fusion with One-step-ahead Attention for Efficient Vision
Transformers", CVPR 2024 (arXiv:2403.10030). Edge weight between an A and a B token (alternating
split, as in ToMe) is ``((cos + 1) / 2)^(1/τ_sim) · (ĩ_a ĩ_b)^(1/τ_info) · (s̃_a s̃_b)^(1/τ_size)``,
where ĩ is the inverse of the attention a token receives and s̃ the inverse of its size, each
divided by its row maximum: similar, uninformative, small tokens fuse first. Bidirectional
matching: ``r // 2`` A→B merges, then ``r − r // 2`` B→A merges against the A tokens left.
Fused tokens are averaged with weights attention-received × size.

Training-free variant: the paper's one-step-ahead attention (the next layer's attention) and its
consistency loss need fine-tuning; here informativeness is the current layer's attention. With
``info="attn"`` (the paper's) that is the column mean of the full attention: a reducing layer of a
Hugging Face family with the eager or SDPA backend computes its attention explicitly, a few heads at a
time, and takes the column sums from the same probabilities that give its output
(:func:`tokenreduce.core.scoring.attention_stats_blockwise`); other backends and families recompute
Q·Kᵀ and softmax next to their kernel (H·N²·d more MACs, not in :meth:`MCTF.cost_macs`). No (B, H, N, N)
tensor is held, but the scoring is inherently quadratic in N (H·N² MACs for the column sums, plus the
explicit softmax that replaces the fused kernel); ``info="cls"`` uses the [CLS] row instead
(O(N·d), SDPA-friendly); ``info="none"`` drops the criterion.

Default ``min_step=0.1`` (changed from 0 in issue 21, so results at the defaults changed): each reducing
layer removes at least 10 % of the row, smaller steps are taken early (same final count; at keep 0.7
over 6 layers, 3 reducing layers instead of 6). Per layer the scoring cost is fixed while the saving
grows with the step, and on all-MiniLM-L6-v2 (NQ passages, batch 32) 5 % steps made the model slower
than unreduced (0.96x); ``min_step=0`` restores one step per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...core.dims import ModelDims
from ...core.matching import NEG, bidirectional_merge, merge_into
from ...core.scoring import attention_received, attention_received_blockwise, cosine_matrix, received_stat
from .base import LayerTensors, Method, Plan, register

INFO = ("attn", "cls", "none")


def _inverse_normalized(v: Tensor, cand: Tensor) -> Tensor:
    inv = torch.where(cand, 1.0 / v.float().clamp(min=1e-12), 0.0)
    return inv / inv.amax(1, keepdim=True).clamp(min=1e-12)


@register("mctf")
@dataclass(frozen=True)
class MCTF(Method):
    """Multi-criteria token fusion: similarity × informativeness × size, bidirectional matching."""

    # default 0.1, not 0: a reducing layer pays a fixed, quadratic scoring cost (explicit attention in
    # place of the fused kernel, plus the statistic) that removing 5 % of a row does not repay (see the
    # module docstring); smaller steps are taken early instead, same final count
    min_step: float = 0.1
    tau_sim: float = 1.0
    tau_info: float = 20.0
    tau_size: float = 40.0
    info: str = "attn"
    metric: str = "hidden"  # the paper matches on the tokens themselves; "keys" as in ToMe
    prop_attn: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.info not in INFO:
            raise ValueError(f"mctf: info must be one of {INFO}, got {self.info!r}")
        if self.metric not in ("hidden", "keys"):
            raise ValueError(f"mctf: metric must be 'hidden' or 'keys', got {self.metric!r}")
        if min(float(self.tau_sim), float(self.tau_info), float(self.tau_size)) <= 0:
            raise ValueError("mctf: temperatures tau_sim, tau_info, tau_size must be > 0")

    cap = 0.5

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        extra = {"attn": {"attn_stat"}, "cls": {"cls_attn"}, "none": set()}[self.info]
        return frozenset(extra | ({"keys"} if self.metric == "keys" else set()))

    @property
    def proportional_attention(self) -> bool:  # type: ignore[override]
        return self.prop_attn

    def attention_stat(self) -> Callable[[Tensor, Tensor], Tensor] | None:
        return received_stat if self.info == "attn" else None

    def informativeness(self, t: LayerTensors) -> Tensor | None:
        if self.info == "attn":
            if t.attn_stat is not None:  # what the runner passes
                return t.attn_stat.mean(1)
            if t.attn is not None:  # given explicitly (tests, custom runners)
                return attention_received(t.attn, t.sizes > 0)
            return attention_received_blockwise(t.queries, t.keys_heads, t.scaling, t.sizes > 0, t.key_bias)
        return t.cls_attn if self.info == "cls" else None

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        b, n = t.sizes.shape
        p, dev = t.protected, t.sizes.device
        valid = t.sizes > 0
        cand = valid & (torch.arange(n, device=dev) >= p)
        a_idx, b_idx = torch.arange(p, n, 2, device=dev), torch.arange(p + 1, n, 2, device=dev)
        r = torch.minimum(n_remove, cand.sum(1) // 2)
        feats = t.keys if self.metric == "keys" else t.x
        w = ((cosine_matrix(feats[:, a_idx], feats[:, b_idx]).float() + 1) / 2) ** (1 / self.tau_sim)
        a = self.informativeness(t)
        if a is not None:
            ia = _inverse_normalized(a, cand)
            w = w * (ia[:, a_idx, None] * ia[:, None, b_idx]) ** (1 / self.tau_info)
        s = _inverse_normalized(t.sizes, cand)
        w = w * (s[:, a_idx, None] * s[:, None, b_idx]) ** (1 / self.tau_size)
        w = w.masked_fill(~cand[:, a_idx, None] | ~cand[:, None, b_idx], NEG)
        merged, partner = bidirectional_merge(w, a_idx, b_idx, valid, r, n)
        dst, n_out = merge_into(valid, merged, partner, hops=2)
        weights = t.sizes if a is None else torch.where(cand, a.to(t.sizes.dtype), 1.0) * t.sizes
        return Plan(dst, n_out, weights)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        u = n - protected
        sim = (u - u // 2) * (u // 2) * (dims.head_dim if self.metric == "keys" else dims.hidden)
        # "attn": the column sums as a (1, N) @ (N, N) product per head (the probabilities are the block's own)
        info = {"attn": dims.heads * n * n, "cls": dims.heads * n * dims.head_dim, "none": 0}
        return sim + info[self.info]
