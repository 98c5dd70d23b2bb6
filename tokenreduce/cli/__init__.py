"""The ``tokenreduce`` command tree: ``tokenreduce COMMAND [SUBCOMMAND] [options]``.

Each command lives in its own module with ``main(argv) -> int`` and its own parser (see
:mod:`tokenreduce.cli.commands`); this module only finds it, so ``--help`` and ``--version`` answer
without importing torch. A mistyped command gets a did-you-mean and exit code 2.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings

from .._version import __version__
from ..spec import parse_spec
from .commands import BENCH_GROUPS, BENCH_TARGETS, COMMANDS

parse_config = parse_spec  # the one spec grammar, under the name the encoder CLI has always used


def usage() -> str:
    width = max(len(" ".join(w)) for w in COMMANDS) + 2
    rows = "\n".join(f"  {' '.join(w):{width}s}{h}" for w, (_, h) in COMMANDS.items())
    return (
        "usage: tokenreduce COMMAND [SUBCOMMAND] [options]   (python -m tokenreduce works too)\n\n"
        "Training-free token reduction, measured.\n\n"
        f"commands (each takes --help):\n{rows}\n\n"
        "options:\n  -h, --help     show this list\n  --version      print the version\n"
        "  --quiet        tables and results only (no progress bars)\n"
        "  --verbose      keep third-party output (load reports, warnings, profiler logs), silenced by default"
    )


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _error(message: str) -> int:
    print(f"tokenreduce: error: {message}\n(run `tokenreduce --help` for the commands)", file=sys.stderr)
    return 2


def output_level(argv: list[str]) -> tuple[list[str], str]:
    """Take ``--quiet`` / ``--verbose`` out of ``argv`` (they may stand anywhere) and apply them.

    default: tokenreduce's own progress bar and tables; third-party noise (transformers' load reports
    and progress bars, library warnings, the profiler's native log lines) silenced.
    ``--quiet``: no progress bars either (tables and results only). ``--verbose``: nothing silenced.
    Set through the environment before any command module (or torch) is imported.
    """
    level = "verbose" if "--verbose" in argv else "quiet" if "--quiet" in argv else "default"
    if "--verbose" in argv and "--quiet" in argv:
        raise ValueError("--quiet and --verbose exclude each other")
    rest = [a for a in argv if a not in ("--quiet", "--verbose")]
    os.environ["TOKENREDUCE_OUTPUT"] = level
    if level != "verbose":
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"tokenreduce(\.|$)")
    if level == "quiet":
        os.environ["TQDM_DISABLE"] = "1"
    return rest, level


def main(argv: list[str] | None = None) -> int:
    """Run the command named by ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, _ = output_level(argv)
    except ValueError as e:
        return _error(str(e))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"tokenreduce {__version__}")
        return 0
    top = sorted({w[0] for w in COMMANDS})
    if argv[0] not in top:
        return _error(f"unknown command {argv[0]!r}{_suggest(argv[0], top)}")
    if argv[0] == "bench" and len(argv) > 1 and not argv[1].startswith("-"):
        sub = argv[1]
        if sub not in BENCH_GROUPS + BENCH_TARGETS:
            choices = BENCH_GROUPS + BENCH_TARGETS
            return _error(f"unknown benchmark {sub!r}{_suggest(sub, choices)}; choose from {', '.join(choices)}")
    words = next(w for w in sorted(COMMANDS, key=len, reverse=True) if tuple(argv[: len(w)]) == w)
    module = importlib.import_module(COMMANDS[words][0])
    return module.main(argv[len(words):])
