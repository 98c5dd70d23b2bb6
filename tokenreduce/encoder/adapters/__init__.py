"""Model-family adapters and the patch/unpatch entry points."""

from .patching import families, patch, patched, unpatch

__all__ = ["families", "patch", "patched", "unpatch"]
