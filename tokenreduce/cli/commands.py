"""The command tree: words on the command line -> module with ``main(argv) -> int``, and a one-line help.

Pure data, so that ``tokenreduce --help`` lists every command without importing torch or any family.
"""

from __future__ import annotations

COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("bench",): ("tokenreduce.cli.encoder_bench",
                 "encoder methods × keep rates: FLOPs, speed-up, quality (text: all-MiniLM-L6-v2; `bench vit`)"),
    ("bench", "kv"): ("tokenreduce.kv.cli", "KV-cache presses on a causal LM (SmolLM2 by default)"),
    ("bench", "vlm"): ("tokenreduce.vlm.cli", "visual-token methods on a LLaVA-1.5-shaped VLM: MACs, prefill, KV"),
    ("bench", "video"): ("tokenreduce.vlm.video.cli", "video methods on a Qwen2.5-VL-7B-shaped VLM; streaming memory"),
    ("bench", "vision"): ("tokenreduce.bench.vision_cli", "vision methods: FLOPs, speed, accuracy table"),
    ("bench", "prompt"): ("tokenreduce.prompt.bench_cli", "prompt compression: rate adherence, speed, retention"),
    ("bench", "diffusion"): ("tokenreduce.diffusion.cli",
                              "diffusion token merging: per-step speed/memory/MACs (SD-1.5, DiT-XL/2), digits quality"),
    ("bench", "deploy"): ("tokenreduce.bench.deploy_bench", "ViT under eager, torch.compile and ONNX Runtime"),
    ("bench", "ruler"): ("tokenreduce.bench.ruler_cli",
                         "RULER-style long-context suite (needles, variable tracking, common words, QA) x KV presses"),
    ("methods",): ("tokenreduce.cli.methods", "every family's methods (encoder, visual, press, prompt, diffusion)"),
    ("compress",): ("tokenreduce.prompt.cli", "compress a prompt / context file"),
    ("visualize",): ("tokenreduce.viz.cli", "PNG of merged / pruned patches for an image"),
    ("sweep",): ("tokenreduce.sweep.cli", "run a resumable sweep from a YAML config"),
    ("results",): ("tokenreduce.sweep.results_cli", "list, filter and export stored sweep results"),
    ("report",): ("tokenreduce.sweep.report_cli", "HTML + PNG report of a sweep's results"),
    ("tune",): ("tokenreduce.cli.tune", "pick method + keep for your encoder (or KV press + keep for a causal LM) "
                "and data within a quality tolerance"),
    ("tokenizers",): ("tokenreduce.tokstats.cli", "tokenizer efficiency: fertility, parity, vocabulary audit"),
}
BENCH_GROUPS = [w[1] for w in COMMANDS if len(w) == 2 and w[0] == "bench"]
BENCH_TARGETS = ["text", "vit"]  # positional targets of `tokenreduce bench` itself
