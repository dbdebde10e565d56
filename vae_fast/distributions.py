"""`DiagonalGaussian`: a diagonal Gaussian posterior q(z|x) = N(mean, e^logvar) over the fused ops,
with the interface of diffusers' `DiagonalGaussianDistribution` (sample / kl / nll / mode, logvar
clamped to [-30, 20], deterministic=) and a configurable KL/NLL reduction `dims`.

    posterior = vae_fast.DiagonalGaussian.from_parameters(h)      # h: mean and logvar on dim 1
    z = posterior.sample()                                         # with kl(): one fused kernel
    kl = posterior.kl().mean()

The logvar clamp runs inside the sampling and KL kernels, with torch.clamp's gradient (zero outside
the range), as diffusers' torch.clamp does.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import _autocast
from . import _validate as check
from . import reference
from ._backends import resolve
from ._ops import philox_state
from ._schemas import NONE, ROWS, SUM
from .functional import GENERATOR_UNDER_COMPILE, _promote

LOGVAR_CLAMP = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution


def _clamp_bounds(logvar_clamp) -> tuple[float | None, float | None]:
    """(logvar_min, logvar_max) of the ops; None for no bound (also for an infinite one)."""
    if logvar_clamp is None:
        return None, None
    try:
        lo, hi = (float(v) for v in logvar_clamp)
    except (TypeError, ValueError):
        raise TypeError(f"logvar_clamp: expected None or a pair of floats (min, max), got {logvar_clamp!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"logvar_clamp: expected min <= max, got {logvar_clamp!r}")
    return (None if lo == -math.inf else lo), (None if hi == math.inf else hi)


def _dims(dims, ndim: int) -> tuple[int, ...]:
    """dims -> sorted distinct non-negative dims (None: all but the batch dim)."""
    if dims is None:
        return tuple(range(1, ndim))
    if isinstance(dims, int):
        dims = (dims,)
    out = set()
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
            raise ValueError(f"dims: expected dims in [{-ndim}, {ndim}) of a {ndim}-d tensor, got {dims!r}")
        out.add(d % ndim)
    if not out:
        raise ValueError("dims: expected at least one dim to reduce, got none")
    return tuple(sorted(out))


class DiagonalGaussian:
    """N(mean, diag(e^logvar)), logvar clamped to `logvar_clamp` (None: no clamp) inside the kernels.

    dims: the dims kl() and nll() sum over (default: all but the batch dim; diffusers uses [1, 2, 3],
    also on 5-D video latents). deterministic=True: std = var = 0, sample() = mean, kl() = nll() = 0
    (as diffusers). `backend=` as everywhere in vae_fast.
    """

    def __init__(self, mean: Tensor, logvar: Tensor, *, logvar_clamp=LOGVAR_CLAMP, deterministic: bool = False,
                 dims: Sequence[int] | None = None, backend: str | None = None):
        check.pair("mean", mean, "logvar", logvar)
        check.at_least_1d("mean", mean)
        self.mean, self._raw_logvar = _promote(mean, logvar)
        self._lo, self._hi = _clamp_bounds(logvar_clamp)
        self.logvar_clamp = None if logvar_clamp is None else tuple(float(v) for v in logvar_clamp)
        self.deterministic = bool(deterministic)
        self._dims_arg = dims  # checked when kl()/nll() reduce (diffusers builds 3-D ones that only sample)
        self.backend = backend
        self._kl_cache = None  # (grad mode, kl) from sample()'s fused kernel

    @classmethod
    def from_parameters(cls, parameters: Tensor, **options) -> "DiagonalGaussian":
        """mean and logvar concatenated on dim 1 (diffusers' layout: the encoder's 2*C channels)."""
        check.floating("parameters", parameters)
        if parameters.dim() < 2 or parameters.shape[1] % 2:
            raise ValueError(f"parameters: expected an even size of dim 1 (mean and logvar), "
                             f"got shape {tuple(parameters.shape)}")
        mean, logvar = torch.chunk(parameters, 2, dim=1)
        return cls(mean, logvar, **options)

    @property
    def dims(self) -> tuple[int, ...]:
        return _dims(self._dims_arg, self.mean.dim())

    def _fuse_kl(self) -> bool:
        """Whether kl() sums over all dims but the batch (the reduction of the fused sample_and_kl)."""
        try:
            return self.dims == tuple(range(1, self.mean.dim()))
        except ValueError:
            return False

    # ---- attributes (computed on use; logvar with torch.clamp's gradient) ----
    @property
    def logvar(self) -> Tensor:
        return reference.clamp_logvar(self._raw_logvar, self._lo, self._hi)

    @property
    def std(self) -> Tensor:
        return torch.zeros_like(self.mean) if self.deterministic else torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.zeros_like(self.mean) if self.deterministic else torch.exp(self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    # ---- sampling ----
    def sample(self, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        """z = mean + std * eps, eps drawn inside the kernel (docs/rng.md) from `generator`'s state.

        generator: None (the device's default generator), a torch.Generator on any device (a CPU
        generator with CUDA tensors: the 16-byte Philox state is drawn on the CPU and copied), or a
        list of one generator per batch element (then one kernel call per element, each row drawn
        from its own generator: row i depends only on generator[i], as in diffusers)."""
        if self.deterministic:
            return self.mean.clone()  # diffusers: mean + 0 * eps
        if isinstance(generator, (list, tuple)):
            if len(generator) != self.mean.shape[0]:
                raise ValueError(f"generator: expected a list of {self.mean.shape[0]} generators (the batch "
                                 f"size), got {len(generator)}")
            return torch.cat([self._row(i)._draw(g, with_kl=False) for i, g in enumerate(generator)])
        return self._draw(generator, with_kl=self._fuse_kl())

    rsample = sample

    def _row(self, i: int) -> "DiagonalGaussian":
        row = DiagonalGaussian.__new__(DiagonalGaussian)
        row.__dict__.update(self.__dict__, mean=self.mean[i:i + 1], _raw_logvar=self._raw_logvar[i:i + 1])
        return row

    def _draw(self, generator, with_kl: bool) -> Tensor:
        mean, logvar, device = self.mean, self._raw_logvar, self.mean.device
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or a list of them, got {type(generator).__name__}")
        if generator is not None and torch.compiler.is_compiling():
            torch._dynamo.graph_break(msg=GENERATOR_UNDER_COMPILE)  # as vae_fast.reparameterize
        ns = resolve(self.backend, device)
        if ns is None:
            gen_device = device if generator is None else generator.device
            eps = torch.randn(mean.shape, dtype=mean.dtype, device=gen_device, generator=generator).to(device)
            return _autocast.reference_sample(mean, self.logvar, eps)
        if generator is None or generator.device.type == device.type:
            philox = philox_state(device, generator)
        else:  # a generator on another device (diffusers allows a CPU generator with CUDA tensors)
            philox = philox_state(generator.device, generator).to(device, non_blocking=True)
        if with_kl:  # the KL comes free from the same pass; kl() returns it
            z, kl = _sample_and_kl(ns, mean, logvar, philox, self._lo, self._hi)
            self._kl_cache = (torch.is_grad_enabled(), kl)
            return z[0]
        return _reparameterize(ns, mean, logvar, philox, self._lo, self._hi)[0]

    # ---- divergences ----
    def kl(self, other: "DiagonalGaussian | None" = None) -> Tensor:
        """KL(self || other) (other None: N(0, I)) summed over `dims`."""
        if self.deterministic:
            return self.mean.new_zeros(self._reduced_shape())
        if other is None:
            cache = self._kl_cache
            if cache is not None and cache[0] == torch.is_grad_enabled():
                return cache[1]
            return self._reduce_kl(None, None)
        if not isinstance(other, DiagonalGaussian):
            raise TypeError(f"other: expected a vae_fast.DiagonalGaussian or None, got {type(other).__name__}")
        check.prior("other.mean", other.mean, "mean", self.mean)
        return self._reduce_kl(other.mean, other.logvar)

    def _reduced_shape(self):
        dims = self.dims
        return tuple(s for d, s in enumerate(self.mean.shape) if d not in dims)

    def _reduce_kl(self, pmu, plv) -> Tensor:
        mean, logvar, dims = self.mean, self._raw_logvar, self.dims
        ns = resolve(self.backend, mean.device)
        all_but_batch = dims == tuple(range(1, mean.dim()))
        if ns is None:
            out = reference.gaussian_kl(*_autocast.reference_inputs(mean.device, mean, self.logvar, pmu, plv))
            return reference.per_sample(out) if all_but_batch else out.sum(dims)
        mean, logvar, pmu, plv = _promote(mean, logvar, pmu, plv)
        pmu = None if pmu is None else pmu.expand(mean.shape)
        plv = None if plv is None else plv.expand(mean.shape)
        if all_but_batch:
            return _gaussian_kl(ns, mean, logvar, pmu, plv, ROWS, self._lo, self._hi)
        if len(dims) == mean.dim():
            return _gaussian_kl(ns, mean, logvar, pmu, plv, SUM, self._lo, self._hi)
        return _gaussian_kl(ns, mean, logvar, pmu, plv, NONE, self._lo, self._hi).sum(dims)

    def nll(self, sample: Tensor, dims: Sequence[int] | None = None) -> Tensor:
        """-log N(sample; mean, var) summed over `dims` (default: this distribution's dims)."""
        dims = self.dims if dims is None else _dims(dims, self.mean.dim())
        if self.deterministic:
            return self.mean.new_zeros(tuple(s for d, s in enumerate(self.mean.shape) if d not in dims))
        check.floating("sample", sample)
        check.same_device("mean", self.mean, "sample", sample)
        from .functional import gaussian_nll  # the unclamped op on the clamped logvar: nll is not hot

        out = gaussian_nll(self.mean, self.logvar, sample.expand(self.mean.shape), reduction="none",
                           backend=self.backend)
        return out.sum(dims)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype}, "
                f"logvar_clamp={self.logvar_clamp}, deterministic={self.deterministic}, dims={self._dims_arg})")


# ---- the ops, with the logvar clamp inside the kernels ----
def _sample_and_kl(ns, mean, logvar, philox, lo, hi):
    return ns.sample_and_kl(mean, logvar, philox, 1, lo, hi)


def _reparameterize(ns, mean, logvar, philox, lo, hi):
    return ns.reparameterize(mean, logvar, philox, 1, lo, hi)


def _gaussian_kl(ns, mean, logvar, pmu, plv, code, lo, hi):
    return ns.gaussian_kl(mean, logvar, pmu, plv, code, 1.0, None, lo, hi)  # None: out_dtype
