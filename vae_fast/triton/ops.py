"""The Triton backend: each op of vae_fast/_schemas.py as a `torch.library.triton_op` in the
`vae_fast_triton` namespace. These functions only allocate and launch; the math is in kernels.py.
triton_op also uses each function as the op's fake kernel, so they must stay shape-only on the host.
"""
from __future__ import annotations

import contextlib
import functools
import math
import struct
import unittest.mock
from dataclasses import dataclass

import torch
import torch._library.triton
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from .._schemas import NONE, ROWS, SCHEMAS
from .. import _shapes
from . import kernels as k
from .math import INTERPRETED

NAMESPACE = "vae_fast_triton"
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


MAX_PARTIALS = 1024  # partial sums of a split reduction: the last program adds <= ~2x this many
FINAL_BLOCK = 1024  # partials the last program loads at once


@functools.lru_cache(maxsize=None)
def max_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count * 8
    return INTERPRETER_PROGRAMS


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tile_shape(R: int, C: int):
    block_c = min(next_pow2(max(C, 1)), MAX_TILE)
    return min(next_pow2(max(R, 1)), MAX_TILE // block_c), block_c


@dataclass(frozen=True)
class Plan:
    """How a kernel walks an (R, C) matrix (kernels.py): tiles, units of tiles, launch constants.
    A function of (R, C, reduce) only -- never of the device or grid -- so sums are reproducible."""
    n_units: int
    n_seg: int  # units per row band
    tps: int  # tiles per unit
    constexprs: dict  # SPLIT, BLOCK_R, BLOCK_C, SEG_BLOCK, ROW_BLOCK, num_warps


@functools.lru_cache(maxsize=4096)
def plan(R: int, C: int, reduce: bool) -> Plan:
    """reduce: the kernel sums rows. A row longer than a tile (block_r == 1) is then cut into n_seg
    runs of tps tiles (about MAX_PARTIALS runs in all), each giving one partial sum (SPLIT)."""
    block_r, block_c = tile_shape(R, C)
    n_rb, n_cb = cdiv(R, block_r), cdiv(C, block_c)
    tps, n_seg = 1, n_cb
    if reduce:
        tps = max(1, min(n_cb, cdiv(R * n_cb, MAX_PARTIALS)))
        n_seg = cdiv(n_cb, tps)
    split = reduce and n_seg > 1
    seg_block = next_pow2(n_seg) if split else 1
    row_block = min(next_pow2(R), max(1, FINAL_BLOCK // seg_block)) if split else 1
    return Plan(n_rb * n_seg, n_seg, tps, dict(
        SPLIT=split, BLOCK_R=block_r, BLOCK_C=block_c, SEG_BLOCK=seg_block, ROW_BLOCK=row_block,
        num_warps=8 if block_r * block_c >= 2048 else 4))


_COUNTERS = {}  # (device, stream) -> int32 counter, 0 between launches (the last program resets it)


def counter(like: torch.Tensor) -> torch.Tensor:
    """The ticket counter of a split reduction. Launches on one stream run in order, so they share
    one, zeroed once (on that stream) and reset by each launch's last program: no memset per call.
    A launch captured in a CUDA graph (which may replay on any stream, next to other graphs) or
    traced (fake tensors, torch.compile) gets a fresh zeroed one in its graph instead."""
    device = like.device
    if (type(like) is not torch.Tensor and is_fake(like) or torch.compiler.is_compiling()
            or device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return torch.zeros(1, dtype=torch.int32, device=device)
    key = (device, torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else None)
    count = _COUNTERS.get(key)
    if count is None:
        count = _COUNTERS[key] = torch.zeros(1, dtype=torch.int32, device=device)  # on this stream
    return count


_DOUBLE = struct.Struct("<d")
_INT64 = struct.Struct("<q")


def scale_bits(scale: float) -> int:
    """`scale` as the int64 bits of a float64: Triton passes a float argument as float32, which
    would cost float64 kernels their precision (kernels.py decodes it with math.scale_of)."""
    return _float64_bits(float(scale))  # float(): a traced SymFloat becomes its value


@functools.lru_cache(maxsize=1024)
def _float64_bits(x: float) -> int:
    return _INT64.unpack(_DOUBLE.pack(x))[0]


def on_device(like: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' (eager calls; a traced one
    gets torch.compile's own device guard)."""
    if (like.device.type != "cuda" or is_fake(like) or torch.compiler.is_compiling()
            or like.device.index == torch.cuda.current_device()):
        return contextlib.nullcontext()
    return torch.cuda.device(like.device)


def launch(kernel, like: torch.Tensor, R: int, C: int, tensors, last, reduction: int, out=None, **constexprs):
    """Grid-stride launch of kernel(*tensors, ws, count, R, C, n_units, n_seg, tps, last, ...) over
    (R, C). `out`: the reduced output of a forward reduction (its rows may be split over programs);
    None for backward kernels, which only read the reduced gradient."""
    if INTERPRETED and is_fake(like):
        return  # interpreted kernels run as they are (no wrap_triton), and not on fake tensors
    if R >= 2 ** 31:  # row indices are int32 in the kernels (kernels.tile); columns are not limited
        raise RuntimeError(f"vae_fast triton backend: expected fewer than 2^31 rows, got {R}; use the "
                           "cuda backend")
    units_reduce = reduction != NONE and out is not None
    # traced with dynamic shapes, R and C are SymInts: unhashable, so no cache
    p = plan(R, C, units_reduce) if type(R) is int and type(C) is int else plan.__wrapped__(R, C, units_reduce)
    if p.n_units == 0:
        if units_reduce:  # an empty sum, times the scale: NaN for the mean of nothing, as in torch
            out.fill_(0.0 * _DOUBLE.unpack(_INT64.pack(last))[0])
        return
    ws = count = tensors[0]  # stand-ins: a pointer is needed, never used without SPLIT
    if p.constexprs["SPLIT"]:
        ws = torch.empty(p.n_units, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32,
                         device=like.device)
        count = counter(like)
    grid = (min(p.n_units, max_programs(like.device)),)
    run = kernel if INTERPRETED else wrap_triton(kernel)  # torch < 2.14's rejects interpreted kernels
    with on_device(like):
        run[grid](*tensors, ws, count, R, C, p.n_units, p.n_seg, p.tps, last, REDUCE=reduction != NONE,
                  F64=like.dtype == torch.float64, **p.constexprs, **constexprs)


def reduced_out(x: torch.Tensor, reduction: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The forward output: elementwise, or the (scaled) sum / row sums the kernel writes once; of
    `dtype` (an op's out_dtype; tl.store converts the float32/64 result), else x's."""
    if dtype is not None and dtype != x.dtype and not (dtype == torch.float32 and x.element_size() == 2):
        raise RuntimeError(f"out_dtype: expected {x.dtype} (of the input) or float32 for a 16-bit input, "
                           f"got {dtype}")
    if reduction == NONE:
        return torch.empty_like(x, dtype=dtype or x.dtype)  # x's layout (memory_format)
    return torch.empty(_shapes.reduced(x, reduction), dtype=dtype or x.dtype, device=x.device)


def grad_arg(grad: torch.Tensor, fmt, reduction: int) -> torch.Tensor:
    """A backward op's grad: in the inputs' layout when elementwise, else (a scalar, row sums) contiguous."""
    return grad.contiguous(memory_format=fmt) if reduction == NONE else grad.contiguous()


def rows_cols(x: torch.Tensor, reduction: int):
    """The (R, C) matrix a kernel walks: rows only matter for ROWS."""
    if reduction == ROWS and x.dim() > 0:
        R = x.shape[0]
        return R, (x.numel() // R if R else 0)
    return 1, x.numel()


def bounds(logvar_min, logvar_max):
    """The kernels' (lo_bits, hi_bits, CLAMP) for optional logvar bounds (float64 bits, as scale_bits);
    no clamp code when both are None."""
    if logvar_min is None and logvar_max is None:
        return 0, 0, False
    return (scale_bits(-math.inf if logvar_min is None else logvar_min),
            scale_bits(math.inf if logvar_max is None else logvar_max), True)


def fast_rng(R: int, C: int) -> bool:
    """Can a tile's eps come from whole Philox groups? (contiguous, 4-aligned tiles)"""
    block_r, block_c = tile_shape(R, C)
    return C % 4 == 0 and block_c >= 4 and (block_r == 1 or block_c == C)


# ---------------------------------------------------------------- losses

@op("gaussian_kl")
def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor | None, prior_logvar: Tensor | None,
                reduction: int, scale: float, out_dtype: torch.dtype | None = None,
                logvar_min: float | None = None, logvar_max: float | None = None) -> Tensor:
    fmt = _shapes.memory_format(mu)  # channels-last stays channels-last
    mu, logvar = mu.contiguous(memory_format=fmt), logvar.contiguous(memory_format=fmt)
    pmu = mu if prior_mu is None else prior_mu.contiguous(memory_format=fmt)
    plv = mu if prior_logvar is None else prior_logvar.contiguous(memory_format=fmt)
    out = reduced_out(mu, reduction, out_dtype)
    R, C = rows_cols(mu, reduction)
    lo, hi, clamp = bounds(logvar_min, logvar_max)
    launch(k.kl_fwd, mu, R, C, (mu, logvar, pmu, plv, out, lo, hi), scale_bits(scale), reduction, out,
           HAS_PMU=prior_mu is not None, HAS_PLV=prior_logvar is not None, CLAMP=clamp)
    return out


@op("gaussian_kl_backward")
def gaussian_kl_backward(grad: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Tensor | None,
                         prior_logvar: Tensor | None, reduction: int, scale: float,
                         logvar_min: float | None = None,
                         logvar_max: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    fmt = _shapes.memory_format(mu)  # channels-last stays channels-last
    grad = grad_arg(grad, fmt, reduction)
    mu, logvar = mu.contiguous(memory_format=fmt), logvar.contiguous(memory_format=fmt)
    pmu = mu if prior_mu is None else prior_mu.contiguous(memory_format=fmt)
    plv = mu if prior_logvar is None else prior_logvar.contiguous(memory_format=fmt)
    gmu, glv = torch.empty_like(mu), torch.empty_like(logvar)
    gplv = torch.empty_like(mu) if prior_logvar is not None else mu.new_empty(0)
    R, C = rows_cols(mu, reduction)
    # an absent output gets a real buffer as its (never written) pointer: Triton rejects a null one
    lo, hi, clamp = bounds(logvar_min, logvar_max)
    launch(k.kl_bwd, mu, R, C, (grad, mu, logvar, pmu, plv, gmu, glv, gplv if gplv.numel() else gmu, lo, hi),
           scale_bits(scale), reduction, HAS_PMU=prior_mu is not None, HAS_PLV=prior_logvar is not None,
           CLAMP=clamp)
    return gmu, glv, gplv


@op("bernoulli_nll")
def bernoulli_nll(logits: Tensor, target: Tensor, reduction: int, scale: float, weight: Tensor | None = None,
                  pos_weight: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    fmt = _shapes.memory_format(logits)  # channels-last stays channels-last
    logits, target = logits.contiguous(memory_format=fmt), target.contiguous(memory_format=fmt)
    out = reduced_out(logits, reduction, out_dtype)
    R, C = rows_cols(logits, reduction)
    # weights of logits' shape (stride-0 expanded views from functional): the kernels read every
    # element at its flat index, so a broadcast weight is materialised full size here; an absent
    # one is a placeholder pointer the kernel never reads
    w = logits if weight is None else weight.contiguous(memory_format=fmt)
    pw = logits if pos_weight is None else pos_weight.contiguous(memory_format=fmt)
    launch(k.bce_fwd, logits, R, C, (logits, target, w, pw, out), scale_bits(scale), reduction, out,
           HAS_W=weight is not None, HAS_PW=pos_weight is not None)
    return out


@op("bernoulli_nll_backward")
def bernoulli_nll_backward(grad: Tensor, logits: Tensor, target: Tensor, reduction: int, scale: float,
                           target_grad: bool, weight: Tensor | None = None,
                           pos_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    fmt = _shapes.memory_format(logits)  # channels-last stays channels-last
    grad = grad_arg(grad, fmt, reduction)
    logits, target = logits.contiguous(memory_format=fmt), target.contiguous(memory_format=fmt)
    glogits = torch.empty_like(logits)
    gtarget = torch.empty_like(target) if target_grad else logits.new_empty(0)
    R, C = rows_cols(logits, reduction)
    outs = (glogits, gtarget if target_grad else glogits)
    w = logits if weight is None else weight.contiguous(memory_format=fmt)
    pw = logits if pos_weight is None else pos_weight.contiguous(memory_format=fmt)
    launch(k.bce_bwd, logits, R, C, (grad, logits, target, w, pw, *outs), scale_bits(scale), reduction,
           TARGET_GRAD=target_grad, HAS_W=weight is not None, HAS_PW=pos_weight is not None)
    return glogits, gtarget


@op("gaussian_nll")
def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor, reduction: int, scale: float,
                 out_dtype: torch.dtype | None = None) -> Tensor:
    fmt = _shapes.memory_format(mean)  # channels-last stays channels-last
    mean, logvar, target = (t.contiguous(memory_format=fmt) for t in (mean, logvar, target))
    out = reduced_out(mean, reduction, out_dtype)
    R, C = rows_cols(mean, reduction)
    launch(k.gnll_fwd, mean, R, C, (mean, logvar, target, out), scale_bits(scale), reduction, out)
    return out


@op("gaussian_nll_backward")
def gaussian_nll_backward(grad: Tensor, mean: Tensor, logvar: Tensor, target: Tensor, reduction: int,
                          scale: float) -> tuple[Tensor, Tensor]:
    fmt = _shapes.memory_format(mean)  # channels-last stays channels-last
    grad = grad_arg(grad, fmt, reduction)
    mean, logvar, target = (t.contiguous(memory_format=fmt) for t in (mean, logvar, target))
    gmean, glv = torch.empty_like(mean), torch.empty_like(logvar)
    R, C = rows_cols(mean, reduction)
    launch(k.gnll_bwd, mean, R, C, (grad, mean, logvar, target, gmean, glv), scale_bits(scale), reduction)
    return gmean, glv


# ---------------------------------------------------------------- sampling

def sample(mu, logvar, philox, num_samples: int, with_kl: bool, logvar_min, logvar_max):
    fmt = _shapes.memory_format(mu)  # a channels-last mu: z channels-last, no copies (_shapes.sample_out)
    mu, logvar = mu.contiguous(memory_format=fmt), logvar.contiguous(memory_format=fmt)
    z = _shapes.sample_out(mu, num_samples)
    kl = reduced_out(mu, ROWS) if with_kl else z
    reduction = ROWS if with_kl else NONE
    R, C = rows_cols(mu, reduction)  # rows only matter for the KL
    lo, hi, clamp = bounds(logvar_min, logvar_max)
    launch(k.sample_fwd, mu, R, C, (mu, logvar, philox, z, kl, lo, hi), num_samples, reduction, kl,
           FAST_RNG=fast_rng(R, C), CLAMP=clamp)
    return z, kl


def sample_backward(grad_z, grad_kl, mu, logvar, philox, num_samples: int, logvar_min, logvar_max):
    # eps replayed in the forward's order: mu's layout (without mu, the autograd passes logvar in it)
    with_kl = grad_kl is not None
    fmt = _shapes.memory_format(mu if with_kl else logvar)
    logvar = logvar.contiguous(memory_format=fmt)
    grad_z = _shapes.in_sample_layout(grad_z, logvar, num_samples)
    glv = torch.empty_like(logvar)
    gmu = torch.empty_like(logvar) if with_kl else glv
    reduction = ROWS if with_kl else NONE
    R, C = rows_cols(logvar, reduction)
    lo, hi, clamp = bounds(logvar_min, logvar_max)
    launch(k.sample_bwd, logvar, R, C, (grad_z, grad_kl.contiguous() if with_kl else glv,
           mu.contiguous(memory_format=fmt) if with_kl else glv, logvar, philox, gmu, glv, lo, hi), num_samples, reduction,
           FAST_RNG=fast_rng(R, C), CLAMP=clamp)
    return gmu, glv


@op("reparameterize")
def reparameterize(mu: Tensor, logvar: Tensor, philox: Tensor, num_samples: int, logvar_min: float | None = None,
                   logvar_max: float | None = None) -> Tensor:
    return sample(mu, logvar, philox, num_samples, False, logvar_min, logvar_max)[0]


@op("reparameterize_backward")
def reparameterize_backward(grad_z: Tensor, logvar: Tensor, philox: Tensor, num_samples: int,
                            logvar_min: float | None = None, logvar_max: float | None = None) -> Tensor:
    return sample_backward(grad_z, None, logvar, logvar, philox, num_samples, logvar_min, logvar_max)[1]


@op("sample_and_kl")
def sample_and_kl(mu: Tensor, logvar: Tensor, philox: Tensor, num_samples: int, logvar_min: float | None = None,
                  logvar_max: float | None = None) -> tuple[Tensor, Tensor]:
    return sample(mu, logvar, philox, num_samples, True, logvar_min, logvar_max)


@op("sample_and_kl_backward")
def sample_and_kl_backward(grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor, philox: Tensor,
                           num_samples: int, logvar_min: float | None = None,
                           logvar_max: float | None = None) -> tuple[Tensor, Tensor]:
    return sample_backward(grad_z, grad_kl, mu, logvar, philox, num_samples, logvar_min, logvar_max)


from . import iwae as _iwae  # noqa: E402,F401  (defines log_density(_backward): vae_fast/triton/iwae.py)
