"""Autocast kernels of the fused loss ops (CPU and CUDA autocast, both namespaces).

PyTorch's autocast runs exp, sum and binary_cross_entropy_with_logits in float32 by casting their
16-bit inputs up. Ours read 16-bit inputs as they are (the kernels already compute in float32) and
ask the kernel for a float32 output (the ops' `out_dtype`): elementwise losses and every reduction
come back float32 without a copy of the inputs, and a float16 sum cannot overflow (the kernels
accumulate in float32/float64 and never round the sum to float16). Outside autocast these kernels
are not on the dispatch path at all (autocast's keys are only active inside torch.autocast).

The backward ops take gradients of the inputs' dtype: autograd converts the float32 output gradient
(a scalar or one value per row for a reduction; a full-size conversion for reduction "none").
Sampling ops are not listed: z keeps its input's dtype, as under PyTorch's autocast.
"""
from __future__ import annotations

import torch

# forward ops with an out_dtype argument (vae_fast/_schemas.py)
LOSS_OPS = ("bernoulli_nll", "gaussian_nll", "gaussian_kl")
_HALF = (torch.float16, torch.bfloat16)
_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_libraries = []  # the registrations live as long as these Library objects


def _kernel(op, device_type: str):
    def autocast(*args, **kwargs):
        x = args[0]
        if x.dtype in _HALF and kwargs.get("out_dtype") is None:
            kwargs["out_dtype"] = torch.float32
        with torch.autocast(device_type, enabled=False):  # below autocast: autograd, then the kernel
            return op(*args, **kwargs)
    return autocast


def register(namespace: str) -> None:
    """Autocast kernels (CPU and CUDA) for the loss ops of `namespace`; once per namespace."""
    lib = torch.library.Library(namespace, "IMPL")
    ns = getattr(torch.ops, namespace)
    for name in LOSS_OPS:
        op = getattr(ns, name).default
        for device_type, key in _KEYS.items():
            lib.impl(name, _kernel(op, device_type), key)
    _libraries.append(lib)
