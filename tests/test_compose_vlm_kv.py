"""Visual-token pruning composed with a KV press in one ``generate`` (LLaVA and Qwen2-VL with M-RoPE).

The VLM prunes visual tokens before the LLM, the press compresses the LLM's prefill cache, and decoding
goes on through one provenance map (tokenreduce.core.provenance): checked against the unpatched model
(nothing reduced), against a reference built by hand from the method's kept indices (the unpatched
language model on the reduced embeddings, pressed on its own), and with a left-padded batch.
"""

from __future__ import annotations

import pytest
import torch
from vlm_models import llava_inputs, qwen2vl_inputs, tiny_llava, tiny_qwen2vl

import tokenreduce
from tokenreduce.core.provenance import MIXED, Provenance, layer_map
from tokenreduce.kv import AdaKV, SnapKV, StreamingLLM, apply_press, kv_bytes
from tokenreduce.kv.ragged import RaggedLayer
from tokenreduce.vlm.state import get_state

NEW = 6


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2vl()


def _case(family: str, llava, qwen) -> tuple[torch.nn.Module, dict, int, str]:
    """Model, single-row inputs, the number of visual tokens in the row, and a pruning method for it
    (Qwen2-VL's tower has no [CLS] for FasterVLM: random pruning, also applied before the LLM)."""
    if family == "llava":
        x = llava_inputs(llava, question=10)
        return llava, x, int((x["input_ids"] == llava.config.image_token_id).sum()), "fastervlm"
    x = qwen2vl_inputs(qwen, question=10)
    return qwen, x, int((x["input_ids"] == qwen.config.image_token_id).sum()), "visual-random"


