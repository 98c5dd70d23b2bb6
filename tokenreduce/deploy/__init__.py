"""Deployment of patched models: ONNX export checked against PyTorch, and torch.compile."""

from .onnx import export_onnx

__all__ = ["export_onnx"]
