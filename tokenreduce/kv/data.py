"""Long texts for KV benchmarks: Paul Graham essays when the shared data is present, else Python's docs.

The package needs no data directory: ``pydoc_data.topics`` (the language reference, ~465k chars)
ships with every CPython. With ``data_dir`` (or ``tokenreduce.bench.tasks.default_data_dir()``) the
needle-in-a-haystack essays are used, as in the kvpress and RULER passkey setups.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

PASSKEY_INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n\n"
)  # the usual passkey task framing (Mohtashami & Jaggi 2023), kept in the context being compressed
PASSKEY_PROMPT = "\n\nThe pass key is"  # the answer prefix alone, as in the kvpress passkey setup
PASSKEY_QUESTION = "\n\nWhat is the pass key? The pass key is"  # SmolLM2-135M answers this far less often


def haystack(data_dir: str | Path | None = None) -> tuple[str, str]:
    """(text, source name): the essays under ``data_dir`` if given and present, else Python's docs."""
    if data_dir is not None:
        folder = Path(data_dir) / "needle_haystack_paul_graham" / "PaulGrahamEssays"
        if not folder.is_dir():
            raise FileNotFoundError(f"no Paul Graham essays at {folder}")
        return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))), "paul_graham_essays"
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics"


@dataclass(frozen=True)
class Sample:
    context: Tensor  # (1, N) token ids
    continuation: Tensor | None = None  # (1, T) ids that follow the context in the text
    question: Tensor | None = None  # (1, Q) ids fed after the context
    answer: str | None = None
    depth: float | None = None


def windows(tokenizer, text: str, n: int, length: int, cont: int, seed: int = 0) -> list[Sample]:
    """``n`` random ``length``-token contexts with the ``cont`` tokens that follow them."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if len(ids) < length + cont + 1:
        raise ValueError(f"text has {len(ids)} tokens, need at least {length + cont + 1}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = rng.randrange(0, len(ids) - length - cont)
        out.append(Sample(ids[None, s : s + length], ids[None, s + length : s + length + cont]))
    return out


def passkeys(tokenizer, text: str, n: int, length: int, seed: int = 0, prompt: str = PASSKEY_PROMPT) -> list[Sample]:
    """``n`` haystacks of ``length`` tokens (task intro included) with a 5-digit pass key sentence at a
    random depth; ``prompt`` is fed after the context (the sample's question)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    rng = random.Random(seed)
    q = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    intro = tokenizer(PASSKEY_INTRO, add_special_tokens=False).input_ids
    out = []
    for _ in range(n):
        key = str(rng.randrange(10000, 100000))
        needle = tokenizer(f" The pass key is {key}. Remember it. {key} is the pass key. ",
                           add_special_tokens=False, return_tensors="pt").input_ids[0]
        body = length - len(needle) - len(intro)
        s = rng.randrange(0, len(ids) - body)
        depth = rng.random()
        cut = int(depth * body)
        hay = ids[s : s + body]
        ctx = intro + hay[:cut].tolist() + needle.tolist() + hay[cut:].tolist()
        out.append(Sample(torch.tensor([ctx]), question=q, answer=key, depth=depth))
    return out
