"""Half-precision inputs (bfloat16 and float16) through every family, on ``device`` (CPU by default).

For each family: reducing nothing reproduces the unpatched model bit for bit in that dtype, and a real
reduction runs without a dtype error, keeps the model's dtype and gives finite outputs. On torch 2.13's
CPU both half types have the kernels these tiny models need (float16 matmuls and SDPA included), so every
family is tested in both. ``TOKENREDUCE_TEST_DEVICE=cuda`` runs the same checks on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, tiny_lm
from models import bert, pixels, text_batch, vit
from vlm_models import llava_inputs, tiny_llava

import tokenreduce
from tokenreduce.encoder.methods import methods as encoder_methods
from tokenreduce.kv import generate_ids, make_press, presses

DTYPES = [torch.bfloat16, torch.float16]
IMAGE_METHODS = ["fastervlm", "visionzip", "visual-tome", "visual-random", "visual-pool", "fastv", "pdrop",
                 "text-guided"]
# Presses whose identity needs more than keep=1 (channel pruning, quantization), and the tiny model's head dim.
KV_EXTRA = {"think": {"channel_keep": 1.0}, "zipcache": {"salient": 1.0, "group": 8}}


def _to(x, device, dtype):
    """Tensors of a nested input moved to ``device``; floating ones cast to ``dtype``."""
    if isinstance(x, dict):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to(v, device, dtype) for v in x)
    if isinstance(x, torch.Tensor):
        return x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return x


def _finite_in(out: torch.Tensor, dtype: torch.dtype) -> bool:
    return out.dtype == dtype and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", ["bert", "vit"])
def test_encoder_methods_in_half_precision(family, dtype, device):
    model = (bert() if family == "bert" else vit()).to(device, dtype)
    x = _to(text_batch() if family == "bert" else {"pixel_values": pixels()}, device, dtype)
    with torch.inference_mode():
        ref = model(**x).last_hidden_state
        for name in encoder_methods():
            if name == "pool" and family == "bert":
                continue  # pooling needs a patch grid
            with tokenreduce.patched(model, name, keep=1.0):
                assert torch.equal(model(**x).last_hidden_state, ref), name
            with tokenreduce.patched(model, name, keep=0.5):
                assert _finite_in(model(**x).last_hidden_state, dtype), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kv_presses_in_half_precision(dtype, device):
    model = tiny_lm().to(device, dtype)
    ids, mask, q = (t.to(device) for t in padded_batch())
    base, logits = generate_ids(model, ids, mask, q, max_new_tokens=3, output_logits=True)
    assert logits.dtype == dtype
    for name in presses():
        extra = KV_EXTRA.get(name, {})
        out, got = generate_ids(model, ids, mask, q, make_press(name, keep=1.0, **extra), max_new_tokens=3,
                                output_logits=True)
        assert torch.equal(got, logits) and torch.equal(out, base), name
        extra = {k: v for k, v in extra.items() if k == "group"}
        _, got = generate_ids(model, ids, mask, q, make_press(name, keep=0.3, **extra), max_new_tokens=3,
                              output_logits=True)
        assert _finite_in(got, dtype), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_visual_methods_in_half_precision(dtype, device):
    model = tiny_llava().to(device, dtype)
    x = _to(llava_inputs(model, n_images=2), device, dtype)
    with torch.no_grad():
        ref = model(**x).logits
        for name in IMAGE_METHODS:
            with tokenreduce.patched(model, name, keep=1.0):
                assert torch.equal(model(**x).logits, ref), name
            with tokenreduce.patched(model, name, keep=0.25):
                assert _finite_in(model(**x).logits, dtype), name
                assert model.generate(**x, max_new_tokens=2, do_sample=False).shape[1] == x["input_ids"].shape[1] + 2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", ["unet", "dit"])
def test_diffusion_methods_in_half_precision(family, dtype, device):
    pytest.importorskip("diffusers")
    from test_diffusion import inputs, run, tiny_dit, tiny_unet

    model = (tiny_unet() if family == "unet" else tiny_dit()).to(device, dtype)
    args, kwargs = _to(inputs(family), device, dtype)
    ref = run(model, args, kwargs)
    assert ref.dtype == dtype
    zero = [("tomesd", {"ratio": 0.0}), ("tomesd-threshold", {"ratio": 0.0}), ("todo", {"stride": (1, 1)})]
    active = [("tomesd", {"ratio": 0.5}), ("tomesd-threshold", {"ratio": 0.75, "threshold": 0.2}), ("todo", {}),
              ("tomesd", {"ratio": 0.6, "merge_crossattn": True, "merge_mlp": True})]
    if family == "dit":
        zero, active = zero + [("dit-merge", {"ratio": 0.0})], active + [("dit-merge", {"ratio": 0.5})]
    for name, params in zero:
        with tokenreduce.patched(model, name, **params):
            assert torch.equal(run(model, args, kwargs), ref), (name, params)
    for name, params in active:
        with tokenreduce.patched(model, name, **params):
            assert _finite_in(run(model, args, kwargs), dtype), (name, params)
