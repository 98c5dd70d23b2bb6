"""What the trained question-answering testbeds (:mod:`.vlm_testbed`, :mod:`.video_testbed`) share: batches of
equal-length prompts (nothing padded), greedy one-word answers, accuracy per question type, and the
``testbed.json`` record training writes beside the weights."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .vision_testbed import raw_split


def digit_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 scikit-learn digits of a fixed split (:func:`.vision_testbed.raw_split`) as uint8 pixels 0-255,
    and their labels."""
    images, labels = raw_split(split)
    return np.rint(images * (255.0 / 16.0)).astype(np.uint8), labels


def split_words(text: str) -> list[str]:
    """What the word-level tokenizer's pre-tokenizer does (``tokenizers`` ``Whitespace``: runs of word
    characters, or of other non-space characters)."""
    return re.findall(r"\w+|[^\w\s]+", text)


def word_tokenizer(vocab: list[str], extra_special_tokens: dict[str, str]):
    """A word-level fast tokenizer (``tokenizers`` WordLevel + Whitespace) over ``vocab`` (ids in its order; it
    starts with ``<pad>``, ``<s>``, ``</s>``, ``<unk>``), as a left-padding transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=extra_special_tokens,
        padding_side="left",
    )


def equal_length_batches(
    examples: Sequence, length: Callable[[Any], int], inputs: Callable[[list], dict[str, Tensor]], size: int
) -> list[tuple[list[int], dict[str, Tensor]]]:
    """(example indices, ``inputs(examples)``) batches of at most ``size`` examples whose prompts have the same
    ``length``, so no batch needs padding."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_len[length(e)].append(i)
    out = []
    for idx in by_len.values():
        for s in range(0, len(idx), size):
            part = idx[s : s + size]
            out.append((part, inputs([examples[i] for i in part])))
    return out


@torch.inference_mode()
def greedy_answers(model, batched: list[tuple[list[int], dict[str, Tensor]]], n: int) -> list[int]:
    """The greedy next token (the answer word's id) of each of ``n`` examples, in example order."""
    out = [0] * n
    for idx, x in batched:
        pred = model(**x, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()
        for i, p in zip(idx, pred):
            out[i] = p
    return out


def accuracy(tokenizer, examples: Sequence, ids: list[int]) -> dict[str, float]:
    """Fraction right per question type (``e.qtype``) and ``overall``: the answer token equals ``e.answer``."""
    right: dict[str, list[bool]] = defaultdict(list)
    for e, i in zip(examples, ids):
        ok = tokenizer.convert_ids_to_tokens(i) == e.answer
        right[e.qtype].append(ok)
        right["overall"].append(ok)
    return {k: sum(v) / len(v) for k, v in right.items()}


def load_checkpoint(asset_dir: Path | str, model_class: str, script: str):
    """(model in eval mode, float32, tokenizer) of a committed testbed checkpoint, offline; ``model_class`` names
    the transformers class, ``script`` is what writes the checkpoint (named in the error when it is missing)."""
    import transformers

    path = Path(asset_dir)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no trained weights at {path}; run {script}")
    model = getattr(transformers, model_class).from_pretrained(str(path), dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(path))


def read_info(asset_dir: Path | str, script: str) -> dict[str, Any]:
    """What training recorded (``testbed.json``: held-out accuracy, sizes, command); ``script`` writes it."""
    path = Path(asset_dir) / "testbed.json"
    if not path.exists():
        raise FileNotFoundError(f"no trained testbed at {asset_dir}; run {script}")
    return json.loads(path.read_text())


def names_testbed(path: Path | str, name: str) -> bool:
    """Whether the checkpoint folder ``path`` holds a ``testbed.json`` naming the testbed ``name``."""
    p = Path(path) / "testbed.json"
    return p.exists() and json.loads(p.read_text()).get("testbed") == name
