"""The report's plots as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .report_data import COSTS, Group
from .svg import colors


def write_pngs(gs: Sequence[Group], out_dir: str | Path) -> list[Path]:
    """``accuracy_vs_flops.png`` and ``accuracy_vs_latency.png``: one panel per (model, task set)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("PNG plots need matplotlib (pip install 'tokenreduce[plot]'); use --no-png") from e
    paths = []
    for cost, label in COSTS:
        fig, axes = plt.subplots(len(gs), 1, figsize=(7, 4.2 * len(gs)), squeeze=False)
        for ax, g in zip(axes[:, 0], gs):
            col = colors(g.methods)
            for m in g.methods:
                pts = [p for p in g.points if p["method"] == m and p.get(cost) is not None]
                pts.sort(key=lambda p: p[cost])
                if not pts:
                    continue
                xs, ys = [p[cost] for p in pts], [p[g.quality] for p in pts]
                ax.plot(xs, ys, "o-", color=col[m], label=m, alpha=0.85, markersize=6)
            front = sorted((p for p in g.points if p.get(f"pareto_{cost}")), key=lambda p: p[cost])
            if front:
                ax.plot(
                    [p[cost] for p in front],
                    [p[g.quality] for p in front],
                    "--",
                    color="black",
                    lw=1,
                    label="Pareto front",
                )
                ax.scatter(
                    [p[cost] for p in front],
                    [p[g.quality] for p in front],
                    s=110,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.5,
                    zorder=3,
                )
            ax.set_xlabel(label)
            ax.set_ylabel(g.quality)
            ax.set_title(f"{g.model} - {g.tasks}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = "accuracy_vs_flops.png" if cost == "flops_ratio" else "accuracy_vs_latency.png"
        path = Path(out_dir) / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
