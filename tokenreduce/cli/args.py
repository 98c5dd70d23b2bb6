"""Argument types shared by the commands (comma-separated lists), with errors argparse reports."""

from __future__ import annotations

import argparse


def floats(text: str) -> list[float]:
    """``"0.9,0.5"`` -> ``[0.9, 0.5]``."""
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def names(text: str) -> list[str]:
    """``"tome, evit"`` -> ``["tome", "evit"]``."""
    return [v.strip() for v in text.split(",") if v.strip()]
