"""PyramidDrop's stages and the dynamic visual-token exit against rules written out from their papers (issue 16).

The reference never shortens a sequence: every decoder layer runs on the full prompt, a dropped token is a key
no other query sees from its pruning layer on, and each stage ranks the tokens still alive by the last token's
head-averaged attention in the previous layer, read from the eager model's own attention weights. So the kept
sets and the logits check the selection, positions and masks of the hook-based runner together."""

from __future__ import annotations

import math

import pytest
import torch
from vlm_models import llava_inputs, tiny_llava

import tokenreduce
from tokenreduce.vlm.state import get_state


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(impl="eager")


def masked_run(model, x, alive: list[torch.Tensor]):
    """Logits and attentions of the full prompt where layer i's keys are the tokens ``alive[i]`` (N,) (each
    query also sees itself, so a dropped token's own row stays finite; its output is never read)."""
    layers = model.model.language_model.layers
    n = x["input_ids"].shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    def hook(i):
        def pre(module, args, kwargs):
            allowed = causal & (alive[i][None, :] | torch.eye(n, dtype=torch.bool))
            kwargs["attention_mask"] = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
            return args, kwargs

        return pre

    hooks = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        out = model(**x, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return out.logits[:, -1], out.attentions


def last_token_attention(attentions, layer: int) -> torch.Tensor:
    return attentions[layer][0].mean(0)[-1]


@torch.no_grad()
def test_pyramiddrop_stages_equal_the_written_out_rule(llava):
    """keep=0.3 of 64 visual tokens, ratio 0.5: 19, then 10, then 5 remain before layers 1, 2 and 3, each
    stage the top of the previous layer's last-token attention among the visual tokens still there."""
    x = llava_inputs(llava)
    vis = x["input_ids"][0] == llava.config.image_token_id
    n, depth = vis.shape[0], len(llava.model.language_model.layers)
    alive = [torch.ones(n, dtype=torch.bool) for _ in range(depth)]
    for stage, count in zip((1, 2, 3), (19, 10, 5)):
        _, att = masked_run(llava, x, alive)
        score = last_token_attention(att, stage - 1).masked_fill(~(vis & alive[stage]), -1.0)
        drop = vis & alive[stage]
        drop[torch.topk(score, count).indices] = False
        for i in range(stage, depth):
            alive[i] = alive[i] & ~drop
    ref, _ = masked_run(llava, x, alive)
    with tokenreduce.patched(llava, "pdrop", keep=0.3):
        out = llava(**x, use_cache=True)
    cols = get_state(out.cache).cols
    assert [int(vis[c[0]].sum()) for c in cols] == [64, 19, 10, 5]
    for i in range(depth):
        assert torch.equal(cols[i][0], alive[i].nonzero()[:, 0])
    torch.testing.assert_close(out.logits[:, -1], ref, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_dynamic_exit_equals_the_written_out_rule(llava):
    """Every visual token leaves before the first layer s >= 1 whose previous layer gives the image less
    last-token attention than the threshold, else before the budget's latest layer, ceil(depth * 40 / 64) = 3;
    thresholds picked around the measured masses make each exit layer happen."""
    x = llava_inputs(llava)
    vis = x["input_ids"][0] == llava.config.image_token_id
    n, depth = vis.shape[0], len(llava.model.language_model.layers)
    latest = math.ceil(depth * 40 / 64)
    _, att = masked_run(llava, x, [torch.ones(n, dtype=torch.bool)] * depth)
    mass = [float(last_token_attention(att, i)[vis].sum()) for i in range(depth)]
    exits = set()
    for threshold in (0.0, 1.0, *(m + d for m in mass[: latest - 1] for d in (-1e-4, 1e-4))):
        threshold = min(max(threshold, 0.0), 1.0)
        exit_at = next((s for s in range(1, latest) if mass[s - 1] < threshold), latest)
        exits.add(exit_at)
        alive = [~vis if i >= exit_at else torch.ones(n, dtype=torch.bool) for i in range(depth)]
        ref, _ = masked_run(llava, x, alive)
        with tokenreduce.patched(llava, "dyvte", tokens=40, threshold=threshold):
            out = llava(**x, use_cache=True)
        seen = [int(vis[c[0]].sum()) for c in get_state(out.cache).cols]
        assert seen == [64 if i < exit_at else 0 for i in range(depth)], threshold
        torch.testing.assert_close(out.logits[:, -1], ref, rtol=1e-4, atol=1e-5)
    assert exits == {1, 2, 3} or exits == {1, 3}  # layer 2 is reachable only if layer 1's mass is the lower
