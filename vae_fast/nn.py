"""`nn.Module` losses with the semantics of their torch counterparts, thin wrappers over the fused
functional API (no new math), and the KL annealing schedules of Fu et al. 2019.

    loss_fn = vae_fast.nn.ELBOLoss("bernoulli", beta=1.0)
    loss = loss_fn(logits, x, mu, logvar, beta=beta_tensor)   # a tensor beta never recompiles
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _validate as check
from . import functional as F

__all__ = [
    "BernoulliNLLLoss", "GaussianNLLLoss", "GaussianLogvarNLLLoss", "KLDivergence", "ELBOLoss",
    "gaussian_nll_loss", "kl_annealing",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class BernoulliNLLLoss(torch.nn.Module):
    """nn.BCEWithLogitsLoss over the fused bernoulli_nll: same values, gradients and broadcasting of
    `weight` and `pos_weight` (buffers, as in torch), plus reduction="batchmean"."""

    def __init__(self, weight: Tensor | None = None, pos_weight: Tensor | None = None,
                 reduction: str = "mean", *, backend: str | None = None):
        super().__init__()
        self.reduction = check.reduction(reduction)
        self.backend = backend
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.bernoulli_nll(input, target, self.weight, pos_weight=self.pos_weight,
                               reduction=self.reduction, backend=self.backend)


class _LogClamp(torch.autograd.Function):
    """log(clamp(var, min=eps)) with F.gaussian_nll_loss's gradient: torch clamps var in place under
    no_grad, so the clamp passes the gradient through unchanged (d/dvar = 1 / clamped var)."""

    @staticmethod
    def forward(ctx, var, eps):
        clamped = var.clamp(min=eps)
        ctx.save_for_backward(clamped)
        return clamped.log()

    @staticmethod
    def backward(ctx, grad):
        (clamped,) = ctx.saved_tensors
        return grad / clamped, None


def _var_shape(input: Tensor, var: Tensor) -> Tensor:
    """F.gaussian_nll_loss's shape rules for var: input's shape, one dim short (unsqueezed), or
    one dim of size 1 where input's differs."""
    if var.shape == input.shape:
        return var
    if input.shape[:-1] == var.shape:
        return var.unsqueeze(-1)
    if input.dim() == var.dim() and sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1:
        return var
    raise ValueError(f"var: expected the shape of input {tuple(input.shape)}, that shape without its last dim, "
                     f"or one dim of size 1 where they differ, got {tuple(var.shape)}")


def gaussian_nll_loss(input: Tensor, target: Tensor, var: Tensor | float, full: bool = False,
                      eps: float = 1e-6, reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """F.gaussian_nll_loss (same signature, values and gradients, var's clamp at eps included) on
    the fused gaussian_nll with logvar = log(clamp(var, eps)). full=False drops 0.5*log(2*pi),
    which the kernel adds, by subtracting it after the reduction."""
    check.floating("input", input)
    check.reduction(reduction, ("none", "sum", "mean"))
    if isinstance(var, (int, float)) and not isinstance(var, bool):
        if var < 0:
            raise ValueError(f"var: expected non-negative entries, got {var}")
        var = torch.full_like(input, float(var))
    check.floating("var", var)
    check.same_device("input", input, "var", var)
    if torch.any(var < 0):  # as torch: a check that reads the values (a host sync on a GPU)
        raise ValueError("var: expected non-negative entries, got negative entries")
    var = _var_shape(input, var)
    loss = F.gaussian_nll(input, _LogClamp.apply(var, eps), target, reduction=reduction, backend=backend)
    if full:
        return loss
    n = input.numel() if reduction == "sum" else 1
    return loss - _HALF_LOG_2PI * n


class GaussianNLLLoss(torch.nn.Module):
    """nn.GaussianNLLLoss (full, eps, reduction; forward(input, target, var)) on the fused kernel."""

    def __init__(self, *, full: bool = False, eps: float = 1e-6, reduction: str = "mean",
                 backend: str | None = None):
        super().__init__()
        self.full, self.eps = full, eps
        self.reduction = check.reduction(reduction, ("none", "sum", "mean"))
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor, var: Tensor | float) -> Tensor:
        return gaussian_nll_loss(input, target, var, self.full, self.eps, self.reduction, backend=self.backend)


