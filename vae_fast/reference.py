"""Plain-PyTorch ground truth (autograd does the gradients). Every fused kernel is tested
against these functions, and these are tested against torch.distributions.

All loss functions here are elementwise (no reduction) unless they say otherwise; `reduce`
applies the package-wide `reduction` convention.
"""
from __future__ import annotations

import math

import torch

from . import _validate as check

LOG_2PI = math.log(2.0 * math.pi)


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """'none': as is; 'sum'/'mean': over all elements (like torch); 'batchmean': sum / x.shape[0]."""
    check.reduction(reduction)
    if reduction == "none":
        return x
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.mean()
    check.at_least_1d("input", x)
    return x.sum() / x.shape[0]


def rows(x: torch.Tensor) -> torch.Tensor:
    """x as a (batch, features) matrix; an explicit width, as reshape(batch, -1) fails on 0 elements."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def per_sample(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the first (the batch)."""
    return rows(x).sum(1) if x.dim() > 1 else x


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(0.5*logvar) * eps; eps may carry leading sample dims."""
    check.pair("mu", mu, "logvar", logvar)
    check.floating("eps", eps)
    check.broadcastable_to("mu", mu, eps.shape)
    return mu + torch.exp(0.5 * logvar) * eps


def clamp_logvar(logvar: torch.Tensor, logvar_min: float | None = None,
                 logvar_max: float | None = None) -> torch.Tensor:
    """logvar clamped to the bounds (None: no bound) with torch.clamp's gradient (zero outside; on a
    bound itself zero since torch 2.14, as in the kernels): the twin of the `logvar_min`/`logvar_max`
    clamp inside the sampling and KL kernels."""
    if logvar_min is None and logvar_max is None:
        return logvar
    return torch.clamp(logvar, logvar_min, logvar_max)


def gaussian_kl(mu, logvar, prior_mu=None, prior_logvar=None) -> torch.Tensor:
    """Elementwise KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)); N(0, 1) when no prior."""
    check.pair("mu", mu, "logvar", logvar)
    check.prior("prior_mu", prior_mu, "mu", mu)
    check.prior("prior_logvar", prior_logvar, "mu", mu)
    if prior_mu is None and prior_logvar is None:
        return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)
    pmu = torch.zeros_like(mu) if prior_mu is None else prior_mu
    plv = torch.zeros_like(mu) if prior_logvar is None else prior_logvar
    # e^(lv - plv), not e^lv * e^-plv: inf * 0 = NaN at lv = 100, plv = 1e4 (docs/ops.md, Numerics)
    q = _scaled(mu - pmu, plv)
    return 0.5 * (plv - logvar + torch.exp(logvar - plv) + q * q - 1.0)


def _scaled(d: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """d * exp(-v/2), whose square is d^2 * exp(-v) without its 0 * inf = NaN where d == 0 and
    exp(-v) overflows: there it is an exact 0 with zero gradients, for any v (the exp is fed 0)."""
    zero = d == 0
    return torch.where(zero, 0.0, d) * torch.exp(torch.where(zero, 0.0, -0.5 * v))


def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise -log Bernoulli(target; sigmoid(logits)), stable for any logit. With weight /
    pos_weight (broadcast to logits), F.binary_cross_entropy_with_logits's
    weight * ((1 - t) x + (1 + (pos_weight - 1) t) softplus(-x))."""
    check.pair("logits", logits, "target", target)
    nll = _softplus(logits) - logits * target
    if pos_weight is not None:  # softplus(-x) = softplus(x) - x
        nll = nll + (pos_weight - 1.0) * target * (_softplus(logits) - logits)
    return nll if weight is None else nll * weight


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) for any x, with the exact derivative sigmoid(x) everywhere, x = 0 included: each
    branch is smooth (max(x, 0) and |x| would give autograd a subgradient at 0), and each is fed an
    input clamped to its own side, so the unused branch never overflows into a NaN gradient."""
    pos = x > 0
    xp, xn = torch.where(pos, x, 0.0), torch.where(pos, 0.0, x)  # not clamp: its gradient is 0 at 0
    return torch.where(pos, xp + torch.log1p(torch.exp(-xp)), torch.log1p(torch.exp(xn)))


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise -log N(target; mean, e^logvar), including the 0.5*log(2*pi) term."""
    check.floating("mean", mean)
    check.floating("target", target)
    check.same_shape("target", target, "mean", mean)
    check.same_device("target", target, "mean", mean)
    check.floating("logvar", logvar)
    check.prior("logvar", logvar, "target", target)
    q = _scaled(target - mean, logvar)  # (target - mean)^2 e^-logvar is q^2, finite at target == mean
    return 0.5 * (LOG_2PI + logvar + q * q)


