"""CDPruner: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", arXiv 2506.10967 (NeurIPS 2025). A DPP over the visual tokens whose kernel is their similarity conditioned
on relevance to the instruction; the kept set is its greedy MAP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.diversity import cosine_self, dpp_greedy_map
from .base import BeforeMethod, Unit, register


def relevance(emb: Tensor, text: Tensor | None) -> Tensor:
    """Each visual token's relevance (n,) to the instruction: mean cosine to the text tokens, min-max scaled to
    [0, 1]; all ones without text (or when every token is equally relevant)."""
    n = emb.shape[0]
    if text is None or text.shape[0] == 0:
        return torch.ones(n, dtype=torch.promote_types(emb.dtype, torch.float32), device=emb.device)
    work = torch.promote_types(emb.dtype, torch.float32)
    e = emb.to(work) / emb.to(work).norm(dim=-1, keepdim=True).clamp(min=1e-12)
    t = text.to(work) / text.to(work).norm(dim=-1, keepdim=True).clamp(min=1e-12)
    r = (e @ t.T).mean(1)
    span = r.max() - r.min()
    return (r - r.min()) / span if span > 0 else torch.ones_like(r)


def conditional_kernel(emb: Tensor, text: Tensor | None) -> Tensor:
    """CDPruner's kernel diag(r) S diag(r): cosine similarity S of the visual tokens, weighted by relevance r."""
    r = relevance(emb, text)
    return r[:, None] * cosine_self(emb) * r[None, :]


@register
@dataclass(frozen=True)
class CDPruner(BeforeMethod):
    """CDPruner (Zhang et al., arXiv 2506.10967): greedy MAP of a conditional DPP on the visual tokens.

    The kernel is the tokens' cosine similarity scaled by each token's relevance to the instruction (the text
    after the image), min-max scaled to [0, 1]. The paper embeds the instruction with the vision tower's paired
    CLIP text encoder; a Hugging Face VLM carries no text tower, so relevance here is the cosine between the
    projected visual tokens and the instruction's LLM input embeddings (the space both enter the LLM in).
    Without text after the image it is a plain DPP on similarity. Greedy MAP uses the fast Cholesky update
    (Chen et al., NeurIPS 2018).
    """

    name: ClassVar[str] = "cdpruner"
    needs_text: ClassVar[bool] = True

    def pick(self, emb: Tensor, text: Tensor | None, k: int) -> Tensor:
        """Ascending kept indices of one image."""
        return torch.sort(dpp_greedy_map(conditional_kernel(emb, text), k)).values

    def reduce(self, emb, grid, cls, k):
        idx = self.pick(emb, None, k)
        return idx, emb[idx]

    def reduce_all(self, units: list[Unit]) -> list[tuple[Tensor, Tensor]]:
        out = []
        for u in units:
            idx = self.pick(u.emb, u.text, u.k)
            out.append((idx, u.emb[idx]))
        return out

    def image_macs(self, n, k, hidden, vision_width):
        """The similarity and the Cholesky rows of the greedy MAP (relevance: see :meth:`extra_macs`)."""
        return n * n * hidden + n * k * (k - 1) // 2

    def extra_macs(self, shape, counts, images, text_after, vision_width):
        """Per reduced image: :meth:`image_macs` plus its relevance to the ``text_after`` instruction tokens
        (exact for one image; with several, the text between images counts for the earlier ones too)."""
        return sum(
            self.image_macs(h * w, self.budget(h * w), shape.hidden, vision_width) + h * w * text_after * shape.hidden
            for h, w in images
            if self.budget(h * w) < h * w
        )
