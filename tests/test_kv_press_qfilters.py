"""Q-Filters: calibrated directions equal an SVD of the model's own queries (captured from ``q_proj`` and
rotated with transformers' rotary), survive a save/reload exactly, scores are ``k . u`` (kvpress's
QFilterPress rule with its filter = -u), self-calibration equals the SVD of the prefill's queries;
keep=1 exact; bad files and mismatched models refused."""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm
from kv_press_refs import kvpress_or_skip, layer_views
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tokenreduce.kv import QFilters, generate_ids, make_press
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.kv.calibrate import calibrate_qfilters
from tokenreduce.kv.presses.qfilters import save_filters


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def prompts():
    return [random_ids(1, 30, seed=s) for s in (11, 12, 13)]


def _svd_directions(queries: list[torch.Tensor], hkv: int) -> torch.Tensor:
    """(Hkv, D): first right singular vector of each KV group's stacked queries, mean projection positive."""
    q = torch.cat(queries, dim=2)  # (1, H, total, D)
    h, d = q.shape[1], q.shape[-1]
    out = []
    for g in range(hkv):
        x = q[0, g * (h // hkv) : (g + 1) * (h // hkv)].reshape(-1, d).double()
        v = torch.linalg.svd(x, full_matrices=False).Vh[0]
        out.append(v if (x @ v).mean() > 0 else -v)
    return torch.stack(out).float()


def _model_queries(model, ids):
    """Each layer's queries (1, H, n, D) after RoPE, from q_proj outputs and transformers' own rotary."""
    outs = {}
    handles = [layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
               for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    cos, sin = model.model.rotary_emb(ids.float(), torch.arange(ids.shape[1])[None])
    d = model.config.head_dim if getattr(model.config, "head_dim", None) else 8
    res = []
    for i in range(len(model.model.layers)):
        q = outs[i].view(1, ids.shape[1], -1, d).transpose(1, 2)
        res.append(apply_rotary_pos_emb(q, q, cos, sin)[0])
    return res


def test_calibration_equals_an_svd_of_the_models_queries(model, prompts):
    got = calibrate_qfilters(model, prompts)
    per_prompt = [_model_queries(model, p) for p in prompts]
    for layer in range(got.shape[0]):
        want = _svd_directions([qs[layer] for qs in per_prompt], 2)
        torch.testing.assert_close(got[layer], want, atol=1e-4, rtol=0)


def test_saved_filters_reload_exactly_and_score(model, prompts, tmp_path):
    filters = calibrate_qfilters(model, prompts)
    path = tmp_path / "smol.qfilters.safetensors"
    save_filters(path, filters)
    press = QFilters(keep=0.5, filters=str(path))
    assert torch.equal(press._directions, filters)
    assert press == make_press("qfilters", keep=0.5, filters=str(path))
    ids = random_ids(1, 40)
    cache = press_cache(model, capture_prefill(model, ids), press)
    for view in layer_views(model, ids):
        scores = press.score(view)
        torch.testing.assert_close(scores[0], torch.einsum("hnd,hd->hn", view.keys[0], filters[view.layer]))
        top = scores.argsort(-1, descending=True)[..., :20].sort(-1).values
        want = view.keys.gather(2, top[..., None].expand(-1, -1, -1, view.keys.shape[-1]))
        torch.testing.assert_close(cache.layers[view.layer].keys, want)


def test_scores_equal_kvpress_with_the_same_filters(model, prompts):
    kvpress = kvpress_or_skip()
    filters = calibrate_qfilters(model, prompts)
    their = kvpress.QFilterPress(compression_ratio=0.5)
    their.q_filters = -filters  # kvpress scores -(filter . k); its published filters point the other way
    for view in layer_views(model, random_ids(1, 40)):
        ours = torch.einsum("bhnd,hd->bhn", view.keys, filters[view.layer])
        torch.testing.assert_close(ours, their.score(view.module, view.hidden, view.keys, view.values, None, {}))


def test_self_calibration_uses_the_prefills_queries(model):
    ids, mask, _ = padded_batch()
    row = ids[1:, 9:]
    qs = _model_queries(model, row)
    for view in layer_views(model, ids, mask):
        u = QFilters().layer_directions(view)[1]
        torch.testing.assert_close(u, _svd_directions([qs[view.layer]], 2), atol=1e-4, rtol=0)


def test_keep_one_is_exact(model, prompts, tmp_path):
    path = tmp_path / "f.safetensors"
    save_filters(path, calibrate_qfilters(model, prompts))
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    for press in (QFilters(keep=1.0), QFilters(keep=1.0, filters=str(path))):
        assert torch.equal(generate_ids(model, ids, mask, q, press, max_new_tokens=4), base)


def test_bad_files_and_models_are_refused(model, prompts, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        QFilters(filters=str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a Q-Filters file"):
        QFilters(filters=str(junk))
    with pytest.raises(ValueError, match="must be"):
        save_filters(tmp_path / "x.safetensors", torch.zeros(3, 8))
    path = tmp_path / "two_layers.safetensors"
    save_filters(path, calibrate_qfilters(model, prompts)[:2])
    press = QFilters(keep=0.5, filters=str(path))
    with pytest.raises(ValueError, match="calibrate on this model"):
        generate_ids(model, random_ids(1, 20), None, None, press, max_new_tokens=1)
    with pytest.raises(ValueError, match="at least one prompt"):
        calibrate_qfilters(model, [])
    with pytest.raises(ValueError, match="filters"):
        QFilters(filters=3)  # type: ignore[arg-type]
