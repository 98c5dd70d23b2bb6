"""Video inputs of VLMs: video-token methods (:mod:`.methods`, registered with the image methods), the runner
that applies them to every video of a prefill (:mod:`.runner`), and streaming video under a fixed budget
(:mod:`.stream`). ``tokenreduce.patch(qwen2vl, "dycoke", keep=0.25)`` reduces the video tokens of every
prefill; images in the same prompt pass through.
"""

from . import methods
from .base import VideoMethod, VideoUnit
from .methods import VIDEO_METHODS
from .stream import VideoStream

__all__ = ["VIDEO_METHODS", "VideoMethod", "VideoStream", "VideoUnit", "methods"]
