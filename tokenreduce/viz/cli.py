"""``tokenreduce visualize IMAGE --model PATH --method tome --r 8 --out out.png``.

``--model`` is a local Hugging Face folder (ViT, DeiT, CLIP, DINOv2, SigLIP), ``timm:NAME`` (random
weights, needs timm) or ``random-vit-b16`` (the default: ViT-B/16 with random weights, no download;
its title says so, because random weights merge by colour and texture, not by meaning).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from ..cli.args import HelpFormatter
from ..cli_errors import user_error

RANDOM = "random-vit-b16"
RANDOM_NOTE = "random weights: merges follow colour/texture similarity, not semantics"


def _floats3(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers, got {text!r}") from e
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers, got {text!r}")
    return vals


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="tokenreduce visualize",
        description="PNG of the image patches a token-reduction method merged (coloured groups) or pruned (grey).",
    )
    p.add_argument("image", help="image file (any format PIL reads)")
    p.add_argument("--model", default=RANDOM, help=f"local HF folder, timm:NAME, or {RANDOM} (default)")
    p.add_argument("--method", default="tome", help="registered method (see `tokenreduce methods`)")
    p.add_argument("--r", type=int, default=None, help="tokens removed per layer")
    p.add_argument("--keep", type=float, default=None, help="fraction of tokens kept, in (0, 1]")
    p.add_argument("--schedule", default=None, choices=["constant", "decreasing"])
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="other method parameter (repeatable)")
    p.add_argument("--stages", type=int, default=3, help="panels after reducing layers (default 3)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--mean", type=_floats3, default=None, help="normalization mean, e.g. 0.5,0.5,0.5")
    p.add_argument("--std", type=_floats3, default=None, help="normalization std")
    p.add_argument("--out", default="visualize.png", help="PNG to write (default visualize.png)")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_model(name: str):
    """(model, note for the title) from a --model value."""
    if name == RANDOM:
        from ..bench.vision_bench import vit_b16

        return vit_b16(), f"ViT-B/16, {RANDOM_NOTE}"
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError as e:
            raise ValueError("timm:NAME needs timm (pip install tokenreduce[timm])") from e
        return timm.create_model(name[5:], pretrained=False).eval(), f"timm {name[5:]}, {RANDOM_NOTE}"
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {name!r} is not a local folder (or {RANDOM}, or timm:NAME)")
    from transformers import AutoModel

    return AutoModel.from_pretrained(path).eval(), path.name


def _params(a: argparse.Namespace) -> dict:
    from ..cli import parse_config

    _, params = parse_config(a.method + ":" + ",".join(a.param))
    for key in ("r", "keep", "schedule"):
        if getattr(a, key) is not None:
            params[key] = getattr(a, key)
    if "r" not in params and "keep" not in params:
        params["r"] = 8
    return params


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        from ..encoder.methods import make_method
        from .visualize import render, trace

        params = _params(a)
        make_method(a.method, **params)  # validate before loading anything
        if not Path(a.image).is_file():
            raise FileNotFoundError(f"image not found: {a.image}")
        bar = tqdm(total=3, desc="visualize", disable=a.no_progress)
        model, note = load_model(a.model)
        bar.update()
        t = trace(model, a.image, a.method, stages=a.stages, image_size=a.image_size, mean=a.mean, std=a.std, **params)
        bar.update()
        out = render(t, a.out, f"{t.label}  ({note})")
        bar.update()
        bar.close()
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as e:
        return user_error(e)
    from ..bench.report import format_table

    g = t.spec.image_size // t.spec.patch_size
    rows = [{"stage": "input", "patch_tokens": g * g, "pruned": 0}]
    rows += [{"stage": f"after layer {s.layer + 1}", "patch_tokens": s.tokens, "pruned": s.pruned} for s in t.stages]
    print(format_table(rows, ["stage", "patch_tokens", "pruned"]))
    print(f"wrote {out}")
    return 0
