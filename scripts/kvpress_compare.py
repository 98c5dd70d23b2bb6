"""The KV benchmark's held-out samples through kvpress 0.5.5's own presses: KL and query-agnostic passkey.

Not part of the package or the tests. kvpress pins transformers < 5.3; install it beside ours without
its dependencies: ``pip install --no-deps --target /tmp/kvpress kvpress==0.5.5 "cachetools<6"`` and run
``PYTHONPATH=/tmp/kvpress python scripts/kvpress_compare.py 8 10 1`` (KL windows, passkeys, threads).
The two modules kvpress imports only for presses not used here (datasets, fire) are stubbed, and its
forward hook gets the ``past_key_values``/``cache_position`` arguments transformers 5.24 no longer passes.
"""

from __future__ import annotations

import sys
import time
import types

import torch
from transformers import DynamicCache

from tokenreduce.bench.tasks import default_data_dir
from tokenreduce.kv.bench import kl_rows
from tokenreduce.kv.data import haystack, passkeys, windows
from tokenreduce.llm import load_causal_lm


def import_kvpress():
    """kvpress 0.5.5 imported beside transformers 5.25: unused modules stubbed, its forward hook shimmed."""
    for name, attr in (("datasets", "load_dataset"), ("fire", "Fire")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            setattr(stub, attr, None)
            sys.modules[name] = stub
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    before = dict(ALL_ATTENTION_FUNCTIONS.items())
    import kvpress
    from kvpress.presses import base_press

    # kvpress wraps every registered attention function for AdaKV's head-wise masking, which expects tensor
    # keys; tokenreduce's own attention functions (ragged storage) get their originals back
    for name, func in before.items():
        if getattr(func, "__module__", "").startswith("tokenreduce"):
            ALL_ATTENTION_FUNCTIONS[name] = func

    original = base_press.BasePress.forward_hook

    def hook(self, module, args, kwargs, output):
        kwargs = dict(kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        kwargs["past_key_values"] = cache
        if "cache_position" not in kwargs:
            q_len = kwargs["hidden_states"].shape[1]
            total = cache.layers[module.layer_idx].keys.shape[-2]
            kwargs["cache_position"] = torch.arange(total - q_len, total)
        return original(self, module, args, kwargs, output)

    base_press.BasePress.forward_hook = hook
    return kvpress


PRESSES = {
    "snapkv": lambda kp, r: kp.SnapKVPress(compression_ratio=r),
    "streaming_llm": lambda kp, r: kp.StreamingLLMPress(compression_ratio=r),
    "tova": lambda kp, r: kp.TOVAPress(compression_ratio=r),
    "expected_attention": lambda kp, r: kp.ExpectedAttentionPress(compression_ratio=r),
    "knorm": lambda kp, r: kp.KnormPress(compression_ratio=r),
    "random": lambda kp, r: kp.RandomPress(compression_ratio=r, seed=0),
}


def main(n_kl: int, n_pk: int, threads: int, keep: float = 0.25) -> None:
    torch.set_num_threads(threads)
    kp = import_kvpress()
    model, tok = load_causal_lm()
    text, _ = haystack(default_data_dir())

    @torch.no_grad()
    def prefill(ctx, press):
        cache = DynamicCache(config=model.config)
        if press is None:
            model(input_ids=ctx, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                model(input_ids=ctx, past_key_values=cache, use_cache=True)
        return cache

    @torch.no_grad()
    def feed(cache, ids, start):
        pos = torch.arange(start, start + ids.shape[1])[None]
        return model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True).logits

    def greedy(cache, ids, start, steps=8):
        logits, out, n = feed(cache, ids, start), [], start + ids.shape[1]
        for _ in range(steps):
            t = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(t))
            logits, n = feed(cache, t, n), n + 1
        return tok.decode(out)

    res: dict[str, dict[str, list[float]]] = {}
    t0 = time.time()
    for s in windows(tok, text, n_kl, 2000, 64, seed=10):
        n = s.context.shape[1]
        ref = feed(prefill(s.context, None), s.continuation, n)
        for name, make in PRESSES.items():
            cache = prefill(s.context, make(kp, 1.0 - keep))
            res.setdefault(name, {}).setdefault("kv_ratio", []).append(cache.get_seq_length() / n)
            res[name].setdefault("kl", []).append(float(kl_rows(ref, feed(cache, s.continuation, n)).mean()))
    for s in passkeys(tok, text, n_pk, 2000, seed=11):
        n = s.context.shape[1]
        for name, make in [("full", None), *PRESSES.items()]:
            cache = prefill(s.context, None if make is None else make(kp, 1.0 - keep))
            res.setdefault(name, {}).setdefault("passkey", []).append(float(s.answer in greedy(cache, s.question, n)))
    for name, d in res.items():
        print(name, {k: round(sum(v) / len(v), 4) for k, v in d.items()})
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
