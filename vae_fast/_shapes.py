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


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the loss kernels walk (csrc/args.h walk_format, triton/ops.py): a channels-last x
    in its own memory order, so that its elementwise outputs and gradients are channels-last too;
    anything else row-major."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def new(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """A tensor like x: contiguous, or in x's memory_format when it has x's shape (elementwise
    outputs and gradients of the loss ops); `dtype`: a forward op's out_dtype (None: x's)."""
    fmt = memory_format(x) if tuple(shape) == tuple(x.shape) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def sample_out(x: torch.Tensor, S: int) -> torch.Tensor:
    """The z of the sampling ops, (S, *x.shape), each sample in x's memory_format, so that a
    channels-last mu gives a channels-last z without a copy (csrc/args.h sample_out): the kernels
    see sample s at flat offset s * x.numel(), as for a row-major x."""
    fmt = memory_format(x)
    if fmt == torch.contiguous_format:
        return torch.empty((S, *x.shape), dtype=x.dtype, device=x.device)
    stacked = torch.empty((S * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
    return stacked.view(S, *x.shape)


def in_sample_layout(t: torch.Tensor, x: torch.Tensor, S: int) -> torch.Tensor:
    """grad_z of a sampling backward op in sample_out's layout (a copy only if it is not)."""
    fmt = memory_format(x)
    if fmt == torch.contiguous_format:
        return t.contiguous()
    if (S == 1 or t.stride(0) == x.numel()) and t.select(0, 0).is_contiguous(memory_format=fmt):
        return t
    return sample_out(x, S).copy_(t)


def sum_samples(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t.sum(0) in x's memory_format: grad_mu of reparameterize with several samples (a channels-last
    mu gets a channels-last gradient; torch's sum(0) would not), summed in memory order (csrc/args.h)."""
    if memory_format(x) == torch.contiguous_format:
        return t.sum(0)
    d = x.dim()  # t: (S, batch, channels, *spatial)
    return t.permute(0, 1, *range(3, d + 1), 2).sum(0).permute(0, d - 1, *range(1, d - 1))


def empty(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=x.dtype, device=x.device)


FAKES = {
    "reparameterize": lambda mu, logvar, philox, S, lo=None, hi=None: sample_out(mu, S),
    "reparameterize_backward": lambda grad_z, logvar, philox, S, lo=None, hi=None: new(logvar, logvar.shape),
    "sample_and_kl": lambda mu, logvar, philox, S, lo=None, hi=None: (
        sample_out(mu, S), new(mu, reduced(mu, ROWS))),
    # backward ops: every gradient in the first input's layout, the one the kernels walk
    "sample_and_kl_backward":
        lambda grad_z, grad_kl, mu, logvar, philox, S, lo=None, hi=None: (new(mu, mu.shape), new(mu, logvar.shape)),
    "gaussian_kl": lambda mu, logvar, pmu, plv, reduction, scale, out_dtype=None, lo=None, hi=None:
        new(mu, reduced(mu, reduction), out_dtype),
    "gaussian_kl_backward": lambda grad, mu, logvar, pmu, plv, reduction, scale, lo=None, hi=None: (
        new(mu, mu.shape), new(mu, logvar.shape), new(mu, mu.shape) if plv is not None else empty(mu)),
    "bernoulli_nll": lambda logits, target, reduction, scale, weight=None, pos_weight=None, out_dtype=None:
        new(logits, reduced(logits, reduction), out_dtype),
    "bernoulli_nll_backward":
        lambda grad, logits, target, reduction, scale, target_grad, weight=None, pos_weight=None: (
            new(logits, logits.shape), new(logits, target.shape) if target_grad else empty(logits)),
    "gaussian_nll": lambda mean, logvar, target, reduction, scale, out_dtype=None:
        new(mean, reduced(mean, reduction), out_dtype),
    "gaussian_nll_backward":
        lambda grad, mean, logvar, target, reduction, scale: (new(mean, mean.shape), new(mean, logvar.shape)),
    "log_density": lambda z, mu, logvar, a, b, reduction, scale: new(z, reduced(z, reduction)),
    "log_density_backward": lambda grad, z, mu, logvar, a, b, reduction, scale, params_grad: (
        new(z, z.shape), *((new(mu, mu.shape), new(mu, mu.shape)) if params_grad and mu is not None
                           else (empty(z), empty(z)))),
}
