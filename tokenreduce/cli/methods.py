"""``tokenreduce methods [FAMILY]``: every family's registered methods, with parameters and defaults.

The same names and parameters work in every spec (``name:key=value,key=value``) of the CLI and YAML.
"""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import MISSING, fields

from .args import HelpFormatter

# family -> (title, module holding its REGISTRY)
FAMILIES = {
    "encoder": ("encoder methods (tokenreduce.patch(model, NAME, ...))", "tokenreduce.encoder.methods.base"),
    "visual": ("visual-token methods for VLMs (tokenreduce.patch(vlm, NAME, ...))", "tokenreduce.vlm.methods"),
    "press": ("KV-cache presses (tokenreduce.kv.make_press(NAME, ...))", "tokenreduce.kv.presses.base"),
    "prompt": ("prompt-compression methods (tokenreduce.compress_prompt(..., method=NAME))",
               "tokenreduce.prompt.methods"),
    "diffusion": ("diffusion methods for U-Nets and DiTs (tokenreduce.patch(pipe_or_unet, NAME, ...))",
                  "tokenreduce.diffusion.methods"),
}


def _default(f) -> str:
    if f.default is not MISSING:
        return repr(f.default)
    return "(required)" if f.default_factory is MISSING else repr(f.default_factory())


def summary(doc: str | None, width: int = 150) -> str:
    """The first sentence of a docstring's first paragraph (cut at ``width`` characters), for one-line listings;
    ``help(cls)`` has the rest."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    cut = re.search(r"(?<=[.!?])\s(?=[A-Z(`])", text)  # "e.g. x" or "arXiv 2412.01818)" do not end a sentence
    text = text[: cut.start()] if cut else text
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + " …"


def describe(registry) -> list[str]:
    """One entry per method: its name, the first sentence of its docstring, its parameters."""
    lines = []
    for name in registry.names():
        cls = registry.get(name)
        params = ", ".join(f"{f.name}={_default(f)}" for f in fields(cls) if f.init)
        lines.append(f"{name:15s} {summary(cls.__doc__)}\n{'':15s} params: {params or '(none)'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="tokenreduce methods", description=__doc__.splitlines()[0])
    p.add_argument("family", nargs="?", choices=list(FAMILIES), help="one family (default: all)")
    a = p.parse_args(argv)
    print("(one line per method; help(cls) or the docs have the rest)\n")
    for family in [a.family] if a.family else FAMILIES:
        title, module = FAMILIES[family]
        print(f"# {title}")
        print("\n".join(describe(importlib.import_module(module).REGISTRY)), end="\n\n")
    return 0
