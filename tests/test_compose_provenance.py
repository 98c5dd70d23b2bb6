"""The shared token-provenance map (tokenreduce.core.provenance), as pure tensor functions."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.provenance import MIXED, Provenance, layer_map, set_layer_map, set_maps


def test_identity_maps_masks_unchanged():
    p = Provenance.identity(2, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    assert torch.equal(p.rewrite_mask(mask), mask)
    assert p.tokens(5) == 5 and p.tokens(7) == 7


def test_select_then_press_composes():
    """Pruning keeps tokens 0, 2, 5 of 6; a press then keeps per head entries 1, 2 of those (row 1 only one)."""
    pruned = Provenance(torch.tensor([[0, 2, 5], [0, 2, 5]]), torch.ones(2, 3, dtype=torch.bool), 6)
    assert torch.equal(pruned.kept_positions(torch.arange(6)[None].expand(2, 6)), pruned.index)
    twice = pruned.select(torch.tensor([[1, 2], [0, 2]]), torch.tensor([[True, True], [False, True]]))
    assert twice.index.tolist() == [[2, 5], [0, 5]] and twice.real.tolist() == [[True, True], [False, True]]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]])  # 6 tokens seen + 2 new
    assert twice.rewrite_mask(mask).tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    pressed = Provenance.pressed(torch.tensor([[True, True], [False, True]]), 6)
    assert bool((pressed.index == MIXED).all())
    assert pressed.rewrite_mask(mask).tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="no single position"):
        pressed.kept_positions(torch.zeros(3, 2, 6, dtype=torch.long))


def test_mrope_positions_of_kept_entries_and_new_tokens():
    pos = torch.arange(3 * 6).view(3, 1, 6)  # (3, B, N) M-RoPE positions
    p = Provenance(torch.tensor([[1, 4]]), torch.ones(1, 2, dtype=torch.bool), 6)
    assert p.kept_positions(pos).tolist() == [[[1, 4]], [[7, 10]], [[13, 16]]]
    assert p.new_positions(entries=3, q=2).tolist() == [[7, 8]]  # 6 tokens + 1 decoded: positions 7, 8


def test_map_mask_applies_once_and_checks_length():
    p = Provenance.pressed(torch.tensor([[False, True, True]]), 10)
    full = torch.ones(1, 11, dtype=torch.long)
    once = p.map_mask(full, entries=3, q=1)
    assert once.tolist() == [[0, 1, 1, 1]]
    assert p.map_mask(once, entries=3, q=1) is once
    with pytest.raises(ValueError, match="shorter"):
        p.rewrite_mask(torch.ones(1, 4, dtype=torch.long))


def test_maps_ride_on_the_cache_and_copies_keep_their_own():
    class Cache:
        pass

    a = Cache()
    set_maps(a, Provenance.identity(1, 3), range(2))
    b = Cache()
    b.__dict__.update(a.__dict__)  # a shallow copy, as kv.cache.clone makes
    set_layer_map(b, 1, Provenance.identity(1, 2))
    assert layer_map(a, 1).length == 3 and layer_map(b, 1).length == 2 and layer_map(b, 0).length == 3
    assert layer_map(None) is None and layer_map(Cache()) is None
