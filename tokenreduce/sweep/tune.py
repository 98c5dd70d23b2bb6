"""``tokenreduce tune``'s search: which method and keep rate to use on the user's model and data.

Every point is a sweep point (:class:`~tokenreduce.sweep.config.Point`) measured by the sweep's
:class:`~tokenreduce.sweep.measure.Measurer`, i.e. :func:`~tokenreduce.bench.text_bench.run_text_bench`
with the unreduced model timed interleaved in this process, and written to the sweep store as soon
as it is measured; a stored point is reused, so a killed tune resumes without re-measuring.

The search, on the tuning split:

1. coarse: every method at keep 0.9, 0.7, 0.5, 0.3, highest first; a method that misses the
   tolerance at one keep is not measured below it (less kept, less quality: dominated);
2. refine: the best methods (fastest point within tolerance) are bisected on keep between their
   lowest passing and highest failing keep; a midpoint is skipped when a measured passing point is
   already at least as fast as the method's failing end (the midpoint cannot beat it);
3. check: the fastest passing point is measured on the held-out split; if it misses the tolerance
   there, the next is tried (at most ``max_checks``); when none passes, no reduction is recommended.

Bisection assumes quality falls as keep falls, which holds closely but not exactly; a
non-monotone method is only searched less finely, never reported wrongly (every number is measured).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .config import Point
from .measure import Measurer
from .store import Outcome, Store
from .tune_data import Tolerance, metric_key

COARSE_KEEPS = (0.9, 0.7, 0.5, 0.3)
KEEP_FLOOR = 0.1  # the failing end assumed below the coarse grid when every coarse keep passes
SWEEP_NAME = "tune"


@dataclass
class TuneMeasurer(Measurer):
    """The sweep's measurer with the encoder and the in-memory tasks already loaded (no spec parsing)."""

    encoder: Any = None
    tasks: dict[str, Any] = field(default_factory=dict)

    def _encoder(self, p: Point) -> Any:
        return self.encoder

    def _task(self, spec: str) -> Any:
        return self.tasks[spec]


@dataclass
class Measured:
    """One measured point: its identity and the stored metrics (``None`` when the point failed)."""

    point: Point
    metrics: dict[str, Any] | None
    reused: bool

    @property
    def keep(self) -> float:
        return float(self.point.params["keep"])

    @property
    def ok(self) -> bool:
        return self.metrics is not None


@dataclass
class TuneResult:
    """Everything ``tune`` found, as plain rows: the tuning-split points (baseline first), the held-out
    checks, the pick (``None``: no setting met the tolerance, no reduction recommended) and counts."""

    tolerance: Tolerance
    rows: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    pick: dict[str, Any] | None
    measured: int
    reused: int
    skipped: int
    wall_s: float
    machine: dict[str, Any] | None = None
    family: str = "encoder"  # "encoder": tokenreduce.patch; "kv": a KV press on a causal LM
    cost_key: str = "flops_ratio"  # the cost each row reports beside its speedup (MACs, or KV bytes for presses)


