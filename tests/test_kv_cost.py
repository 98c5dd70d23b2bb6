"""Each press's own scoring cost (``scoring_macs``, used by scripts/bench_vlm_kv.py for SnapKV) equals the matmuls
that run (``FlopCounterMode`` counts 2 FLOPs per MAC): the scoring, and a merging press's merge and ThinK's
channel choice too."""

from __future__ import annotations

import pytest
import torch
from kv_models import random_ids, tiny_lm
from kv_press_refs import layer_views

from tokenreduce.bench.flops import measured_flops
from tokenreduce.kv import ChannelPress, MergingPress, SnapKV, make_press, presses
from tokenreduce.kv.hooks import attention_modules
from tokenreduce.kv.presses.base import LayerView
from tokenreduce.kv.presses.duo_attention import save_heads
from tokenreduce.kv.presses.qfilters import save_filters
from tokenreduce.kv.select import protect, select
from tokenreduce.vlm.flops import DecoderShape

UNDECLARED = {"kvzip", "zipcache"}  # scored outside one layer's view (kvzip) / not yet declared (zipcache)
SPECS = {  # one case per press, plus variants whose cost differs
    "snapkv": [{"window": 8}, {"window": 64}], "tova": [{}], "h2o": [{}], "keyformer": [{"window": 8}],
    "key_norm": [{}], "random": [{}], "streaming_llm": [{}], "adakv": [{"window": 8}], "pyramidkv": [{}],
    "decoding": [{"scorer": "snapkv"}], "keydiff": [{}], "expected_attention": [{}, {"covariance": False}],
    "chunkkv": [{"chunk": 4}], "think": [{"window": 8}, {"keep": 1.0}, {"channel_keep": 1.0}],
    "qfilters": [{}, {"filters": "FILE"}], "rkv": [{"window": 8}],
    "duo_attention": [{"window": 8}, {"heads": "FILE"}],
    "merge": [{"window": 8}, {"scorer": "tova", "keep": 1.0}, {"scorer": "keydiff", "keys": True}],
}


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def test_every_press_is_covered():
    assert set(SPECS) | UNDECLARED == set(presses())


def _run(press, view: LayerView) -> None:
    """What compressing one layer runs: the scores, then a merge or the channel choice."""
    scores = press.score(view)
    if isinstance(press, MergingPress):
        kept, prefix_mask = select(protect(scores, view.valid, 0, 0), view.valid, press.keep)
        press.merge(view, kept, prefix_mask)
    if isinstance(press, ChannelPress):
        press.channel_layer(view, view.keys, view.values)


@torch.no_grad()
@pytest.mark.parametrize("n", [12, 40])
@pytest.mark.parametrize(("name", "case"), [(k, i) for k, v in SPECS.items() for i in range(len(v))])
def test_scoring_macs_equal_flop_counter(model, tmp_path, name, case, n):
    spec = dict(SPECS[name][case])
    if spec.get("filters") == "FILE":
        save_filters(tmp_path / "f.safetensors", torch.randn(3, 2, 8))
        spec["filters"] = str(tmp_path / "f.safetensors")
    if spec.get("heads") == "FILE":
        save_heads(tmp_path / "h.safetensors", torch.rand(3, 2))
        spec["heads"] = str(tmp_path / "h.safetensors")
    press = make_press(name, **{"keep": 0.5, **spec})
    view = layer_views(model, random_ids(1, n, seed=n))[1]
    assert measured_flops(_run, press, view) == 2 * press.scoring_macs(DecoderShape.of(model.config), n)


def test_undeclared_cost_is_refused():
    with pytest.raises(NotImplementedError, match="zipcache declares no scoring cost"):
        make_press("zipcache").scoring_macs(DecoderShape(48, 96, 3, 6, 2, 8, 97), 10)


@torch.no_grad()
@pytest.mark.parametrize("n,window", [(40, 8), (12, 32)])
def test_snapkv_scoring_macs_equal_flop_counter(n, window):
    model = tiny_lm("llama")
    seen = {}

    def grab(module, args, kwargs, output):
        seen["hidden"], (seen["cos"], seen["sin"]) = kwargs["hidden_states"], kwargs["position_embeddings"]

    attn = attention_modules(model)[0]
    h = attn.register_forward_hook(grab, with_kwargs=True)
    out = model(input_ids=torch.randint(1, 90, (1, n)), use_cache=True)
    h.remove()
    keys, values = out.cache.layers[0].keys, out.cache.layers[0].values
    view = LayerView(attn, 0, 3, seen["hidden"], seen["cos"], seen["sin"], keys, values,
                     torch.ones(1, n, dtype=torch.bool))
    press = SnapKV(keep=0.5, window=window)
    assert measured_flops(press.score, view) == 2 * press.scoring_macs(DecoderShape.of(model.config), n)