def negative_elbo(logits, target, mu, logvar, *, beta=1.0, free_bits=0.0, reduction="none"):
    """-ELBO of a Bernoulli-decoder VAE: sum of bernoulli_nll + beta * sum of gaussian_kl per sample.

    free_bits > 0 applies the free-bits objective (Kingma et al. 2016): each latent dimension's KL,
    averaged over the batch, counts at least `free_bits` nats. It is a batch-level objective, so it
    needs a reduction other than 'none'.
    """
    check.reduction(reduction, ("none", "sum", "batchmean", "mean"))
    check.at_least_1d("logits", logits)
    check.at_least_1d("mu", mu)
    beta = check.non_negative_or_tensor("beta", beta)
    free_bits = check.non_negative("free_bits", free_bits)
    if mu.shape[0] != logits.shape[0]:
        raise ValueError(f"mu: expected batch size {logits.shape[0]} (of logits), got {mu.shape[0]}")
    rec = per_sample(bernoulli_nll(logits, target))
    kl = gaussian_kl(mu, logvar)
    if free_bits > 0:
        if reduction == "none":
            raise ValueError("free_bits: needs reduction 'sum', 'mean' or 'batchmean', got 'none'")
        batch = mu.shape[0]
        kl_dims = torch.clamp(rows(kl).mean(0), min=free_bits).sum()
        total = rec.sum() + beta * batch * kl_dims
        return total if reduction == "sum" else total / batch
    per = rec + beta * per_sample(kl)
    return per if reduction == "none" else reduce(per, "batchmean" if reduction == "mean" else reduction)


@torch.no_grad()
def log_marginal_likelihood(model, x: torch.Tensor, num_samples: int = 100, *, chunk: int = 50,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance-sampled log p(x) per sample with q(z|x) as proposal (Burda et al. 2016):
    logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K. Shape: (batch,)."""
    check.positive_int("num_samples", num_samples)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    terms = []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        z = mu + std * eps
        log_px_z = -per_sample_k(model.reconstruction_nll(model.decode(z.reshape(-1, mu.shape[-1])),
                                                          x.repeat(k, *([1] * (x.dim() - 1)))), k)
        log_pz = -0.5 * (z * z + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps * eps + LOG_2PI + logvar).sum(-1)
        terms.append(log_px_z + log_pz - log_qz)
    w = torch.cat(terms, 0)
    return torch.logsumexp(w, 0) - math.log(num_samples)


def per_sample_k(nll: torch.Tensor, k: int) -> torch.Tensor:
    """(k*batch, ...) elementwise NLL, or (k*batch,) per-sample NLL -> (k, batch) per-sample sums."""
    if nll.dim() == 1:
        return nll.reshape(k, -1)
    return nll.reshape(k, -1, *nll.shape[1:]).flatten(2).sum(-1)



# ------------------------------------------------------------------ multi-sample objectives
def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; 0, 1)."""
    check.floating("z", z)
    return -0.5 * (z * z + LOG_2PI)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, e^logvar); mu and logvar broadcast over z's leading sample dims."""
    check.floating("z", z)
    check.pair("mu", mu, "logvar", logvar)
    check.broadcastable_to("mu", mu, z.shape)
    q = _scaled(z - mu, logvar)  # (z - mu)^2 e^-logvar is q^2, finite at z == mu
    return -0.5 * (LOG_2PI + logvar + q * q)


def per_datapoint(x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Sum over the last `event_dims` dims: (K, B, ...) -> (K, B) for a batch of event_dims + 1 dims."""
    return x.flatten(x.dim() - event_dims).sum(-1) if event_dims > 0 else x


IWAE_ESTIMATORS = ("iwae", "stl", "dreg")


def negative_iwae_bound(log_px_given_z, z, mu, logvar, *, estimator="iwae", reduction="batchmean"):
    """Minus the importance-weighted bound (Burda et al. 2016) per datapoint, reduced:
    -(logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K), log_px_given_z (K, B),
    z (K, *mu.shape). Gradients by `estimator`: "iwae" (plain autograd); "stl" (Roeder et al. 2017:
    log q with mu, logvar cut from the graph); "dreg" (Tucker et al. 2019: as STL, and every
    gradient reaching z scaled by the normalised weights, so that the encoder's path derivative is
    weighted by their squares while the decoder keeps them)."""
    if estimator != "iwae":
        mu, logvar = mu.detach(), logvar.detach()
    log_w = log_px_given_z + per_datapoint(
        standard_normal_log_prob(z) - gaussian_log_prob(z, mu, logvar), mu.dim() - 1)
    return iwae_from_log_weights(log_w, z, estimator, reduction)


def iwae_from_log_weights(log_w: torch.Tensor, z: torch.Tensor, estimator: str, reduction: str):
    """The tail of negative_iwae_bound, shared with the fused path: log_w (K, B) -> the reduced
    -(logmeanexp_k log_w), and DReG's hook on z (z (K, B, ...))."""
    if estimator == "dreg" and z.requires_grad and torch.is_grad_enabled():
        weights = torch.softmax(log_w.detach(), 0).reshape(*log_w.shape, *([1] * (z.dim() - 2)))
        z.register_hook(lambda g: g * weights)
    per = -(torch.logsumexp(log_w, 0) - math.log(log_w.shape[0]))
    return reduce(per, "batchmean" if reduction == "mean" else reduction)
