"""docs/DESIGN.md's recipes, followed to the letter: a toy method in each family is one class plus
its registration, and then runs through the family's public entry point like a built-in one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from kv_models import padded_batch, tiny_lm
from models import bert, text_batch
from vlm_models import llava_inputs, tiny_llava

import tokenreduce
from tokenreduce.encoder.methods import base as encoder_base
from tokenreduce.encoder.methods.pruning import ScorePruner
from tokenreduce.kv import generate_ids, make_press
from tokenreduce.kv.presses import base as kv_base
from tokenreduce.prompt.methods import base as prompt_base
from tokenreduce.prompt.text_encoder import default_model_path
from tokenreduce.vlm.methods import base as vlm_base


@pytest.fixture
def toys():
    """Registers the toys of this module and removes them afterwards (registries outlive a test)."""
    added: list[tuple[object, str]] = []
    yield added
    for registry, name in added:
        registry.unregister(name)


def test_encoder_method_recipe(toys):
    @encoder_base.register("toy-first")
    @dataclass(frozen=True)
    class KeepFirst(ScorePruner):
        """Keep the earliest tokens."""

        def score(self, t):
            return -torch.arange(t.x.shape[1], device=t.x.device, dtype=torch.float32).expand(t.x.shape[0], -1)

    toys.append((encoder_base.REGISTRY, "toy-first"))
    model, batch = bert(), text_batch()
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        with tokenreduce.patched(model, "toy-first", keep=1.0):
            assert torch.equal(model(**batch).last_hidden_state, ref)
        with tokenreduce.patched(model, "toy-first", keep=0.5):
            assert model(**batch).last_hidden_state.shape == ref.shape
    with pytest.raises(ValueError, match="keep must be a real number"):
        tokenreduce.make_method("toy-first", keep="0.5")


def test_kv_press_recipe(toys):
    @kv_base.register("toy-recent")
    @dataclass(frozen=True)
    class Recent(kv_base.ScoringPress):
        """Keep the most recent entries."""

        def score(self, view):
            return torch.arange(view.keys.shape[2], dtype=torch.float32).expand(view.keys.shape[:3])

    toys.append((kv_base.REGISTRY, "toy-recent"))
    model = tiny_lm("llama")
    ids, mask, q = padded_batch()
    full = generate_ids(model, ids, mask, q, max_new_tokens=3)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("toy-recent", keep=1.0), max_new_tokens=3), full)
    # the same selection as StreamingLLM without sinks, so the same tokens
    ours = generate_ids(model, ids, mask, q, make_press("toy-recent", keep=0.4), max_new_tokens=3)
    ref = generate_ids(model, ids, mask, q, make_press("streaming_llm", keep=0.4, sinks=0), max_new_tokens=3)
    assert torch.equal(ours, ref)
    assert "toy-recent" in kv_base.presses()


def test_visual_method_recipe(toys):
    @vlm_base.register
    @dataclass(frozen=True)
    class FirstTokens(vlm_base.BeforeMethod):
        """Keep each image's first visual tokens."""

        name: ClassVar[str] = "toy-first-visual"

        def reduce(self, emb, grid, cls, k):
            idx = torch.arange(k, device=emb.device)
            return idx, emb[idx]

    toys.append((vlm_base.REGISTRY, "toy-first-visual"))
    model = tiny_llava()
    x = llava_inputs(model)
    with torch.no_grad():
        ref = model(**x).logits
        with tokenreduce.patched(model, "toy-first-visual", keep=1.0):
            assert torch.equal(model(**x).logits, ref)
        with tokenreduce.patched(model, "toy-first-visual", keep=0.25):
            out = model.generate(**x, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == x["input_ids"].shape[1] + 2


def test_prompt_method_recipe(toys):
    @prompt_base.register("toy-last")
    @dataclass(frozen=True)
    class LastWords(prompt_base.ModelFreeMethod):
        """Keep the closing words."""

        def plan(self, seg, question):
            return prompt_base.Plan(np.arange(len(seg))[::-1])

    toys.append((prompt_base.REGISTRY, "toy-last"))
    text = "First we met at the harbour. Then the storm came in fast. Last of all the lights went out."
    tok = str(default_model_path())  # a model-free method needs a budget tokenizer
    assert tokenreduce.compress_prompt(text, rate=1.0, method="toy-last", tokenizer=tok).text == text
    r = tokenreduce.compress_prompt(text, rate=0.4, method="toy-last", tokenizer=tok)
    assert r.method == "toy-last" and r.compressed_tokens <= r.target_tokens
    assert r.text.endswith("the lights went out.") and "harbour" not in r.text
    with pytest.raises(ValueError, match="unknown parameter"):
        tokenreduce.compress_prompt(text, rate=0.4, method="toy-last", tokenizer=tok, seed=1)
    assert "toy-last" in prompt_base.prompt_methods()
