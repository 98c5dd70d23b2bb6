"""Visualize token reduction: which image patches were merged together or pruned, stage by stage."""

from .visualize import Trace, render, trace, visualize

__all__ = ["Trace", "render", "trace", "visualize"]
