"""Sweep configuration: a YAML file → a validated, ordered list of :class:`Point`.

A point is one measurement: a model, a set of tasks, a method with its parameters, and the run
settings. Its ``key`` hashes all of that plus the library version, so a stored result is reused
only for exactly the same measurement by the same code release. Everything is validated here,
before any model is loaded: unknown keys, unknown methods and bad parameters are errors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..registry import is_bool, is_int, is_real

BASELINE = "none"  # method name of the unreduced model (quality and cost of the baseline only)
DEFAULT_STORE = "tokenreduce-sweep.sqlite"
SETTINGS_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "timing_batches": 2,
    "repeats": 5,
    "seed": 0,
    "threads": None,  # torch CPU threads per point (None: torch's choice); fix it for reproducible numbers
    "max_length": 256,
    "pooling": "mean",
}
_TOP_KEYS = {"name", "store", "models", "tasks", "methods", "params", "points", "settings", "data_dir"}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Point:
    """One measurement of a sweep (``method == "none"``: the unreduced baseline alone)."""

    model: str
    tasks: tuple[str, ...]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.method == BASELINE:
            return BASELINE
        return self.method + "(" + ", ".join(f"{k}={v}" for k, v in sorted(self.params.items())) + ")"

    def identity(self) -> dict[str, Any]:
        """Everything that determines the result, the library version included."""
        from .. import __version__

        return {**asdict(self), "tasks": list(self.tasks), "version": __version__}

    @property
    def key(self) -> str:
        return hashlib.sha256(_canonical(self.identity()).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        return cls(d["model"], tuple(d["tasks"]), d["method"], dict(d["params"]), dict(d["settings"]))


@dataclass(frozen=True)
class Sweep:
    name: str
    points: tuple[Point, ...]
    store: str | None = None
    data_dir: str | None = None


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _param_grid(params: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """Cartesian product over list-valued parameters (a list meant as one value: wrap it, ``[[1, 2]]``)."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: parameters must be a mapping, got {type(params).__name__}")
    names = sorted(params)
    values = [_as_list(params[n]) for n in names]
    if any(not v for v in values):
        raise ValueError(f"{where}: empty value list for {[n for n, v in zip(names, values) if not v]}")
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


DIFFUSION_TASKS = ("diffusion-speed", "diffusion-quality")  # a diffusion point: tokenreduce.diffusion.bench


def _validate(method: str, params: dict[str, Any], where: str, family: str = "encoder") -> dict[str, Any]:
    from ..encoder.methods import make_method

    if method == BASELINE:
        if params:
            raise ValueError(f"{where}: the baseline {BASELINE!r} takes no parameters, got {sorted(params)}")
        return params
    if family == "diffusion":
        from ..diffusion import make_diffusion_method

        try:
            make_diffusion_method(method, **params)
        except TypeError as e:
            raise ValueError(f"{where}: {method}: {e}") from e
        except (ValueError, KeyError) as e:
            raise ValueError(f"{where}: {e}") from e
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    _check_param_types(method, params, where)  # first: its message names the YAML type expected
    try:
        make_method(method, **params)
    except TypeError as e:  # unknown parameter names
        raise ValueError(f"{where}: {method}: {e}") from e
    except (ValueError, KeyError) as e:
        raise ValueError(f"{where}: {e}") from e
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def _fits(value: Any, annotation: str) -> bool:
    """Does a YAML value match one alternative of a method field's annotation (``int | None``, ...)?
    bool is an int to Python, never to a sweep config (the registry's predicates say so)."""
    simple = {"None": lambda v: v is None, "bool": is_bool, "int": is_int,
              "float": lambda v: is_real(v, finite=False), "str": lambda v: isinstance(v, str)}
    for alt in (a.strip() for a in annotation.split("|")):
        if alt in simple:
            if simple[alt](value):
                return True
        elif alt.startswith("tuple["):
            if isinstance(value, (list, tuple)):
                return all(map(is_int, value))
        else:
            return True  # an annotation this check does not know: the method validates it
    return False


def _check_param_types(method: str, params: Mapping[str, Any], where: str) -> None:
    """Reject values of the wrong type (``keep: true``, ``keep: "0.5"``) that the method would keep as given."""
    import dataclasses

    from ..encoder.methods.base import REGISTRY

    if method not in REGISTRY.names():
        return  # make_method names the unknown method
    cls = REGISTRY.get(method)
    if not dataclasses.is_dataclass(cls):
        return
    types = {f.name: f.type for f in dataclasses.fields(cls) if isinstance(f.type, str)}  # postponed annotations
    for k, v in params.items():
        if k in types and not _fits(v, types[k]):
            raise ValueError(f"{where}: {method}: parameter {k} must be {types[k]}, got {v!r}")


