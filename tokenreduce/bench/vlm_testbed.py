"""Quality testbed for visual-token methods: a small LLaVA trained here on digit scenes, and its held-out questions.

Scenes: a blank 96x96 canvas (a 12x12 grid of 8-px patches: 144 visual tokens + the tower's [CLS]) cut into
four 48x48 quadrants; three or four quadrants hold one scikit-learn 8x8 digit (Alpaydin & Kaynak, UCI) at a
random patch-aligned place, so a digit fills exactly one of the 144 tokens and 140-141 tokens are background:
an answer depends on 1-4 tokens. (A first version with 48x48 canvases of 4-px patches, each digit over 2x2
tokens, reached only 0.55 held-out accuracy in the training budget: its tower had to learn to join four
quarter-digits before the decoder could learn anything; with one token per digit the decoder's look-up, which
is what pruning can break, is what is learned.)
Questions, each answered by one word: which digit is in a corner (quadrant), how many of a digit there are,
the largest digit, whether a digit is there. The digits of training scenes come from the fixed train split of
:mod:`.vision_testbed`, those of held-out scenes from its test split, so the held-out set shows the model
digit samples it never saw. Scenes and questions are seeded NumPy (legacy ``RandomState``), stable across
versions.

The model (``LlavaForConditionalGeneration``: CLIP tower, MLP projector, Llama decoder, word-level tokenizer
and a ``LlavaProcessor``) is written by ``scripts/train_vlm_digits.py`` to ``tokenreduce/assets/vlm_digits``.
"""

from __future__ import annotations

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

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "vlm_digits"
CANVAS = 96
PATCH = 8
GRID = CANVAS // PATCH  # 12 x 12 = 144 visual tokens
DIGIT = 8  # pixels: a digit covers one patch
QUAD = CANVAS // 2
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")  # quadrant order
QTYPES = ("corner", "count", "largest", "exists")
IMAGE_TOKEN = "<image>"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]
TEST_SEED = 1234
TEST_QUESTIONS = 400  # 100 per type


@dataclass(frozen=True)
class Scene:
    """One canvas (48, 48) uint8 and its digits: per quadrant the label or -1, and each digit's top-left patch."""

    image: np.ndarray
    labels: tuple[int, ...]  # per quadrant (CORNERS order); -1 = empty
    cells: tuple[tuple[int, int], ...]  # per quadrant: (row, col) of the digit's top-left patch, (-1, -1) if empty


@dataclass(frozen=True)
class Example:
    scene: Scene
    qtype: str
    question: str
    answer: str


def question_text(qtype: str, arg: int | str) -> str:
    if qtype == "corner":
        return f"What digit is in the {arg} corner?"
    if qtype == "count":
        return f"How many {arg}s are there?"
    if qtype == "largest":
        return "What is the largest digit?"
    if qtype == "exists":
        return f"Is there a {arg}?"
    raise ValueError(f"question type must be one of {QTYPES}, got {qtype!r}")


def prompt(question: str, image_tokens: int = GRID * GRID) -> str:
    """LLaVA-1.5's plain form (what :func:`tokenreduce.vlm.bench.processor_inputs` writes without a template),
    with the image placeholder already expanded to one token per patch."""
    return f"USER: {IMAGE_TOKEN * image_tokens}\n{question} ASSISTANT:"


def vocabulary() -> list[str]:
    """Every word of every prompt and answer (the word-level tokenizer's vocabulary after the specials)."""
    words = {"USER", ":", "ASSISTANT", "yes", "no", *map(str, range(10))}
    for q in QTYPES:
        for arg in CORNERS if q == "corner" else range(10):
            words |= set(_split(question_text(q, arg)))
    return sorted(words)


def build_tokenizer():
    """The word-level fast tokenizer (``tokenizers`` WordLevel + Whitespace), as a transformers tokenizer."""
    return word_tokenizer(SPECIALS + vocabulary(), {"image_token": IMAGE_TOKEN})


