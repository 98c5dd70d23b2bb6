"""The accuracy testbed: committed weights reproduce the recorded accuracy; reduction costs accuracy
in the expected order (ToMe at keep 0.7 barely, random pruning at keep 0.3 clearly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the digits testbed needs scikit-learn (the vision extra)")

from tokenreduce import patched  # noqa: E402
from tokenreduce.bench.vision_testbed import (  # noqa: E402
    ASSET_DIR,
    DigitsTestbed,
    digits_split,
    eval_shifts,
    evaluate,
    preprocess,
    raw_split,
    shift_images,
    split_indices,
)


@pytest.fixture(scope="module")
def tb() -> DigitsTestbed:
    return DigitsTestbed()


def test_assets_are_small_and_complete():
    files = {p.name: p.stat().st_size for p in ASSET_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "testbed.json"} <= set(files)
    assert sum(files.values()) < 1.5 * 2**20


def test_split_is_fixed_and_disjoint():
    train, test = split_indices(1797)
    assert len(train) == 1348 and len(test) == 449
    assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
    assert np.array_equal(split_indices(1797)[1], test)  # no hidden RNG state
    x, y = digits_split("test")
    assert x.shape == (449, 1, 32, 32) and y.shape == (449,)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    with pytest.raises(ValueError, match="split must be"):
        digits_split("val")


def test_images_are_placed_digits():
    images, _ = raw_split("test")
    centred = preprocess(images[:5])
    # background everywhere outside the centred 20×20 digit box
    assert torch.all(centred[:, :, :6] == -1) and torch.all(centred[:, :, :, 26:] == -1)
    shifts = eval_shifts(449)
    assert shifts.min() >= -6 and shifts.max() <= 6 and np.array_equal(shifts, eval_shifts(449))
    placed = preprocess(images[:5], shifts[:5])
    for img, c, (dy, dx) in zip(placed, centred, shifts[:5].tolist()):  # a shift never wraps: equals a roll
        assert torch.equal(img, torch.roll(c, (dy, dx), (1, 2)))
    with pytest.raises(ValueError, match="shifts must be"):
        shift_images(centred[:1], [[7, 0]])


def test_unreduced_accuracy_is_the_recorded_one(tb):
    assert tb.tokens == 65  # 64 patches + [CLS]: enough tokens for reduction to matter
    assert tb.base["correct"] == tb.info["test_correct"]
    assert tb.base["accuracy"] == pytest.approx(tb.info["test_accuracy"], abs=1e-9)
    assert tb.base["accuracy"] > 0.95


def test_keep_one_is_exact(tb):
    ref = tb.model(pixel_values=tb.pixels[:32]).logits
    for method in ("tome", "random", "evit"):
        with patched(tb.model, method, keep=1.0), torch.inference_mode():
            assert torch.equal(tb.model(pixel_values=tb.pixels[:32]).logits, ref), method


def test_agreement_matches_a_per_image_loop(tb):
    """Batched scoring under reduction equals one-image-at-a-time predictions (batch independence)."""
    res = tb.score("tome", keep=0.5)
    idx = list(range(0, 449, 56))  # 9 images, one at a time
    with patched(tb.model, "tome", keep=0.5), torch.inference_mode():
        single = torch.stack([tb.model(pixel_values=tb.pixels[i : i + 1]).logits[0].argmax() for i in idx])
    assert torch.equal(single, res["pred"][idx])
    agree = sum(int(res["pred"][i] == tb.base["pred"][i]) for i in range(449)) / 449
    assert res["agreement"] == pytest.approx(agree)
    assert res["accuracy"] == pytest.approx(sum(int(res["pred"][i] == tb.labels[i]) for i in range(449)) / 449)


def test_moderate_merging_keeps_accuracy_random_pruning_loses_it(tb):
    base = tb.base["accuracy"]
    tome = tb.score("tome", keep=0.7)
    rand = tb.score("random", keep=0.3)
    assert tome["accuracy"] >= base - 0.02, tome["accuracy"]  # within 2 points (measured: 0)
    assert tome["agreement"] >= 0.97
    assert rand["accuracy"] <= base - 0.04, rand["accuracy"]  # loses at least 4 points (measured: 6.5)
    assert rand["accuracy"] < tome["accuracy"] - 0.04


def test_model_is_left_unpatched(tb):
    evaluate(tb.model, tb.pixels[:4], tb.labels[:4], "tome", keep=0.5)
    from tokenreduce import patch_info

    assert patch_info(tb.model) is None
