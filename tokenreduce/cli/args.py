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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default (unless its help already names one, or there is none) and
    keeps descriptions' own line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings
        if quiet or "default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"
