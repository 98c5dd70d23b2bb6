"""Source-map recording and the patch-group visualization (library and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import clip_full, deit, pixels, vit
from vision_models import dinov2_registers, siglip_vision

import tokenreduce as tr
from tokenreduce.core.assign import restore
from tokenreduce.encoder.adapters.runner import record_sources
from tokenreduce.encoder.cost import layer_widths
from tokenreduce.viz import render, trace, visualize
from tokenreduce.viz.cli import main as viz_main
from tokenreduce.viz.render import paint_groups
from tokenreduce.viz.spec import CLIP, HALF, IMAGENET, vision_spec


def photo(size: int = 40, seed: int = 0) -> np.ndarray:
    """A non-square RGB uint8 image with smooth regions (so merges are not arbitrary)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0 : size + 8]
    base = np.stack([yy / size, xx / (size + 8), (yy + xx) % 7 / 7], -1)
    return ((base * 0.8 + 0.2 * g.random(base.shape)) * 255).astype(np.uint8)


def test_record_sources_matches_what_the_runner_restores():
    model, x = vit(), pixels()
    with torch.inference_mode():
        with tr.patched(model, "tome", r=4, restore_length=False), record_sources() as recs:
            reduced = model(pixel_values=x).last_hidden_state
        with tr.patched(model, "tome", r=4):
            full = model(pixel_values=x).last_hidden_state
        model(pixel_values=x)  # unpatched: nothing recorded, and no recorder outside the block
    assert [r.layer for r in recs] == [0, 1, 2, 3]
    widths = layer_widths(torch.full((3,), 65), 4, tr.make_method("tome", r=4), 1)
    assert [r.sizes.shape[1] for r in recs] == [w for _, w in widths]
    assert all(torch.equal(r.sizes.sum(1), torch.full((3,), 65.0)) for r in recs)
    # layernorm after the blocks is per token, so restoring the reduced output by the last map is exact
    assert torch.equal(restore(reduced, recs[-1].src), full)


def _paint_reference(img: np.ndarray, groups: np.ndarray, p: int) -> np.ndarray:
    """Straightforward per-patch loops: group mean colour (a lone patch keeps its pixels), grey if pruned."""
    out = img.astype(np.float64).copy()
    gh, gw = groups.shape
    for gid in np.unique(groups):
        cells = [(i, j) for i in range(gh) for j in range(gw) if groups[i, j] == gid]
        if gid < 0:
            for i, j in cells:
                block = img[i * p : (i + 1) * p, j * p : (j + 1) * p].astype(np.float64)
                out[i * p : (i + 1) * p, j * p : (j + 1) * p] = 0.35 + 0.25 * block.mean(-1, keepdims=True)
        elif len(cells) > 1:
            mean = np.mean([img[i * p : (i + 1) * p, j * p : (j + 1) * p].mean((0, 1)) for i, j in cells], 0)
            for i, j in cells:
                out[i * p : (i + 1) * p, j * p : (j + 1) * p] = mean
    return out


def test_paint_groups_against_a_loop_reference():
    rng = np.random.default_rng(0)
    img = rng.random((12, 12, 3))
    groups = np.array([[0, 0, 1], [2, -1, 1], [2, -1, 3]])
    out = paint_groups(img, groups, 4)
    ref = _paint_reference(img, groups, 4)
    inner = np.zeros((12, 12), bool)  # pixels off the grid lines and off group borders
    for i in range(3):
        for j in range(3):
            inner[i * 4 + 1 : i * 4 + 4, j * 4 + 1 : j * 4 + 4] = True
    np.testing.assert_allclose(out[inner], ref[inner])
    white = (out == 1.0).all(-1)
    assert white[4, 1:4].all()  # border between group 0 (row 0) and group 2 (row 1)
    assert white[1:4, 8].all()  # border between group 0 and group 1
    assert not white[1:4, 4].any()  # no border inside group 0
    assert white[9:12, 4].all()  # between group 2 and a pruned patch
    assert not white[8, 5:8].any()  # none between the two pruned patches (same "group" -1)


@pytest.mark.parametrize(
    "make,prefix", [(vit, 1), (deit, 2), (dinov2_registers, 5), (siglip_vision, 0), (clip_full, 1)]
)
def test_trace_groups_cover_all_patches(make, prefix):
    model = make()
    t = trace(model, photo(), "tome", r=5, stages=2)
    assert t.spec.prefix == prefix and t.spec.image_size == 32 and t.spec.patch_size == 4
    assert len(t.stages) == 2 and t.stages[-1].layer == 3
    widths = layer_widths(torch.tensor([64 + prefix]), 4, tr.make_method("tome", r=5), prefix)
    assert t.stages[-1].tokens == widths[-1][1] - prefix  # every final patch token is one group
    assert all(s.groups.shape == (8, 8) and s.pruned == 0 for s in t.stages)
    assert tr.patch_info(model) is None


