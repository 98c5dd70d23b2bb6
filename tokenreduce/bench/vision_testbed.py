"""Accuracy testbed for vision methods: a small trained ViT and its held-out images.

The model is a Hugging Face ``ViTForImageClassification`` (6 layers, width 64, 4 heads, patch 4)
trained by ``scripts/train_vit_digits.py`` on scikit-learn's handwritten digits (1,797 8×8
images of 0-9, Alpaydin & Kaynak, UCI, shipped with scikit-learn). Each digit is upsampled to
20×20 and placed at an offset of up to ±6 px from the centre of a blank 32×32 canvas: 64 patches
+ [CLS], about half of them background, and the digit's position varies. (Centred digits made a
poor testbed: the [CLS] token reads a near-linear classifier off the first layer's full
attention, so even random pruning of 90 % of the tokens cost < 1 point.)

Its weights ship in ``tokenreduce/assets/vit_digits``; the images come from scikit-learn at run
time (the ``vision`` extra). The split and the test offsets are fixed (seeded NumPy), and checked
against a hash recorded at training time, so accuracy under any method is measured on exactly the
images the recorded unreduced accuracy refers to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..encoder.adapters import patch, unpatch
from ..encoder.methods import make_method
from ..encoder.methods.base import Method

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "vit_digits"
IMAGE_SIZE = 32
DIGIT_SIZE = 20
MAX_SHIFT = (IMAGE_SIZE - DIGIT_SIZE) // 2  # 6 px either way from the centre
SPLIT_SEED = 0
OFFSET_SEED = 1
TEST_FRACTION = 0.25


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the vision testbed needs scikit-learn: pip install 'tokenreduce[vision]'") from e
    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def preprocess(images: np.ndarray | Tensor, shifts: np.ndarray | Tensor | None = None) -> Tensor:
    """(N, 8, 8) digits with values 0..16 → (N, 1, 32, 32) canvases in [-1, 1] (background −1).

    The digit is upsampled (bilinear) to 20×20, centred, then moved by ``shifts`` (N, 2) integer
    (dy, dx) pixels in [−6, 6] (default: centred).
    """
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, [MAX_SHIFT] * 4)
    x = (x - 0.5) / 0.5
    return x if shifts is None else shift_images(x, shifts)


def shift_images(x: Tensor, shifts: np.ndarray | Tensor) -> Tensor:
    """Move each canvas by its integer (dy, dx) in [−6, 6], filling with background (−1)."""
    shifts = torch.as_tensor(shifts, dtype=torch.int64)
    if shifts.shape != (x.shape[0], 2) or (len(shifts) and int(shifts.abs().max()) > MAX_SHIFT):
        raise ValueError(f"shifts must be (N, 2) integers in [-{MAX_SHIFT}, {MAX_SHIFT}]")
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x, [MAX_SHIFT] * 4, value=-1.0)
    m = MAX_SHIFT
    return torch.stack([img[:, m - dy : m - dy + h, m - dx : m - dx + w] for img, (dy, dx) in zip(xp, shifts.tolist())])


def eval_shifts(n: int, seed: int = OFFSET_SEED) -> np.ndarray:
    """The fixed (dy, dx) placement of each test image (legacy-seeded NumPy, stable across versions)."""
    return np.random.RandomState(seed).randint(-MAX_SHIFT, MAX_SHIFT + 1, size=(n, 2))


def split_indices(
    n: int, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, test) index split: a legacy-seeded NumPy permutation (stable across versions)."""
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def raw_split(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(8×8 images with values 0..16, labels) of the fixed ``"train"`` or ``"test"`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_digits()
    train, test = split_indices(len(labels))
    idx = train if split == "train" else test
    return images[idx], labels[idx]


def digits_split(split: str = "test") -> tuple[Tensor, Tensor]:
    """(pixels (N, 1, 32, 32), labels (N,)) of the fixed split: test images at their fixed
    offsets, train images centred (training moves them at random)."""
    images, labels = raw_split(split)
    shifts = eval_shifts(len(labels)) if split == "test" else None
    return preprocess(images, shifts), torch.from_numpy(labels)


def data_hash(split: str = "test") -> str:
    """SHA-256 of a split's raw images, labels and test offsets (detects a changed dataset or split; the float
    preprocessing is left out so a different torch build does not trip it)."""
    images, labels = raw_split(split)
    h = hashlib.sha256(np.ascontiguousarray(images.astype(np.uint8)).tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    if split == "test":
        h.update(np.ascontiguousarray(eval_shifts(len(labels)).astype(np.int64)).tobytes())
    return h.hexdigest()


def testbed_info(asset_dir: Path = ASSET_DIR) -> dict[str, Any]:
    """What training recorded: accuracy, split, data hash, command (``testbed.json``)."""
    path = Path(asset_dir) / "testbed.json"
    if not path.exists():
        raise FileNotFoundError(f"no trained testbed at {asset_dir}; run scripts/train_vit_digits.py")
    return json.loads(path.read_text())


def load_digits_vit(asset_dir: Path = ASSET_DIR, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The committed small ViT (eval mode, float32)."""
    from transformers import ViTForImageClassification

    if not (Path(asset_dir) / "model.safetensors").exists():
        raise FileNotFoundError(f"no trained weights at {asset_dir}; run scripts/train_vit_digits.py")
    model = ViTForImageClassification.from_pretrained(str(asset_dir), attn_implementation=attn_implementation)
    return model.eval()


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, pixels: Tensor, batch_size: int = 256) -> Tensor:
    """Class logits for every image, in batches (row results do not depend on the batch)."""
    return torch.cat([model(pixel_values=pixels[i : i + batch_size]).logits for i in range(0, len(pixels), batch_size)])


def evaluate(
    model: torch.nn.Module,
    pixels: Tensor,
    labels: Tensor,
    method: str | Method | None = None,
    reference: Tensor | None = None,
    batch_size: int = 256,
    **params: Any,
) -> dict[str, Any]:
    """Accuracy of ``model`` patched with ``method`` (None: unreduced), and top-1 agreement with
    ``reference`` predictions (the unreduced model's, usually). The model is unpatched after."""
    m = make_method(method, **params) if method is not None else None
    if m is not None:
        patch(model, m)
    try:
        logits = predict_logits(model, pixels, batch_size)
    finally:
        if m is not None:
            unpatch(model)
    pred = logits.argmax(-1)
    out: dict[str, Any] = {
        "accuracy": (pred == labels).float().mean().item(),
        "correct": int((pred == labels).sum()),
        "n": int(labels.numel()),
        "pred": pred,
    }
    if reference is not None:
        out["agreement"] = (pred == reference).float().mean().item()
    return out


class DigitsTestbed:
    """The trained model with its test images and unreduced predictions, loaded once."""

    def __init__(self, asset_dir: Path = ASSET_DIR, verify: bool = True) -> None:
        self.info = testbed_info(asset_dir)
        self.model = load_digits_vit(asset_dir)
        self.pixels, self.labels = digits_split("test")
        if verify and data_hash("test") != self.info["test_sha256"]:
            raise RuntimeError(
                "the digits test images differ from those the testbed was trained and scored on "
                "(scikit-learn data or preprocessing changed); retrain with scripts/train_vit_digits.py"
            )
        self.base = evaluate(self.model, self.pixels, self.labels)

    @property
    def tokens(self) -> int:
        cfg = self.model.config
        return (cfg.image_size // cfg.patch_size) ** 2 + 1

    def score(self, method: str | Method, **params: Any) -> dict[str, Any]:
        """Accuracy and top-1 agreement with the unreduced model under ``method``."""
        return evaluate(self.model, self.pixels, self.labels, method, reference=self.base["pred"], **params)
