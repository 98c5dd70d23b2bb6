"""Tiny random-weight configurations of the real architectures, shared by the tests."""

from __future__ import annotations

import torch
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    DebertaV2Config,
    DebertaV2Model,
    DeiTConfig,
    DeiTModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    ModernBertConfig,
    ModernBertModel,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)


def jitter_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Random LayerNorm gains and biases, so no score is degenerate (fresh LayerNorms give every
    token the same norm, making norm-based rankings pure float noise)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


HID = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)


def bert(impl: str = "sdpa", pooling: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return jitter_norms(
        BertModel(BertConfig(vocab_size=120, attn_implementation=impl, **HID), add_pooling_layer=pooling)
    )


def roberta() -> torch.nn.Module:
    torch.manual_seed(0)
    return jitter_norms(RobertaModel(RobertaConfig(vocab_size=120, pad_token_id=1, attn_implementation="sdpa", **HID)))


def xlmr() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=120, pad_token_id=1, attn_implementation="sdpa", **HID)
    return jitter_norms(XLMRobertaModel(cfg))


def distilbert(impl: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=120, dim=32, n_layers=4, n_heads=4, hidden_dim=64, attn_implementation=impl)
    return jitter_norms(DistilBertModel(cfg))


def electra(impl: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    return jitter_norms(ElectraModel(ElectraConfig(vocab_size=120, embedding_size=16, attn_implementation=impl, **HID)))


def albert(impl: str = "sdpa", groups: int = 1, inner: int = 1) -> torch.nn.Module:
    """ALBERT sharing weights across depth: ``groups`` layer groups of ``inner`` layers each."""
    torch.manual_seed(0)
    cfg = AlbertConfig(
        vocab_size=120,
        embedding_size=16,
        num_hidden_groups=groups,
        inner_group_num=inner,
        attn_implementation=impl,
        **HID,
    )
    return jitter_norms(AlbertModel(cfg, add_pooling_layer=False))


def mpnet() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=120, pad_token_id=1, relative_attention_num_buckets=32, **HID)
    return jitter_norms(MPNetModel(cfg, add_pooling_layer=False))


def deberta_v2(share_att_key: bool = True, pos_att_type: tuple[str, ...] = ("p2c", "c2p"), **extra) -> torch.nn.Module:
    """A DeBERTa-v3-shaped config: relative attention with log buckets, no absolute positions in the input."""
    torch.manual_seed(0)
    cfg = DebertaV2Config(
        vocab_size=120,
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=-1,
        max_position_embeddings=64,
        pos_att_type=list(pos_att_type),
        share_att_key=share_att_key,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        **HID,
        **extra,
    )
    return jitter_norms(DebertaV2Model(cfg))


def modernbert(impl: str = "sdpa") -> torch.nn.Module:
    """Global attention every 2nd layer, a local window of 2 x 3 tokens: shorter than the test sentences."""
    torch.manual_seed(0)
    cfg = ModernBertConfig(
        vocab_size=120,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        global_attn_every_n_layers=2,
        local_attention=6,
        attn_implementation=impl,
        **HID,
    )
    model = ModernBertModel(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # its LayerNorms have no bias, which jitter_norms expects
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
    return model.eval()


def vit(cls=ViTModel, impl: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=4, num_labels=5, attn_implementation=impl, **HID)
    return jitter_norms(cls(cfg))


def deit() -> torch.nn.Module:
    torch.manual_seed(0)
    return jitter_norms(DeiTModel(DeiTConfig(image_size=32, patch_size=4, attn_implementation="sdpa", **HID)))


def clip_vision() -> torch.nn.Module:
    torch.manual_seed(0)
    return jitter_norms(
        CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=4, attn_implementation="sdpa", **HID))
    )


def clip_full() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=120, **HID),
        vision_config=dict(image_size=32, patch_size=4, **HID),
        projection_dim=16,
    )
    return jitter_norms(CLIPModel(cfg))


def text_batch(seed: int = 0, lengths: tuple[int, ...] = (20, 14, 9, 20)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.randint(5, 120, (len(lengths), n), generator=g)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, ln in enumerate(lengths):
        mask[i, :ln] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def pixels(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def block_inputs(layer: torch.nn.Module, run) -> tuple[tuple, dict]:
    """The (args, kwargs) a block receives when ``run()`` runs its model once."""
    seen = []
    hook = layer.register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    return seen[0]
