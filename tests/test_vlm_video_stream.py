"""Streaming video under a fixed visual-token budget (tokenreduce.vlm.video.stream) on tiny Qwen2-VL / 2.5-VL."""

from __future__ import annotations

import pytest
import torch
from test_vlm_video import tiny_qwen25, video_inputs
from vlm_models import tiny_llava, tiny_qwen2vl

from tokenreduce.vlm.video.stream import VideoStream


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2vl()


@pytest.fixture(scope="module")
def qwen25():
    return tiny_qwen25()


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "qwen25"])
def test_a_budget_that_holds_everything_equals_the_model_on_the_whole_video(family, qwen, qwen25):
    model = qwen25 if family == "qwen25" else qwen
    x = video_inputs(model, videos=((6, 8, 8),))
    ids = x["input_ids"][0]
    ref = model(**x).logits[0, -1]
    gen = model.generate(**x, max_new_tokens=4, do_sample=False)[0, -4:].tolist()
    s = VideoStream(model, budget=6 * 16, prompt=ids[:3])
    for f, frame in enumerate(x["pixel_values_videos"].view(6, 64, -1)):
        assert s.add_frame(frame, (1, 8, 8)) == 16 * (f + 1)
    torch.testing.assert_close(s.logits(ids[-6:]), ref, rtol=1e-5, atol=1e-5)  # frames encoded one by one
    assert s.answer(ids[-6:], 4) == gen


@torch.no_grad()
@pytest.mark.parametrize("recent,old", [(2, 0.25), (0, 0.5), (4, 0.125)])
def test_held_tokens_never_exceed_the_budget_over_many_frames(recent, old, qwen):
    g = torch.Generator().manual_seed(0)
    budget = 100
    s = VideoStream(qwen, budget=budget, recent=recent, old=old, prompt=torch.tensor([5, 6, 7]))
    question = torch.tensor([8, 9, 10])
    base = torch.randn(16, 48, generator=g)
    for f in range(120):
        held = s.add_features(base + 0.5 * torch.randn(16, 48, generator=g), (4, 4))
        assert held <= budget and held == s.held
        if f % 40 == 39:  # an answer at any time, from what is held
            assert len(s.answer(question, 2)) == 2
    assert max(s.history) <= budget and len(s.history) == 120
    assert sum(e.frames for e in s.entries) == 120  # every frame is covered by some entry
    orig = torch.cat([e.orig for e in s.entries])
    assert len(orig.unique()) == len(orig) and int(orig.max()) < 120 * 16  # each held token keeps one original place
    assert all(e.whole for e in s.entries[len(s.entries) - recent :])  # the newest frames stay whole
    spans = [e.frames for e in s.entries[: len(s.entries) - recent]]
    assert spans[0] >= spans[-1]  # older memory covers longer spans


@torch.no_grad()
def test_bad_parameters_and_models_are_refused(qwen):
    for kw, match in [
        ({"budget": 0}, "budget must be an int >= 1"),
        ({"budget": 10.5}, "budget must be an int >= 1"),
        ({"budget": 64, "recent": -1}, "recent must be an int >= 0"),
        ({"budget": 64, "old": 0.0}, r"old must be in \(0, 1\]"),
        ({"budget": 64, "old": 1.5}, r"old must be in \(0, 1\]"),
        ({"budget": 64, "old": "half"}, "old must be a real number"),
    ]:
        with pytest.raises(ValueError, match=match):
            VideoStream(qwen, **kw)
    with pytest.raises(ValueError, match="needs a Qwen2-VL"):
        VideoStream(tiny_llava(), budget=64)
    s = VideoStream(qwen, budget=20, recent=2)
    with pytest.raises(ValueError, match="budget must be >= .* = 36"):
        s.add_features(torch.zeros(16, 48), (4, 4))
    s = VideoStream(qwen, budget=64)
    s.add_features(torch.zeros(16, 48), (4, 4))
    with pytest.raises(ValueError, match="every frame must have the grid"):
        s.add_features(torch.zeros(4, 48), (2, 2))
    with pytest.raises(ValueError, match="one frame at a time"):
        s.add_frame(torch.zeros(128, 96), (2, 8, 8))
    with pytest.raises(ValueError, match="no frame yet"):
        VideoStream(qwen, budget=64).answer(torch.tensor([1]))
