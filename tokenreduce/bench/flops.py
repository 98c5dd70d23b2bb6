"""What PyTorch actually executes, counted: the check on every analytic cost formula.

The analytic counts live with the library (:mod:`tokenreduce.encoder.cost`, the VLM and KV cost
functions); tests compare them with :func:`measured_flops` on every matmul.
"""

from __future__ import annotations

import torch


def measured_flops(fn, *args, **kwargs) -> int:
    """FLOPs PyTorch actually executes in ``fn`` (``FlopCounterMode``), including CPU SDPA.

    PyTorch's counter has no formula for the CPU flash-attention kernel; we register the same
    formula it uses for the GPU kernels so CPU runs are counted too.
    """
    from torch.utils import flop_counter as fcm

    def cpu_sdpa(query_shape, key_shape, value_shape, *a, **k):  # same formula as the GPU kernels
        return fcm.sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {op: cpu_sdpa} if op is not None else {}
    counter = fcm.FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
