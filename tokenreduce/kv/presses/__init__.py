"""Registered KV-cache presses (import order = registration)."""

from . import attention, budgets, decoding, kvzip, quant, simple  # noqa: F401  (registers the presses)
from .base import LayerView, Press, make_press, presses, register

__all__ = ["LayerView", "Press", "make_press", "presses", "register"]
