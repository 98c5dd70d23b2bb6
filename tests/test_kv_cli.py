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
        (["--presses", "snapkv:kernel"], "expected name:param=value"),
        (["--presses", "snapkv:windw=3"], "unknown parameter"),
    ],
)
def test_bad_input_is_a_clear_error(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenreduce: error:") and msg in err


def test_press_specs_and_labels():
    from tokenreduce.kv import TOVA
    from tokenreduce.kv.presses.base import label, parse_press

    p = parse_press("snapkv:kernel=11:window=16", 0.25)
    assert (p.keep, p.kernel, p.window) == (0.25, 11, 16)
    assert label(p) == "snapkv(window=16,kernel=11)"
    assert label(parse_press("snapkv", 0.5)) == "snapkv"
    assert parse_press("adakv:scorer=tova", 0.5).scorer == TOVA(keep=0.5)  # the name becomes the press object
    assert parse_press("zipcache:keep=1.0:bits=8", 0.25).keep == 1.0


def test_bad_keep_names_the_option_not_the_baseline(capsys):
    assert main(["--keep", "0"]) == 2
    err = capsys.readouterr().err
    assert "--keep must be in (0, 1]" in err and "random" not in err
