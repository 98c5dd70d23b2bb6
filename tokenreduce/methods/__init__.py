"""Registered token-reduction methods; importing this package registers them all."""

from . import evit, simple, tome  # noqa: F401  (registration side effect)
from .base import LayerTensors, Method, Plan, make_method, methods, register

__all__ = ["LayerTensors", "Method", "Plan", "make_method", "methods", "register"]
