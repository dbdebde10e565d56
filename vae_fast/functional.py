"""The public functional API. Each function validates its input once (messages name the
argument), picks the backend, and calls the op; "reference" runs vae_fast.reference instead."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _autocast
from . import _validate as check
from . import reference
from ._backends import resolve
from ._ops import philox_state
from ._schemas import NONE, ROWS, SUM


def _reduction_args(x: torch.Tensor, reduction: str, name: str):
    """reduction name (already checked) -> (op code, scale); `name` is x's argument name."""
    if reduction == PER_SAMPLE:
        check.at_least_1d(name, x)
        return ROWS, 1.0
    if reduction == "none":
        return NONE, 1.0
    if reduction == "sum":
        return SUM, 1.0
    if reduction == "mean":
        return SUM, (1.0 / x.numel() if x.numel() else float("nan"))
    check.at_least_1d(name, x)
    return SUM, (1.0 / x.shape[0] if x.shape[0] else float("nan"))


def _num_samples(num_samples, mu) -> int:
    return 1 if num_samples is None else check.num_samples(num_samples, mu.numel())


def _generator(generator, device: torch.device):
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise RuntimeError(f"generator: expected a generator on {device.type} (the tensors' device), "
                               f"got one on {generator.device}")
        if torch.compiler.is_compiling():
            # Dynamo cannot trace a Generator: break the graph here (the draw then runs eagerly), which
            # torch.compile(fullgraph=True) reports with this message (torch._dynamo: loaded, compiling)
            torch._dynamo.graph_break(msg=GENERATOR_UNDER_COMPILE)
    return generator


GENERATOR_UNDER_COMPILE = (
    "generator=: torch.compile cannot trace a torch.Generator, so the draw breaks the graph "
    "(an error under fullgraph=True); call the function outside the compiled region, or seed the "
    "global RNG (torch.manual_seed) and leave generator=None")


def _promote(*tensors):
    """Mixed floating dtypes follow torch's type promotion on every backend: the fused ops compute in
    torch.result_type of their inputs (absent priors are None and do not count)."""
    dtype = tensors[0].dtype
    for t in tensors:  # a loop, not all(<generator>): half the cost, and this runs on every call
        if t is not None and t.dtype != dtype:
            break
    else:
        return tensors  # the common case: the dtypes already agree
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _one_sample(z: torch.Tensor, num_samples) -> torch.Tensor:
    """The op returns (S, *mu.shape); without num_samples the caller gets mu.shape. A view (its
    backward is a view too), not z[0], whose select_backward costs a zeros fill and a copy."""
    return z.squeeze(0) if num_samples is None else z


def _reference_eps(mu, num_samples, generator):
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    gen = {} if generator is None else {"generator": generator}  # see models.ReferenceOps.reparameterize
    return torch.randn(shape, dtype=mu.dtype, device=mu.device, **gen)


def reparameterize(mu: Tensor, logvar: Tensor, *, num_samples: int | None = None,
                   generator: torch.Generator | None = None, backend: str | None = None) -> Tensor:
    """z = mu + exp(0.5*logvar) * eps, eps ~ N(0, I) drawn inside the kernel (never stored).

    Returns mu's shape, or (num_samples, *mu.shape) when num_samples is given.
    """
    check.pair("mu", mu, "logvar", logvar)
    S = _num_samples(num_samples, mu)
    device = mu.device
    _generator(generator, device)
    ns = resolve(backend, device)
    mu, logvar = _promote(mu, logvar)
    if ns is None:
        return _autocast.reference_sample(mu, logvar, _reference_eps(mu, num_samples, generator))
    return _one_sample(ns.reparameterize(mu, logvar, philox_state(device, generator), S), num_samples)


def sample_and_kl(mu: Tensor, logvar: Tensor, *, num_samples: int | None = None,
                  generator: torch.Generator | None = None,
                  backend: str | None = None) -> tuple[Tensor, Tensor]:
    """(z, kl_per_sample): reparameterized samples and KL(q || N(0, I)) summed over all dims but
    the first, in one kernel forward and one backward."""
    check.pair("mu", mu, "logvar", logvar)
    check.at_least_1d("mu", mu)
    S = _num_samples(num_samples, mu)
    device = mu.device
    _generator(generator, device)
    ns = resolve(backend, device)
    mu, logvar = _promote(mu, logvar)
    if ns is None:
        z = _autocast.reference_sample(mu, logvar, _reference_eps(mu, num_samples, generator))
        return z, reference.per_sample(reference.gaussian_kl(*_autocast.reference_inputs(device, mu, logvar)))
    z, kl = ns.sample_and_kl(mu, logvar, philox_state(device, generator), S)
    return _one_sample(z, num_samples), kl