class Tuner:
    """Runs the search; ``measure_fn`` (default: the sweep measurer) is replaceable for tests."""

    def __init__(
        self,
        store: Store,
        measurer: Measurer,
        model: str,
        tasks: tuple[str, str],
        tolerance: Tolerance,
        settings: dict[str, Any],
        methods: Sequence[str],
        refine_methods: int = 2,
        refine_steps: int = 3,
        max_checks: int = 3,
        progress: bool = True,
        coarse_keeps: Sequence[float] = COARSE_KEEPS,
        key_fn: Callable[[str, str], str] = metric_key,
        cost_key: str = "flops_ratio",
        family: str = "encoder",
    ):
        self.store, self.measurer, self.model = store, measurer, model
        self.tune_spec, self.held_spec = tasks
        self.tol, self.settings, self.methods = tolerance, settings, list(methods)
        self.refine_methods, self.refine_steps, self.max_checks = refine_methods, refine_steps, max_checks
        self.coarse_keeps, self.key_fn, self.cost_key, self.family = tuple(coarse_keeps), key_fn, cost_key, family
        self.measure_fn: Callable[[Point], Outcome] = measurer.run
        self.stored = {r["key"]: r for r in store.rows("WHERE status = 'ok'")}
        self.failed = set(store.statuses()) - set(self.stored)
        self.measured = self.reused = self.skipped = 0
        self.machine: dict[str, Any] | None = None  # what the points were measured on (the latest one)
        self.points: dict[str, Measured] = {}
        planned = len(self.methods) * len(self.coarse_keeps) + refine_methods * refine_steps + 1
        self.bar = tqdm(total=planned, desc="tune", unit="point", disable=not progress, dynamic_ncols=True)

    # ---------------------------------------------------------------- measuring

    def point(self, method: str, keep: float, spec: str) -> Point:
        return Point(self.model, (spec,), method, {"keep": round(keep, 2)}, dict(self.settings))

    def get(self, p: Point) -> Measured:
        """The point's metrics: from the store when it holds them, else measured now and stored."""
        if p.key in self.stored or p.key in self.failed:
            row = self.stored.get(p.key) or {}
            m = Measured(p, row.get("metrics"), reused=True)
            self.machine = row.get("machine") or self.machine
            self.reused += 1
        else:
            out = self.measure_fn(p)
            self.store.record(SWEEP_NAME, out, "local")
            m = Measured(p, out.metrics, reused=False)
            self.machine = out.machine or self.machine
            self.measured += 1
        if p.tasks[0] == self.tune_spec:
            self.points[p.key] = m
        self.bar.set_postfix_str(f"{p.label}{' (stored)' if m.reused else ''}", refresh=False)
        self.bar.update(1)
        return m

    def skip(self, n: int = 1) -> None:
        """Points planned but not measured (dominated): the bar's total shrinks, so its ETA stays honest."""
        self.skipped += n
        self.bar.total = max(self.bar.n, self.bar.total - n)
        self.bar.refresh()

    # ---------------------------------------------------------------- quality

    def value(self, m: Measured) -> float:
        assert m.metrics is not None
        return float(m.metrics[self.key_fn(m.point.tasks[0].split("@")[0], self.tol.metric)])

    def base_value(self, m: Measured) -> float:
        assert m.metrics is not None
        if self.tol.metric == "fidelity" and self.family == "encoder":
            return 1.0
        return float(m.metrics["base:" + self.key_fn(m.point.tasks[0].split("@")[0], self.tol.metric)])

    def passes(self, m: Measured) -> bool:
        return m.ok and self.tol.meets(self.value(m), self.base_value(m))

    def useful(self, m: Measured) -> bool:
        """Within tolerance, actually reduced, and measured faster than the unreduced model."""
        return self.passes(m) and m.metrics[self.cost_key] < 1 - 1e-9 and m.metrics["speedup"] > 1.0

    # ---------------------------------------------------------------- search

    def coarse(self) -> dict[str, list[Measured]]:
        """Each method from the highest coarse keep down, stopping at its first miss."""
        found: dict[str, list[Measured]] = {m: [] for m in self.methods}
        active = list(self.methods)
        for i, keep in enumerate(self.coarse_keeps):
            for method in list(active):
                m = self.get(self.point(method, keep, self.tune_spec))
                found[method].append(m)
                if not self.passes(m):
                    active.remove(method)
                    self.skip(len(self.coarse_keeps) - i - 1)
        return found

    def _best_speed(self) -> float:
        return max((m.metrics["speedup"] for m in self.points.values() if self.useful(m)), default=1.0)

    def _bracket(self, ms: list[Measured]) -> tuple[float, Measured | None, float]:
        """(lowest passing keep or 1.0, the failing point below it or None, that point's keep or the floor)."""
        passing = [m.keep for m in ms if self.passes(m)]
        lo_ok = min(passing, default=1.0)
        below = [m for m in ms if not self.passes(m) and m.keep < lo_ok]
        bad = max(below, key=lambda m: m.keep, default=None)
        return lo_ok, bad, bad.keep if bad else KEEP_FLOOR

    def refine(self, found: dict[str, list[Measured]]) -> None:
        """Bisect keep for the best methods between their lowest passing and highest failing keep."""
        # fastest point within tolerance, slower-than-unreduced ones included (they rank methods all the same)
        speed = {k: max((m.metrics["speedup"] for m in v if self.passes(m)), default=0.0) for k, v in found.items()}
        best = sorted(found, key=lambda k: -speed[k])[: self.refine_methods]
        self.skip((self.refine_methods - len(best)) * self.refine_steps)
        for _ in range(self.refine_steps):
            for method in best:
                lo_ok, bad, hi_bad = self._bracket(found[method])
                mid = round((lo_ok + hi_bad) / 2, 2)
                cannot_win = bad is not None and bad.ok and bad.metrics["speedup"] <= self._best_speed()
                if mid in (lo_ok, hi_bad) or cannot_win:
                    self.skip()
                    continue
                found[method].append(self.get(self.point(method, mid, self.tune_spec)))

    def check(self) -> tuple[list[tuple[Measured, Measured]], tuple[Measured, Measured] | None]:
        """Held-out checks of the fastest passing points, in order, until one passes."""
        ranked = sorted((m for m in self.points.values() if self.useful(m)), key=lambda m: -m.metrics["speedup"])
        checks = []
        for m in ranked[: self.max_checks]:
            if checks:  # one check was planned; this is another
                self.bar.total += 1
            held = self.get(self.point(m.point.method, m.keep, self.held_spec))
            checks.append((m, held))
            if self.passes(held):
                return checks, (m, held)
        if not ranked:
            self.skip()
        return checks, None

    def row(self, m: Measured) -> dict[str, Any]:
        """A display row of a measured point (quality on its own split, loss against that split's baseline)."""
        r: dict[str, Any] = {"method": m.point.method, "label": m.point.label, "keep": m.keep}
        if not m.ok:
            return {**r, "failed": True}
        v, b = self.value(m), self.base_value(m)
        keys = (self.cost_key, "speedup", "latency_ms", "base_latency_ms")
        return {**r, **{k: m.metrics.get(k) for k in keys}, "quality": v, "base_quality": b,
                "loss": self.tol.loss(v, b), "meets": self.passes(m)}

    def run(self) -> TuneResult:
        start = time.perf_counter()
        try:
            self.refine(self.coarse())
            checks, pick = self.check()
        finally:
            self.bar.close()
        rows = [self.row(m) for m in self.points.values()]
        first = next((r for r in rows if "quality" in r), None)
        if first is not None:
            base = {"method": "none", "label": "none", "keep": 1.0, self.cost_key: 1.0, "speedup": 1.0,
                    "quality": first["base_quality"], "loss": 0.0, "meets": True}
            rows.insert(0, base)
        check_rows = [{**self.row(t), "held": self.row(h)} for t, h in checks]
        return TuneResult(
            tolerance=self.tol,
            rows=rows,
            checks=check_rows,
            pick=check_rows[-1] if pick else None,
            measured=self.measured,
            reused=self.reused,
            skipped=self.skipped,
            wall_s=time.perf_counter() - start,
            machine=self.machine,
            family=self.family,
            cost_key=self.cost_key,
        )
