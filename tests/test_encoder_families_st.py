"""``tokenreduce.patch`` on a sentence-transformers model wrapping each new encoder family (skipped without
sentence-transformers, which is not a dependency): ``encode()`` runs reduced, with its own length sorting,
padding and pooling, a sentence's embedding does not depend on its batch, and unpatching restores it exactly."""

from __future__ import annotations

import pytest
import torch
from models import albert, deberta_v2, distilbert, modernbert, mpnet

import tokenreduce as tr

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402
from tokenizers import Tokenizer, pre_tokenizers, processors  # noqa: E402
from tokenizers import models as tok_models  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

try:
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Pooling, Transformer

SENTENCES = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14", "w3 w4 w5 w6", "w7 w8 w9 w10 w11 w12 w13"]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over w0..w99 that adds [CLS] ... [SEP] (ids 2, 3; [PAD] = 0)."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(100)])}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.mark.parametrize("make", [distilbert, albert, mpnet, deberta_v2, modernbert])
def test_sentence_transformer_is_patched(make, tmp_path):
    make().save_pretrained(tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    model = SentenceTransformer(modules=[Transformer(str(tmp_path)), Pooling(32)], device="cpu")
    ref = model.encode(SENTENCES, convert_to_tensor=True)
    with tr.patched(model, "tome", keep=0.5):
        together = model.encode(SENTENCES, convert_to_tensor=True)
        alone = torch.stack([model.encode([s], convert_to_tensor=True)[0] for s in SENTENCES])
    assert not torch.allclose(together, ref)
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)
    assert torch.equal(model.encode(SENTENCES, convert_to_tensor=True), ref)
