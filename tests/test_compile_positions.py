"""``torch.compile`` of a patched model whose positions follow merges (MPNet, DeBERTa-v2, ModernBERT, BEiT,
Data2Vec-vision): the patched loop runs eagerly inside the compiled model and gives the eager patched output.

Before, these families' docstrings said compile was refused, but the refusal sat deep in the loop: dynamo
failed on fake tensors after ~40 s with a raw ``TorchRuntimeError``. Now the loop is a compiler boundary.
"""

from __future__ import annotations

import pytest
import torch
from models import deberta_v2, modernbert, mpnet, pixels, text_batch
from vision_models import beit, data2vec

import tokenreduce as tr

CASES = {
    "mpnet": (mpnet, text_batch),
    "deberta-v2": (deberta_v2, text_batch),
    "modernbert": (modernbert, text_batch),
    "beit": (beit, lambda: {"pixel_values": pixels()}),
    "data2vec-vision": (data2vec, lambda: {"pixel_values": pixels()}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_patched_equals_eager_patched(name):
    build, inputs = CASES[name]
    torch.manual_seed(0)
    model, x = build().eval(), inputs()
    with tr.patched(model, "tome", keep=0.5), torch.inference_mode():
        eager = model(**x).last_hidden_state
        compiled = torch.compile(model, backend="eager")(**x).last_hidden_state
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch._dynamo.reset()
