"""Tokenizer efficiency: counts cross-checked against Petrov et al. (2023), audit shares, CLI."""

from __future__ import annotations

import csv

import pytest

from tokenreduce.bench.tasks import default_data_dir
from tokenreduce.tokstats import load_tok, parity, script_of, text_stats, vocab_audit
from tokenreduce.tokstats.cli import main

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    DATA is None or not (DATA / "flores200").is_dir() or not (DATA / "tokenizers").is_dir(),
    reason="shared data (flores200, tokenizers) not found",
)


def _petrov(lang_name: str, column: str) -> int:
    path = DATA / "flores200" / "reference_parity_tables_petrov2023" / "tokenization_lengths.csv"
    with open(path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["Language"] == lang_name:
                return int(row[column])
    raise KeyError(lang_name)


def _petrov_text(code: str) -> str:
    # as in their compute_tokenizations.py: " ".join(dev + devtest lines), from read().split("\n")
    lines = []
    for split in ("dev", "devtest"):
        lines += (DATA / "flores200" / split / f"{code}.{split}").read_text(encoding="utf-8").split("\n")
    return " ".join(lines)


@needs_data
@pytest.mark.parametrize(
    "tok, column, lang, code, specials",
    [
        ("cl100k_base", "cl100k_base", "English", "eng_Latn", 0),
        ("cl100k_base", "cl100k_base", "Hindi", "hin_Deva", 0),
        ("r50k_base", "GPT-2", "English", "eng_Latn", 0),
        ("gpt2", "GPT-2", "Japanese", "jpn_Jpan", 0),
        ("llama2", "LLAMA", "English", "eng_Latn", 0),
        ("qwen2", "Qwen", "English", "eng_Latn", 0),
        ("t5-small", "FlanT5", "English", "eng_Latn", 1),  # their count includes T5's </s>
    ],
)
def test_counts_match_published_reference(tok, column, lang, code, specials):
    t = load_tok(tok, DATA)
    assert len(t.encode(_petrov_text(code))) + specials == _petrov(lang, column)


def test_parity_and_errors():
    assert parity({"eng": 10, "hin": 45}, "eng") == {"eng": 1.0, "hin": 4.5}
    with pytest.raises(ValueError, match="reference language"):
        parity({"eng": 10}, "fra")


def test_script_of():
    assert script_of("hello") == "LATIN"
    assert script_of("мир") == "CYRILLIC"
    assert script_of("你好") == "CJK"
    assert script_of("12!") is None


def test_vocab_audit_on_tiny_wordpiece(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[UNK]", "hello", "##lo", "мир", "##ир", "你", "12"]) + "\n", encoding="utf-8")
    from tokenreduce.tokstats.load import KNOWN

    assert "bert-base-uncased" in KNOWN
    (tmp_path / "tokenizers" / "bert-base-uncased").mkdir(parents=True)
    (tmp_path / "tokenizers" / "bert-base-uncased" / "vocab.txt").write_text(vocab.read_text(), encoding="utf-8")
    t = load_tok("bert-base-uncased", tmp_path)
    a = vocab_audit(t)
    assert a["vocab"] == 6
    assert a["word_initial"] == pytest.approx(4 / 6) and a["word_internal"] == pytest.approx(2 / 6)
    assert a["script:LATIN"] == pytest.approx(2 / 6) and a["script:CYRILLIC"] == pytest.approx(2 / 6)
    assert a["script:CJK"] == pytest.approx(1 / 6) and a["script:NONE"] == pytest.approx(1 / 6)
    s = text_stats(t, ["hello мир", "你"])
    assert s["words"] == 3 and s["fertility"] == s["tokens"] / 3
    assert text_stats(t, ["zzz"])["unk_share"] == 1.0 and s["unk_share"] == 0.0


@needs_data
def test_byte_tokens_in_sentencepiece():
    a = vocab_audit(load_tok("llama2", DATA))
    assert a["byte_tokens"] == pytest.approx(256 / a["vocab"])


@needs_data
def test_cli_tables_png_and_errors(tmp_path, capsys):
    png = tmp_path / "p.png"
    code = main(
        [
            "--tokenizers",
            "cl100k_base,llama2",
            "--langs",
            "hin_Deva",
            "--lines",
            "5",
            "--price",
            "cl100k_base=2.5",
            "--png",
            str(png),
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and png.stat().st_size > 1000 and "hin_Deva" in out and "usd_per_1k_requests" in out
    assert (tmp_path / "r.json").exists()
    assert main(["--tokenizers", "nope", "--lines", "2", "--no-progress"]) == 2
    assert "tokenreduce: error:" in capsys.readouterr().err
    assert main(["--tokenizers", "cl100k_base", "--price", "llama2=1", "--lines", "2", "--no-progress"]) == 2


def test_wordpiece_vocab_with_lowercased_unk(tmp_path):
    """The shared bert-base-uncased vocab spells the unknown token ``[unk]``: it must still tokenize
    characters outside the vocabulary (it crashed with 'Missing [UNK] token')."""
    folder = tmp_path / "tokenizers" / "bert-base-uncased"
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[pad]", "[unk]", "[cls]", "[sep]", "hello", "world"]) + "\n")
    t = load_tok("bert-base-uncased", tmp_path)
    assert len(t.encode("hello ☃ world")) == 3
