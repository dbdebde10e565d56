"""The Triton backend: each op of vae_fast/_schemas.py as a `torch.library.triton_op` in the
`vae_fast_triton` namespace. These functions only allocate and launch; the math is in kernels.py.
triton_op also uses each function as the op's fake kernel, so they must stay shape-only on the host.
"""
from __future__ import annotations

import functools
import os
import unittest.mock

import torch
import torch._library.triton
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from .._schemas import NONE, ROWS, SCHEMAS, SUM
from .. import _shapes
from . import kernels as k

NAMESPACE = "vae_fast_triton"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_OP_TAKES_SCHEMA = torch.__version__ >= "2.14"  # earlier, triton_op infers it from annotations
# elements per tile: 8 per thread at 8 warps on a GPU; the interpreter pays per tile, not per element
MAX_TILE = 16384 if INTERPRETED else 2048
INTERPRETER_PROGRAMS = 4  # few, so that the grid-stride loops run several tiles in tests


def op(name: str):
    """Defines the decorated function as the op `vae_fast_triton::<name>` with the schema of
    _schemas.py, once its annotated signature is checked against that schema. A triton_op, so
    torch.compile sees the kernels; under TRITON_INTERPRET the kernels cannot be traced into a graph,
    so the op stays opaque (a custom_op whose fake is the same function)."""
    qualname, schema = f"{NAMESPACE}::{name}", SCHEMAS[name]

    def define(fn):
        # infer_schema spells every int SymInt; the schemas take plain ints (flags, counts)
        inferred = torch.library.infer_schema(fn, mutates_args=()).replace("SymInt", "int")
        if inferred != schema:
            raise TypeError(f"{qualname}: the signature of {fn.__name__} gives the schema {inferred}, "
                            f"expected {schema} (vae_fast/_schemas.py)")
        if INTERPRETED:
            custom = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
            custom.register_fake(fn)
            return custom
        if TRITON_OP_TAKES_SCHEMA:
            return triton_op(qualname, mutates_args=(), schema=schema)(fn)
        # torch < 2.14: triton_op ignores schema= and infers one (ints as SymInt), so point its
        # inference at our schema while it defines the op
        with unittest.mock.patch.object(torch._library.triton, "infer_schema", lambda *a, **kw: schema):
            return triton_op(qualname, mutates_args=())(fn)

    return define