def _lm_inputs(model, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings and position ids the unpatched model hands its language model in a prefill."""
    seen = {}

    def grab(module, args, kwargs):
        seen["emb"], seen["pos"] = kwargs["inputs_embeds"], kwargs.get("position_ids")

    h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**x)
    finally:
        h.remove()
    emb, pos = seen["emb"], seen["pos"]
    if pos is None:
        pos = torch.arange(emb.shape[1])[None]
    return emb, pos


@torch.no_grad()
@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_keep_all_reproduces_unpatched_generate(family, llava, qwen):
    model, x, n_vis, method = _case(family, llava, qwen)
    ref = model.generate(**x, max_new_tokens=NEW, do_sample=False)
    with tokenreduce.patched(model, method, tokens=n_vis), apply_press(model, SnapKV(keep=1.0, window=4)):
        out = model.generate(**x, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(out, ref)


PRESSES = {"snapkv": SnapKV(keep=0.5, window=4, kernel=3),
           "adakv (ragged)": AdaKV(keep=0.5, scorer=SnapKV(window=4, kernel=3))}


@torch.no_grad()
@pytest.mark.parametrize("name", PRESSES)
@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_composition_equals_hand_reference(family, name, llava, qwen):
    """Patched + pressed ``generate`` == the unpatched LM fed the reduced embeddings at their original
    positions, its prefill cache pressed by the same press, greedy decoding by hand."""
    model, x, n_vis, method = _case(family, llava, qwen)
    tokens, press = n_vis // 4, PRESSES[name]
    with tokenreduce.patched(model, method, tokens=tokens):
        kept = get_state(model(**x, use_cache=True).cache).cols[0]  # the method's kept original indices
        with apply_press(model, press):
            res = model.generate(**x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    out, n = res.sequences, x["input_ids"].shape[1]
    assert kept.shape[1] == n - n_vis + tokens
    per_entry = kv_bytes(model(**x, use_cache=True).cache) / n
    padding = sum(layer.padding_bytes() for layer in res.past_key_values.layers if isinstance(layer, RaggedLayer))
    held = kv_bytes(res.past_key_values) - padding  # ragged: each head padded to the layer's longest (declared)
    assert held <= per_entry * (-(-kept.shape[1] // 2) + NEW - 1)  # pruned, then pressed

    emb, pos = _lm_inputs(model, x)
    red_pos = Provenance(kept, torch.ones_like(kept, dtype=torch.bool), n).kept_positions(pos)
    lm = model.model.language_model
    step = pos.max(-1).values.flatten()[-1] + 1 - n  # decode positions: token count + the rope delta (0 for 1-D)
    new = []
    with apply_press(lm, press):
        h = lm(inputs_embeds=emb[:, kept[0]], position_ids=red_pos, use_cache=True)
        cache = h.cache
        for t in range(NEW):
            tok = model.lm_head(h.last_hidden_state[:, -1]).argmax(-1)
            new.append(tok)
            p = torch.full((1, 1), n + t, dtype=torch.long) + step
            p = p.expand(pos.shape[0], 1, 1) if pos.ndim == 3 else p
            h = lm(inputs_embeds=model.get_input_embeddings()(tok)[:, None], position_ids=p, cache=cache,
                   use_cache=True)
    assert torch.equal(out[:, n:], torch.stack(new, 1))


def _left_padded_llava(model) -> dict:
    """Two rows of different lengths, the shorter left-padded (pad id 0, mask 0)."""
    a = llava_inputs(model, prefix=3, question=10, seed=1)
    b = llava_inputs(model, prefix=8, question=10, seed=2)
    pad = b["input_ids"].shape[1] - a["input_ids"].shape[1]
    ids = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), a["input_ids"]], 1), b["input_ids"]])
    mask = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), a["attention_mask"]], 1),
                      b["attention_mask"]])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]])}


@torch.no_grad()
@pytest.mark.parametrize("press", [SnapKV(keep=0.5, window=4, kernel=3), StreamingLLM(keep=0.4, sinks=2)])
def test_left_padded_batch_rows_equal_rows_alone(llava, press):
    x = _left_padded_llava(llava)
    n = x["input_ids"].shape[1]
    gen = {"max_new_tokens": NEW, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}
    with tokenreduce.patched(llava, "fastervlm", tokens=16), apply_press(llava, press):
        out = llava.generate(**x, **gen)
        for r in range(2):
            real = x["attention_mask"][r].bool()
            row = {"input_ids": x["input_ids"][r : r + 1, real], "attention_mask": x["attention_mask"][r : r + 1, real],
                   "pixel_values": x["pixel_values"][r : r + 1]}
            alone = llava.generate(**row, **gen)
            assert torch.equal(out.sequences[r, n:], alone.sequences[0, row["input_ids"].shape[1] :])
            for step, ref in zip(out.logits, alone.logits, strict=True):
                torch.testing.assert_close(step[r], ref[0], rtol=1e-4, atol=1e-4)
    with tokenreduce.patched(llava, "fastervlm", tokens=16):
        pruned = llava.generate(**x, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    assert kv_bytes(out.past_key_values) < kv_bytes(pruned.past_key_values)
    state = layer_map(out.past_key_values)
    assert state.seen + out.past_key_values.get_seq_length() - state.length == n + NEW - 1
    assert bool((state.index == MIXED).all())


def test_press_refuses_a_method_inside_the_llm(llava):
    x = llava_inputs(llava)
    with tokenreduce.patched(llava, "fastv", keep=0.5), apply_press(llava, SnapKV(keep=0.5, window=4)):
        with pytest.raises(ValueError, match="before the LLM"):
            llava.generate(**x, max_new_tokens=2, do_sample=False)


@torch.no_grad()
def test_order_of_the_with_blocks_does_not_matter(llava):
    x = llava_inputs(llava, question=10)
    press = SnapKV(keep=0.5, window=4, kernel=3)
    with tokenreduce.patched(llava, "fastervlm", tokens=16), apply_press(llava, press):
        first = llava.generate(**x, max_new_tokens=NEW, do_sample=False)
    with apply_press(llava, press), tokenreduce.patched(llava, "fastervlm", tokens=16):
        assert torch.equal(llava.generate(**x, max_new_tokens=NEW, do_sample=False), first)
