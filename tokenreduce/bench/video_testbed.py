"""Quality testbed for video-token methods: a small Qwen2-VL trained here on videos of moving digits.

Videos: 8 frames of 32x32 pixels (a 4x4 grid of 8-px patches: 16 visual tokens per frame, 128 per video; the
tower's temporal patch is one frame and nothing is merged, so every frame is its own temporal group and every
visual token is one patch). One to three scikit-learn 8x8 digits (Alpaydin & Kaynak, UCI) of distinct classes
enter one after another: each is visible for two or three consecutive frames, on one row, moving one patch left
or right per frame, and no two are visible in the same frame. A digit always fills exactly one token, so an
answer depends on a few of the 128 tokens and on *when* they occur.

Questions, each answered by one word, that need time (no single frame answers them):

- ``first``: "Which digit appears first?" (2-3 digits; answer 0-9),
- ``last``: "Which digit appears last?" (2-3 digits; answer 0-9),
- ``count``: "How many different digits appear?" (answer 1, 2 or 3 with equal odds),
- ``direction``: "Does the first digit move left or right?" (answer left or right with equal odds).

The tower (Qwen2-VL's ViT) attends within a frame only and has no time input, so order and motion reach the
model only through where the tokens sit: their order and their M-RoPE (t, h, w) positions in the decoder,
which token reduction must keep. The digits of training videos come from the fixed train split of
:mod:`.vision_testbed`, those of held-out videos from its test split. Videos and questions are seeded NumPy
(legacy ``RandomState``), stable across versions.

The model (``Qwen2VLForConditionalGeneration``: ViT tower with 8-px patches, temporal patch 1, merge 1; Qwen2
decoder with 3-D M-RoPE; word-level tokenizer and a ``Qwen2VLProcessor``) is written by
``scripts/train_video_digits.py`` to ``tokenreduce/assets/video_digits``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .testbed_common import accuracy as accuracy  # re-exported: the testbed's API
from .testbed_common import digit_pixels as _digit_pixels  # the training script's name
from .testbed_common import (
    equal_length_batches,
    greedy_answers,
    load_checkpoint,
    names_testbed,
    read_info,
    word_tokenizer,
)
from .testbed_common import split_words as _split

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "video_digits"
FRAMES = 8
SIZE = 32  # frame side in pixels
PATCH = 8
GRID = SIZE // PATCH  # 4 x 4 = 16 visual tokens per frame
TOKENS = FRAMES * GRID * GRID  # 128 visual tokens per video
DIGIT = 8  # pixels: a digit covers one patch
QTYPES = ("first", "last", "count", "direction")
VIDEO_TOKEN = "<|video_pad|>"
IMAGE_TOKEN = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END]
TEST_SEED = 4321
TEST_QUESTIONS = 400  # 100 per type


@dataclass(frozen=True)
class Video:
    """Frames (8, 32, 32) uint8 and the digits in the order they appear: label, first and last visible frame,
    row and column (in patches) at the first frame, and direction (+1 right, -1 left)."""

    frames: np.ndarray
    labels: tuple[int, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]  # inclusive
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    moves: tuple[int, ...]

    def cell(self, i: int, t: int) -> tuple[int, int] | None:
        """(row, col) of digit ``i`` in frame ``t``, or None when it is not visible then."""
        if not self.starts[i] <= t <= self.ends[i]:
            return None
        return self.rows[i], self.cols[i] + self.moves[i] * (t - self.starts[i])


@dataclass(frozen=True)
class Example:
    video: Video
    qtype: str
    question: str
    answer: str


def question_text(qtype: str) -> str:
    if qtype == "first":
        return "Which digit appears first?"
    if qtype == "last":
        return "Which digit appears last?"
    if qtype == "count":
        return "How many different digits appear?"
    if qtype == "direction":
        return "Does the first digit move left or right?"
    raise ValueError(f"question type must be one of {QTYPES}, got {qtype!r}")


def prompt(question: str, video_tokens: int = TOKENS) -> str:
    """A plain "USER: <video> question ASSISTANT:" prompt, the video placeholder already expanded to one token
    per patch (``video_tokens=1``: the unexpanded text the processor takes)."""
    return f"USER: {VISION_START}{VIDEO_TOKEN * video_tokens}{VISION_END}\n{question} ASSISTANT:"


def vocabulary() -> list[str]:
    """Every word of every prompt and answer (the word-level tokenizer's vocabulary after the specials)."""
    words = {"USER", ":", "ASSISTANT", "left", "right", *map(str, range(10))}
    for q in QTYPES:
        words |= set(_split(question_text(q)))
    return sorted(words)


def build_tokenizer():
    """The word-level fast tokenizer (``tokenizers`` WordLevel + Whitespace), as a transformers tokenizer."""
    return word_tokenizer(SPECIALS + vocabulary(), {"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN,
                                                    "vision_start_token": VISION_START, "vision_end_token": VISION_END})


PROCESSOR_KWARGS: dict[str, Any] = {
    "do_resize": False,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "patch_size": PATCH,
    "temporal_patch_size": 1,
    "merge_size": 1,
    "size": {"shortest_edge": SIZE * SIZE, "longest_edge": SIZE * SIZE},
}


def build_processor(tokenizer):
    """A ``Qwen2VLProcessor`` whose video pixels equal :func:`video_pixels` (no resize; x/255 mapped to [-1, 1];
    8-px patches, one frame per temporal patch, no merge). transformers' video processors need torchvision."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**PROCESSOR_KWARGS),
        video_processor=Qwen2VLVideoProcessor(**PROCESSOR_KWARGS, do_sample_frames=False,
                                              cap_pixels_per_frame=False),
        tokenizer=tokenizer,
    )


def save_processor(tokenizer, out: Path | str) -> None:
    """Write the tokenizer and the processor's configs (what :func:`build_processor` would save) to ``out``, so
    ``AutoProcessor.from_pretrained`` loads a ``Qwen2VLProcessor``; written as JSON here because transformers'
    video processors cannot be built without torchvision, which this project does not install."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    image = {**PROCESSOR_KWARGS, "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
    video = {**PROCESSOR_KWARGS, "video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False,
             "cap_pixels_per_frame": False, "processor_class": "Qwen2VLProcessor"}
    for name, cfg in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video),
                      ("processor_config.json", {"processor_class": "Qwen2VLProcessor"})):
        (out / name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def make_video(digits: np.ndarray, labels: np.ndarray, rng: np.random.RandomState, count: int,
               by_label: list[np.ndarray] | None = None) -> Video:
    """``count`` digits of distinct classes, one after another: each visible 2-3 frames on a random row, moving
    one patch a frame in a random direction, with random gaps between them (no two visible at once)."""
    classes = rng.choice(10, size=count, replace=False)
    lengths = rng.randint(2, 4, size=count)
    while lengths.sum() > FRAMES:
        lengths[int(np.argmax(lengths))] -= 1
    gaps = rng.multinomial(FRAMES - int(lengths.sum()), [1.0 / (count + 1)] * (count + 1))
    frames = np.zeros((FRAMES, SIZE, SIZE), np.uint8)
    starts, ends, rows, cols, moves = [], [], [], [], []
    t = 0
    for i in range(count):
        t += int(gaps[i])
        n = int(lengths[i])
        move = 1 if rng.rand() < 0.5 else -1
        row = int(rng.randint(GRID))
        span = GRID - n + 1  # first columns that keep the digit inside the frame
        col = int(rng.randint(span)) if move > 0 else GRID - 1 - int(rng.randint(span))
        lab = int(classes[i])
        pool = np.flatnonzero(labels == lab) if by_label is None else by_label[lab]
        sample = digits[pool[rng.randint(len(pool))]]
        for j in range(n):
            c = col + move * j
            frames[t + j, row * PATCH : row * PATCH + DIGIT, c * PATCH : c * PATCH + DIGIT] = sample
        starts.append(t)
        ends.append(t + n - 1)
        rows.append(row)
        cols.append(col)
        moves.append(move)
        t += n
    return Video(frames, tuple(int(c) for c in classes), tuple(starts), tuple(ends), tuple(rows), tuple(cols),
                 tuple(moves))


def ask(video: Video, qtype: str, rng: np.random.RandomState) -> Example:
    """A question of ``qtype`` about ``video`` (``rng``: for question types that pick an argument; none does now).

    Direction asks about the first digit rather than a named one: with "Does the 3 move left or right?" the
    decoder learned each token's move (per-token accuracy 1.0) and the other types (0.92-1.0) but never the
    look-up of the named digit's tokens in 1,200 steps (direction stayed at the majority answer)."""
    if qtype == "first":
        return Example(video, qtype, question_text(qtype), str(video.labels[0]))
    if qtype == "last":
        return Example(video, qtype, question_text(qtype), str(video.labels[-1]))
    if qtype == "count":
        return Example(video, qtype, question_text(qtype), str(len(video.labels)))
    if qtype == "direction":
        return Example(video, qtype, question_text(qtype), "right" if video.moves[0] > 0 else "left")
    raise ValueError(f"question type must be one of {QTYPES}, got {qtype!r}")


def digits_for(qtype: str, rng: np.random.RandomState) -> int:
    """How many digits a video asked ``qtype`` holds: 2-3 for first/last (so order matters), else 1-3."""
    return int(rng.randint(2, 4)) if qtype in ("first", "last") else int(rng.randint(1, 4))


def make_examples(split: str, n: int, seed: int) -> list[Example]:
    """``n`` examples of the ``split``'s digits, question types in turn (so each type has n/4)."""
    digits, labels = _digit_pixels(split)
    by_label = [np.flatnonzero(labels == k) for k in range(10)]
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        q = QTYPES[i % len(QTYPES)]
        out.append(ask(make_video(digits, labels, rng, digits_for(q, rng), by_label), q, rng))
    return out


def heldout(n: int = TEST_QUESTIONS) -> list[Example]:
    """The fixed held-out questions (test-split digits); the first ``n`` of the same sequence for any n."""
    return make_examples("test", n, TEST_SEED)


def video_pixels(videos: list[Video]) -> Tensor:
    """(N * 128, 192) flattened patches, what ``Qwen2VLVideoProcessor`` gives (grey copied to three channels,
    x/255 mapped to [-1, 1]; per frame, patches row-major, each patch channel-major)."""
    x = torch.from_numpy(np.stack([v.frames for v in videos])).float() / 255.0
    x = (x - 0.5) / 0.5  # (N, T, H, W)
    n = x.shape[0]
    p = x.view(n, FRAMES, GRID, PATCH, GRID, PATCH).permute(0, 1, 2, 4, 3, 5)  # (N, T, gh, gw, ph, pw)
    p = p[:, :, :, :, None].expand(-1, -1, -1, -1, 3, -1, -1)  # channels
    return p.reshape(n * TOKENS, 3 * PATCH * PATCH).contiguous()


def _ids(tokenizer, question: str) -> list[int]:
    return tokenizer(prompt(question), add_special_tokens=False)["input_ids"]


def batch_inputs(tokenizer, examples: list[Example]) -> dict[str, Tensor]:
    """Model inputs (``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values_videos``,
    ``video_grid_thw``) for examples whose prompts have the same length (no padding); see :func:`batches`."""
    ids = [_ids(tokenizer, e.question) for e in examples]
    if len({len(i) for i in ids}) != 1:
        raise ValueError("batch_inputs needs prompts of one length; group them with batches()")
    t = torch.tensor(ids)
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    return {
        "input_ids": t,
        "attention_mask": torch.ones_like(t),
        "mm_token_type_ids": 2 * (t == video_id).long(),
        "pixel_values_videos": video_pixels([e.video for e in examples]),
        "video_grid_thw": torch.tensor([[FRAMES, GRID, GRID]] * len(examples)),
    }


def batches(tokenizer, examples: list[Example], size: int) -> list[tuple[list[int], dict[str, Tensor]]]:
    """(example indices, inputs) batches of at most ``size`` prompts of equal length, so nothing is padded."""
    return equal_length_batches(examples, lambda e: len(_ids(tokenizer, e.question)),
                                lambda part: batch_inputs(tokenizer, part), size)


def load_video_digits(asset_dir: Path | str = ASSET_DIR):
    """(model in eval mode, tokenizer) of the committed checkpoint, offline."""
    return load_checkpoint(asset_dir, "Qwen2VLForConditionalGeneration", "scripts/train_video_digits.py")


def testbed_info(asset_dir: Path | str = ASSET_DIR) -> dict[str, Any]:
    """What training recorded (``testbed.json``): held-out accuracy, sizes, command."""
    return read_info(asset_dir, "scripts/train_video_digits.py")


def is_testbed(path: Path | str) -> bool:
    """Whether ``path`` is a moving-digits video checkpoint (its ``testbed.json`` names this testbed)."""
    return names_testbed(path, "video_digits")


def answer_ids(model, tokenizer, examples: list[Example], batch_size: int = 50) -> list[int]:
    """The greedy next token (the answer word's id) of every example, in ``examples`` order."""
    return greedy_answers(model, batches(tokenizer, examples, batch_size), len(examples))
