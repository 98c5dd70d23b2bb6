"""The README's support matrix: generated from the rows below, each row checked on a tiny random config.

The README table must equal what this file renders (a fast test; ``python tests/test_support_matrix.py
--write`` regenerates it). Every row's check (slow: ~30 s of CPU for all of them; the families' own test files
cover the same ground in the default suite) runs the family: reducing nothing reproduces the unpatched output
exactly and a real reduction runs and changes it, or the model is refused before any compute.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # run as a script too

from kv_models import FAMILIES, FUSED, NORMED, SLIDING, padded_batch  # noqa: E402
from models import (  # noqa: E402
    albert,
    bert,
    clip_vision,
    deberta_v2,
    deit,
    distilbert,
    electra,
    modernbert,
    mpnet,
    pixels,
    roberta,
    text_batch,
    vit,
    xlmr,
)
from vision_models import beit, data2vec, dinov2, dinov2_registers, mae, siglip_vision  # noqa: E402

import tokenreduce as tr  # noqa: E402

README = Path(__file__).parents[1] / "README.md"
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


@dataclass(frozen=True)
class Row:
    kind: str
    family: str
    classes: str
    status: str
    check: Callable[[], None]  # raises if the row's status does not hold


def _same(a, b) -> bool:
    return torch.equal(a, b)


def _encoder(build: Callable, images: bool, cls_methods: bool = True) -> Callable[[], None]:
    def check() -> None:
        model = build()
        x = {"pixel_values": pixels()} if images else text_batch()
        if "ViTMAE" in type(model).__name__:
            x["noise"] = torch.arange(64.0).expand(3, 64)
        with torch.no_grad():
            ref = model(**x).last_hidden_state
            with tr.patched(model, "tome", keep=1.0):
                assert _same(model(**x).last_hidden_state, ref)
            methods = ["tome", "evit"] if cls_methods else ["tome"]
            for m in methods:
                with tr.patched(model, m, keep=0.5):
                    assert not _same(model(**x).last_hidden_state, ref)
    return check


def _timm(name: str) -> Callable[[], None]:
    """A tiny random timm model (skipped without timm, which needs its own environment: README "Optional: timm")."""

    def check() -> None:
        timm = pytest.importorskip("timm")
        from models import jitter_norms

        torch.manual_seed(0)
        model = jitter_norms(timm.create_model(name, pretrained=False, img_size=32, patch_size=4, embed_dim=32,
                                               depth=4, num_heads=4, num_classes=5))
        with torch.no_grad():
            ref = model.forward_features(pixels())
            with tr.patched(model, "tome", keep=1.0):
                assert _same(model.forward_features(pixels()), ref)
            for m in ("tome", "evit"):
                with tr.patched(model, m, keep=0.5):
                    assert not _same(model.forward_features(pixels()), ref)
    return check


def _press(build: Callable) -> Callable[[], None]:
    def check() -> None:
        from tokenreduce.kv import generate_ids, make_press

        model = build()
        ids, mask, q = padded_batch()
        base = generate_ids(model, ids, mask, q, max_new_tokens=3)
        assert _same(generate_ids(model, ids, mask, q, make_press("snapkv", keep=1.0), max_new_tokens=3), base)
        generate_ids(model, ids, mask, q, make_press("snapkv", keep=0.3), max_new_tokens=3)
    return check


def _refused(build: Callable, match: str) -> Callable[[], None]:
    def check() -> None:
        from tokenreduce.kv import generate_ids, make_press

        ids, mask, q = padded_batch()
        with pytest.raises((TypeError, ValueError), match=match):
            generate_ids(build(), ids, mask, q, make_press("snapkv", keep=0.5))
    return check


def _vlm(name: str) -> Callable[[], None]:
    def check() -> None:
        import vlm_models as vm

        if name == "llava":
            model = vm.tiny_llava()
            x, methods = vm.llava_inputs(model), ("fastervlm", "fastv")
        elif name == "llava-next":
            model = vm.tiny_llava_next()
            x, methods = vm.llava_next_inputs(model), ("fastervlm", "fastv")
        else:
            model = vm.tiny_qwen2vl()
            x, methods = vm.qwen2vl_inputs(model), ("visual-tome", "fastv")
        with torch.no_grad():
            ref = model(**x).logits[:, -1]
            for m in methods:
                with tr.patched(model, m, keep=1.0):
                    assert _same(model(**x).logits[:, -1], ref)
                with tr.patched(model, m, keep=0.25):
                    assert not _same(model(**x).logits[:, -1], ref)
    return check


def _diffusion(name: str) -> Callable[[], None]:
    def check() -> None:
        import test_diffusion as td

        model = {"unet": td.tiny_unet, "sdxl": lambda: td.tiny_unet(sdxl=True), "dit": td.tiny_dit,
                 "pixart": td.tiny_pixart}[name]()
        args, kwargs = td.inputs(name if name != "sdxl" else "sdxl")
        ref = td.run(model, args, kwargs)
        with tr.patched(model, "tomesd", ratio=0.0):
            assert _same(td.run(model, args, kwargs), ref)
        with tr.patched(model, "tomesd", ratio=0.5, max_downsample=2 if name == "sdxl" else 1):
            assert not _same(td.run(model, args, kwargs), ref)
    return check


def _lm(table: dict, name: str) -> Callable[[], torch.nn.Module]:
    import kv_models

    if table is FAMILIES:
        return lambda: kv_models.tiny_lm(name)
    if table is SLIDING:
        return lambda: kv_models.tiny_sliding_lm(name)
    if table is FUSED:
        return lambda: kv_models.tiny_fused_lm(name)
    return lambda: kv_models.tiny_normed_lm(name)


def _falcon() -> torch.nn.Module:
    from transformers import FalconConfig, FalconForCausalLM

    return FalconForCausalLM(FalconConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6))


def rows() -> list[Row]:
    import kv_models

    enc = [
        ("BERT", "BertModel (sentence-transformers MiniLM, ...)", bert, False),
        ("RoBERTa", "RobertaModel", roberta, False),
        ("XLM-RoBERTa", "XLMRobertaModel", xlmr, False),
        ("ELECTRA", "ElectraModel", electra, False),
        ("DistilBERT", "DistilBertModel", distilbert, False),
        ("ALBERT", "AlbertModel", albert, False),
        ("MPNet", "MPNetModel (all-mpnet-base-v2)", mpnet, False),
        ("DeBERTa-v2/v3", "DebertaV2Model", deberta_v2, False),
        ("ModernBERT", "ModernBertModel", modernbert, False),
        ("ViT", "ViTModel, ViTForImageClassification", vit, True),
        ("DeiT", "DeiTModel", deit, True),
        ("CLIP vision", "CLIPVisionModel, CLIPModel", clip_vision, True),
        ("DINOv2", "Dinov2Model, Dinov2WithRegistersModel", dinov2, True),
        ("DINOv2 + registers", "Dinov2WithRegistersModel", dinov2_registers, True),
        ("BEiT", "BeitModel and heads", beit, True),
        ("Data2Vec-vision", "Data2VecVisionModel and heads", data2vec, True),
        ("ViT-MAE", "ViTMAEModel, ViTMAEForPreTraining", mae, True),
    ]
    every = "every encoder method (merging, pruning, hybrids)"
    out = [Row("encoder", f, c, every, _encoder(b, img)) for f, c, b, img in enc]
    out.append(Row("encoder", "timm ViT / DeiT", "timm VisionTransformer (vit_*, deit*, deit3_*, register ViTs)",
                   f"{every}; needs the timm extra", _timm("vit_tiny_patch16_224")))
    out.append(Row("encoder", "timm EVA / RoPE ViTs", "timm Eva (eva02_*, eva_*, vit_*_rope_*, DINOv3, PE)",
                   f"{every}; RoPE angles follow reduced tokens; needs the timm extra",
                   _timm("eva02_tiny_patch14_224")))
    out.append(Row("encoder", "SigLIP / SigLIP 2 vision", "SiglipVisionModel, Siglip2VisionModel",
                   "merging and norm/random pruning; [CLS]-scored methods refused (no [CLS])",
                   _encoder(siglip_vision, True, cls_methods=False)))
    lms = [
        (FAMILIES, "llama", "Llama", "LlamaForCausalLM"),
        (NORMED, "llama3", "Llama 3 (rope scaling)", "LlamaForCausalLM"),
        (FAMILIES, "qwen2", "Qwen2", "Qwen2ForCausalLM"), (NORMED, "qwen3", "Qwen3", "Qwen3ForCausalLM"),
        (FAMILIES, "mistral", "Mistral (no sliding window)", "MistralForCausalLM"),
        (FAMILIES, "gemma", "Gemma", "GemmaForCausalLM"),
        (SLIDING, "gemma2", "Gemma 2 (sliding layers kept)", "Gemma2ForCausalLM"),
        (SLIDING, "gemma3", "Gemma 3 (sliding layers kept)", "Gemma3ForCausalLM"),
        (SLIDING, "qwen2_sliding", "Qwen2 use_sliding_window", "Qwen2ForCausalLM"),
        (FUSED, "gpt2", "GPT-2", "GPT2LMHeadModel"), (FUSED, "gpt_neox", "GPT-NeoX", "GPTNeoXForCausalLM"),
        (FUSED, "phi3", "Phi-3", "Phi3ForCausalLM"), (NORMED, "olmo2", "OLMo 2", "Olmo2ForCausalLM"),
    ]
    presses = "every press (a few refuse some families, before compute: see docs/KV.md)"
    out += [Row("decoder KV", f, c, presses, _press(_lm(t, n))) for t, n, f, c in lms]
    out.append(Row("decoder KV", "Mistral with sliding_window", "MistralForCausalLM",
                   "refused: every layer slides, so the cache is already bounded",
                   _refused(kv_models.tiny_mistral_sliding, "every layer keeps a sliding window")))
    out.append(Row("decoder KV", "Falcon", "FalconForCausalLM",
                   "refused: fused projections not yet tested", _refused(_falcon, "Falcon.*not supported")))
    visual = "visual-token methods, before and inside the LLM (+ KV presses)"
    merging, dit = "tomesd, tomesd-threshold, todo", "tomesd, tomesd-threshold, todo, dit-merge"
    out += [
        Row("VLM", "LLaVA-1.5", "LlavaForConditionalGeneration", visual, _vlm("llava")),
        Row("VLM", "LLaVA-NeXT", "LlavaNextForConditionalGeneration", visual, _vlm("llava-next")),
        Row("VLM", "Qwen2-VL, Qwen2.5-VL", "Qwen2VLForConditionalGeneration, Qwen2_5_VL...", visual, _vlm("qwen2vl")),
        Row("diffusion", "Stable Diffusion 1.x/2.x U-Net", "UNet2DConditionModel", merging, _diffusion("unet")),
        Row("diffusion", "SDXL U-Net", "UNet2DConditionModel", merging, _diffusion("sdxl")),
        Row("diffusion", "DiT", "DiTTransformer2DModel", dit, _diffusion("dit")),
        Row("diffusion", "PixArt-α/Σ", "PixArtTransformer2DModel", dit, _diffusion("pixart")),
    ]
    return out


def render() -> str:
    lines = ["| kind | family | classes | what runs |", "|---|---|---|---|"]
    lines += [f"| {r.kind} | {r.family} | {r.classes} | {r.status} |" for r in rows()]
    return "\n".join(lines)


def readme_table() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START): text.index(END)].strip()


def test_readme_support_matrix_is_generated():
    assert readme_table() == render(), "regenerate: python tests/test_support_matrix.py --write"


@pytest.mark.slow
@pytest.mark.parametrize("row", rows(), ids=lambda r: f"{r.kind}:{r.family}")
def test_every_row_holds(row):
    if row.kind == "diffusion":
        pytest.importorskip("diffusers")
    row.check()


if __name__ == "__main__":
    table = render()
    if "--write" in sys.argv:
        text = README.read_text()
        head, tail = text[: text.index(START) + len(START)], text[text.index(END):]
        README.write_text(f"{head}\n{table}\n{tail}")
    print(table)
