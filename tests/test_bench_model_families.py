"""``tokenreduce bench --model <path>`` on saved tiny checkpoints of every text-encoder family.

A user's own checkpoint is a folder with a config, weights and a tokenizer; each family's tiny random
config is saved that way (with a word-level tokenizer) and the main job runs on it end to end.
"""

from __future__ import annotations

import json

import pytest
from models import albert, bert, deberta_v2, distilbert, electra, modernbert, mpnet, roberta
from test_encoder_families_st import _tokenizer

from tokenreduce.cli import main

FAMILIES = {"bert": bert, "roberta": roberta, "electra": electra, "distilbert": distilbert, "albert": albert,
            "mpnet": mpnet, "deberta-v2": deberta_v2, "modernbert": modernbert}


def _bench(tmp_path, name):
    path = tmp_path / name
    FAMILIES[name]().save_pretrained(path)
    _tokenizer().save_pretrained(path)
    out = tmp_path / "res"
    code = main(["bench", "--model", str(path), "--data", "stdlib-code:16", "--methods", "tome,evit", "--keep", "0.5",
                 "--repeats", "1", "--timing-batches", "1", "--batch-size", "8", "--no-progress", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["none", "tome", "evit"]
    assert all(0 < r["flops_ratio"] < 1 for r in rows[1:]) and rows[0]["stdlib-code:mrr"] > 0


def test_loader_takes_a_family_without_sdpa(tmp_path):
    """MPNet (all-mpnet-base-v2's family) has no SDPA path: the loader falls back to its own attention."""
    from tokenreduce.bench.encoder import load_text_encoder

    mpnet().save_pretrained(tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    enc = load_text_encoder(str(tmp_path))
    assert enc.embed(["w1 w2 w3", "w4 w5"], 2).shape == (2, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_bench_runs_on_a_saved_checkpoint_of_every_family(tmp_path, name):
    _bench(tmp_path, name)