def test_pruners_show_pruned_and_fused_patches_as_pruned():
    model = vit()
    m = tr.make_method("evit", keep=0.5)
    final = layer_widths(torch.tensor([65]), 4, m, 1)[-1][1]
    for fuse in (True, False):
        t = trace(model, photo(), "evit", keep=0.5, fuse=fuse, stages=1)
        (s,) = t.stages
        kept = s.groups[s.groups >= 0]
        assert len(np.unique(kept)) == len(kept)  # a pruner never merges kept patches
        assert s.tokens == final - 1  # every slot but [CLS]: kept patches and fused tokens
        n_fused = s.tokens - len(kept)
        assert (n_fused >= 1) if fuse else (n_fused == 0 and s.pruned == 64 - s.tokens)


def test_visualize_returns_an_image_or_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="drawing needs the plot extra")
    model = vit()
    img = visualize(model, photo(), "tome", r=4, stages=2)
    assert img.size[0] > 2 * img.size[1] and img.mode == "RGB"  # a row of three panels
    out = visualize(model, photo(), "random", keep=0.5, out=tmp_path / "v.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tr.patch(model, "tome", r=3)
    t = trace(model, photo(), None)  # the model's own patch
    assert t.stages and tr.patch_info(model) is not None
    assert render(t).size[1] == img.size[1]
    tr.unpatch(model)


def test_bad_input_fails_clearly(tmp_path):
    model = vit()
    with pytest.raises(FileNotFoundError, match="image not found"):
        visualize(model, tmp_path / "none.png", "tome", r=2)
    with pytest.raises(ValueError, match="keep must be"):
        visualize(model, photo(), "tome", keep=2.0)
    with pytest.raises(ValueError, match="needs a patched model"):
        visualize(model, photo(), None)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        visualize(model, photo(), "tome", r=2, image_size=30)
    with pytest.raises(TypeError, match="vision encoders"):
        from models import bert

        visualize(bert(), photo(), "tome", r=2)


def test_normalization_defaults_and_processor_config(tmp_path):
    assert vision_spec(vit())[3:5] == IMAGENET
    assert vision_spec(clip_full())[3:5] == CLIP
    assert vision_spec(siglip_vision())[3:5] == HALF
    model = vit()
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1] * 3, "image_std": [0.2] * 3}))
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(tmp_path)
    assert vision_spec(loaded)[3:5] == ((0.1,) * 3, (0.2,) * 3)
    assert vision_spec(loaded, mean=(0.3,) * 3, std=(0.4,) * 3)[3:5] == ((0.3,) * 3, (0.4,) * 3)


def test_cli_writes_png_and_rejects_bad_input(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="drawing needs the plot extra")
    from PIL import Image

    vit().save_pretrained(tmp_path / "m")
    Image.fromarray(photo()).save(tmp_path / "in.png")
    out = tmp_path / "o.png"
    args = [str(tmp_path / "in.png"), "--model", str(tmp_path / "m"), "--no-progress", "--out", str(out)]
    assert viz_main([*args, "--method", "tome", "--r", "4", "--stages", "2"]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG" and "after layer 4" in printed and "patch_tokens" in printed
    assert viz_main([*args, "--method", "evit", "--keep", "0.5", "--param", "fuse=false"]) == 0
    assert "pruned" in capsys.readouterr().out
    for bad, msg in (
        (["--method", "nope"], "unknown method"),
        (["--keep", "1.5"], "keep must be"),
        (["--param", "bogus=1"], "unknown parameter"),
    ):
        assert viz_main([*args, *bad]) == 2
        assert "tokenreduce: error: " in (err := capsys.readouterr().err) and msg in err
    assert viz_main([str(tmp_path / "missing.png"), "--no-progress"]) == 2
    assert viz_main([str(tmp_path / "in.png"), "--model", str(tmp_path / "nodir"), "--no-progress"]) == 2
    assert "not a local folder" in capsys.readouterr().err


def test_grayscale_model_takes_rgb_images(tmp_path):
    """The bundled vit_digits takes one channel: an RGB picture is fed as its luminance (it failed with
    'Expected 1 but got 3')."""
    from PIL import Image

    from tokenreduce.bench.vision_testbed import load_digits_vit
    from tokenreduce.viz.visualize import trace

    picture = np.zeros((48, 48, 3), dtype=np.uint8)
    picture[12:36, 20:28] = 255
    Image.fromarray(picture).save(tmp_path / "digit.png")
    t = trace(load_digits_vit(), tmp_path / "digit.png", "tome", r=4)
    assert t.spec.channels == 1 and t.spec.mean == (0.5,)
    assert t.stages and t.rgb.shape == (32, 32, 3)
