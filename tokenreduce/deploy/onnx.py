"""Export a patched (or plain) vision encoder to ONNX and check it against PyTorch.

Uses the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``). Inside a patched model
the export path avoids what ONNX lacks: merging is a one-hot matmul instead of ``index_add``
(there is no scatter-mean), and the stable sort becomes a full-length TopK (ONNX TopK orders ties
by index, as the stable sort does). Image encoders have no padding, so every token count is known
from the input shape and the graph has static shapes per image size (the batch may be dynamic).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


class _LastHidden(nn.Module):
    """``pixel_values -> last_hidden_state``: a plain tensor-in, tensor-out graph for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def export_onnx(
    model: nn.Module, pixel_values: Tensor, path: str | Path, dynamic_batch: bool = True, check: bool = True
) -> float | None:
    """Write ``model`` (last hidden state, or logits for a classifier) to ``path`` as ONNX.

    With ``check`` (needs onnxruntime) runs the file on ``pixel_values`` and returns the largest
    absolute difference from PyTorch's output; otherwise returns None.
    """
    wrapped = _LastHidden(model).eval()
    dyn = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    # torch.export specializes a dimension of size 1, so a one-image example would fix the batch at 1
    # (and fail against the dynamic range): trace with the image twice; the graph is the same.
    single = dynamic_batch and len(pixel_values) == 1
    example = pixel_values.expand(2, *pixel_values.shape[1:]) if single else pixel_values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example.contiguous(),),
            str(path),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=["output"],
            dynamic_shapes=dyn,
            verbose=False,
        )
    if not check:
        return None
    import onnxruntime as ort

    with torch.inference_mode():
        ref = wrapped(pixel_values)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"pixel_values": pixel_values.numpy()})[0]
    return float((torch.from_numpy(out) - ref).abs().max())
