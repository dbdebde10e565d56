"""Multi-sample objectives: fused latent log-densities and the importance-weighted bound (IWAE,
Burda et al. 2016) with the STL (Roeder et al. 2017) and DReG (Tucker et al. 2019) gradients.

One op, `log_density`, computes prior_coef * log N(z; 0, 1) + q_coef * log N(z; mu, e^logvar) per
element and reduces it, with z carrying a leading sample dim K that mu and logvar broadcast over
in the kernel (never materialised K times). The bound needs log p(z) - log q(z|x) per (k, b): one
pass over z (coefficients 1 and -1). Ground truth: vae_fast.reference.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _validate as check
from . import functional, reference
from ._backends import resolve
from ._schemas import NONE, ROWS, SUM
from .functional import _promote

ESTIMATORS = reference.IWAE_ESTIMATORS
# "per_sample": sum over the event dims, one value per (sample, datapoint): (K, B), or (B,) without K
LOG_PROB_REDUCTIONS = ("per_sample",) + check.REDUCTIONS


def _sample_dims(name: str, z: Tensor, num_samples, event_shape) -> int:
    """1 when z has a leading sample dim (num_samples given), else 0; checks z's shape is
    (num_samples, *event_shape) or event_shape (event_shape None: any)."""
    if num_samples is None:
        expected = None if event_shape is None else tuple(event_shape)
    else:
        check.positive_int("num_samples", num_samples)
        if z.dim() < 1:
            raise ValueError(f"{name}: expected a leading dim of num_samples={num_samples}, got a 0-d tensor")
        expected = (num_samples, *(z.shape[1:] if event_shape is None else event_shape))
    if expected is not None and tuple(z.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected}"
                         f"{' (num_samples, *mu.shape)' if num_samples is not None else ' (of mu)'}, "
                         f"got {tuple(z.shape)}")
    return 0 if num_samples is None else 1


def _log_density(z, mu, logvar, a: float, b: float, sample_dims: int, reduction: str, backend):
    """a * log N(z; 0, 1) + b * log N(z; mu, e^logvar) (b = 0 and no mu: the prior alone), reduced.
    z is (K, *event) with sample_dims 1, else event; mu and logvar have the event shape, whose first
    dim is the batch B. "per_sample" sums each (k, b)'s event: (K, B) or (B,)."""
    event = z.shape[sample_dims:]
    if reduction in ("per_sample", "batchmean") and len(event) == 0:
        raise ValueError(f"reduction {reduction!r}: needs a batch dim, got z of shape {tuple(z.shape)}"
                         f"{' with num_samples' if sample_dims else ''}")
    K = z.shape[0] if sample_dims else 1
    B = event[0] if len(event) else 1
    ns = resolve(backend, z.device)
    if mu is not None:
        z, mu, logvar = _promote(z, mu, logvar)
    if ns is None or z.numel() == 0:
        val = a * reference.standard_normal_log_prob(z)
        if mu is not None:
            val = val + b * reference.gaussian_log_prob(z, mu, logvar)
        if reduction == "per_sample":
            return reference.per_datapoint(val, len(event) - 1)
        if reduction == "batchmean":
            return val.sum() / (K * B)
        return reference.reduce(val, reduction)
    R = K * B
    C = z.numel() // R
    if reduction == "per_sample":
        code, scale = ROWS, 1.0
    elif reduction == "none":
        code, scale = NONE, 1.0
    else:
        code = SUM
        scale = {"sum": 1.0, "mean": 1.0 / z.numel(), "batchmean": 1.0 / R}[reduction]
    out = ns.log_density(z.reshape(R, C), None if mu is None else mu.reshape(B, C),
                         None if mu is None else logvar.reshape(B, C), a, b, code, scale)
    if code == ROWS:
        return out.reshape(z.shape[:sample_dims + 1])
    return out.reshape(z.shape) if code == NONE else out


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor, *, num_samples: int | None = None,
                      reduction: str = "per_sample", backend: str | None = None) -> Tensor:
    """log N(z; mu, e^logvar) of a diagonal Gaussian (log q(z|x) of a VAE encoder).

    z: mu's shape, or (num_samples, *mu.shape) when num_samples is given (mu and logvar broadcast
    over the samples in the kernel). reduction: "per_sample" (the default: summed over all dims of
    mu but the first, one value per sample and datapoint: (num_samples, B) or (B,)), "none", "sum",
    "mean" (over all elements), "batchmean" (the per-sample values averaged over samples and batch).
    """
    check.floating("z", z)
    check.pair("mu", mu, "logvar", logvar)
    check.same_device("mu", mu, "z", z)
    check.reduction(reduction, LOG_PROB_REDUCTIONS)
    sample_dims = _sample_dims("z", z, num_samples, mu.shape)
    return _log_density(z, mu, logvar, 0.0, 1.0, sample_dims, reduction, backend)


