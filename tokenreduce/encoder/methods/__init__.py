"""Registered token-reduction methods; importing this package registers them all."""

from . import ats, diffrate, evit, mctf, pitome, pooling, simple, tome, zero_tprune  # noqa: F401  (registration)
from .base import LayerTensors, Method, Plan, make_method, methods, register

__all__ = ["LayerTensors", "Method", "Plan", "make_method", "methods", "register"]
