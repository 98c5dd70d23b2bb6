"""LLaVA-NeXT-Video (and the shared shape of LLaVA-style video inputs): every frame is encoded alone and
pooled to a fixed grid, so a video's placeholder run is frames x (rows x cols) tokens with 1-D positions.

Video methods only: images of these models take LLaVA-NeXT's AnyRes path, which this adapter does not map
(an image method is refused at patch time; images in a prompt pass through a video method untouched).
"""

from __future__ import annotations

from torch import Tensor

from ..methods import VisualMethod
from .base import Video, VLMFamily, runs


class FrameGridVideo(VLMFamily):
    """A family whose videos are runs of frames of one fixed token grid, optionally followed by ``trailing``
    tokens that belong to the video but are never reduced (LLaVA-OneVision's newline)."""

    trailing = 0

    def __init__(self, outer):
        super().__init__(outer)
        self.video_token_id = outer.config.video_token_id

    def frame_grid(self) -> tuple[int, int]:
        raise NotImplementedError  # pragma: no cover

    def check(self, method: VisualMethod) -> None:
        if not getattr(method, "needs_video", False):
            raise ValueError(f"{self.name}: only video methods are supported (images use AnyRes, not mapped here)")
        super().check(method)

    def videos(self, ids: Tensor, inputs: dict) -> list[list[Video]]:
        """Each placeholder run is one video; its frames are its length (less the trailing tokens) over the grid."""
        h, w = self.frame_grid()
        rows, count = [], 0
        for r in range(ids.shape[0]):
            row = []
            for i, j in runs((ids[r] == self.video_token_id).tolist()):
                n = j - i - self.trailing
                if n <= 0 or n % (h * w):
                    raise ValueError(f"{self.name}: a video run of {j - i} tokens is not whole {h}x{w} frames")
                row.append(Video(i, n // (h * w), (h, w), count))
                count += 1
            rows.append(row)
        return rows


class LlavaNextVideo(FrameGridVideo):
    name = "llava-next-video"
    model_classes = frozenset({"LlavaNextVideoModel"})

    def frame_grid(self):
        cfg = self.outer.config
        g = cfg.vision_config.image_size // cfg.vision_config.patch_size
        s = cfg.spatial_pool_stride
        return (g // s, g // s)
