"""Autocast kernels of the fused loss ops (CPU and CUDA autocast, both namespaces).

PyTorch's autocast runs exp, sum and binary_cross_entropy_with_logits in float32 by casting their
16-bit inputs up. Ours read 16-bit inputs as they are (the kernels already compute in float32) and
ask the kernel for a float32 output (the ops' `out_dtype`): elementwise losses and every reduction
come back float32 without a copy of the inputs, and a float16 sum cannot overflow (the kernels
accumulate in float32/float64 and never round the sum to float16). Outside autocast these kernels
are not on the dispatch path at all (autocast's keys are only active inside torch.autocast).

The backward ops take gradients of the inputs' dtype: autograd converts the float32 output gradient
(a scalar or one value per row for a reduction; a full-size conversion for reduction "none").
reparameterize is not listed: z keeps its input's dtype, as under PyTorch's autocast. sample_and_kl
returns z and the per-sample KL from one kernel that writes both in the input dtype; under autocast
with 16-bit inputs it runs as reparameterize (the same eps, so the same z bit for bit) plus
gaussian_kl with a float32 output: two launches reading mu and logvar twice, and two backward ops,
instead of one each (no kernel writes z and the KL in different dtypes).

The reference backend (plain PyTorch) gets the same result dtypes from vae_fast.functional, which
runs it on float32 copies of 16-bit inputs under autocast (`reference_inputs`).
"""
from __future__ import annotations

import torch

from . import reference
from ._schemas import ROWS

# forward ops with an out_dtype argument (vae_fast/_schemas.py)
LOSS_OPS = ("bernoulli_nll", "gaussian_nll", "gaussian_kl")
_HALF = (torch.float16, torch.bfloat16)
_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_libraries = []  # the registrations live as long as these Library objects


def _kernel(op, device_type: str):
    # the dispatcher passes out_dtype by position when a later argument (logvar_min, ...) is given
    at = [a.name for a in op._schema.arguments].index("out_dtype")

    def autocast(*args, **kwargs):
        x = args[0]
        if x.dtype in _HALF:
            if len(args) > at:
                if args[at] is None:
                    args = (*args[:at], torch.float32, *args[at + 1:])
            elif kwargs.get("out_dtype") is None:
                kwargs["out_dtype"] = torch.float32
        with torch.autocast(device_type, enabled=False):  # below autocast: autograd, then the kernel
            return op(*args, **kwargs)
    return autocast


def _sample_and_kl_kernel(ns, device_type: str):
    def autocast(mu, logvar, philox, num_samples, logvar_min=None, logvar_max=None):
        with torch.autocast(device_type, enabled=False):
            if mu.dtype not in _HALF:
                return ns.sample_and_kl(mu, logvar, philox, num_samples, logvar_min, logvar_max)
            z = ns.reparameterize(mu, logvar, philox, num_samples, logvar_min, logvar_max)
            return z, ns.gaussian_kl(mu, logvar, None, None, ROWS, 1.0, torch.float32, logvar_min, logvar_max)
    return autocast


def register(namespace: str) -> None:
    """Autocast kernels (CPU and CUDA) for the loss ops of `namespace`; once per namespace."""
    lib = torch.library.Library(namespace, "IMPL")
    ns = getattr(torch.ops, namespace)
    for device_type, key in _KEYS.items():
        for name in LOSS_OPS:
            lib.impl(name, _kernel(getattr(ns, name).default, device_type), key)
        lib.impl("sample_and_kl", _sample_and_kl_kernel(ns, device_type), key)
    _libraries.append(lib)


def _enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled raises for "meta" (no autocast there); not is_autocast_available,
    which Dynamo cannot trace before torch 2.14."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def loss_weights(logits: torch.Tensor, *weights):
    """bernoulli_nll's weight / pos_weight under autocast with 16-bit logits: in the logits' dtype
    (rounded to 16 bits; they are small, broadcast tensors), so that type promotion does not copy
    the logits and target up to float32 (the usual case: float32 buffers of BernoulliNLLLoss)."""
    if logits.dtype not in _HALF or not _enabled(logits.device.type):
        return weights
    return tuple(None if w is None else w.to(logits.dtype) for w in weights)


def reference_sample(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reference backend's z, in the inputs' dtype under autocast too, as the fused kernels'
    (CUDA autocast runs exp in float32, which would promote z)."""
    if not _enabled(mu.device.type):
        return reference.reparameterize(mu, logvar, eps)
    with torch.autocast(mu.device.type, enabled=False):
        return reference.reparameterize(mu, logvar, eps)


def reference_inputs(device: torch.device, *tensors):
    """The reference backend's inputs under autocast: float32 copies of 16-bit tensors (PyTorch's
    own float32 policy for exp/sum/BCE), so that its results have the fused backends' dtypes."""
    if not _enabled(device.type):
        return tensors
    return tuple(t.float() if t is not None and t.dtype in _HALF else t for t in tensors)