def _prior(p, mu):
    return None if p is None else p.to(mu.dtype).expand(mu.shape)


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor | None = None,
                prior_logvar: Tensor | None = None, *, reduction: str = "sum",
                backend: str | None = None) -> Tensor:
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)), the standard normal when no prior is
    given; priors broadcast to mu's shape."""
    check.pair("mu", mu, "logvar", logvar)
    code, scale = _reduction_args(mu, check.reduction(reduction), "mu")
    check.prior("prior_mu", prior_mu, "mu", mu)
    check.prior("prior_logvar", prior_logvar, "mu", mu)
    ns = resolve(backend, mu.device)
    mu, logvar, prior_mu, prior_logvar = _promote(mu, logvar, prior_mu, prior_logvar)
    if ns is None:
        mu, logvar, prior_mu, prior_logvar = _autocast.reference_inputs(mu.device, mu, logvar, prior_mu, prior_logvar)
        return reference.reduce(reference.gaussian_kl(mu, logvar, prior_mu, prior_logvar), reduction)
    return ns.gaussian_kl(mu, logvar, _prior(prior_mu, mu), _prior(prior_logvar, mu), code, scale)


PER_SAMPLE = "per_sample"  # internal reduction: ROWS (sum over all dims but the first), for FusedOps


def _reduce_reference(x, reduction):
    return reference.per_sample(x) if reduction == PER_SAMPLE else reference.reduce(x, reduction)


def _loss_weight(name, w, logits):
    """weight / pos_weight of bernoulli_nll: broadcastable to logits, and (as in torch) not
    differentiable."""
    if w is None:
        return
    check.prior(name, w, "logits", logits)
    if w.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{name}: bernoulli_nll is not differentiable with respect to {name} (like "
                           f"F.binary_cross_entropy_with_logits); expected requires_grad=False")


def _bernoulli_nll(logits, target, reduction, backend, weight=None, pos_weight=None):
    check.pair("logits", logits, "target", target)
    code, scale = _reduction_args(logits, reduction, "logits")
    ns = resolve(backend, logits.device)
    if weight is None and pos_weight is None:  # the common case: nothing more to check or pass
        logits, target = _promote(logits, target)
        if ns is None:
            logits, target = _autocast.reference_inputs(logits.device, logits, target)
            return _reduce_reference(reference.bernoulli_nll(logits, target), reduction)
        return ns.bernoulli_nll(logits, target, code, scale)
    _loss_weight("weight", weight, logits)
    _loss_weight("pos_weight", pos_weight, logits)
    weight, pos_weight = _autocast.loss_weights(logits, weight, pos_weight)
    logits, target, weight, pos_weight = _promote(logits, target, weight, pos_weight)
    if ns is None:
        logits, target, weight, pos_weight = _autocast.reference_inputs(logits.device, logits, target, weight,
                                                                         pos_weight)
        return _reduce_reference(reference.bernoulli_nll(logits, target, weight, pos_weight), reduction)
    # stride-0 views: the kernels read weights of logits' shape (the op makes them contiguous)
    return ns.bernoulli_nll(logits, target, code, scale, _prior(weight, logits), _prior(pos_weight, logits))


def _gaussian_nll(mean, logvar, target, reduction, backend):
    check.pair("mean", mean, "target", target)
    check.floating("logvar", logvar)  # required, unlike a prior
    check.prior("logvar", logvar, "mean", mean)
    code, scale = _reduction_args(mean, reduction, "mean")
    ns = resolve(backend, mean.device)
    mean, logvar, target = _promote(mean, logvar, target)
    if ns is None:
        mean, logvar, target = _autocast.reference_inputs(mean.device, mean, logvar, target)
        return _reduce_reference(reference.gaussian_nll(mean, logvar, target), reduction)
    return ns.gaussian_nll(mean, logvar.expand(mean.shape), target, code, scale)


