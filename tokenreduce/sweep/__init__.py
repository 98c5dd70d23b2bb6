"""Resumable sweeps: config → points → measured one by one into a SQLite store; results, reports."""

from .config import BASELINE, Point, Sweep, load_sweep, parse_sweep
from .runner import pending, run_sweep
from .store import Store

__all__ = ["BASELINE", "Point", "Store", "Sweep", "load_sweep", "parse_sweep", "pending", "run_sweep"]
