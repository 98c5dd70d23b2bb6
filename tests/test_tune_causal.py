"""``tokenreduce tune`` on a causal LM (KV presses x keep): a tiny random Llama saved to disk with a
character tokenizer; end to end through the CLI, resume from the store, the measurer's invariants, and bad
input refused before the model loads."""

from __future__ import annotations

import random
import string

import pytest
import torch

from tokenreduce.cli import main
from tokenreduce.cli.tune import is_causal_lm
from tokenreduce.sweep import tune_data as td
from tokenreduce.sweep import tune_kv as tk
from tokenreduce.sweep.config import Point

WORDS = "river stone tower city music bread garden winter light paper engine forest window market".split()
FAST = ["--methods", "snapkv,streaming_llm", "--repeats", "1", "--decode-tokens", "2", "--context-tokens", "48",
        "--continuation-tokens", "8", "--samples", "2", "--refine-methods", "1", "--refine-steps", "1",
        "--threads", "1", "--no-progress"]


def _tokenizer():
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<unk>", "</s>"] + list(string.ascii_lowercase + string.digits + " .,\n")
    t = Tokenizer(WordLevel({c: i for i, c in enumerate(vocab)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory) -> str:
    """A 2-layer random Llama (GQA) with a character tokenizer, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                      eos_token_id=2, bos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # peaked attention, so presses' scores discriminate
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    d = tmp_path_factory.mktemp("tiny-causal")
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 40))) + "." for _ in range(20)]
    path = tmp_path_factory.mktemp("tune-text") / "notes.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def steady_clock(monkeypatch):
    """Every pressed run takes half the full cache's time: on a tiny model measured speedups are noise, and a
    pick needs one above 1 (the measurer's own timing is exercised by the resume test's real clock)."""
    import tokenreduce.bench.timing as timing
    from tokenreduce.bench.timing import Timing

    def time_pair(base, other, repeats=5, warmup=1):
        base(), other()
        return Timing(1.0, 1.0, 1.0, 1), Timing(0.5, 0.5, 0.5, 1)

    monkeypatch.setattr(timing, "time_pair", time_pair)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["tune", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_detects_causal_models(tiny_causal, tmp_path):
    assert is_causal_lm(tiny_causal) and is_causal_lm("smollm2") and is_causal_lm("x.gguf")
    assert not is_causal_lm(None) and not is_causal_lm(str(tmp_path))


def test_tune_causal_end_to_end_pick_meets_tolerance_on_held_out(tiny_causal, text, tmp_path, capsys, steady_clock):
    code, out, err = _run(capsys, str(text), "--model", tiny_causal, "--max-loss", "20%",
                          "--out", str(tmp_path / "report"), *FAST)
    assert code == 0, err
    assert "causal LM: KV presses" in err
    assert "KV bytes ratio" in out and "Pareto front on the tuning split" in out
    assert 'Recommended: tokenreduce.kv.generate(model, tokenizer, context, question, press=tokenreduce.kv.' \
           'make_press("' in out
    line = next(ln for ln in out.splitlines() if ln.startswith("held-out check") and "passes" in ln)
    loss = float(line.split("(loss ")[1].split("%")[0])
    assert loss <= 20.0
    assert (tmp_path / "report" / "index.html").read_text().count("snapkv") >= 1
    # resumable: the same command measures nothing again
    code, out, _ = _run(capsys, str(text), "--model", tiny_causal, "--max-loss", "20%",
                        "--out", str(tmp_path / "report"), *FAST)
    assert code == 0 and "measured 0 point(s)" in out


def test_impossible_tolerance_recommends_the_full_cache(tiny_causal, text, tmp_path, capsys, steady_clock):
    code, out, _ = _run(capsys, str(text), "--model", tiny_causal, "--min-fidelity", "1.0",
                        "--store", str(tmp_path / "s.sqlite"), *FAST)
    assert code == 0
    assert "Recommended: no press: keep the full cache" in out


def test_measurer_keep_one_is_the_full_cache_and_real_timing(tiny_causal, text):
    from tokenreduce.llm import load_causal_lm

    lm, tok = load_causal_lm(tiny_causal)
    recs = td.read_data(text)
    spec = td.task_spec("tune", recs)
    m = tk.KVTuneMeasurer(lm, tok, {spec: tk.text_windows(tok, recs, 48, 8, 2, "tuning")})
    settings = {"repeats": 1, "threads": 1, "decode_tokens": 2}
    full = m.metrics(Point("tiny", (spec,), "snapkv", {"keep": 1.0}, settings))[0]
    assert full["tune:agreement"] == 1.0 and full["tune:kl"] == 0.0
    assert full["tune:accuracy"] == full["base:tune:accuracy"] and full["kv_bytes_ratio"] == 1.0
    low = m.metrics(Point("tiny", (spec,), "streaming_llm", {"keep": 0.15}, settings))[0]
    assert low["kv_bytes_ratio"] < 0.3 and low["tune:kl"] > 0 and low["speedup"] > 0
    assert full["flops_ratio"] == 1.0 and 0 < low["flops_ratio"] < 1  # decode-step MACs
    macs, full_macs = tk.decode_macs(lm, 48, low["kv_bytes_ratio"])
    linear = sum(x.weight.numel() for x in lm.modules() if isinstance(x, torch.nn.Linear))
    assert full_macs == linear + 2 * 2 * 4 * 8 * 48  # layers x (q.k + w.v) x heads x head_dim x entries
    assert low["flops_ratio"] == pytest.approx(macs / full_macs)
    bad = m.run(Point("tiny", (spec,), "snapkv", {"keep": 0.0}, settings))
    assert not bad.ok and "keep" in bad.error


@pytest.mark.parametrize("extra, msg", [
    (["--methods", "nope"], "unknown press 'nope' for a causal LM"),
    (["--methods", "qfilters"], "press 'qfilters' is not tuned here: it needs calibrated filters"),
    (["--metric", "mrr"], "metric 'mrr' is not available for a causal LM; choose from agreement, accuracy"),
    (["--metric", "accuracy", "--min-fidelity", "0.9"], "--min-fidelity bounds greedy agreement"),
    (["--min-fidelity", "1.5"], "--min-fidelity must be in (0, 1]"),
    (["--continuation-tokens", "1"], "--continuation-tokens must be >= 2"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--context-tokens", "100000"], "fewer than one window of 100000 + 32"),
])
def test_bad_causal_input_is_one_clear_line(tiny_causal, text, tmp_path, capsys, extra, msg):
    code, out, err = _run(capsys, str(text), "--model", tiny_causal, "--store", str(tmp_path / "s.sqlite"), *extra)
    assert code == 2 and msg in err, err
    assert "Traceback" not in err


def test_missing_gguf_is_refused(text, tmp_path, capsys):
    code, _, err = _run(capsys, str(text), "--model", str(tmp_path / "none.gguf"))
    assert code == 2 and "not found" in err
    assert not (tmp_path / "tokenreduce-tune.sqlite").exists()


def test_sweep_report_reads_a_causal_tune_store(tiny_causal, text, tmp_path, capsys, steady_clock):
    store = tmp_path / "kv.sqlite"
    code, _, err = _run(capsys, str(text), "--model", tiny_causal, "--store", str(store), *FAST)
    assert code == 0, err
    assert main(["results", str(store)]) == 0
    assert "snapkv(keep=0.75)" in capsys.readouterr().out
    assert main(["report", str(store), "--out", str(tmp_path / "rep"), "--no-png"]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "agreement" in page and "snapkv" in page


def test_every_default_press_measures_on_a_tiny_llama(tiny_causal, text):
    from tokenreduce.llm import load_causal_lm

    lm, tok = load_causal_lm(tiny_causal)
    recs = td.read_data(text)
    spec = td.task_spec("tune", recs)
    m = tk.KVTuneMeasurer(lm, tok, {spec: tk.text_windows(tok, recs, 48, 8, 1, "tuning")})
    for name in tk.check_presses(None):
        out = m.run(Point("tiny", (spec,), name, {"keep": 0.5}, {"repeats": 1, "threads": 1, "decode_tokens": 1}))
        assert out.ok, (name, out.error)
        assert 0 < out.metrics["kv_bytes_ratio"] < 1 and 0 <= out.metrics["tune:agreement"] <= 1, name
