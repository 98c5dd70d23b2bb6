"""The digits DiT trained here (tokenreduce/assets/dit_digits) is good enough to judge diffusion token
reduction on: its unreduced samples are read as the requested digit by the bundled digits ViT (issue
target: >= 0.80), measured by running the committed weights with the quality table's own sampler."""

from __future__ import annotations

import pytest

from tokenreduce.diffusion.bench_digits import (
    ASSET_DIR,
    balanced_labels,
    digits_info,
    judge,
    load_digits_dit,
    sample_digits,
)

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.skipif(not (ASSET_DIR / "config.json").exists(), reason="no trained digits DiT")


def _accuracy(samples: int) -> float:
    from tokenreduce.bench.vision_testbed import load_digits_vit

    labels = balanced_labels(samples)
    images = sample_digits(load_digits_dit(), labels, seed=0)  # DDIM 25 steps, guidance 3: the bench's defaults
    return judge(load_digits_vit(), images, labels)["accuracy"]


def test_checkpoint_is_small_and_records_how_it_was_made():
    weights = ASSET_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 5_000_000
    info = digits_info()
    assert info["command"].startswith("python scripts/train_diffusion_digits.py")
    assert info["check"]["vit_accuracy"] >= 0.80


def test_a_few_samples_are_the_requested_digits():
    """Two samples per digit (the first 20 of the quality table's 100): a quick guard on the committed weights
    (these 20 score 0.75; the first model, 0.56 on 100, scored 0.55 on them). Too few samples for the 0.80
    target itself, which the slow test checks on the table's 100."""
    assert _accuracy(20) >= 0.70


@pytest.mark.slow
def test_unreduced_accuracy_meets_the_target():
    """The quality table's unreduced row: 100 samples (10 per digit), seed 0, DDIM 25 steps, guidance 3."""
    assert _accuracy(100) >= 0.80
