"""The stages video methods run inside the LLM, after their reduction before it (pure tensor functions).

* a prefill stage before decoder layer ``layer`` (HoliTom's inner-LLM merging, PruneVid's question-guided KV
  pruning): the video tokens still present are rated by attention rebuilt from the previous layer's input
  (:mod:`tokenreduce.kv.scoring`, so SDPA keeps working), the best ``share`` of them stay; HoliTom averages
  every other one into its most similar kept token, PruneVid drops it (and from the earlier layers' caches);
* a decode stage (DyCoke's dynamic KV pruning): at every decoding step the current token's attention in layer
  ``layer - 1`` picks the video entries that layers ``layer..`` attend to (their attention is handed only
  those, :class:`ChosenEntries`); the others stay stored, unread in this step, so a later step can bring
  them back.

The runner (:mod:`.runner`) calls these; kept tokens keep their original (t, h, w) or 1-D positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...core.assign import apply_assignment
from ...kv.scoring import window_attention, window_keys, window_queries
from ..flops import DecoderShape, scoring_macs
from ..methods.base import last_token_attention
from .ops import unit


def question_attention(
    attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, vis: Tensor, valid: Tensor | None
) -> Tensor:
    """(B, N) largest attention any question token (a real token after the row's last video token) pays each
    token, over heads and question tokens (PruneVid's rating). A row with no question uses its last token."""
    b, n = vis.shape
    pos = torch.arange(n, device=vis.device)
    last_vis = torch.where(vis, pos, -1).max(1).values
    w = max(1, int((n - 1 - last_vis).max()))
    keys = window_keys(attn, x, cos, sin)
    q = window_queries(attn, x[:, -w:], cos[:, -w:], sin[:, -w:])
    a = window_attention(q, keys, attn.scaling, valid)  # (B, H, w, N)
    asks = pos[-w:][None] > last_vis[:, None]
    if valid is not None:
        asks &= valid[:, -w:]
    asks[:, -1] |= ~asks.any(1)
    return a.masked_fill(~asks[:, None, :, None], 0.0).amax(dim=(1, 2))


def keep_top_visual(scores: Tensor, vis: Tensor, k: int) -> Tensor:
    """(B, N) keep mask: every non-visual token, and each row's ``k`` best-scored visual tokens (ties: lower
    index first)."""
    masked = torch.where(vis, scores.float(), float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    return (~vis).scatter(1, order, True)


def merge_dropped(hidden: Tensor, vis: Tensor, keep: Tensor) -> Tensor:
    """``hidden`` (B, N, C) where every dropped visual token (``vis & ~keep``) is averaged into the kept visual
    token it is most similar to (cosine of the states): a kept token becomes the mean of itself and the tokens
    merged into it. Rows hold the same numbers of kept and dropped visual tokens."""
    b, _n, c = hidden.shape
    kept_v, drop_v = vis & keep, vis & ~keep
    if not bool(drop_v.any()):
        return hidden
    ki = kept_v.nonzero()[:, 1].view(b, -1)  # (B, k) ascending
    di = drop_v.nonzero()[:, 1].view(b, -1)  # (B, m)
    hk = hidden.gather(1, ki[..., None].expand(-1, -1, c))
    hd = hidden.gather(1, di[..., None].expand(-1, -1, c))
    best = (unit(hd) @ unit(hk).transpose(1, 2)).argmax(-1)  # (B, m) slot of the most similar kept token
    k = ki.shape[1]
    slots = torch.cat([torch.arange(k, device=hidden.device).expand(b, k), best], 1)
    work = torch.cat([hk, hd], 1).to(torch.promote_types(hidden.dtype, torch.float32))
    merged, _ = apply_assignment(work, work.new_ones(work.shape[:2]), slots, k)
    return hidden.scatter(1, ki[..., None].expand(-1, -1, c), merged.to(hidden.dtype))


@dataclass(frozen=True)
class PrefillStage:
    """A stage before decoder ``layer``: keep ``share`` of the video tokens present (at least one per row),
    rated by ``rater`` ("last": the last token's attention; "question": the question's), ``merge`` the others
    into their most similar kept token or drop them; ``prune_cache``: also drop them from layers < ``layer``'s
    caches (PruneVid keeps only the selected video tokens in every layer's KV cache)."""

    layer: int
    share: float
    rater: str = "last"
    merge: bool = False
    prune_cache: bool = False
    param: str = "layer"  # the method's parameter that sets ``layer`` (error messages)

    RATERS: ClassVar[tuple[str, ...]] = ("last", "question")

    def count(self, present: int) -> int:
        """Video tokens kept out of ``present``."""
        return max(1, min(present, round(self.share * present)))

    def select(self, attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, vis: Tensor, valid: Tensor | None) -> Tensor:
        """(B, N) keep mask over the current tokens."""
        rate = question_attention(attn, x, cos, sin, vis, valid) if self.rater == "question" else (
            last_token_attention(attn, x, cos, sin, valid))
        return keep_top_visual(rate, vis, self.count(int(vis[0].sum())))

    def macs(self, shape: DecoderShape, counts: list[int], visual: int, text_after: int) -> int:
        """Rating (the previous layer's keys for all tokens, the raters' queries, their products) and, when
        merging, the dropped x kept similarities; ``visual``: video tokens entering the stage."""
        kept = self.count(visual)
        if kept >= visual:
            return 0
        window = max(1, text_after) if self.rater == "question" else 1
        total = scoring_macs(shape, counts[self.layer - 1], window)
        if self.merge:
            total += (visual - kept) * kept * shape.hidden
        return total


@dataclass(frozen=True)
class DecodeStage:
    """DyCoke's decode-time KV pruning: layers ``layer..`` attend, at each step, to the ``share`` of the video's
    cached entries the current token attends to most in layer ``layer - 1`` (heads averaged); the choice is
    made again when that attention's cosine with the previous step's falls below ``refresh``."""

    layer: int
    share: float
    refresh: float
    param: str = "kv_layer"  # the method's parameter that sets ``layer`` (error messages)


@dataclass(frozen=True)
class DecodeState:
    """What a decode stage keeps on the cache between steps: the prompt's video tokens (B, N0), the previous
    step's attention over layer ``layer - 1``'s mapped entries (B, E0) and the chosen original tokens (B, N0)."""

    visual: Tensor
    last: Tensor | None = None
    chosen: Tensor | None = None


def decode_select(stage: DecodeStage, state: DecodeState, scores: Tensor, index: Tensor, real: Tensor) -> DecodeState:
    """One decoding step of :class:`DecodeStage`: ``scores`` (B, E0) the current token's attention over the
    first E0 (mapped) entries of layer ``layer - 1``, whose original tokens are ``index`` (B, E0; -1: an entry
    standing for no single token) and which are tokens where ``real``. Returns the state after this step."""
    cand = real & (index >= 0) & state.visual.gather(1, index.clamp(min=0))
    a = torch.where(cand, scores.float(), 0.0)
    k = (stage.share * cand.sum(1).double()).round().long().clamp(min=1)  # per row, at most its candidates
    order = torch.sort(torch.where(cand, a, float("-inf")), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(a.shape[1], device=a.device).expand_as(order))
    top = cand & (rank < k[:, None])
    rows, cols = top.nonzero(as_tuple=True)
    chosen = torch.zeros_like(state.visual)
    chosen[rows, index[rows, cols]] = True  # onto the original tokens
    if state.last is None:
        return DecodeState(state.visual, a, chosen)
    same = torch.nn.functional.cosine_similarity(a, state.last, dim=1) >= stage.refresh
    return DecodeState(state.visual, a, torch.where(same[:, None], state.chosen, chosen))


class ChosenEntries:
    """Stands in for the cache in one decoder layer's attention during a decoding step: ``update`` stores the new
    entries in ``cache`` as usual and returns only the stored entries ``take`` (B, K) -- the chosen video entries,
    the text and the new tokens -- so attention reads K entries instead of all (DyCoke's gathered KV)."""

    def __init__(self, cache, take: Tensor):
        self.cache, self.take = cache, take

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        keys, values = self.cache.update(key_states, value_states, *args, **kwargs)
        idx = self.take[:, None, :, None]
        return (keys.gather(2, idx.expand(-1, keys.shape[1], -1, keys.shape[3])),
                values.gather(2, idx.expand(-1, values.shape[1], -1, values.shape[3])))


def chosen_entries(entries: Tensor, stored: int) -> tuple[Tensor, Tensor]:
    """For a step's 2-D mask ``entries`` (B, E + q) over a layer's ``stored`` = E entries and q new ones: the
    entries to read, (B, K + q) (each row's visible stored entries in order, padded to the longest row, then the
    new ones), and the mask over them (the padding slots masked)."""
    seen = entries[:, :stored].bool()
    k = int(seen.sum(1).max())
    order = torch.sort((~seen).to(torch.uint8), dim=1, stable=True).indices[:, :k]  # visible first, in order
    q = entries.shape[1] - stored
    new = torch.arange(stored, stored + q, device=entries.device).expand(entries.shape[0], q)
    return torch.cat([order, new], 1), torch.cat([seen.gather(1, order), entries[:, stored:].bool()], 1)
