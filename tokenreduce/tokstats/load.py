"""Load tokenizers for analysis from local files: tiktoken encodings, SentencePiece models, HF folders.

Every tokenizer is wrapped as :class:`Tok`: ``encode(text) -> list[int]`` without special tokens and
``pieces()`` -> the vocabulary as (bytes or None, surface string, is_byte_fallback). Known names map
to files under ``<data>/tokenizers`` (the shared data folder); any local HF tokenizer folder or
SentencePiece ``.model`` file also works. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..prompt.tiktoken_local import ENCODINGS, load_encoding

# name -> (relative path under <data>/tokenizers, loader kind)
KNOWN: dict[str, tuple[str, str]] = {
    "gpt2": ("gpt2", "hf-gpt2"),
    "r50k_base": ("tiktoken", "tiktoken"),
    "p50k_base": ("tiktoken", "tiktoken"),
    "cl100k_base": ("tiktoken", "tiktoken"),
    "o200k_base": ("tiktoken", "tiktoken"),
    "llama2": ("llama2/tokenizer.model", "spm"),
    "mistral-v1": ("mistral/tokenizer.model.v1", "spm"),
    "mistral-v3": ("mistral/mistral_instruct_tokenizer_240323.model.v3", "spm"),
    "bert-base-uncased": ("bert-base-uncased/vocab.txt", "wordpiece"),
    "bert-base-multilingual-cased": ("bert-base-multilingual-cased/vocab.txt", "wordpiece"),
    "t5-small": ("t5-small/tokenizer.json", "hf-json"),
    "qwen2": ("qwen2", "hf-folder"),
}


@dataclass(frozen=True)
class Tok:
    name: str
    kind: str  # "byte-bpe", "spm", "wordpiece", "hf"
    encode: Callable[[str], list[int]]
    backend: Any

    @property
    def unk_id(self) -> int | None:
        """The id of the unknown token (None for byte-level tokenizers, which need none)."""
        b = self.backend
        if self.kind == "tiktoken":
            return None
        if self.kind == "spm":
            return int(b.unk_id())
        if b.unk_token_id is not None:
            return b.unk_token_id
        vocab = b.get_vocab()  # e.g. T5's tokenizer.json names no unk token but has "<unk>"
        return next((vocab[t] for t in ("<unk>", "[UNK]", "<UNK>") if t in vocab), None)

    def encode_ordinary(self, text: str) -> list[int]:  # lets prompt.TokenCounter use a Tok
        return self.encode(text)

    def pieces(self) -> list[tuple[bytes | None, str, bool]]:
        """(raw bytes if known, surface string, is a byte-fallback token) for every id."""
        b = self.backend
        if self.kind == "tiktoken":
            out = []
            for i in range(b.n_vocab):
                try:
                    raw = b.decode_single_token_bytes(i)
                except KeyError:
                    continue
                out.append((raw, raw.decode("utf-8", "replace"), len(raw) == 1 and raw[0] >= 0x80))
            return out
        if self.kind == "spm":
            return [
                (None, b.id_to_piece(i), bool(b.is_byte(i)))
                for i in range(b.get_piece_size())
                if not (b.is_control(i) or b.is_unknown(i))
            ]
        vocab = b.get_vocab()
        if self.kind == "hf-bytelevel":
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            dec = {v: k for k, v in bytes_to_unicode().items()}
            out = []
            for tok in vocab:
                if tok in b.all_special_tokens:
                    continue
                raw = bytes(dec[c] for c in tok) if all(c in dec for c in tok) else tok.encode()
                out.append((raw, raw.decode("utf-8", "replace"), len(raw) == 1 and raw[0] >= 0x80))
            return out
        return [(None, t, t.startswith("<0x") and t.endswith(">")) for t in vocab if t not in b.all_special_tokens]


def _hf(tok: Any) -> Callable[[str], list[int]]:
    return lambda text: tok(text, add_special_tokens=False, verbose=False)["input_ids"]


def tokenizers_dir(data_dir: str | Path | None) -> Path:
    """The folder holding the named tokenizers' files (the library never guesses where data lives:
    the caller, e.g. the CLI, passes the data folder)."""
    if data_dir is None:
        raise FileNotFoundError("the named tokenizers need a data folder: pass data_dir (CLI: --data-dir) "
                                "or a local tokenizer path")
    return Path(data_dir) / "tokenizers"


def load_tok(name: str, data_dir: str | Path | None = None) -> Tok:
    """A known tokenizer name (see ``KNOWN``), a local HF tokenizer folder, or a SentencePiece ``.model`` file."""
    if name in KNOWN:
        rel, kind = KNOWN[name]
        path = tokenizers_dir(data_dir) / rel
        if not path.exists():
            raise FileNotFoundError(f"tokenizer {name!r}: {path} not found")
    else:
        path = Path(name)
        if not path.exists():
            raise ValueError(f"unknown tokenizer {name!r}: known names {', '.join(KNOWN)}, or give a local path")
        kind = "spm" if path.suffix == ".model" else "hf-folder"
    if kind == "tiktoken" and name in ENCODINGS:
        enc = load_encoding(name, path)
        return Tok(name, "tiktoken", enc.encode_ordinary, enc)
    if kind == "spm":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(path))
        return Tok(name if name in KNOWN else path.stem, "spm", lambda t: sp.encode(t), sp)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "hf-gpt2":
        tok = PreTrainedTokenizerFast(tokenizer_object=_gpt2(path))
    elif kind == "wordpiece":
        unk = _unk_token(path)
        tok = PreTrainedTokenizerFast(tokenizer_object=_wordpiece(path, "uncased" in name, unk), unk_token=unk)
    elif kind == "hf-json":
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(path))
    sub = "wordpiece" if kind == "wordpiece" else ("hf-bytelevel" if _is_byte_level(tok) else "hf")
    return Tok(name if name in KNOWN else path.name, sub, _hf(tok), tok)


def _unk_token(vocab: Path) -> str:
    """The vocabulary's unknown-token entry: ``[UNK]``, or however the file spells it (a lowercased
    vocab has ``[unk]``); a vocabulary without one cannot tokenize unseen characters."""
    with vocab.open(encoding="utf-8") as f:
        entries = {line.rstrip("\n") for line in f}
    for spelling in ("[UNK]", "[unk]", "<unk>"):
        if spelling in entries:
            return spelling
    raise ValueError(f"{vocab}: no unknown-token entry ([UNK]) in this WordPiece vocabulary")


def _wordpiece(vocab: Path, lowercase: bool, unk: str = "[UNK]"):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    t = Tokenizer(WordPiece(WordPiece.read_file(str(vocab)), unk_token=unk))
    t.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.decoder = decoders.WordPiece()
    return t


def _gpt2(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    t = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    return t


def _is_byte_level(tok: Any) -> bool:
    try:
        return "ByteLevel" in type(tok.backend_tokenizer.pre_tokenizer).__name__ or "Ġ" in "".join(
            list(tok.get_vocab())[:2000]
        )
    except AttributeError:
        return False
