"""Proportional attention without a float mask: FlexAttention's score_mod path equals the float-mask path,
and reduced image blocks with nothing to bias pass no mask at all (so SDPA may use its flash kernel)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import bert, pixels, text_batch, vit

import tokenreduce as tr
from tokenreduce.core.assign import attention_bias
from tokenreduce.core.attention import key_bias_attention
from tokenreduce.encoder.adapters import hf_attention, runner

TOL = 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_key_bias_attention_equals_sdpa_with_the_float_mask(dtype, device):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 17, 16, generator=g).to(device, dtype) for _ in range(3))
    sizes = torch.randint(0, 5, (3, 17), generator=g).float().to(device)
    sizes[:, 0] = 1  # every row has a real key; size 0 = padding
    bias = attention_bias(sizes, True, dtype)  # (B, 1, 1, N)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    out = key_bias_attention(q, k, v, 0.3, bias[:, 0, 0])
    assert out.dtype == dtype
    tol = TOL if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(key_bias_attention(q, k, v, 0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3),
                               atol=tol, rtol=tol)


SLOW = pytest.mark.slow  # eager FlexAttention traces once per process and shape: 10-45 s per test on 2 loaded cores
CASES = [
    pytest.param("bert", "tome", {"keep": 0.5}, marks=SLOW),  # log sizes + padding, the model's BlockMask in block 0
    pytest.param("bert", "evit", {"keep": 0.5}, marks=SLOW),
    pytest.param("vit", "tome", {"keep": 0.5}, marks=SLOW),
    pytest.param("vit", "pitome", {"keep": 0.5}, marks=SLOW),
    pytest.param("vit", "evit", {"keep": 0.5}, marks=SLOW),  # no bias at all
]


@pytest.mark.parametrize("family,method,params", CASES)
def test_flex_attention_model_equals_the_float_mask_path(family, method, params):
    """A patched model under attn_implementation="flex_attention" equals the same model under sdpa (float mask)."""
    model = bert() if family == "bert" else vit()
    x = text_batch() if family == "bert" else {"pixel_values": pixels()}
    with torch.inference_mode(), tr.patched(model, method, **params):
        ref = model(**x).last_hidden_state
        model.set_attn_implementation("flex_attention")
        try:
            out = model(**x).last_hidden_state
        finally:
            model.set_attn_implementation("sdpa")
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)


@SLOW
def test_flex_path_takes_no_float_mask(monkeypatch):
    """Under flex, reduced blocks never call transformers' attention function (which would get the float mask)."""
    model = vit()
    seen = []
    monkeypatch.setattr(hf_attention, "attention_fn", lambda module: seen.append(module) or None)
    model.set_attn_implementation("flex_attention")
    with torch.inference_mode(), tr.patched(model, "tome", keep=0.5):
        assert torch.isfinite(model(pixel_values=pixels()).last_hidden_state).all()
    assert seen == []


def test_image_blocks_without_bias_pass_no_mask(monkeypatch):
    """No proportional attention and no padding: reduced ViT blocks get mask None (flash-eligible), and the
    output equals the all-zeros float mask the runner passed before."""
    model, x = vit(), {"pixel_values": pixels()}
    masks = []
    run = hf_attention.run_attention

    def spy(module, qp, kp, vp, h, mask, *rest):
        masks.append(mask)
        return run(module, qp, kp, vp, h, mask, *rest)

    for method, params in [("evit", {"keep": 0.5}), ("tome", {"keep": 0.5, "prop_attn": False})]:
        with torch.inference_mode(), tr.patched(model, method, **params):
            with monkeypatch.context() as mp:
                mp.setattr(hf_attention, "run_attention", spy)
                out = model(**x).last_hidden_state
            assert masks and all(m is None for m in masks), method
            masks.clear()
            with monkeypatch.context() as mp:
                mp.setattr(runner, "_key_bias", lambda h, st, dtype: attention_bias(st.sizes, False, dtype))
                ref = model(**x).last_hidden_state
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    with torch.inference_mode(), tr.patched(model, "tome", keep=0.5):  # proportional: the bias stays
        with monkeypatch.context() as mp:
            mp.setattr(hf_attention, "run_attention", spy)
            model(**x)
    assert any(m is not None for m in masks)


def test_flash_implementations_refuse_the_float_mask_and_run_without_one(monkeypatch):
    """flash_attention_* takes no float mask: proportional attention is refused with the way out, while
    prop_attn=False on an image model (no mask at all) runs. The flash function is stood in for by SDPA."""

    def sdpa_standin(module, q, k, v, mask, dropout=0.0, scaling=None, **kw):
        assert mask is None, "a flash kernel would get a mask"
        return F.scaled_dot_product_attention(q, k, v, scale=scaling).transpose(1, 2), None

    model, x = vit(), {"pixel_values": pixels()}
    with torch.inference_mode(), tr.patched(model, "tome", keep=0.5, prop_attn=False):
        ref = model(**x).last_hidden_state
    monkeypatch.setattr(hf_attention, "attention_fn", lambda module: sdpa_standin)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    with torch.inference_mode(), tr.patched(model, "tome", keep=0.5, prop_attn=False):
        torch.testing.assert_close(model(**x).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    with torch.inference_mode(), tr.patched(model, "tome", keep=0.5), pytest.raises(ValueError, match="no float mask"):
        model(**x)
