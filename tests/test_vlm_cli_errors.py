"""`tokenreduce bench vlm` checks every config against the LLM's depth before building or measuring anything."""

from __future__ import annotations

import tokenreduce.vlm.cli as vlm_cli
from tokenreduce.vlm.cli import main


def test_llm_layers_too_few_for_an_inside_method_fails_first(capsys, monkeypatch):
    built = []
    monkeypatch.setattr(vlm_cli, "random_llava", lambda *a, **k: built.append(1))
    assert main(["--llm-layers", "2", "--methods", "fastervlm,fastv", "--no-progress"]) == 2
    assert "fastv: pruning layers must be in [1, 1] for a 2-layer LLM" in capsys.readouterr().err
    assert main(["--llm-layers", "1", "--methods", "fastervlm", "--no-progress"]) == 2
    assert "--llm-layers must be >= 2" in capsys.readouterr().err
    assert not built  # nothing was built, so nothing measured was thrown away