def _method_specs(cfg: Mapping[str, Any], family: str = "encoder") -> list[tuple[str, dict[str, Any]]]:
    """(method, params) pairs from ``methods`` (list or mapping), shared ``params`` and explicit ``points``."""
    out: list[tuple[str, dict[str, Any]]] = []
    methods = cfg.get("methods") or []
    shared = cfg.get("params") or {}
    if isinstance(methods, Mapping):  # the baseline takes no parameters, shared ones included
        items = [(m, dict(p or {}) if m == BASELINE else {**shared, **(p or {})}) for m, p in methods.items()]
    elif isinstance(methods, (list, tuple)):
        items = [(m, {} if m == BASELINE else dict(shared)) for m in methods]
    else:
        raise ValueError(f"methods: expected a list of names or a mapping name -> params, got {methods!r}")
    for m, p in items:
        if not isinstance(m, str):
            raise ValueError(f"methods: method names must be strings, got {m!r}")
        where = f"methods.{m}"
        grid = [p] if m == BASELINE else _param_grid(p, where)
        out += [(m, _validate(m, g, where, family)) for g in grid]
    for i, pt in enumerate(cfg.get("points") or []):
        if not isinstance(pt, Mapping) or "method" not in pt or set(pt) - {"method", "params"}:
            raise ValueError(f"points[{i}]: expected {{method: NAME, params: {{...}}}}, got {pt!r}")
        out.append((pt["method"], _validate(pt["method"], dict(pt.get("params") or {}), f"points[{i}]", family)))
    if not out:
        raise ValueError("the sweep has no methods: give `methods` and/or `points`")
    return out