class GaussianLogvarNLLLoss(torch.nn.Module):
    """The log-variance form: forward(mean, logvar, target) = vae_fast.gaussian_nll (with the
    0.5*log(2*pi) term; logvar broadcasts to mean)."""

    def __init__(self, reduction: str = "mean", *, backend: str | None = None):
        super().__init__()
        self.reduction = check.reduction(reduction)
        self.backend = backend

    def forward(self, mean: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
        return F.gaussian_nll(mean, logvar, target, reduction=self.reduction, backend=self.backend)


class KLDivergence(torch.nn.Module):
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)), N(0, I) without a prior:
    vae_fast.gaussian_kl (default reduction "sum", as there)."""

    def __init__(self, reduction: str = "sum", *, backend: str | None = None):
        super().__init__()
        self.reduction = check.reduction(reduction)
        self.backend = backend

    def forward(self, mu: Tensor, logvar: Tensor, prior_mu: Tensor | None = None,
                prior_logvar: Tensor | None = None) -> Tensor:
        return F.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction=self.reduction, backend=self.backend)


class ELBOLoss(torch.nn.Module):
    """Negative ELBO: reconstruction NLL + beta * KL(q(z|x) || N(0, I)), per datapoint.

    forward(recon, target, mu, logvar, beta=None): `recon` is the decoder's logits ("bernoulli") or
    a (mean, logvar) pair ("gaussian"); `beta` overrides the constructor's, a float or a tensor (a
    tensor changes value without recompiling under torch.compile). free_bits > 0: each latent dim's
    batch-mean KL counts at least free_bits nats (as vae_fast.negative_elbo). reduction: "none"
    (per sample), "sum", "batchmean" / "mean" (per sample, averaged)."""

    def __init__(self, decoder: str = "bernoulli", beta: float | Tensor = 1.0, free_bits: float = 0.0,
                 reduction: str = "batchmean", *, backend: str | None = None):
        super().__init__()
        if decoder not in ("bernoulli", "gaussian"):
            raise ValueError(f"decoder: expected 'bernoulli' or 'gaussian', got {decoder!r}")
        if free_bits < 0:
            raise ValueError(f"free_bits: expected >= 0, got {free_bits}")
        if free_bits > 0 and reduction == "none":
            raise ValueError("free_bits: needs reduction 'sum', 'mean' or 'batchmean', got 'none'")
        self.decoder, self.beta, self.free_bits = decoder, beta, free_bits
        self.reduction = check.reduction(reduction)
        self.backend = backend

    def forward(self, recon, target: Tensor, mu: Tensor, logvar: Tensor,
                beta: float | Tensor | None = None) -> Tensor:
        beta = self.beta if beta is None else beta
        if self.decoder == "bernoulli" and not isinstance(beta, Tensor):  # the fused one-call path
            return F.negative_elbo(recon, target, mu, logvar, beta=beta, free_bits=self.free_bits,
                                   reduction=self.reduction, backend=self.backend)
        check.at_least_1d("mu", mu)
        batch = mu.shape[0]
        if self.reduction == "none":
            rec = self._nll(recon, target, per_sample=True)
            return rec + beta * F.gaussian_kl(mu, logvar, reduction="none",
                                              backend=self.backend).reshape(batch, -1).sum(1)
        rec = self._nll(recon, target, per_sample=False)
        if self.free_bits > 0:
            kl_dims = F.gaussian_kl(mu, logvar, reduction="none", backend=self.backend).reshape(batch, -1).mean(0)
            kl = batch * kl_dims.clamp(min=self.free_bits).sum()
        else:
            kl = F.gaussian_kl(mu, logvar, reduction="sum", backend=self.backend)
        total = rec + beta * kl  # a tensor beta: a graph input, not a constant
        return total if self.reduction == "sum" else total / batch

    def _nll(self, recon, target, per_sample: bool) -> Tensor:
        if self.decoder == "bernoulli":
            if per_sample:
                return F.bernoulli_nll_per_sample(recon, target, backend=self.backend)
            return F.bernoulli_nll(recon, target, reduction="sum", backend=self.backend)
        if not (isinstance(recon, (tuple, list)) and len(recon) == 2):
            raise TypeError(f"recon: expected a (mean, logvar) pair for decoder='gaussian', got "
                            f"{type(recon).__name__}")
        mean, lv = recon
        if per_sample:
            return F.gaussian_nll_per_sample(mean, lv, target, backend=self.backend)
        return F.gaussian_nll(mean, lv, target, reduction="sum", backend=self.backend)


def kl_annealing(step, kind: str = "linear", *, total_steps: int, n_cycles: int = 4, ratio: float = 0.5,
                 start: float = 0.0, stop: float = 1.0):
    """The KL weight beta at `step` (an int, or a tensor: then a tensor, so a compiled step sees no
    new constant).

    "cyclical" (Fu et al. 2019, "Cyclical Annealing Schedule"): `total_steps` split into `n_cycles`
    cycles; in each, beta rises linearly from `start` to `stop` over the first `ratio` of the cycle,
    then stays at `stop`. "linear": one such cycle (a warm-up over ratio * total_steps). From
    total_steps on: `stop`."""
    if kind not in ("linear", "cyclical"):
        raise ValueError(f"kind: expected 'linear' or 'cyclical', got {kind!r}")
    check.positive_int("total_steps", total_steps)
    cycles = 1 if kind == "linear" else check.positive_int("n_cycles", n_cycles)
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a float in (0, 1], got {ratio}")
    period = total_steps / cycles
    if isinstance(step, Tensor):
        tau = torch.remainder(step, period) / (period * ratio)
        beta = start + (stop - start) * tau.clamp(max=1.0)
        return torch.where(step >= total_steps, torch.full_like(beta, stop), beta)
    if step >= total_steps:
        return float(stop)
    tau = (step % period) / (period * ratio)
    return start + (stop - start) * min(1.0, tau)
