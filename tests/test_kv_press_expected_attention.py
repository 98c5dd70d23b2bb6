"""ExpectedAttention: scores equal a straightforward implementation (the model's own rotary embedding for the
future positions, pre-RoPE queries from ``q_proj``) on Llama, Llama-3 rope scaling and Qwen3 (q norm), and
kvpress's ExpectedAttentionPress; keep=1 exact; bad parameters refused."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm, tiny_normed_lm
from kv_press_refs import kvpress_or_skip, layer_views

from tokenreduce.kv import ExpectedAttention, generate_ids, make_press
from tokenreduce.kv.presses.expected_attention import future_rotation


def _model(family: str):
    return tiny_lm("llama") if family == "llama" else tiny_normed_lm(family)


def _reference(model, view, sinks: int, future: int) -> torch.Tensor:
    """Row 0 of ``view`` (no padding): the expected-attention scores of entries >= sinks, written out."""
    m = view.module
    n = view.keys.shape[2]
    h = view.hidden[0, sinks:]
    q = m.q_proj(h).view(h.shape[0], -1, m.head_dim)  # (q, H, D) before RoPE
    if hasattr(m, "q_norm"):
        q = m.q_norm(q)
    q = q.transpose(0, 1).float()
    mu = q.mean(1)  # (H, D)
    cov = torch.stack([torch.cov(q[i].T, correction=0) for i in range(q.shape[0])])
    pos = torch.arange(n, n + future)[None]
    cos, sin = model.model.rotary_emb(view.keys, pos)  # the model's own rotary for the future positions
    d = m.head_dim
    p = torch.zeros(d, d)
    p[: d // 2, d // 2 :], p[d // 2 :, : d // 2] = -torch.eye(d // 2), torch.eye(d // 2)  # rotate_half as a matrix
    rot = torch.stack([torch.diag(c) + torch.diag(s) @ p for c, s in zip(cos[0], sin[0], strict=True)]).mean(0)
    mu, cov = mu @ rot.T, rot @ cov @ rot.T
    hkv = view.keys.shape[1]
    g = q.shape[0] // hkv
    keys = view.keys[0, :, sinks:].float()
    out = []
    for kh in range(hkv):
        per_head = []
        for i in range(kh * g, (kh + 1) * g):
            logits = keys[kh] @ mu[i] / math.sqrt(d) + 0.5 * torch.einsum("nd,de,ne->n", keys[kh], cov[i], keys[kh]) / d
            per_head.append(torch.softmax(logits, -1))
        out.append(torch.stack(per_head).mean(0) * view.values[0, kh, sinks:].float().norm(dim=-1))
    return torch.stack(out)


@pytest.mark.parametrize("family", ["llama", "llama3", "qwen3"])
def test_scores_equal_a_direct_implementation(family):
    model = _model(family)
    ids = random_ids(1, 40)
    with torch.no_grad():
        for view in layer_views(model, ids):
            got = ExpectedAttention(sinks=4, future=32).score(view)[0, :, 4:]
            torch.testing.assert_close(got, _reference(model, view, 4, 32), atol=1e-5, rtol=1e-4)


def test_future_rotation_is_the_models_rotary():
    model = tiny_normed_lm("llama3")
    cos, sin = model.model.rotary_emb(torch.zeros(1), torch.arange(30)[None])
    c, s = future_rotation(cos[:, :20], sin[:, :20], 10)
    torch.testing.assert_close(c[0], cos[0, 20:].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(s[0], sin[0, 20:].mean(0), atol=1e-5, rtol=0)


def test_scores_equal_kvpress():
    kvpress = kvpress_or_skip()
    model = tiny_lm("llama")
    ids = random_ids(1, 40)
    with torch.no_grad():
        for view in layer_views(model, ids):
            view.module.rotary_emb = model.model.rotary_emb  # kvpress reads it from the attention module
            try:
                theirs = kvpress.ExpectedAttentionPress(compression_ratio=0.5, n_future_positions=64, n_sink=4).score(
                    view.module, view.hidden, view.keys, view.values, None, {})
            finally:
                del view.module.rotary_emb
            ours = ExpectedAttention(sinks=4, future=64).score(view)
            torch.testing.assert_close(ours[..., 4:], theirs[..., 4:].float(), atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_a_rows_scores():
    model = tiny_lm("llama")
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        batch = layer_views(model, ids, mask)
        alone = layer_views(model, ids[1:, 9:])
    for vb, va in zip(batch, alone, strict=True):
        torch.testing.assert_close(ExpectedAttention().score(vb)[1:, :, 9:], ExpectedAttention().score(va),
                                   atol=1e-5, rtol=1e-4)


def test_keep_one_is_exact():
    model = tiny_lm("llama")
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    press = make_press("expected_attention", keep=1.0)
    assert torch.equal(generate_ids(model, ids, mask, q, press, max_new_tokens=4), base)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"future": 0}, "future must be in"), ({"epsilon": -1.0}, "epsilon must be in"),
    ({"covariance": "yes"}, "covariance"), ({"keep": 0.0}, "keep must be in"), ({"sinks": -2}, "sinks"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpectedAttention(**kwargs)
