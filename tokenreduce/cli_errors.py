"""The one way every ``tokenreduce`` command reports bad user input: a line on stderr and exit status 2."""

from __future__ import annotations

import sys


def user_error(msg: object) -> int:
    """Print ``tokenreduce: error: msg`` to stderr (no traceback) and return the exit status 2."""
    print(f"tokenreduce: error: {msg}", file=sys.stderr)
    return 2
