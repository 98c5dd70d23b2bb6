"""tiktoken encodings built from local ``.tiktoken`` files, never downloaded.

tiktoken normally fetches its BPE rank files from a URL on first use. Here the files are looked up
locally, in order: the folder the caller passes (the CLI and the benchmarks pass the shared data
folder's ``tokenizers/tiktoken``), ``$TOKENREDUCE_TIKTOKEN_DIR``, and tiktoken's own cache
(``$TIKTOKEN_CACHE_DIR`` / ``$DATA_GYM_CACHE_DIR`` / ``<tmp>/data-gym-cache``, keyed by the SHA-1 of the
URL). The library never guesses where a data folder lives. If none has the file,
:class:`TiktokenUnavailable` says where it looked and how to give a folder. The file's SHA-256 is
checked against the official value, so a local copy is exactly the encoding OpenAI publishes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
_R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_EOT = "<|endoftext|>"
# name -> (regex, special tokens, sha256 of the official rank file)
ENCODINGS: dict[str, tuple[str, dict[str, int], str]] = {
    "r50k_base": (_R50K, {_EOT: 50256}, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
    "p50k_base": (_R50K, {_EOT: 50256}, "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),
    "cl100k_base": (
        _CL100K,
        {
            _EOT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        _O200K,
        {_EOT: 199999, "<|endofprompt|>": 200018},
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


class TiktokenUnavailable(FileNotFoundError):
    """The rank file of a tiktoken encoding is not available locally."""


def candidate_paths(name: str, folder: str | Path | None = None) -> list[Path]:
    """Where :func:`load_encoding` looks for ``name``'s rank file, in order."""
    paths: list[Path] = []
    if folder is not None:
        paths.append(Path(folder) / f"{name}.tiktoken")
    env = os.environ.get("TOKENREDUCE_TIKTOKEN_DIR")
    if env:
        paths.append(Path(env) / f"{name}.tiktoken")
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache_dir = Path(cache) if cache else Path(tempfile.gettempdir()) / "data-gym-cache"
    paths.append(cache_dir / hashlib.sha1(_URL.format(name).encode()).hexdigest())
    return paths


def find_rank_file(name: str, folder: str | Path | None = None) -> Path:
    """The first of :func:`candidate_paths` that exists; :class:`TiktokenUnavailable` naming them all."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown tiktoken encoding {name!r}; known: {', '.join(ENCODINGS)}")
    paths = candidate_paths(name, folder)
    for p in paths:
        if p.is_file():
            return p
    raise TiktokenUnavailable(
        f"tiktoken encoding {name!r} is not available offline: no rank file at any of "
        + ", ".join(str(p) for p in paths)
        + f" (pass the folder holding {name}.tiktoken as tiktoken_dir=..., or download {_URL.format(name)} "
        "and set TOKENREDUCE_TIKTOKEN_DIR to its folder)"
    )


def load_encoding(name: str, folder: str | Path | None = None):
    """A ``tiktoken.Encoding`` for ``name`` from a local rank file (SHA-256 verified)."""
    try:
        import tiktoken
    except ImportError as e:
        raise TiktokenUnavailable(
            f"tiktoken encoding {name!r} needs the tiktoken package (pip install tiktoken)"
        ) from e
    path = find_rank_file(name, folder)
    data = path.read_bytes()
    pat, special, sha = ENCODINGS[name]
    if hashlib.sha256(data).hexdigest() != sha:
        raise ValueError(f"{path}: SHA-256 differs from the official {name} rank file")
    ranks = {}
    for line in data.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(name=name, pat_str=pat, mergeable_ranks=ranks, special_tokens=special)
