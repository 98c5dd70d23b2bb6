"""tokenreduce.core.attention: attention rows of chosen queries equal the rows of the full attention matrix."""

from __future__ import annotations

import torch

from tokenreduce.core.assign import attention_bias
from tokenreduce.core.attention import cls_row, query_rows


def _full(q, k, scaling, bias=None):
    """Every query's softmax row, written out: (B, H, N, N)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scaling
    if bias is not None:
        logits = logits + bias.double()
    return logits.softmax(-1)


def test_query_rows_are_rows_of_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 7, 8, generator=g), torch.randn(2, 4, 7, 8, generator=g)
    full = _full(q, k, 0.3)
    rows = query_rows(q[:, :, [0, 3, 5]], k, 0.3)
    assert rows.shape == (2, 4, 3, 7) and rows.dtype == torch.float32
    torch.testing.assert_close(rows.double(), full[:, :, [0, 3, 5]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls_row(q, k, 0.3).double(), full[:, :, 0].mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls_row(q[:, :, :1], k, 0.3), cls_row(q, k, 0.3), rtol=0, atol=0)


def test_gqa_masks_and_sizes_match_the_encoder_bias():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 6, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    sizes = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0], [1.0, 1.0, 4.0, 2.0, 1.0]])
    for prop in (False, True):
        bias = attention_bias(sizes, prop, torch.float32)  # the encoder runner's key bias: log sizes, padding off
        want = _full(q, k, 0.5, bias)[:, :, :1]
        logs = sizes.clamp(min=1e-6).log() if prop else None
        got = query_rows(q[:, :, :1], k, 0.5, key_mask=sizes > 0, log_sizes=logs)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        assert bool((got[0, :, :, 3:] == 0).all())
    q16, k16 = q.bfloat16(), k.bfloat16()
    torch.testing.assert_close(query_rows(q16, k16, 0.5), query_rows(q16.float(), k16.float(), 0.5), rtol=0, atol=0)
    assert torch.isfinite(query_rows(q, k, 0.5, key_mask=torch.zeros(2, 5, dtype=torch.bool))).all()