@functools.lru_cache(maxsize=None)
def max_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count * 8
    return INTERPRETER_PROGRAMS


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tile_shape(R: int, C: int):
    block_c = min(next_pow2(max(C, 1)), MAX_TILE)
    return min(next_pow2(max(R, 1)), MAX_TILE // block_c), block_c


def launch(kernel, like: torch.Tensor, R: int, C: int, tensors, scalar, **constexprs):
    """Grid-stride launch of kernel(*tensors, R, C, scalar, n_tiles, **constexprs) over (R, C)."""
    block_r, block_c = tile_shape(R, C)
    n_tiles = -(-R // block_r) * -(-C // block_c)
    if n_tiles == 0 or (INTERPRETED and is_fake(like)):
        return  # interpreted kernels run as they are (no wrap_triton), and not on fake tensors
    grid = (min(n_tiles, max_programs(like.device)),)
    run = kernel if INTERPRETED else wrap_triton(kernel)  # torch < 2.14's rejects interpreted kernels
    run[grid](*tensors, R, C, scalar, n_tiles, F64=like.dtype == torch.float64,
              BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8 if block_r * block_c >= 2048 else 4, **constexprs)


def accumulator(x: torch.Tensor, reduction: int) -> torch.Tensor:
    """Where the kernel writes: the output itself (NONE) or a zeroed fp32/fp64 buffer for atomics."""
    shape = _shapes.reduced(x, reduction)
    if reduction == NONE:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.zeros(shape, dtype=acc_dtype, device=x.device)


def rows_cols(x: torch.Tensor, reduction: int):
    """The (R, C) matrix a kernel walks: rows only matter for ROWS."""
    if reduction == ROWS and x.dim() > 0:
        R = x.shape[0]
        return R, (x.numel() // R if R else 0)
    return 1, x.numel()


def fast_rng(R: int, C: int, S: int) -> bool:
    """Can a tile's eps come from whole randn4x groups? (contiguous, 4-aligned tiles)"""
    block_r, block_c = tile_shape(R, C)
    return C % 4 == 0 and block_c >= 4 and (block_r == 1 or block_c == C)


# ---------------------------------------------------------------- losses

@op("gaussian_kl")
def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor | None, prior_logvar: Tensor | None,
                reduction: int, scale: float) -> Tensor:
    mu, logvar = mu.contiguous(), logvar.contiguous()
    pmu = mu if prior_mu is None else prior_mu.contiguous()
    plv = mu if prior_logvar is None else prior_logvar.contiguous()
    out = accumulator(mu, reduction)
    R, C = rows_cols(mu, reduction)
    launch(k.kl_fwd, mu, R, C, (mu, logvar, pmu, plv, out), scale,
           HAS_PMU=prior_mu is not None, HAS_PLV=prior_logvar is not None, REDUCTION=reduction)
    return out.to(mu.dtype)


@op("gaussian_kl_backward")
def gaussian_kl_backward(grad: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Tensor | None,
                         prior_logvar: Tensor | None, reduction: int,
                         scale: float) -> tuple[Tensor, Tensor, Tensor]:
    grad, mu, logvar = grad.contiguous(), mu.contiguous(), logvar.contiguous()
    pmu = mu if prior_mu is None else prior_mu.contiguous()
    plv = mu if prior_logvar is None else prior_logvar.contiguous()
    gmu, glv = torch.empty_like(mu), torch.empty_like(logvar)
    gplv = torch.empty_like(mu) if prior_logvar is not None else mu.new_empty(0)
    R, C = rows_cols(mu, reduction)
    # an absent output gets a real buffer as its (never written) pointer: Triton rejects a null one
    launch(k.kl_bwd, mu, R, C, (grad, mu, logvar, pmu, plv, gmu, glv, gplv if gplv.numel() else gmu), scale,
           HAS_PMU=prior_mu is not None, HAS_PLV=prior_logvar is not None, REDUCTION=reduction)
    return gmu, glv, gplv


@op("bernoulli_nll")
def bernoulli_nll(logits: Tensor, target: Tensor, reduction: int, scale: float) -> Tensor:
    logits, target = logits.contiguous(), target.contiguous()
    out = accumulator(logits, reduction)
    R, C = rows_cols(logits, reduction)
    launch(k.bce_fwd, logits, R, C, (logits, target, out), scale, REDUCTION=reduction)
    return out.to(logits.dtype)


@op("bernoulli_nll_backward")
def bernoulli_nll_backward(grad: Tensor, logits: Tensor, target: Tensor, reduction: int, scale: float,
                           target_grad: bool) -> tuple[Tensor, Tensor]:
    grad, logits, target = grad.contiguous(), logits.contiguous(), target.contiguous()
    glogits = torch.empty_like(logits)
    gtarget = torch.empty_like(target) if target_grad else logits.new_empty(0)
    R, C = rows_cols(logits, reduction)
    launch(k.bce_bwd, logits, R, C, (grad, logits, target, glogits, gtarget if target_grad else glogits), scale,
           TARGET_GRAD=target_grad, REDUCTION=reduction)
    return glogits, gtarget


@op("gaussian_nll")
def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor, reduction: int, scale: float) -> Tensor:
    mean, logvar, target = mean.contiguous(), logvar.contiguous(), target.contiguous()
    out = accumulator(mean, reduction)
    R, C = rows_cols(mean, reduction)
    launch(k.gnll_fwd, mean, R, C, (mean, logvar, target, out), scale, REDUCTION=reduction)
    return out.to(mean.dtype)


@op("gaussian_nll_backward")
def gaussian_nll_backward(grad: Tensor, mean: Tensor, logvar: Tensor, target: Tensor, reduction: int,
                          scale: float) -> tuple[Tensor, Tensor]:
    grad, mean, logvar, target = grad.contiguous(), mean.contiguous(), logvar.contiguous(), target.contiguous()
    gmean, glv = torch.empty_like(mean), torch.empty_like(logvar)
    R, C = rows_cols(mean, reduction)
    launch(k.gnll_bwd, mean, R, C, (grad, mean, logvar, target, gmean, glv), scale,
           REDUCTION=reduction)
    return gmean, glv


# ---------------------------------------------------------------- sampling

def sample(mu, logvar, philox, num_samples: int, with_kl: bool):
    mu, logvar = mu.contiguous(), logvar.contiguous()
    z = torch.empty((num_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    kl = accumulator(mu, ROWS) if with_kl else z
    R, C = rows_cols(mu, ROWS if with_kl else SUM)  # rows only matter for the KL
    launch(k.sample_fwd, mu, R, C, (mu, logvar, philox, z, kl), num_samples,
           WITH_KL=with_kl, FAST_RNG=fast_rng(R, C, num_samples))
    return z, kl.to(mu.dtype)


def sample_backward(grad_z, grad_kl, mu, logvar, philox, num_samples: int):
    grad_z, logvar = grad_z.contiguous(), logvar.contiguous()
    with_kl = grad_kl is not None
    glv = torch.empty_like(logvar)
    gmu = torch.empty_like(logvar) if with_kl else glv
    R, C = rows_cols(logvar, ROWS if with_kl else SUM)
    launch(k.sample_bwd, logvar, R, C, (grad_z, grad_kl.contiguous() if with_kl else glv,
           mu.contiguous() if with_kl else glv, logvar, philox, gmu, glv), num_samples,
           WITH_KL=with_kl, FAST_RNG=fast_rng(R, C, num_samples))
    return gmu, glv


@op("reparameterize")
def reparameterize(mu: Tensor, logvar: Tensor, philox: Tensor, num_samples: int) -> Tensor:
    return sample(mu, logvar, philox, num_samples, with_kl=False)[0]


@op("reparameterize_backward")
def reparameterize_backward(grad_z: Tensor, logvar: Tensor, philox: Tensor, num_samples: int) -> Tensor:
    return sample_backward(grad_z, None, logvar, logvar, philox, num_samples)[1]


@op("sample_and_kl")
def sample_and_kl(mu: Tensor, logvar: Tensor, philox: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
    return sample(mu, logvar, philox, num_samples, with_kl=True)


@op("sample_and_kl_backward")
def sample_and_kl_backward(grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor, philox: Tensor,
                           num_samples: int) -> tuple[Tensor, Tensor]:
    return sample_backward(grad_z, grad_kl, mu, logvar, philox, num_samples)