def build_processor(tokenizer):
    """A ``LlavaProcessor`` whose pixels equal :func:`pixels` (no resize or crop; x/255 mapped to [-1, 1])."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_proc = CLIPImageProcessor(
        do_resize=False,
        do_center_crop=False,
        size={"shortest_edge": CANVAS},
        crop_size={"height": CANVAS, "width": CANVAS},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the tower's [CLS], dropped by the "default" strategy
    )


def make_scene(digits: np.ndarray, labels: np.ndarray, rng: np.random.RandomState) -> Scene:
    """Three or four quadrants get a random digit sample each, at a random patch-aligned place inside them."""
    image = np.zeros((CANVAS, CANVAS), np.uint8)
    filled = rng.choice(4, size=rng.randint(3, 5), replace=False)
    quad_labels, cells = [-1] * 4, [(-1, -1)] * 4
    span = (QUAD - DIGIT) // PATCH + 1  # places per axis inside a quadrant
    for q in sorted(filled.tolist()):
        i = rng.randint(len(labels))
        r = (q // 2) * (QUAD // PATCH) + rng.randint(span)
        c = (q % 2) * (QUAD // PATCH) + rng.randint(span)
        image[r * PATCH : r * PATCH + DIGIT, c * PATCH : c * PATCH + DIGIT] = digits[i]
        quad_labels[q], cells[q] = int(labels[i]), (r, c)
    return Scene(image, tuple(quad_labels), tuple(cells))


def ask(scene: Scene, qtype: str, rng: np.random.RandomState) -> Example:
    """A question of ``qtype`` about ``scene``; the asked-about digit is one in the scene half the time."""
    present = [d for d in scene.labels if d >= 0]
    if qtype == "corner":
        q = int(rng.choice([i for i, d in enumerate(scene.labels) if d >= 0]))
        return Example(scene, qtype, question_text(qtype, CORNERS[q]), str(scene.labels[q]))
    if qtype == "largest":
        return Example(scene, qtype, question_text(qtype, 0), str(max(present)))
    d = int(rng.choice(present)) if rng.rand() < 0.5 else int(rng.randint(10))
    if qtype == "count":
        return Example(scene, qtype, question_text(qtype, d), str(present.count(d)))
    return Example(scene, qtype, question_text(qtype, d), "yes" if d in present else "no")


def make_examples(split: str, n: int, seed: int) -> list[Example]:
    """``n`` examples of the ``split``'s digits, question types in turn (so each type has n/4)."""
    digits, labels = _digit_pixels(split)
    rng = np.random.RandomState(seed)
    return [ask(make_scene(digits, labels, rng), QTYPES[i % len(QTYPES)], rng) for i in range(n)]


def heldout(n: int = TEST_QUESTIONS) -> list[Example]:
    """The fixed held-out questions (test-split digits); the first ``n`` of the same sequence for any n."""
    return make_examples("test", n, TEST_SEED)


def pixels(scenes: list[Scene]) -> Tensor:
    """(N, 3, 48, 48) float pixels in [-1, 1], grey copied to three channels (what the processor gives)."""
    x = torch.from_numpy(np.stack([s.image for s in scenes])).float() / 255.0
    return ((x - 0.5) / 0.5)[:, None].expand(-1, 3, -1, -1).contiguous()


def batch_inputs(tokenizer, examples: list[Example]) -> dict[str, Tensor]:
    """Model inputs for examples whose prompts have the same length (no padding); see :func:`batches`."""
    ids = [tokenizer(prompt(e.question), add_special_tokens=False)["input_ids"] for e in examples]
    if len({len(i) for i in ids}) != 1:
        raise ValueError("batch_inputs needs prompts of one length; group them with batches()")
    t = torch.tensor(ids)
    return {"input_ids": t, "attention_mask": torch.ones_like(t), "pixel_values": pixels([e.scene for e in examples])}


def batches(tokenizer, examples: list[Example], size: int) -> list[tuple[list[int], dict[str, Tensor]]]:
    """(example indices, inputs) batches of at most ``size`` prompts of equal length, so nothing is padded."""
    def length(e: Example) -> int:
        return len(tokenizer(prompt(e.question), add_special_tokens=False)["input_ids"])

    return equal_length_batches(examples, length, lambda part: batch_inputs(tokenizer, part), size)


def load_vlm_digits(asset_dir: Path | str = ASSET_DIR):
    """(model in eval mode, tokenizer) of the committed checkpoint, offline."""
    return load_checkpoint(asset_dir, "LlavaForConditionalGeneration", "scripts/train_vlm_digits.py")


def testbed_info(asset_dir: Path | str = ASSET_DIR) -> dict[str, Any]:
    """What training recorded (``testbed.json``): held-out accuracy, sizes, command."""
    return read_info(asset_dir, "scripts/train_vlm_digits.py")


def is_testbed(path: Path | str) -> bool:
    """Whether ``path`` is a digits-VLM checkpoint (its ``testbed.json`` names this testbed)."""
    return names_testbed(path, "vlm_digits")


def answer_ids(model, tokenizer, examples: list[Example], batch_size: int = 50) -> list[int]:
    """The greedy next token (the answer word's id) of every example, in ``examples`` order."""
    return greedy_answers(model, batches(tokenizer, examples, batch_size), len(examples))
