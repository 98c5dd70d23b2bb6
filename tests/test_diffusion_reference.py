"""Equivalence with the reference implementation, the PyPI ``tomesd`` package (pinned in constraints.txt).

Given the same random choice of destinations (the reference draws it from a torch generator; we
draw the same numbers from a generator in the same state and inject them), our merge/unmerge equals
``tomesd.merge.bipartite_soft_matching_random2d``: the same tokens merge into the same destinations,
the merged tokens are the same (the reference orders them [unmerged..., destinations...], ours in
original order, so they are compared as sets) and unmerge(merge(x)) agrees to float rounding (the
mean is a scatter-reduce there and an index_add here, so not bit for bit). Then a whole tiny
SD-layout U-Net patched by ``tomesd.apply_patch`` equals the same U-Net patched by
``tokenreduce.patch(unet, <tomesd fed the same generator>)`` (the installed diffusers lets tomesd
patch it: its ``BasicTransformerBlock`` forward signature still fits the reference's replacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import tokenreduce
from tokenreduce.core.assign import apply_assignment, restore
from tokenreduce.diffusion.grid import bipartite_merge_2d
from tokenreduce.diffusion.methods import ToMeSD

tomesd = pytest.importorskip("tomesd")
diffusers = pytest.importorskip("diffusers")
from tomesd.merge import bipartite_soft_matching_random2d  # noqa: E402


def reference_choice(gen: torch.Generator, cells: tuple[int, int], cell: int) -> torch.Tensor:
    """The draw the reference makes per block call (one per batch), as our (1, h // sy, w // sx) choice."""
    return torch.randint(cell, size=(*cells, 1), generator=gen)[..., 0][None]


@pytest.mark.parametrize(("h", "w", "sx", "sy", "ratio"), [
    (8, 8, 2, 2, 0.5), (8, 8, 2, 2, 0.75), (6, 10, 2, 2, 0.3), (7, 9, 2, 2, 0.5), (8, 12, 3, 2, 0.6),
    (16, 16, 2, 2, 0.1),
])
def test_merge_and_unmerge_equal_the_reference(h, w, sx, sy, ratio):
    n = h * w
    x = torch.randn(2, n, 16, generator=torch.Generator().manual_seed(h * w + sx))
    r = int(n * ratio)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    merge, unmerge = bipartite_soft_matching_random2d(x, w, h, sx, sy, r, generator=gen)
    choice = reference_choice(torch.Generator().set_state(state), (h // sy, w // sx), sx * sy)
    dst, kept = bipartite_merge_2d(x, (h, w), (sx, sy), r, choice)
    assert kept.tolist() == [n - r] * 2
    theirs = merge(x)
    ours, _ = apply_assignment(x, torch.ones(dst.shape), dst, n - r)
    assert theirs.shape == ours.shape
    # the same merged tokens: each of ours has an equal token in the reference's output, one to one
    diff = (ours[:, :, None] - theirs[:, None]).abs().amax(-1)  # (B, n - r, n - r)
    match = diff.argmin(-1)
    assert diff.amin(-1).max() < 1e-6
    assert all(len(set(row.tolist())) == n - r for row in match)
    torch.testing.assert_close(restore(ours, dst), unmerge(theirs), atol=1e-6, rtol=0)
    # unmerge of an arbitrary per-token function of the merged tokens: the same groups
    torch.testing.assert_close(restore(ours.sin(), dst), unmerge(theirs.sin()), atol=1e-6, rtol=0)


def tiny_sd_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


_GEN: list[torch.Generator] = []


@dataclass(frozen=True)
class ReferenceDraws(ToMeSD):
    """tomesd whose destinations come from the reference's generator (``_GEN[0]``), one draw per block call
    shared by the batch, as the reference draws them (not registered: passed as an object)."""

    def choose(self, grid, keys, stream):
        return reference_choice(_GEN[0], self.cells(grid), self.stride[0] * self.stride[1])


@pytest.mark.parametrize("params", [
    {"ratio": 0.5}, {"ratio": 0.75, "merge_crossattn": True, "merge_mlp": True}, {"ratio": 0.3, "max_downsample": 2},
])
def test_patched_unet_equals_the_reference(params):
    unet = tiny_sd_unet()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)  # even batch: tomesd random
    with torch.no_grad():
        torch.manual_seed(5)  # the reference forks its generator from the global one on first use
        _GEN[:] = [torch.Generator().set_state(torch.get_rng_state())]
        tomesd.apply_patch(unet, **params)
        try:
            theirs = unet(x, 10, ctx).sample
        finally:
            tomesd.remove_patch(unet)
        with tokenreduce.patched(unet, ReferenceDraws(**params)):
            ours = unet(x, 10, ctx).sample
        plain = unet(x, 10, ctx).sample
    assert (theirs - plain).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)


def test_a_unet_patched_by_the_reference_is_refused():
    unet = tiny_sd_unet()
    tomesd.apply_patch(unet, ratio=0.5)
    with pytest.raises(RuntimeError, match="tomesd package's patch"):
        tokenreduce.patch(unet, "tomesd", ratio=0.5)
    tomesd.remove_patch(unet)
