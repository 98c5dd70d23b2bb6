"""Every tensor the library creates next to model tensors is created on their device.

A tensor factory without ``device=`` (``torch.zeros(n)``, ``torch.arange(n)``, ``torch.tensor([...])``)
allocates on the CPU; combined with a CUDA model's tensors it fails or silently copies every call.
This test walks the source of the library (not the measurement layers: ``bench/``, ``sweep/``, ``cli/`` and
the families' own ``bench*.py`` / ``cli.py``, as in docs/DESIGN.md) with ``ast`` and fails on any device-less
factory outside the functions listed below, each of which builds CPU bookkeeping by design.
``x.new_zeros(...)``, ``torch.zeros_like(x)`` and friends inherit the device and are fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tokenreduce"
ABOVE_LIBRARY = {"bench", "sweep", "cli"}  # measurement layers: build inputs on the CPU and move them


def _measurement(rel: Path) -> bool:
    """A measurement module (above the library): a top-level tool package or a family's bench*/cli file."""
    return rel.parts[0] in ABOVE_LIBRARY or rel.name.startswith("bench") or rel.name == "cli.py"

FACTORIES = {
    "arange", "zeros", "ones", "full", "empty", "tensor", "as_tensor", "randn", "rand", "randint", "randperm",
    "linspace", "logspace", "eye", "empty_strided", "tril_indices", "triu_indices",
}

# (file relative to tokenreduce/, enclosing function): why its factories may stay on the CPU.
INTENTIONAL = {
    ("encoder/cost.py", "schedule_for_flops"): "analytic MAC count from integer lengths; never meets a model tensor",
    ("encoder/cost.py", "build"): "the same analytic count (inner function of schedule_for_flops)",
    ("kv/data.py", "passkeys"): "dataset samples are CPU tensors; the caller moves them to its model",
    ("kv/kvzip.py", "prompt_ids"): "tokenizer output; moved with .to(ids) where it meets the context",
    ("kv/calibrate.py", "retrieval_prompts"): "seeded CPU generator (same prompts on every device); moved to the model",
    ("prompt/lm_scores.py", "sequence_nll"): "batch filled row by row from Python lists, moved to the model once",
    ("prompt/methods/llmlingua2.py", "keep_probs"): "batch filled row by row from Python lists, moved once",
    ("vlm/families/llava_next.py", "build_layout"): "integer crop/patch layout, moved with .to(device) where used",
    ("vlm/families/llava_next.py", "layouts_from_sizes"): "integer layout bookkeeping from Python sizes",
    ("vlm/families/llava_next.py", "allot"): "integer budget split on the CPU (weights are moved there first)",
    ("vlm/runner.py", "_before"): "a list of per-row counts checked for equality; never meets a model tensor",
    ("vlm/video/stream.py", "__post_init__"): "the empty default prompt; moved with .to(device) where used",
    ("vlm/video/runner.py", "_videos"): "a list of per-row counts checked for equality; never meets a model tensor",
}
COST_SUFFIX = "_macs"  # analytic cost functions (``cost_macs``, ``image_macs``...) count from integers on the CPU


def _library_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not _measurement(p.relative_to(ROOT)))


def _device_less(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(enclosing function, line, source) of every ``torch.<factory>(...)`` call without ``device=``."""
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in FACTORIES
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id == "torch"
                and not any(k.arg in ("device", None) for k in child.keywords)  # None: **kwargs
            ):
                found.append((func, child.lineno, ast.unparse(child)))
            visit(child, name)

    visit(tree, "<module>")
    return found


def _scan() -> dict[tuple[str, str], list[str]]:
    hits: dict[tuple[str, str], list[str]] = {}
    for path in _library_files():
        rel = path.relative_to(ROOT).as_posix()
        for func, line, src in _device_less(ast.parse(path.read_text(), str(path))):
            hits.setdefault((rel, func), []).append(f"{rel}:{line} in {func}(): {src[:100]}")
    return hits


def test_no_device_less_tensor_factories():
    hits = _scan()
    new = [
        line for key, lines in hits.items() if key not in INTENTIONAL and not key[1].endswith(COST_SUFFIX)
        for line in lines
    ]
    assert not new, (
        "tensor factories without device= (create them on the input's device, use x.new_*(...) / *_like, "
        "or list the function in INTENTIONAL with the reason):\n" + "\n".join(new)
    )


def test_intentional_entries_are_still_needed():
    hits = _scan()
    stale = sorted(key for key in INTENTIONAL if key not in hits and (ROOT / key[0]).exists())
    assert not stale, f"no device-less factory left in these INTENTIONAL entries; remove them: {stale}"


def test_scanner_sees_device_less_calls():
    src = (
        "import torch\n"
        "def f(x):\n"
        "    a = torch.zeros(3)\n"
        "    b = torch.arange(4, device=x.device)\n"
        "    c = x.new_zeros(2)\n"
        "    d = torch.tensor([1, 2], dtype=torch.long)\n"
        "    return torch.full((2,), 1.0, **{'device': x.device})\n"
    )
    found = _device_less(ast.parse(src))
    assert [(f, line) for f, line, _ in found] == [("f", 3), ("f", 6)]