def bernoulli_nll(logits: Tensor, target: Tensor, weight: Tensor | None = None, *,
                  pos_weight: Tensor | None = None, reduction: str = "mean",
                  backend: str | None = None) -> Tensor:
    """Binary cross-entropy on logits: a drop-in for F.binary_cross_entropy_with_logits
    (same values, same `weight`, `pos_weight` (both broadcast to logits, fused into the kernel, not
    differentiable), same `reduction` meaning and default), plus reduction="batchmean"."""
    return _bernoulli_nll(logits, target, check.reduction(reduction), backend, weight, pos_weight)


def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor, *, reduction: str = "mean",
                 backend: str | None = None) -> Tensor:
    """-log N(target; mean, e^logvar) with the 0.5*log(2*pi) term; logvar broadcasts to mean."""
    return _gaussian_nll(mean, logvar, target, check.reduction(reduction), backend)


def bernoulli_nll_per_sample(logits: Tensor, target: Tensor, *, backend: str | None = None) -> Tensor:
    """bernoulli_nll summed over all dims but the first, in the kernel: shape (batch,)."""
    return _bernoulli_nll(logits, target, PER_SAMPLE, backend)


def gaussian_nll_per_sample(mean: Tensor, logvar: Tensor, target: Tensor, *,
                            backend: str | None = None) -> Tensor:
    """gaussian_nll summed over all dims but the first, in the kernel: shape (batch,)."""
    return _gaussian_nll(mean, logvar, target, PER_SAMPLE, backend)


def negative_elbo(logits: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, *, beta: float = 1.0,
                  free_bits: float = 0.0, reduction: str = "batchmean",
                  backend: str | None = None) -> Tensor:
    """-ELBO of a Bernoulli-decoder VAE: reconstruction NLL + beta * KL(q(z|x) || N(0, I)).

    reduction: "none" (per sample), "sum", "batchmean" / "mean" (per sample, averaged).
    free_bits > 0: each latent dim's batch-mean KL counts at least free_bits nats (batch level,
    so not with "none")."""
    check.pair("logits", logits, "target", target)
    check.pair("mu", mu, "logvar", logvar)
    check.at_least_1d("logits", logits)
    check.at_least_1d("mu", mu)
    check.reduction(reduction)
    if mu.shape[0] != logits.shape[0]:
        raise ValueError(f"mu: expected batch size {logits.shape[0]} (of logits), got {mu.shape[0]}")
    check.same_device("logits", logits, "mu", mu)
    beta = check.non_negative_or_tensor("beta", beta)
    if isinstance(beta, torch.Tensor) and beta.device != logits.device and beta.device.type != "cpu":
        raise RuntimeError(f"beta: expected a tensor on {logits.device} like logits (or on cpu), got {beta.device}")
    free_bits = check.non_negative("free_bits", free_bits)
    ns = resolve(backend, logits.device)
    (logits, target), (mu, logvar) = _promote(logits, target), _promote(mu, logvar)
    if ns is None:
        logits, target, mu, logvar = _autocast.reference_inputs(logits.device, logits, target, mu, logvar)
        return reference.negative_elbo(logits, target, mu, logvar, beta=beta, free_bits=free_bits,
                                       reduction=reduction)
    batch = mu.shape[0]
    if free_bits > 0:
        if reduction == "none":
            raise ValueError("free_bits: needs reduction 'sum', 'mean' or 'batchmean', got 'none'")
        kl_dims = reference.rows(ns.gaussian_kl(mu, logvar, None, None, NONE, 1.0)).mean(0)
        total = ns.bernoulli_nll(logits, target, SUM, 1.0) + beta * batch * kl_dims.clamp(min=free_bits).sum()
        return total if reduction == "sum" else total / batch
    if reduction == "none":
        return ns.bernoulli_nll(logits, target, ROWS, 1.0) + beta * ns.gaussian_kl(mu, logvar, None, None, ROWS, 1.0)
    scale = 1.0 if reduction == "sum" else 1.0 / batch if batch else float("nan")
    return ns.bernoulli_nll(logits, target, SUM, scale) + ns.gaussian_kl(mu, logvar, None, None, SUM, beta * scale)


# multi-sample objectives (vae_fast/iwae.py), re-exported here with the rest of the functional API
from .iwae import gaussian_log_prob, negative_iwae_bound, standard_normal_log_prob  # noqa: E402,F401
