"""Diffusion token reduction (tokenreduce.diffusion) on tiny random-weight diffusers models (CPU):
ratio 0 reproduces the unpatched model exactly for every method and family, unpatch restores it
exactly, a classifier-free-guidance batch equals its rows run alone, bad parameters fail at
construction naming the valid range (the stride's cap for the ratio), and patch/unpatch go through
the top-level API (a pipeline too) without the core library importing diffusers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import tokenreduce
from tokenreduce.diffusion import make_diffusion_method
from tokenreduce.diffusion.grid import destinations, pool_grid, stride_choice

diffusers = pytest.importorskip("diffusers")

ATOL = 1e-5  # batch-of-2 vs rows alone: the unpatched model itself differs by ~1e-6 (batched kernels)


def tiny_unet(sdxl: bool = False):
    torch.manual_seed(0)
    kw = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
              cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    if sdxl:  # SDXL's layout: no attention at the finest level, two transformer layers below, text_time cond
        kw.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                  addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=8 * 6 + 16, use_linear_projection=True)
    else:  # SD 1.x/2.x: cross-attention at the finest level
        kw.update(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return diffusers.UNet2DConditionModel(**kw).eval()


def tiny_dit():
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                           norm_num_groups=8).eval()


def tiny_pixart():
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                              out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                              cross_attention_dim=16, caption_channels=12, norm_num_groups=8).eval()


def inputs(family: str, batch: int = 2):
    """A CFG-style batch: row 0 "unconditional", row 1 conditional, one shared timestep."""
    g = torch.Generator().manual_seed(1)
    if family == "dit":
        x = torch.randn(batch, 4, 8, 8, generator=g)
        return (x,), dict(timestep=torch.tensor([7] * batch), class_labels=torch.tensor([0, 3][:batch]))
    if family == "pixart":
        x = torch.randn(batch, 4, 8, 8, generator=g)
        return (x,), dict(encoder_hidden_states=torch.randn(batch, 5, 12, generator=g),
                          timestep=torch.tensor([7] * batch),
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    x = torch.randn(batch, 4, 16, 16, generator=g)
    kw = dict(encoder_hidden_states=torch.randn(batch, 7, 32, generator=g))
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 16, generator=g),
                                   "time_ids": torch.randn(batch, 6, generator=g)}
    return (x, 10.0), kw


def rows(args, kwargs, i):
    def cut(v):
        if isinstance(v, dict):
            return {k: cut(u) for k, u in v.items()}
        return v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] > 1 else v
    return tuple(cut(a) for a in args), cut(kwargs)


MODELS = {"unet": tiny_unet, "dit": tiny_dit, "pixart": tiny_pixart, "sdxl": lambda: tiny_unet(sdxl=True)}
_CACHE: dict[str, torch.nn.Module] = {}


def model_for(family: str):
    if family not in _CACHE:
        _CACHE[family] = MODELS[family]()
    return _CACHE[family]


def run(model, args, kwargs):
    with torch.no_grad():
        return model(*args, **kwargs).sample


ZERO = [("tomesd", {"ratio": 0.0}), ("tomesd-threshold", {"ratio": 0.0}), ("todo", {"stride": (1, 1)}),
        ("tomesd", {"ratio": 0.0, "merge_crossattn": True, "merge_mlp": True})]
ACTIVE = [("tomesd", {"ratio": 0.5}), ("tomesd-threshold", {"ratio": 0.75, "threshold": 0.2}), ("todo", {}),
          ("tomesd", {"ratio": 0.6, "merge_crossattn": True, "merge_mlp": True}), ("tomesd", {"ratio": 0.5,
                                                                                             "use_rand": False})]


@pytest.mark.parametrize("family", ["unet", "dit", "pixart"])
@pytest.mark.parametrize(("method", "params"), ZERO)
def test_ratio_zero_reproduces_the_unpatched_model_exactly(family, method, params):
    model = model_for(family)
    args, kwargs = inputs(family)
    ref = run(model, args, kwargs)
    with tokenreduce.patched(model, method, **params):
        assert torch.equal(run(model, args, kwargs), ref)


@pytest.mark.parametrize("family", ["unet", "dit", "pixart"])
@pytest.mark.parametrize(("method", "params"), ACTIVE)
def test_cfg_batch_equals_rows_alone_and_unpatch_is_exact(family, method, params):
    model = model_for(family)
    args, kwargs = inputs(family)
    ref = run(model, args, kwargs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with tokenreduce.patched(model, method, **params):
        both = run(model, args, kwargs)
        alone = torch.cat([run(model, *rows(args, kwargs, i)) for i in range(2)])
        assert torch.equal(run(model, args, kwargs), both)  # deterministic: the same call, the same choice
    assert (both - ref).abs().max() > 1e-3  # it did reduce
    torch.testing.assert_close(both, alone, atol=ATOL, rtol=0)
    assert torch.equal(run(model, args, kwargs), ref)
    assert not [type(m).__name__ for m in model.modules() if "forward" in vars(m)]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("method", "params"), ACTIVE[:3])
def test_rows_at_different_timesteps_equal_rows_alone(method, params):
    """Each row draws its destinations from its own timestep, so a batch mixing steps is still row-independent."""
    model = model_for("dit")
    args, kwargs = inputs("dit")
    kwargs["timestep"] = torch.tensor([3, 7])
    with tokenreduce.patched(model, method, **params):
        both = run(model, args, kwargs)
        alone = torch.cat([run(model, *rows(args, kwargs, i)) for i in range(2)])
    torch.testing.assert_close(both, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["dit", "pixart"])
@pytest.mark.parametrize("params", [{"ratio": 0.5}, {"ratio": 0.75, "start": 1}, {"ratio": 0.3, "end": 0}])
def test_dit_merge_across_blocks(family, params):
    """dit-merge: ratio 0 exact, a CFG batch equals its rows, unpatch exact, output at full length."""
    model = model_for(family)
    args, kwargs = inputs(family)
    ref = run(model, args, kwargs)
    with tokenreduce.patched(model, "dit-merge", ratio=0.0):
        assert torch.equal(run(model, args, kwargs), ref)
    with tokenreduce.patched(model, "dit-merge", **params):
        both = run(model, args, kwargs)
        alone = torch.cat([run(model, *rows(args, kwargs, i)) for i in range(2)])
    assert both.shape == ref.shape and (both - ref).abs().max() > 1e-3
    torch.testing.assert_close(both, alone, atol=ATOL, rtol=0)
    assert torch.equal(run(model, args, kwargs), ref)
    assert not [type(m).__name__ for m in model.modules() if "forward" in vars(m)]


def test_dit_merge_span_and_family_are_checked_at_patch_time():
    """The span must lie within the model's blocks, and a U-Net (resolution changes between blocks) is refused;
    nothing is patched on error."""
    model = model_for("dit")
    with pytest.raises(ValueError, match=r"need 0 <= start <= end < 2 \(this model's blocks"):
        tokenreduce.patch(model, "dit-merge", start=2)
    with pytest.raises(ValueError, match=r"need 0 <= start <= end < 2"):
        tokenreduce.patch(model, "dit-merge", start=1, end=0)
    with pytest.raises(ValueError, match="dit-merge needs a transformer model"):
        tokenreduce.patch(model_for("unet"), "dit-merge")
    assert tokenreduce.patch_info(model) is None and "forward" not in vars(model)


def test_destinations_change_with_the_step_not_with_the_batch():
    model = make_diffusion_method("tomesd", ratio=0.5)
    keys = torch.tensor([10, 10, 20])
    c = model.choose((8, 8), keys, stream=3)
    assert c.shape == (3, 4, 4) and torch.equal(c[0], c[1]) and not torch.equal(c[0], c[2])
    assert torch.equal(model.choose((8, 8), keys[:1], stream=3)[0], c[0])
    assert not torch.equal(model.choose((8, 8), keys[:1], stream=4)[0], c[0])  # another block
    d = destinations((9, 8), (2, 2), c).view(3, 9, 8)
    assert torch.equal(d[:, :8].reshape(3, 4, 2, 4, 2).sum((2, 4)), torch.ones(3, 4, 4, dtype=torch.long))
    assert not d[:, 8].any()  # the partial row of cells at the edge has no destination
    assert stride_choice((4, 4), (2, 2), keys, 0, 0).max() < 4


def test_todo_pools_partial_cells_by_their_own_tokens():
    x = torch.arange(15.0).view(1, 15, 1)  # a 3 x 5 grid
    p = pool_grid(x, (3, 5), (2, 2)).view(2, 3)
    assert p[0, 0] == (0 + 1 + 5 + 6) / 4 and p[0, 2] == (4 + 9) / 2 and p[1, 2] == 14


def test_threshold_one_merges_nothing_and_minus_one_is_tomesd():
    model = model_for("unet")
    args, kwargs = inputs("unet")
    ref = run(model, args, kwargs)
    with tokenreduce.patched(model, "tomesd-threshold", ratio=0.75, threshold=1.0):
        assert torch.equal(run(model, args, kwargs), ref)
    with tokenreduce.patched(model, "tomesd", ratio=0.5):
        plain = run(model, args, kwargs)
    with tokenreduce.patched(model, "tomesd-threshold", ratio=0.5, threshold=-1.0):
        torch.testing.assert_close(run(model, args, kwargs), plain, atol=0, rtol=0)


def test_max_downsample_selects_blocks_sdxl_layout():
    """SDXL has no transformer block at the finest level: max_downsample=1 (tomesd's default) changes
    nothing there, max_downsample=2 reaches its first attention level."""
    model = model_for("sdxl")
    args, kwargs = inputs("sdxl")
    ref = run(model, args, kwargs)
    with tokenreduce.patched(model, "tomesd", ratio=0.5):
        assert torch.equal(run(model, args, kwargs), ref)
    with tokenreduce.patched(model, "tomesd", ratio=0.5, max_downsample=2):
        both = run(model, args, kwargs)
        alone = torch.cat([run(model, *rows(args, kwargs, i)) for i in range(2)])
    assert (both - ref).abs().max() > 1e-3
    torch.testing.assert_close(both, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("method", "params", "message"), [
    ("tomesd", {"ratio": 0.8}, r"ratio must be in \[0, 0.75\] \(the cap 1 - 1/\(sx\*sy\) = 0.75 for stride \(2, 2\)"),
    ("tomesd", {"ratio": 0.9, "stride": (4, 2)}, r"ratio must be in \[0, 0.875\] \(the cap"),
    ("tomesd", {"ratio": 0.1, "stride": (1, 1)}, r"ratio must be in \[0, 0\]"),
    ("tomesd", {"ratio": -0.1}, r"ratio must be in \[0, 0.75\]"),
    ("tomesd", {"ratio": "0.5"}, "ratio must be a real number"),
    ("tomesd", {"ratio": float("nan")}, "ratio must be a real number"),
    ("tomesd", {"max_downsample": 0}, r"max_downsample must be in \[1, inf\)"),
    ("tomesd", {"merge_mlp": 1}, "merge_mlp must be a bool"),
    ("tomesd", {"stride": (2, 0)}, r"stride must be two ints >= 1"),
    ("tomesd", {"seed": -1}, r"seed must be in \[0, inf\)"),
    ("tomesd-threshold", {"threshold": 1.5}, r"threshold must be in \[-1, 1\]"),
    ("tomesd-threshold", {"ratio": 0.8}, r"ratio must be in \[0, 0.75\]"),
    ("todo", {"stride": 2}, "stride must be two ints"),
    ("todo", {"ratio": 0.5}, "unknown parameter"),
    ("dit-merge", {"ratio": 0.8}, r"ratio must be in \[0, 0.75\] \(the cap"),
    ("dit-merge", {"start": -1}, r"start must be in \[0, inf\)"),
])
def test_bad_parameters_fail_at_construction(method, params, message):
    with pytest.raises(ValueError, match=message):
        make_diffusion_method(method, **params)
    model = model_for("unet")
    with pytest.raises(ValueError, match=message):
        tokenreduce.patch(model, method, **params)
    assert tokenreduce.patch_info(model) is None and "forward" not in vars(model)


class Pipeline:
    """Stands in for a diffusers pipeline: not a module, holds the denoiser as ``.unet``."""

    def __init__(self, unet):
        self.unet = unet


def test_pipeline_object_and_api_refusals():
    model = model_for("unet")
    args, kwargs = inputs("unet")
    ref = run(model, args, kwargs)
    pipe = Pipeline(model)
    assert tokenreduce.patch(pipe, "tomesd", ratio=0.5) is pipe
    assert tokenreduce.patch_info(pipe).method.name == "tomesd" and tokenreduce.patch_info(model).family == "unet"
    with pytest.raises(RuntimeError, match="already patched"):
        tokenreduce.patch(model, "todo")
    tokenreduce.unpatch(pipe)
    assert tokenreduce.patch_info(model) is None and torch.equal(run(model, args, kwargs), ref)
    with pytest.raises(ValueError, match="'tome' is not a diffusion method"):
        tokenreduce.patch(model, "tome", r=4)
    with pytest.raises(ValueError, match="unknown diffusion method 'nope'"):
        tokenreduce.patch(model, "nope")
    from models import bert
    with pytest.raises(ValueError, match="'tomesd' is a diffusion method"):
        tokenreduce.patch(bert(), "tomesd", ratio=0.5)


def test_the_core_library_does_not_import_diffusers():
    code = ("import sys, tokenreduce, tokenreduce.api, tokenreduce.diffusion; "
            "tokenreduce.diffusion.make_diffusion_method('tomesd'); assert 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_real_dit_pipeline_with_guidance():
    """diffusers' DiTPipeline (tiny VAE, 2 DDIM steps, guidance 4: the transformer sees the CFG pair as one
    batch of two with float timesteps): patched through the pipeline object, it runs and changes the
    image; unpatched, the image is the original bit for bit."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=8, sample_size=16).eval()
    pipe = diffusers.DiTPipeline(transformer=model_for("dit"), vae=vae, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe(class_labels=[1], num_inference_steps=2, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    ref = sample()
    for method, params in [("tomesd", {"ratio": 0.5}), ("dit-merge", {"ratio": 0.5}), ("todo", {})]:
        with tokenreduce.patched(pipe, method, **params):
            assert tokenreduce.patch_info(pipe).family == "transformer"
            out = sample()
        assert out.shape == ref.shape and (out - ref).abs().max() > 1e-4
    assert torch.equal(sample(), ref)


def test_method_recipe():
    """docs/DIFFUSION.md's recipe: one frozen dataclass plus its registration, then it runs like a built-in
    (here a toy that pools keys/values in 2 x 1 cells: the same as todo with that stride)."""
    from dataclasses import dataclass

    from tokenreduce.diffusion import REGISTRY, register
    from tokenreduce.diffusion.methods import DiffusionMethod, PoolPlan

    @register("toy-pool")
    @dataclass(frozen=True)
    class ToyPool(DiffusionMethod):
        """Pool keys/values over horizontal pairs."""

        def plan(self, metric, grid, keys, stream):
            return PoolPlan(grid, (2, 1))

    try:
        model = model_for("unet")
        args, kwargs = inputs("unet")
        with tokenreduce.patched(model, "todo", stride=(2, 1)):
            ref = run(model, args, kwargs)
        with tokenreduce.patched(model, "toy-pool"):
            assert torch.equal(run(model, args, kwargs), ref)
        with pytest.raises(ValueError, match=r"toy-pool: max_downsample must be in \[1, inf\)"):
            make_diffusion_method("toy-pool", max_downsample=0)
    finally:
        REGISTRY.unregister("toy-pool")
