"""Autograd of the log_density op (vae_fast/iwae.py), the same for every fused namespace (the native
`vae_fast` and the Triton `vae_fast_triton`): its backward op gives the gradients of z, mu, logvar."""
from __future__ import annotations

import torch


def register(namespace: str) -> None:
    ns = getattr(torch.ops, namespace)

    def setup(ctx, inputs, output):
        z, mu, logvar, ctx.a, ctx.b, ctx.reduction, ctx.scale = inputs
        ctx.save_for_backward(z, mu, logvar)

    def backward(ctx, grad):
        z, mu, logvar = ctx.saved_tensors
        params = mu is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        gz, gmu, glv = ns.log_density_backward(grad, z, mu, logvar, ctx.a, ctx.b, ctx.reduction,
                                               ctx.scale, params)
        return (gz, gmu if params and ctx.needs_input_grad[1] else None,
                glv if params and ctx.needs_input_grad[2] else None, None, None, None, None)

    torch.library.register_autograd(f"{namespace}::log_density", backward, setup_context=setup)
    if namespace == "vae_fast":  # the Triton namespace gets this from _ops.register
        from ._ops import _no_double_backward, _reject_forward_ad

        torch.library.register_autograd("vae_fast::log_density_backward",
                                        _no_double_backward("log_density", "cpu/cuda"),
                                        setup_context=lambda ctx, inputs, output: None)
        # the C++ ops' checks (forward AD, torch.func) for this Python autograd of a C++-defined op
        _reject_forward_ad(namespace, ["log_density"], info=torch._library.autograd.Info(backward, setup))