def standard_normal_log_prob(z: Tensor, *, num_samples: int | None = None,
                             reduction: str = "per_sample", backend: str | None = None) -> Tensor:
    """log N(z; 0, I) (the prior log p(z)). z: (num_samples, B, ...) when num_samples is given,
    else (B, ...); reductions as in gaussian_log_prob."""
    check.floating("z", z)
    check.reduction(reduction, LOG_PROB_REDUCTIONS)
    sample_dims = _sample_dims("z", z, num_samples, None)
    return _log_density(z, None, None, 1.0, 0.0, sample_dims, reduction, backend)


def negative_iwae_bound(log_px_given_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *,
                        estimator: str = "iwae", reduction: str = "batchmean",
                        backend: str | None = None) -> Tensor:
    """Minus the importance-weighted bound, per datapoint then reduced:
    -log (1/K) sum_k exp(log p(x|z_k) + log p(z_k) - log q(z_k|x)) (a stable logsumexp).

    log_px_given_z: (K, B); z: (K, *mu.shape), e.g. reparameterize(mu, logvar, num_samples=K).
    log p(z) - log q(z|x) is one fused pass over z. estimator: "iwae" (plain gradients), "stl"
    (log q with mu, logvar cut from the graph: only the path derivative through z), "dreg" (as
    STL, and a hook on z scales every gradient reaching z by the normalised importance weights; so
    the encoder's path derivative gets their squares while the decoder keeps the weights). The
    hook scales all of z's gradient: do not reuse z in another loss of the same backward.
    reduction: "none" (B,), "sum", "mean"/"batchmean" (over the batch). K = 1 with "iwae" is the
    single-sample negative ELBO with a sampled KL."""
    check.floating("log_px_given_z", log_px_given_z)
    check.floating("z", z)
    check.pair("mu", mu, "logvar", logvar)
    check.at_least_1d("mu", mu)
    check.same_device("mu", mu, "z", z)
    check.same_device("mu", mu, "log_px_given_z", log_px_given_z)
    check.reduction(reduction)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
    if log_px_given_z.dim() != 2 or log_px_given_z.shape[1] != mu.shape[0]:
        raise ValueError(f"log_px_given_z: expected shape (K, {mu.shape[0]}) (samples, batch of mu), "
                         f"got {tuple(log_px_given_z.shape)}")
    K = log_px_given_z.shape[0]
    if K == 0:
        raise ValueError("log_px_given_z: expected at least one sample (K >= 1), got K = 0")
    _sample_dims("z", z, K, mu.shape)
    ns = resolve(backend, z.device)
    if ns is None:
        z, mu, logvar = _promote(z, mu, logvar)
        return reference.negative_iwae_bound(log_px_given_z, z, mu, logvar, estimator=estimator,
                                             reduction=reduction)
    if estimator != "iwae":
        mu, logvar = mu.detach(), logvar.detach()
    log_ratio = _log_density(z, mu, logvar, 1.0, -1.0, 1, "per_sample", backend)
    return reference.iwae_from_log_weights(log_px_given_z + log_ratio, z, estimator, reduction)


@torch.no_grad()
def log_marginal_likelihood(model, x: Tensor, num_samples: int = 100, *, chunk_rows: int = 5000,
                            generator: torch.Generator | None = None,
                            backend: str | None = None) -> Tensor:
    """Importance-sampled log p(x) per datapoint (reference.log_marginal_likelihood's estimate) on
    the fused path: eps drawn in the kernel, log p(z) - log q(z|x) in one pass over z, the targets
    repeated once per batch (not per chunk), decoder chunks of about `chunk_rows` rows (smaller ones
    gain no cache reuse on a CPU, the decoder's matrix multiplies bound it, and cost more parallel
    regions). Shape (batch,)."""
    check.positive_int("num_samples", num_samples)
    mu, logvar = model.encode(x)
    B = x.shape[0]
    k = max(1, min(num_samples, chunk_rows // max(B, 1)))
    target = x.reshape(B, -1).repeat(k, 1)  # the targets of a chunk's k * B decoder rows, made once
    terms = []
    for start in range(0, num_samples, k):
        kk = min(k, num_samples - start)
        z = functional.reparameterize(mu, logvar, num_samples=kk, generator=generator, backend=backend)
        rec = model.reconstruction_nll(model.decode(z.reshape(kk * B, -1)), target[:kk * B])
        terms.append(_log_density(z, mu, logvar, 1.0, -1.0, 1, "per_sample", backend) - rec.reshape(kk, B))
    return torch.logsumexp(torch.cat(terms), 0) - math.log(num_samples)
