"""The video-methods accuracy table (``tokenreduce bench video --model``): every method and baseline has rows,
keeping everything changes nothing, reducing costs less, bad input is refused before any compute.

On a tiny random Qwen2-VL with a stand-in testbed (random videos, answers half the unreduced model's), so the
table's loop is tested without the trained asset."""

from __future__ import annotations

import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from test_vlm_video import video_inputs
from vlm_models import tiny_qwen2vl

from tokenreduce.bench.flops import measured_flops
from tokenreduce.vlm.flops import DecoderShape, prefill_macs
from tokenreduce.vlm.video import VIDEO_METHODS
from tokenreduce.vlm.video.bench import STAGED
from tokenreduce.vlm.video.bench_quality import BASELINES, bench_video_quality, configs, table_methods

QTYPES = ("first", "count")
KEEPS = (1.0, 0.25)


def _stand_in(model) -> SimpleNamespace:
    """What the table needs of a testbed (:class:`tokenreduce.vlm.bench_quality.Testbed`), on random videos."""

    def batches(tok, examples, size):
        out = []
        for s in range(0, len(examples), size):
            part = list(range(s, min(len(examples), s + size)))
            xs = [video_inputs(model, seed=examples[i].seed, static=0.3) for i in part]
            out.append((part, {k: torch.cat([x[k] for x in xs]) for k in xs[0]}))
        return out

    @torch.no_grad()
    def answer_ids(model, tok, examples, batch_size=50):
        out = [0] * len(examples)
        for idx, x in batches(tok, examples, batch_size):
            for i, p in zip(idx, model(**x, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()):
                out[i] = p
        return out

    def accuracy(tok, examples, ids):
        right = defaultdict(list)
        for e, i in zip(examples, ids):
            right[e.qtype].append(i == e.answer)
            right["overall"].append(i == e.answer)
        return {k: sum(v) / len(v) for k, v in right.items()}

    return SimpleNamespace(QTYPES=QTYPES, batches=batches, answer_ids=answer_ids, accuracy=accuracy)


@pytest.fixture(scope="module")
def table():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before conftest's one-thread fixture
    try:
        yield _table()
    finally:
        torch.set_num_threads(before)


def _table():
    torch.manual_seed(0)
    model = tiny_qwen2vl()
    bed = _stand_in(model)
    examples = [SimpleNamespace(qtype=QTYPES[i % 2], seed=i, answer=-1) for i in range(8)]
    for i, (e, a) in enumerate(zip(examples, bed.answer_ids(model, None, examples))):
        e.answer = a if i % 2 == 0 else a + 1  # the unreduced model is right on half
    depth = model.config.text_config.num_hidden_layers
    cfgs, names = configs(table_methods(None, depth), KEEPS, depth)
    rows = bench_video_quality(model, None, examples, cfgs, names, bed, repeats=1, time_batch=4, batch_size=8)
    return model, bed, examples, rows


def test_every_method_staged_row_and_baseline_at_every_budget(table):
    *_, rows = table
    assert rows[0]["method"] == "unreduced" and rows[0]["keep"] == 1.0
    names = [*VIDEO_METHODS, *STAGED]
    assert [(r["method"], r["keep"]) for r in rows[1:]] == [(m, k) for m in names for k in KEEPS]
    for r in rows:
        assert {"acc_first", "acc_count", "accuracy", "agree", "macs_ratio", "llm_macs_ratio", "time_ratio",
                "prefill_ms", "kv_bytes", "kv_ratio", "decode_read_ratio"} <= set(r)
    assert rows[0]["accuracy"] == 0.5 and rows[0]["agree"] == 1.0 and rows[0]["macs_ratio"] == 1.0


def test_keep_all_is_the_unreduced_model_and_reducing_costs_less(table):
    *_, rows = table
    base = rows[0]
    for r in rows[1:]:
        stage = r["method"] in ("holitom+llm", "prunevid+kv")  # still prune inside the LLM at keep 1
        if r["keep"] == 1.0 and not stage:
            assert (r["accuracy"], r["agree"], r["macs"], r["kv_bytes"]) == (base["accuracy"], 1.0, base["macs"],
                                                                             base["kv_bytes"]), r["method"]
            assert r["visual_tokens"] == base["visual_tokens"] and r["llm_macs_ratio"] == 1.0
        else:
            assert r["macs_ratio"] < 1 and r["llm_macs_ratio"] < 1 and r["kv_ratio"] < 1, r["method"]
    dycoke = {r["method"]: r for r in rows if r["keep"] == 0.25 and r["method"] in ("dycoke", "dycoke+kv")}
    assert dycoke["dycoke+kv"]["decode_read_ratio"] < dycoke["dycoke"]["decode_read_ratio"]  # reads fewer


@torch.no_grad()
def test_analytic_llm_macs_are_the_counted_ones(table):
    """For the methods whose cost does not depend on the data, the analytic column is what PyTorch executes
    (FlopCounterMode, less the vision tower)."""
    model, bed, examples, rows = table
    x = bed.batches(None, examples[:1], 1)[0][1]
    vision = measured_flops(lambda: model.model.get_video_features(x["pixel_values_videos"], x["video_grid_thw"]))
    ids = x["input_ids"][0]
    n, shape = len(ids), DecoderShape.of(model.config.text_config)
    text_after = n - 1 - int((ids == model.config.video_token_id).nonzero().max())
    base = prefill_macs(shape, None, n, [(6, 4, 4)], text_after)
    assert rows[0]["macs"] == (base * 2 + vision) // 2
    depth = shape.layers
    for r in rows[1:]:
        if r["method"] in ("dycoke", "quota", *BASELINES):
            cfg = configs([r["method"]], [r["keep"]], depth)[0][0]
            assert r["macs"] - vision // 2 == prefill_macs(shape, cfg, n, [(6, 4, 4)], text_after), r["method"]
            assert r["llm_macs_ratio"] == round((r["macs"] - vision // 2) / base, 3)


def test_baselines_always_in_the_table_and_stages_need_two_layers():
    assert table_methods(["dycoke"], 4) == ["dycoke", *BASELINES]
    assert table_methods(None, 1) == list(VIDEO_METHODS)
    assert table_methods(["holitom+llm"], 4) == [*BASELINES, "holitom+llm"]
    with pytest.raises(ValueError, match="llm_layer must be in"):
        configs(["holitom+llm"], [0.5], 1)


# ---- the CLI on a tiny random instance of the video testbed's architecture ------------------------------------
def tiny_video_testbed(path, width: int = 32, layers: int = 4):
    """A random Qwen2-VL shaped like the trained video testbed (8-px patches, one frame per temporal patch, no
    merge, word-level tokenizer and processor files), saved with a testbed.json naming it."""
    import json

    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from tokenreduce.bench import video_testbed as vt

    tok = vt.build_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", vt.IMAGE_TOKEN),
           ("video_token_id", vt.VIDEO_TOKEN), ("vision_start_token_id", vt.VISION_START),
           ("vision_end_token_id", vt.VISION_END))}
    half = width // 4 // 2  # rotary frequencies of a head (4 heads): time half, height and width a quarter each
    rope = {"rope_type": "default", "mrope_section": [half // 2, half // 4, half - half // 2 - half // 4],
            "rope_theta": 10.0}
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         rope_parameters=rope, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, embed_dim=width, hidden_size=width, num_heads=4, mlp_ratio=2,
                           patch_size=vt.PATCH, spatial_merge_size=1, temporal_patch_size=1, in_channels=3),
        pad_token_id=tok.pad_token_id, **ids,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(str(path))
    vt.save_processor(tok, path)
    (path / "testbed.json").write_text(json.dumps({"testbed": "video_digits", "heldout_accuracy": {"overall": 0.1}}))
    return path


@pytest.fixture(scope="module")
def tiny_bed(tmp_path_factory):
    return tiny_video_testbed(tmp_path_factory.mktemp("video_digits"))


def test_bench_video_model_prints_the_quality_table(tiny_bed, tmp_path, capsys):
    import json

    from tokenreduce.vlm.video import cli

    out = tmp_path / "quality"
    args = ["--model", str(tiny_bed), "--questions", "8", "--keep", "1,0.25", "--methods", "dycoke,holitom+llm",
            "--repeats", "1", "--time-batch", "2", "--threads", "1", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["rows"]
    assert [(r["method"], r["keep"]) for r in rows] == [("unreduced", 1.0)] + [
        (m, k) for m in ("dycoke", *BASELINES, "holitom+llm") for k in (1.0, 0.25)]
    base = rows[0]
    for r in rows[1:]:
        if r["keep"] == 1.0 and r["method"] != "holitom+llm":
            assert (r["accuracy"], r["agree"], r["macs"]) == (base["accuracy"], 1.0, base["macs"])
        else:
            assert r["macs_ratio"] < 1 and r["llm_macs_ratio"] < 1
    assert data["questions"] == 8 and out.with_suffix(".csv").exists()
    printed = capsys.readouterr().out
    assert "acc_direction" in printed and "llm_macs_ratio" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "nope"], "not video methods: \\['nope'\\]"),
        (["--methods", "fastv"], "image methods"),
        (["--keep", "1.5"], "keep"),
        (["--keep", "0"], "keep"),
        (["--keep", "half"], "--keep takes shares"),
        (["--questions", "0"], "--questions"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bad_input_is_refused_before_the_model_loads(extra, message, tiny_bed, capsys, monkeypatch):
    from tokenreduce.bench import video_testbed
    from tokenreduce.vlm.video import cli

    def never(*a, **k):
        raise AssertionError("loaded the model")

    monkeypatch.setattr(video_testbed, "load_video_digits", never)
    assert cli.main(["--model", str(tiny_bed), "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_model_that_is_not_the_video_testbed_is_refused(tmp_path, capsys):
    from tokenreduce.bench.vlm_testbed import ASSET_DIR as IMAGE_TESTBED
    from tokenreduce.vlm.video import cli

    for path in (tmp_path, IMAGE_TESTBED, tmp_path / "missing"):
        assert cli.main(["--model", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is not the trained video testbed" in err and "train_video_digits.py" in err


# ---- the trained video testbed --------------------------------------------------------------------------------
def test_quality_table_on_the_trained_video_model(tmp_path):
    """On the committed model: the unreduced row is the model's own accuracy on those questions, keep = 1 rows
    equal it, and FastVID at a quarter of the tokens keeps far more than random tokens do (every digit's token
    survives its density peaks; random drops three in four)."""
    import json

    from tokenreduce.bench import video_testbed as vt
    from tokenreduce.vlm.video import cli

    out = tmp_path / "quality"
    args = ["--model", str(vt.ASSET_DIR), "--questions", "40", "--keep", "1,0.25", "--methods", "fastvid",
            "--repeats", "1", "--time-batch", "2", "--threads", "1", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    rows = {(r["method"], r["keep"]): r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    model, tok = vt.load_video_digits(vt.ASSET_DIR)
    ex = vt.heldout(40)
    own = vt.accuracy(tok, ex, vt.answer_ids(model, tok, ex))["overall"]
    assert rows["unreduced", 1.0]["accuracy"] == round(own, 4)
    for m in ("fastvid", *BASELINES):
        assert rows[m, 1.0]["accuracy"] == rows["unreduced", 1.0]["accuracy"] and rows[m, 1.0]["agree"] == 1.0
    assert rows["fastvid", 0.25]["accuracy"] >= rows["unreduced", 1.0]["accuracy"] - 0.1
    assert rows["fastvid", 0.25]["accuracy"] > rows["video-random", 0.25]["accuracy"] + 0.15
