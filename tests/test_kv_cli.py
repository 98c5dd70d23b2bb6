"""`tokenreduce bench kv`: user errors are reported before any model is loaded."""

from __future__ import annotations

import pytest

from tokenreduce.kv.cli import main


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--presses", "nope"], "unknown press"),
        (["--keep", "0"], "keep must be in"),
        (["--keep", "abc"], "could not convert"),
        (["--length", "10"], "--length"),
        (["--model", "/does/not/exist"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenreduce: error:") and msg in err
