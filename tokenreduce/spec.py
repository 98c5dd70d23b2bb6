"""One spec grammar for every family, in the CLI and in YAML: ``name:key=value,key=value``.

``tome:keep=0.4,schedule=decreasing``, ``snapkv:window=32,kernel=11``, ``fastervlm:tokens=64``.
Values read as int, then float, then ``true``/``false``/``none``, else the string itself; the
registry's construction checks them. A value with ``;`` is a list of such values
(``layers=0;1;2;3;4``). ``:`` between pairs (``snapkv:kernel=11:window=32``, the KV
benchmark's older form) is read the same way.
"""

from __future__ import annotations

import re
from typing import Any

_SEP = re.compile(r"[,:]")
_WORDS = {"true": True, "false": False, "none": None}


def parse_value(raw: str) -> Any:
    """``"8"`` -> 8, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, ``"0;1;2"`` -> [0, 1, 2],
    anything else unchanged."""
    if ";" in raw:
        return [parse_value(v.strip()) for v in raw.split(";") if v.strip()]
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return _WORDS.get(raw.lower(), raw)


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"tome:keep=0.4,schedule=decreasing"`` -> ``("tome", {"keep": 0.4, "schedule": "decreasing"})``."""
    name, _, rest = text.strip().partition(":")
    if not name.strip():
        raise ValueError(f"spec {text!r}: expected name:param=value,param=value (a name first)")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in _SEP.split(rest))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"spec {text!r}: expected name:param=value,param=value, got {item!r}")
        if key in params:
            raise ValueError(f"spec {text!r}: {key!r} is given twice")
        params[key] = parse_value(raw.strip())
    return name.strip(), params
