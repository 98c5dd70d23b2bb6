"""The hooks of :class:`~tokenreduce.vlm.runner.VLMRunner`, reducing each video's tokens instead of images'.

Everything after the reduction is the image runner's: every later layer gets the kept tokens' rows of the
rotary embeddings, (t, h, w) M-RoPE positions and mask; the cache records which original token each entry
stands for (the shared provenance map), so ``generate`` and KV presses work unchanged. Images in the same
prompt pass through.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kv.cache import cache_of
from ..families.base import VLMFamily, has_videos
from ..runner import VLMRunner, _assemble, _empty, _same_count
from ..state import CURRENT, Forward
from .base import VideoMethod, VideoUnit


class VideoRunner(VLMRunner):
    """Hook callbacks applying a :class:`VideoMethod` to every video of a prefill."""

    method: VideoMethod

    def __init__(self, family: VLMFamily, method: VideoMethod):
        if family.video_token_id is None:
            raise ValueError(f"{method.name} reduces video tokens; {family.name} takes no video input (qwen2-vl does)")
        super().__init__(family, method)

    def outer_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not has_videos(kwargs) or not _empty(cache_of(kwargs)):
            CURRENT.set(None)
            return self._decode_positions(ids, args, kwargs)
        if ids is None:
            raise ValueError("video-token reduction needs input_ids (to find the video tokens), not inputs_embeds")
        rows = self.family.videos(ids, kwargs)
        CURRENT.set(Forward(rows, visual=ids == self.family.video_token_id, n=ids.shape[1]))
        return None

    def _reduce(self, index: int, fwd: Forward, hidden: Tensor) -> Tensor:
        kept, hidden = self._videos(fwd, hidden)
        fwd.kept = kept
        return hidden

    def _videos(self, fwd: Forward, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Every video -> its reduced tokens; text and images kept. Returns kept (B, K) and the states."""
        units: list[VideoUnit] = []
        todo: list[list] = []
        plans = []
        for b, videos in enumerate(fwd.images):
            plans.append([])
            for v in videos:
                emb = hidden[b, v.start : v.start + v.n]
                k = self.method.video_budget(v.frames, v.grid)
                entry = [torch.arange(v.n, device=hidden.device), emb]
                if k < v.n:
                    units.append(VideoUnit(emb, v.frames, v.grid, k, self._query(fwd, hidden, b, v.start + v.n)))
                    todo.append(entry)
                plans[-1].append((v, [entry]))
        for entry, (loc, red) in zip(todo, self.method.reduce_videos(units), strict=True):
            entry[0], entry[1] = loc, red
        rows = [_assemble(hidden[b], row) for b, row in enumerate(plans)]
        _same_count(torch.tensor([len(idx) for idx, _x in rows]), "keep different numbers of tokens")
        return torch.stack([idx for idx, _x in rows]), torch.stack([x for _idx, x in rows])

    def _query(self, fwd: Forward, hidden: Tensor, b: int, end: int) -> Tensor | None:
        """The embeddings of the row's real tokens after the video (the question), for query-aware methods."""
        if not self.method.needs_query:
            return None
        after = hidden[b, end:]
        if fwd.valid is not None:
            after = after[fwd.valid[b, end:]]
        return after
