"""tokenreduce.patch refuses what it cannot do before changing anything, saying what to call instead."""

from __future__ import annotations

import pytest
import torch
from models import bert, text_batch
from transformers import BertTokenizerFast

import tokenreduce


@pytest.mark.parametrize(("method", "message"), [
    ("fastv", "visual-token method for vision-language models"),
    ("snapkv", "is a KV-cache press: use tokenreduce.kv.apply_press"),
    ("extractive", "is a prompt-compression method: use tokenreduce.compress_prompt"),
    ("nope", "unknown method 'nope'"),
])
def test_method_of_another_family_is_named(method, message):
    model = bert()
    with pytest.raises(ValueError, match=message):
        tokenreduce.patch(model, method, keep=0.5)
    assert tokenreduce.patch_info(model) is None


def test_a_tokenizer_is_not_a_model(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]))
    tok = BertTokenizerFast(vocab_file=str(vocab))
    with pytest.raises(TypeError, match="pass the model, not its tokenizer"):
        tokenreduce.patch(tok, "tome", keep=0.5)
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        tokenreduce.patch(object(), "tome", keep=0.5)


def test_patch_and_unpatch_through_the_top_level_api():
    model, batch = bert(), text_batch()
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        with tokenreduce.patched(model, "tome", keep=0.5):
            assert tokenreduce.patch_info(model).method.name == "tome"
            with pytest.raises(RuntimeError, match="already patched"):
                tokenreduce.patch(model, "evit", keep=0.5)
        assert torch.equal(model(**batch).last_hidden_state, ref)
