"""What every video method is: a frozen dataclass with one budget per video, registered by name.

Video methods shrink each video's visual tokens before the LLM, looking at its frames (temporal token
groups) as well as each frame's (rows, cols) grid. They share the image methods' registry, so
``tokenreduce.patch(vlm, "dycoke", keep=0.25)`` finds them, and declare what they need as class
capabilities: ``needs_video`` (always; the patch refuses a family without video input), ``needs_query``
(the question text after the video rates the frames), ``merges`` (kept tokens are averages, not a subset).

Budgets, exactly one of: ``keep`` (fraction of a video's visual tokens), ``tokens`` (count per video) or
``per_frame`` (average count per frame, times the frames). A budget at or above the video's size keeps
it whole. Each kept token keeps the original (t, h, w) position of the token it stands for (a merged
token: its target's), so M-RoPE sees the video's true layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from torch import Tensor

from ...registry import check_field_types, is_int
from ..flops import DecoderShape
from ..methods.base import VisualMethod
from .llm import DecodeStage, PrefillStage


class VideoUnit(NamedTuple):
    """One video to reduce: embeddings (frames * rows * cols, C) frame-major, its frames, per-frame grid,
    budget, and the query's embeddings (q, C) (the text after the video; None when there is none)."""

    emb: Tensor
    frames: int
    grid: tuple[int, int]
    k: int
    query: Tensor | None = None


@dataclass(frozen=True)
class VideoMethod(VisualMethod):
    """A video-token method: ``reduce_video`` maps a :class:`VideoUnit` to ascending kept local indices (k,)
    and their embeddings (k, C)."""

    per_frame: int | None = None

    needs_video: ClassVar[bool] = True
    needs_query: ClassVar[bool] = False
    merges: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.per_frame is None:
            super().__post_init__()  # keep or tokens, with their messages
            return
        if self.keep is not None or self.tokens is not None:
            raise ValueError(
                f"{self.name}: give exactly one of keep (fraction in (0, 1]), tokens (per video, >= 1) "
                "or per_frame (tokens per frame, >= 1)"
            )
        if not is_int(self.per_frame) or self.per_frame < 1:
            raise ValueError(f"{self.name}: per_frame must be an int >= 1 (tokens per frame), got {self.per_frame!r}")
        check_field_types(self, self.name)

    def video_budget(self, frames: int, grid: tuple[int, int]) -> int:
        """Tokens a video of ``frames`` frames of ``grid`` keeps, in [1, its size]."""
        n = frames * grid[0] * grid[1]
        if self.per_frame is not None:
            k = self.per_frame * frames
        elif self.tokens is not None:
            k = self.tokens
        else:
            k = round(self.keep * n)
        return max(1, min(n, k))

    def kept_video(self, frames: int, grid: tuple[int, int]) -> int:
        """Tokens the method actually keeps (the budget, unless it rounds to whole frames or pooling cells)."""
        return self.video_budget(frames, grid)

    def reduce_video(self, unit: VideoUnit) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover

    def reduce_videos(self, units: list[VideoUnit]) -> list[tuple[Tensor, Tensor]]:
        """:meth:`reduce_video` for every video of a forward."""
        return [self.reduce_video(u) for u in units]

    def video_macs(self, frames: int, grid: tuple[int, int], k: int, hidden: int, query: int) -> int:
        """MACs of the method's own similarity products for one video reduced to ``k`` (``query``: query tokens)."""
        return 0

    # ---- stages inside the LLM (:mod:`.llm`), none by default ---------------------------------------------
    def llm_stage(self) -> PrefillStage | None:
        """A prefill stage inside the LLM after the reduction before it (HoliTom, PruneVid), or None."""
        return None

    def decode_stage(self) -> DecodeStage | None:
        """A stage at every decoding step (DyCoke's dynamic KV pruning), or None."""
        return None

    def check_depth(self, depth: int) -> None:
        """Refuse stage layers a ``depth``-layer LLM does not have (at patch time, before any compute)."""
        for st in (self.llm_stage(), self.decode_stage()):
            if st is not None and not 1 <= st.layer < depth:
                raise ValueError(f"{self.name}: {st.param} must be in [1, {depth - 1}] for a {depth}-layer LLM, "
                                 f"got {st.layer}")

    # ---- cost model (:func:`..flops.prefill_macs`): ``images`` are the videos' (frames, rows, cols) ----------
    def token_counts(self, n, images, depth):
        vis = sum(t * h * w for t, h, w in images)
        kept = sum(self.kept_video(t, (h, w)) for t, h, w in images)
        st = self.llm_stage()
        if st is None or not images:
            return [n - vis + kept] * depth
        return [n - vis + (kept if i < st.layer else st.count(kept)) for i in range(depth)]

    def cache_counts(self, n: int, images: list[tuple[int, int, int]], depth: int) -> list[int]:
        """Entries each layer's KV cache holds after the prefill (PruneVid also prunes the earlier layers')."""
        counts = self.token_counts(n, images, depth)
        st = self.llm_stage()
        return [counts[-1]] * depth if st is not None and st.prune_cache else counts

    def decode_counts(self, n: int, images: list[tuple[int, int, int]], depth: int) -> list[int]:
        """Entries a decoding step attends to in each layer (DyCoke's decode stage reads fewer than are stored)."""
        counts = self.cache_counts(n, images, depth)
        st = self.decode_stage()
        if st is None or not images:
            return counts
        kept = sum(self.kept_video(t, (h, w)) for t, h, w in images)
        read = max(1, round(st.share * kept))
        return [c if i < st.layer else c - kept + read for i, c in enumerate(counts)]

    def extra_macs(self, shape: DecoderShape, counts, images, text_after, vision_width):
        total = 0
        for t, h, w in images:
            k = self.video_budget(t, (h, w))
            if k < t * h * w:
                total += self.video_macs(t, (h, w), k, shape.hidden, text_after)
        st = self.llm_stage()
        if st is not None and images:
            total += st.macs(shape, counts, sum(self.kept_video(t, (h, w)) for t, h, w in images), text_after)
        return total
