"""Output shapes of the ops, and the fake (meta) kernels of the native ops built from them.
The Triton ops are their own fakes (torch.library.triton_op); both must agree with these."""
from __future__ import annotations

import torch

from ._schemas import NONE, ROWS


def reduced(x: torch.Tensor, reduction: int):
    if reduction == NONE:
        return x.shape
    if reduction == ROWS:
        return (x.shape[0],) if x.dim() else (1,)
    return ()


def new(x: torch.Tensor, shape) -> torch.Tensor:
    """A contiguous tensor like x (the ops always return contiguous outputs)."""
    return torch.empty(shape, dtype=x.dtype, device=x.device)


def empty(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=x.dtype, device=x.device)


FAKES = {
    "reparameterize": lambda mu, logvar, philox, S: new(mu, (S, *mu.shape)),
    "reparameterize_backward": lambda grad_z, logvar, philox, S: new(logvar, logvar.shape),
    "sample_and_kl": lambda mu, logvar, philox, S: (new(mu, (S, *mu.shape)), new(mu, reduced(mu, ROWS))),
    "sample_and_kl_backward":
        lambda grad_z, grad_kl, mu, logvar, philox, S: (new(mu, mu.shape), new(logvar, logvar.shape)),
    "gaussian_kl": lambda mu, logvar, pmu, plv, reduction, scale: new(mu, reduced(mu, reduction)),
    "gaussian_kl_backward": lambda grad, mu, logvar, pmu, plv, reduction, scale: (
        new(mu, mu.shape), new(logvar, logvar.shape), new(mu, mu.shape) if plv is not None else empty(mu)),
    "bernoulli_nll": lambda logits, target, reduction, scale: new(logits, reduced(logits, reduction)),
    "bernoulli_nll_backward": lambda grad, logits, target, reduction, scale, target_grad: (
        new(logits, logits.shape), new(target, target.shape) if target_grad else empty(logits)),
    "gaussian_nll": lambda mean, logvar, target, reduction, scale: new(mean, reduced(mean, reduction)),
    "gaussian_nll_backward":
        lambda grad, mean, logvar, target, reduction, scale: (new(mean, mean.shape), new(logvar, logvar.shape)),
    "log_density": lambda z, mu, logvar, a, b, reduction, scale: new(z, reduced(z, reduction)),
    "log_density_backward": lambda grad, z, mu, logvar, a, b, reduction, scale, params_grad: (
        new(z, z.shape), *((new(mu, mu.shape), new(mu, mu.shape)) if params_grad and mu is not None
                           else (empty(z), empty(z)))),
}
