"""Triton kernels and ops of log_density(_backward) (vae_fast/iwae.py; the math is math.log_density,
the C++ twin csrc/cpu/iwae_cpu.cpp): z (R, C), mu and logvar (B, C) broadcast over the R / B
samples of each batch row (row r uses row r % B), never copied K times.

Forward: a program per BLOCK_R rows, walking the columns in BLOCK_C chunks: elementwise, or row
sums (ROWS; a SUM adds the rows in float64 after, in row order: reproducible). Backward: a program
per BLOCK_N elements of mu, looping over the K samples in order: grad_z written, grad_mu and
grad_logvar summed in registers (one pass over z)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._schemas import NONE, SUM
# helpers by bare name: torch.compile (inductor) copies a kernel's source with the JIT
# functions it names from its globals, not those reached as module attributes
from .math import iw_log_density, iw_log_density_grads, scale_of
from . import ops as _ops
from .ops import INTERPRETED, op, scale_bits


@triton.jit(do_not_specialize=["a_bits", "b_bits", "scale_bits"])
def log_density_fwd(z_ptr, mu_ptr, lv_ptr, out_ptr, R, C, B, a_bits, b_bits, scale_bits,
                    HAS_Q: tl.constexpr, REDUCE: tl.constexpr, F64: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    a, b, scale = scale_of(a_bits, ACC), scale_of(b_bits, ACC), scale_of(scale_bits, ACC)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows64 = rows.to(tl.int64)
    qrows = (rows % B).to(tl.int64)  # the row of mu, logvar (an int32 modulo: R < 2^31 rows)
    acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < R) & (cols[None, :] < C)
        offs = rows64[:, None] * C + cols[None, :]
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_Q:
            qoffs = qrows[:, None] * C + cols[None, :]
            mu = tl.load(mu_ptr + qoffs, mask=mask, other=0.0).to(ACC)
            lv = tl.load(lv_ptr + qoffs, mask=mask, other=0.0).to(ACC)
            val = iw_log_density(z, mu, lv, a, b)
        else:
            val = iw_log_density(z, 0.0, 0.0, a, 0.0)
        if REDUCE:
            acc += tl.where(mask, val, 0.0)
        else:
            tl.store(out_ptr + offs, val * scale, mask=mask)
    if REDUCE:
        tl.store(out_ptr + rows, tl.sum(acc, axis=1) * scale, mask=rows < R)


@triton.jit(do_not_specialize=["a_bits", "b_bits", "scale_bits"])
def log_density_bwd(grad_ptr, z_ptr, mu_ptr, lv_ptr, gz_ptr, gmu_ptr, glv_ptr, N, C, K, a_bits,
                    b_bits, scale_bits, HAS_Q: tl.constexpr, PARAMS: tl.constexpr,
                    GRAD_MODE: tl.constexpr, F64: tl.constexpr, BLOCK_N: tl.constexpr):
    """N = B * C elements of mu; sample k's elements are z[k * N + i]. GRAD_MODE: NONE (grad per
    element), ROWS (per row of z: k * B + i // C) or SUM (one)."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    a, b, scale = scale_of(a_bits, ACC), scale_of(b_bits, ACC), scale_of(scale_bits, ACC)
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    if HAS_Q:
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(ACC)
        lv = tl.load(lv_ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        mu = tl.zeros([BLOCK_N], ACC)
        lv = tl.zeros([BLOCK_N], ACC)
        b = b * 0.0  # no q term without mu, logvar: q_coef is ignored
    gmu = tl.zeros([BLOCK_N], ACC)
    glv = tl.zeros([BLOCK_N], ACC)
    B = N // C
    zoffs = offs  # sample k's elements: offs + k * N, kept in int64 (k * N wraps in int32)
    for k in range(0, K):
        z = tl.load(z_ptr + zoffs, mask=mask, other=0.0).to(ACC)
        if GRAD_MODE == 0:
            g = tl.load(grad_ptr + zoffs, mask=mask, other=0.0).to(ACC)
        elif GRAD_MODE == 2:
            g = tl.load(grad_ptr + k * B + offs // C, mask=mask, other=0.0).to(ACC)
        else:
            g = tl.load(grad_ptr + offs * 0, mask=mask, other=0.0).to(ACC)
        dz, dmu, dlv = iw_log_density_grads(z, mu, lv, a, b, g * scale)
        tl.store(gz_ptr + zoffs, dz, mask=mask)
        gmu += dmu
        glv += dlv
        zoffs += N
    if PARAMS:
        tl.store(gmu_ptr + offs, gmu, mask=mask)
        tl.store(glv_ptr + offs, glv, mask=mask)


def _run(kernel):
    # ops.wrap_triton looked up per call: tests/triton_aot.py replaces it to record the launches
    return kernel if INTERPRETED else _ops.wrap_triton(kernel)


_bits = scale_bits  # a float argument as the bits of a float64 (Triton would pass float32)


@op("log_density")
def log_density(z: Tensor, mu: Tensor | None, logvar: Tensor | None, prior_coef: float, q_coef: float,
                reduction: int, scale: float) -> Tensor:
    z = z.contiguous()
    R, C = z.shape
    has_q = mu is not None
    mu = z if mu is None else mu.contiguous()
    lv = z if logvar is None else logvar.contiguous()
    B = mu.shape[0] if has_q else 1
    if reduction == NONE:
        out = torch.empty((R, C), dtype=z.dtype, device=z.device)
    else:
        out = torch.empty((R,), dtype=z.dtype, device=z.device)
    if R > 0 and not (INTERPRETED and _is_fake(z)):
        # tiles of <= 2048 elements over 8 warps: 8 per thread, in registers (no local memory)
        block_c = min(triton.next_power_of_2(max(C, 1)), 1024)
        block_r = max(1, min(triton.next_power_of_2(R), 2048 // block_c))
        with _ops.on_device(z):
            _run(log_density_fwd)[(triton.cdiv(R, block_r),)](
                z, mu, lv, out, R, C, B, _bits(prior_coef), _bits(q_coef),
                _bits(1.0 if reduction == SUM else scale), HAS_Q=has_q, REDUCE=reduction != NONE,
                F64=z.dtype == torch.float64, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8)
    if reduction == SUM:  # the rows in float64, in order
        return (out.double().sum() * scale).to(z.dtype)
    return out


@op("log_density_backward")
def log_density_backward(grad: Tensor, z: Tensor, mu: Tensor | None, logvar: Tensor | None,
                         prior_coef: float, q_coef: float, reduction: int, scale: float,
                         params_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    grad, z = grad.contiguous(), z.contiguous()
    R, C = z.shape
    has_q = mu is not None
    params = params_grad and has_q
    mu = z if mu is None else mu.contiguous()
    lv = z if logvar is None else logvar.contiguous()
    B = mu.shape[0] if has_q else R
    gz = torch.empty_like(z)
    gmu = torch.empty_like(mu) if params else z.new_empty(0)
    glv = torch.empty_like(mu) if params else z.new_empty(0)
    N = B * C
    if N > 0 and not (INTERPRETED and _is_fake(z)):
        block_n = min(triton.next_power_of_2(N), 1024)
        with _ops.on_device(z):
            _run(log_density_bwd)[(triton.cdiv(N, block_n),)](
                grad, z, mu, lv, gz, gmu if params else gz, glv if params else gz, N, C, R // B,
                _bits(prior_coef), _bits(q_coef), _bits(scale), HAS_Q=has_q, PARAMS=params,
                GRAD_MODE=reduction, F64=z.dtype == torch.float64, BLOCK_N=block_n)
    return gz, gmu, glv


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return type(t) is not torch.Tensor and is_fake(t)


from .. import _iwae_ops  # noqa: E402

_iwae_ops.register("vae_fast_triton")
