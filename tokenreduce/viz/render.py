"""Paint a patch-group map onto an image (pure NumPy) and lay panels out in a figure.

A stage is one integer per patch: the group (token slot) the patch belongs to, or -1 when it was
pruned. Each group is filled with the mean colour of its patches (as in the ToMe paper's figures),
so a merged region reads as one flat patch of colour; white lines separate different groups, a
faint grid shows every patch, and pruned patches are greyed out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GRID_DARKEN = 0.82  # faint patch grid: multiply grid pixels by this
BOUNDARY = np.array([1.0, 1.0, 1.0])


def paint_groups(image: np.ndarray, groups: np.ndarray, patch: int) -> np.ndarray:
    """RGB float image (H, W, 3) in [0, 1] with each group of ``groups`` (gh, gw) painted.

    ``groups[i, j]`` is the group of patch (i, j), -1 for pruned. Returns a new (H, W, 3) array.
    """
    gh, gw = groups.shape
    h, w = gh * patch, gw * patch
    img = image[:h, :w].astype(np.float64)
    cells = img.reshape(gh, patch, gw, patch, 3).mean(axis=(1, 3))  # (gh, gw, 3) mean colour per patch
    flat_g, flat_c = groups.reshape(-1), cells.reshape(-1, 3)
    ids, inverse = np.unique(flat_g, return_inverse=True)
    sums = np.zeros((len(ids), 3))
    np.add.at(sums, inverse, flat_c)
    means = sums / np.bincount(inverse)[:, None]
    out_cells = means[inverse].reshape(gh, gw, 3)
    counts = np.bincount(inverse)[inverse].reshape(gh, gw)
    px_groups = np.repeat(np.repeat(groups, patch, 0), patch, 1)
    fill = np.repeat(np.repeat(out_cells, patch, 0), patch, 1)
    single = np.repeat(np.repeat(counts == 1, patch, 0), patch, 1)
    out = np.where(single[..., None], img, fill)  # a patch still on its own shows its pixels
    pruned = px_groups < 0
    gray = img.mean(-1, keepdims=True)
    out = np.where(pruned[..., None], 0.35 + 0.25 * gray, out)
    out = _draw_grid(out, patch)
    return _draw_boundaries(out, px_groups)


def _draw_grid(img: np.ndarray, patch: int) -> np.ndarray:
    out = img.copy()
    out[::patch] *= GRID_DARKEN
    out[:, ::patch] *= GRID_DARKEN
    return out


def _draw_boundaries(img: np.ndarray, px_groups: np.ndarray) -> np.ndarray:
    """White pixels where a pixel's group differs from its left or upper neighbour (none between pruned)."""
    edge = np.zeros(px_groups.shape, dtype=bool)
    diff_x = px_groups[:, 1:] != px_groups[:, :-1]
    diff_y = px_groups[1:] != px_groups[:-1]
    kept_x = (px_groups[:, 1:] >= 0) | (px_groups[:, :-1] >= 0)
    kept_y = (px_groups[1:] >= 0) | (px_groups[:-1] >= 0)
    edge[:, 1:] |= diff_x & kept_x  # one pixel wide: the first pixel of the next group
    edge[1:] |= diff_y & kept_y
    out = img.copy()
    out[edge] = BOUNDARY
    return out


def figure(panels: list[np.ndarray], titles: list[str], suptitle: str, out: Path | None):
    """A row of panels with titles; written to ``out`` (PNG) if given. Returns a PIL image."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg canvas: no GUI, no pyplot state
        from matplotlib.figure import Figure
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"drawing needs matplotlib and pillow: pip install 'tokenreduce[plot]' ({e})") from e

    fig = Figure(figsize=(3.2 * len(panels), 3.9), dpi=110)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel, title in zip(axes, panels, titles):
        ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    if out is not None:
        image.save(out, format="PNG")
    return image
