"""Video-token methods, one per module, registered by name in the VLM method registry.

* temporal: :mod:`.dycoke` (DyCoke's temporal token merging);
* spatio-temporal: :mod:`.fastvid`, :mod:`.holitom`, :mod:`.prunevid`;
* query-aware: :mod:`.quota`;
* baselines: :mod:`.video_frames` (uniform frame subsampling), :mod:`.video_pool` (pooling per frame),
  :mod:`.video_random`.
"""

from .dycoke import DyCoke
from .fastvid import FastVID
from .holitom import HoliTom
from .prunevid import PruneVid
from .quota import QuoTA
from .video_frames import VideoFrames
from .video_pool import VideoPool
from .video_random import VideoRandom

VIDEO_METHODS = ("dycoke", "fastvid", "holitom", "prunevid", "quota", "video-frames", "video-pool", "video-random")

__all__ = [
    "VIDEO_METHODS", "DyCoke", "FastVID", "HoliTom", "PruneVid", "QuoTA", "VideoFrames", "VideoPool", "VideoRandom",
]
