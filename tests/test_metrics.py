"""Tests for tokenreduce.bench.metrics: hand-checked cases, brute-force references, and error messages."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from tokenreduce.bench.metrics import cosine_fidelity, mean_pool, retrieval_metrics, spearman, sts_spearman


def _brute_ranks(q: torch.Tensor, p: torch.Tensor, gold: list[int]) -> list[int]:
    """Reference ranks with a plain loop over passages, using the documented tie rule."""
    scores = (F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T).tolist()
    ranks = []
    for i, g in enumerate(gold):
        row = scores[i]
        ranks.append(1 + sum(1 for j, s in enumerate(row) if s > row[g] or (s == row[g] and j < g)))
    return ranks


# ---------------------------------------------------------------------------------------------- retrieval


def _exact_unit_vectors(n: int, gen: torch.Generator) -> torch.Tensor:
    """n vectors in R^8 with four entries of +-0.5: unit norm and all dot products exact multiples of 1/4.

    Scores are then computed without rounding in any summation order, so the many exact ties exercise the
    tie rule identically in the metric and in the reference loop.
    """
    out = torch.zeros(n, 8)
    for i in range(n):
        idx = torch.randperm(8, generator=gen)[:4]
        out[i, idx] = torch.randint(0, 2, (4,), generator=gen).float() - 0.5
    return out * torch.where(torch.randn(n, 1, generator=gen) > 0, 1.0, 3.0)  # norms must not matter


def test_retrieval_known_ranks() -> None:
    # Passages on the unit circle; queries aimed so the gold passage ranks 1, 2 and 3.
    angles = torch.tensor([0.0, 0.5, 1.0, 1.5])
    passages = torch.stack([angles.cos(), angles.sin()], 1)
    queries = passages[[0, 0, 0]].clone()
    gold = [0, 1, 2]  # query aims at passage 0, so passage 1 ranks 2nd and passage 2 ranks 3rd
    out = retrieval_metrics(queries, passages, gold, ks=(1, 2, 3))
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@2"] == pytest.approx(2 / 3)
    assert out["recall@3"] == pytest.approx(1.0)
    assert out["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert set(out) == {"recall@1", "recall@2", "recall@3", "mrr"}


def test_retrieval_default_keys_and_scale_invariance() -> None:
    passages = torch.eye(3)
    queries = torch.eye(3) * torch.tensor([[5.0], [0.1], [2.0]])  # norms must not matter (cosine)
    out = retrieval_metrics(queries, passages, [0, 1, 2])
    assert out == {"recall@1": 1.0, "recall@10": 1.0, "mrr": 1.0}


def test_retrieval_ties_break_against_lower_index() -> None:
    # All vectors here have exactly representable unit norms and dot products, so ties are exact.
    # Passages 0..3 identical: gold j ties with j lower-index passages -> rank j + 1.
    passages = torch.ones(4, 4)
    queries = torch.ones(4, 4)
    out = retrieval_metrics(queries, passages, [0, 1, 2, 3], ks=(1, 2))
    assert out["recall@1"] == pytest.approx(0.25)
    assert out["recall@2"] == pytest.approx(0.5)
    assert out["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # A tie plus one strictly better passage: [better, tie, gold, tie] -> rank 3.
    passages = torch.tensor([[1.0, 0.0, 0.0, 0.0], *[[1.0, 1.0, 1.0, 1.0]] * 3])
    query = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    out = retrieval_metrics(query, passages, [2], ks=(2, 3))
    assert out == {"recall@2": 0.0, "recall@3": 1.0, "mrr": pytest.approx(1 / 3)}


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_brute_force(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, p = _exact_unit_vectors(37, gen), _exact_unit_vectors(53, gen)
    gold = torch.randint(0, 53, (37,), generator=gen).tolist()
    ranks = _brute_ranks(q, p, gold)
    expected = {f"recall@{k}": sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}
    expected["mrr"] = sum(1 / r for r in ranks) / len(ranks)
    # Tiny score blocks force many query chunks; results must not depend on chunking.
    import tokenreduce.bench.metrics as metrics

    monkeypatch.setattr(metrics, "_SCORE_BLOCK", 100)
    out = retrieval_metrics(q, p, torch.tensor(gold), ks=(1, 5, 10))
    assert out == pytest.approx(expected)


def test_retrieval_bad_inputs() -> None:
    q, p = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(q[0], p, [0])
    with pytest.raises(ValueError, match="dims differ"):
        retrieval_metrics(q, torch.randn(5, 6), [0, 1, 2])
    with pytest.raises(ValueError, match="3 queries"):
        retrieval_metrics(q, p, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        retrieval_metrics(q, p, [0, 1, 5])
    with pytest.raises(ValueError, match="integer"):
        retrieval_metrics(q, p, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="integer"):
        retrieval_metrics(q, p, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics(q, p, [0, 1, 2], ks=(0,))


# ---------------------------------------------------------------------------------------------- spearman


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for n in (2, 3, 10, 200):
        x = [rng.randint(0, 5) for _ in range(n)]  # heavy ties
        y = [rng.random() if i % 3 else 0.5 for i in range(n)]  # some ties
        if len(set(x)) < 2:
            x[0] = 99
        expected = stats.spearmanr(x, y).statistic
        assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
        assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, abs=1e-12)


def test_spearman_monotone_and_reversed() -> None:
    x = torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert spearman(x, torch.exp(3 * x) + 7) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_spearman_constant_is_nan_and_errors() -> None:
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1.0], [2.0])
    with pytest.raises(ValueError, match="finite"):
        spearman([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D"):
        spearman(torch.zeros(2, 2), torch.zeros(2, 2))


def test_sts_spearman_scaled_by_100() -> None:
    gen = torch.Generator().manual_seed(0)
    e1 = torch.randn(50, 8, generator=gen)
    e2 = torch.randn(50, 8, generator=gen)
    cos = F.cosine_similarity(e1, e2, dim=-1)
    gold = (cos * 2 + 3).tolist()  # a monotone function of the cosine
    assert sts_spearman(e1, e2, gold) == pytest.approx(100.0)
    assert sts_spearman(e1, e2, [-g for g in gold]) == pytest.approx(-100.0)
    assert sts_spearman(e1.half(), e2.half(), gold) > 95.0
    with pytest.raises(ValueError, match="equal shapes"):
        sts_spearman(e1, e2[:10], gold)
    with pytest.raises(ValueError, match="50 pairs"):
        sts_spearman(e1, e2, gold[:10])


# ---------------------------------------------------------------------------------------------- fidelity


def test_cosine_fidelity() -> None:
    ref = torch.eye(4)
    red = ref.clone()
    red[3] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # cosine 1/sqrt(2) with its reference row
    out = cosine_fidelity(red * 3, ref)
    c = 1 / math.sqrt(2)
    assert out["mean"] == pytest.approx((3 + c) / 4)
    assert out["min"] == pytest.approx(c)
    # numpy-style linear quantile over sorted [c, 1, 1, 1]: position 0.05 * 3 = 0.15
    assert out["p05"] == pytest.approx(c + 0.15 * (1 - c))
    assert cosine_fidelity(ref[None], ref[None]) == pytest.approx({"mean": 1.0, "min": 1.0, "p05": 1.0})
    with pytest.raises(ValueError, match="equal shapes"):
        cosine_fidelity(ref, ref[:2])
    with pytest.raises(ValueError, match="equal shapes"):
        cosine_fidelity(ref[0], ref[0])


# ---------------------------------------------------------------------------------------------- mean_pool


def test_mean_pool_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 5, generator=gen)
    weights = torch.rand(4, 6, generator=gen) * 3
    weights[1, 3:] = 0
    weights[2] = 0  # an empty row -> zeros, not NaN
    out = mean_pool(hidden, weights)
    for b in range(4):
        total = sum(weights[b, t].item() * hidden[b, t] for t in range(6))
        denom = sum(weights[b].tolist())
        expected = total / denom if denom > 0 else torch.zeros(5)
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)
    assert out.dtype == torch.float32 and out.shape == (4, 5)


def test_mean_pool_masks_and_dtypes() -> None:
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), expected)
    torch.testing.assert_close(mean_pool(hidden, mask.bool()), expected)
    assert mean_pool(hidden.bfloat16(), mask).dtype == torch.float32
    assert mean_pool(hidden.double(), mask).dtype == torch.float64
    # Token-size weights: pooling merged tokens with their sizes equals pooling the originals.
    merged = torch.stack([hidden[0, :2].mean(0), hidden[0, 2]])[None]
    torch.testing.assert_close(mean_pool(merged, torch.tensor([[2.0, 1.0]])), hidden[:1].mean(1))


def test_mean_pool_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[batch, tokens, dim\]"):
        mean_pool(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="does not match"):
        mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="non-negative"):
        mean_pool(torch.zeros(2, 3, 4), -torch.ones(2, 3))
