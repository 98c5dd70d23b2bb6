"""Helpers shared by the sweep tests: a tiny random BERT saved with MiniLM's tokenizer, configs, comparison."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenreduce.sweep.measure import TIMING_KEYS

# store columns that differ between two runs of the same points by design
VOLATILE = {"id", "started_at", "finished_at", "wall_s", "backend", "machine", "attempts"}


def make_tiny_model(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tokenreduce.bench.encoder import default_model_path

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "bert"))


def sweep_config(model: str, **extra: Any) -> dict[str, Any]:
    cfg = {
        "name": "tiny",
        "models": [model],
        "tasks": ["stdlib-code:16"],
        "methods": {
            "none": {},
            "tome": {"keep": [0.9, 0.7, 0.5, 0.3]},
            "evit": {"keep": [0.7, 0.5, 0.3]},
            "topk-norm": {"keep": 0.5},
            "random": {"keep": 0.5},
        },
        "settings": {"threads": 1, "batch_size": 8, "timing_batches": 1, "repeats": 1},
    }
    cfg.update(extra)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def stored(db: Path | str) -> dict[str, dict[str, Any]]:
    """key -> the row's deterministic content (timings and timestamps removed), read with plain sqlite3."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out: dict[str, dict[str, Any]] = {}
    for r in con.execute("SELECT * FROM points"):
        d = {k: r[k] for k in r.keys() if k not in VOLATILE}
        assert d["key"] not in out, "duplicate key"
        for c in ("metrics", "meta", "params", "settings", "tasks"):
            if d[c] is not None:
                d[c] = json.loads(d[c])
        if d["metrics"]:
            d["metrics"] = {k: v for k, v in d["metrics"].items() if k not in TIMING_KEYS}
        out[d["key"]] = d
    con.close()
    return out