def _is_int(v: Any) -> bool:
    """An int that is not a bool (YAML ``true`` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


SEED_RANGE = (0, 2**32 - 1)


def _settings(raw: Any) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"settings: expected a mapping, got {raw!r}")
    unknown = set(raw) - set(SETTINGS_DEFAULTS)
    if unknown:
        raise ValueError(f"settings: unknown keys {sorted(unknown)}; valid: {sorted(SETTINGS_DEFAULTS)}")
    s = {**SETTINGS_DEFAULTS, **raw}
    for k in ("batch_size", "timing_batches", "repeats", "max_length"):
        if not _is_int(s[k]) or s[k] < 1:
            raise ValueError(f"settings.{k} must be a positive int (>= 1), got {s[k]!r}")
    if s["threads"] is not None and (not _is_int(s["threads"]) or s["threads"] < 1):
        raise ValueError(f"settings.threads must be a positive int (>= 1) or null, got {s['threads']!r}")
    lo, hi = SEED_RANGE
    if not _is_int(s["seed"]) or not lo <= s["seed"] <= hi:
        raise ValueError(f"settings.seed must be an int in [{lo}, {hi}], got {s['seed']!r}")
    if s["pooling"] not in ("mean", "cls"):
        raise ValueError(f"settings.pooling must be 'mean' or 'cls', got {s['pooling']!r}")
    return s


def _check_task_spec(spec: str) -> None:
    """The checks of ``bench.tasks.load_task`` on a spec string, without loading any data."""
    from ..bench.tasks import STSB_LANGS, STSB_SPLITS, TASK_SPECS

    name, sep, count = spec.strip().partition(":")
    if name in ("stdlib-code", "nq", "diffusion-quality"):
        if sep and (not count.strip().isdigit() or int(count) < 1):
            raise ValueError(f"tasks: bad item count in {spec!r}: N in {name}:N must be a positive int (>= 1)")
        return
    if name == "stsb" or name.startswith("stsb-"):
        parts = name.split("-")[1:]
        ok = not sep and len(parts) <= 2 and (not parts or parts[0] in STSB_LANGS)
        if not ok or (len(parts) == 2 and parts[1] not in STSB_SPLITS):
            raise ValueError(
                f"tasks: bad stsb spec {spec!r}: stsb[-LANG[-SPLIT]] with LANG in {', '.join(STSB_LANGS)}, "
                f"SPLIT in {', '.join(STSB_SPLITS)} (no item count)"
            )
        return
    if name == "diffusion-speed" and not sep:
        return
    raise ValueError(f"tasks: unknown task {spec!r}; valid specs: {', '.join([*TASK_SPECS, *DIFFUSION_TASKS])}")


def _task_sets(raw: Any) -> list[tuple[str, ...]]:
    """``tasks: [a, b]`` → two sets; ``tasks: [[a, b]]`` → one set measured together."""
    from ..bench.tasks import TASK_SPECS

    sets = [tuple(_as_list(t)) for t in _as_list(raw)] if raw else []
    if not sets:
        raise ValueError(f"tasks: give at least one task spec ({', '.join(TASK_SPECS)})")
    for s in sets:
        if not s or not all(isinstance(t, str) and t.strip() for t in s):
            raise ValueError(f"tasks: each task set must be non-empty task spec strings, got {list(s)!r}")
        for t in s:
            _check_task_spec(t)
    return sets


def _optional_str(cfg: Mapping[str, Any], key: str) -> str | None:
    v = cfg.get(key)
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise ValueError(f"{key} must be a non-empty string, got {v!r}")
    return v


def _models(raw: Any) -> list[str]:
    models = _as_list(raw or ["all-MiniLM-L6-v2"])
    for m in models:
        if not isinstance(m, str) or not m.strip():
            raise ValueError(f"models: each model must be a name or a local folder (a non-empty string), got {m!r}")
    return models


def missing_models(sweep: Sweep) -> list[str]:
    """Models of ``sweep`` that are neither the bundled default nor an existing local folder.

    The text encoders load offline only (``bench.encoder.load_text_encoder``), so a model that is
    not the default name must be a local path, and its absence is certain before anything loads.
    """
    from ..bench.encoder import DEFAULT_MODEL

    models = dict.fromkeys(p.model for p in sweep.points if not is_diffusion(p.tasks))
    return [m for m in models if m != DEFAULT_MODEL and not Path(m).expanduser().exists()]


def is_diffusion(tasks: tuple[str, ...]) -> bool:
    """A diffusion point (measured by ``tokenreduce.diffusion.bench``), not an encoder one."""
    return bool(tasks) and tasks[0].partition(":")[0] in DIFFUSION_TASKS


def _family(task_sets: list[tuple[str, ...]], models: list[str], given: bool) -> str:
    """"diffusion" when the tasks are diffusion tasks (then all of them, with diffusion model names), else "encoder"."""
    flags = {is_diffusion(s) and all(t.partition(":")[0] in DIFFUSION_TASKS for t in s) for s in task_sets}
    if not any(is_diffusion(s) or any(t.partition(":")[0] in DIFFUSION_TASKS for t in s) for s in task_sets):
        return "encoder"
    if flags != {True}:
        raise ValueError(f"tasks: diffusion tasks ({', '.join(DIFFUSION_TASKS)}) cannot share a sweep with encoder "
                         "tasks; give them their own config")
    from ..diffusion.bench import QUALITY_MODELS, SPEED_MODELS

    for s in task_sets:
        if len(s) != 1:
            raise ValueError(f"tasks: a diffusion task set holds one task, got {list(s)}")
        valid = SPEED_MODELS if s[0] == "diffusion-speed" else QUALITY_MODELS
        bad = [m for m in models if m not in valid]
        if not given or bad:
            raise ValueError(f"models: {s[0]} measures {', '.join(valid)}; got {bad or 'the default encoder'}")
    return "diffusion"


def parse_sweep(cfg: Mapping[str, Any], default_name: str = "sweep") -> Sweep:
    """Validate a parsed YAML mapping and expand it: models × task sets × methods × parameter grid."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a sweep config must be a mapping, got {type(cfg).__name__}")
    unknown = set(cfg) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid: {sorted(_TOP_KEYS)}")
    name = _optional_str(cfg, "name")
    store = _optional_str(cfg, "store")
    data_dir = _optional_str(cfg, "data_dir")
    models = _models(cfg.get("models"))
    task_sets = _task_sets(cfg.get("tasks"))
    specs = _method_specs(cfg, _family(task_sets, models, cfg.get("models") is not None))
    settings = _settings(cfg.get("settings"))
    points, seen = [], set()
    for model, tasks, (method, params) in itertools.product(models, task_sets, specs):
        p = Point(model, tasks, method, params, settings)
        if p.key not in seen:  # a grid may list the same point twice; it runs once
            seen.add(p.key)
            points.append(p)
    return Sweep(name or default_name, tuple(points), store, data_dir)


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep YAML file (relative ``store``/``data_dir`` resolve against the cwd)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    return parse_sweep(cfg, default_name=path.stem)
