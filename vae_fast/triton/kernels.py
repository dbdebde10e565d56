"""Triton kernels, forward and backward. Every kernel sees its input as an (R, C) row-major matrix
(R = 1 unless the reduction is per row), walks it in [BLOCK_R, BLOCK_C] tiles with a grid-stride
loop (few programs, so few atomics), and reduces inside the kernel:
REDUCTION 0 writes elementwise, 1 adds scale*sum into out[0], 2 adds scale*row sums into out[row].
"""
import triton
import triton.language as tl

from . import math as m


@triton.jit
def tile(t, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Tile number t -> (row indices, flat int64 offsets, mask)."""
    n_cb = tl.cdiv(C, BLOCK_C)
    rows = (t // n_cb) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (t % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    return rows, offs, mask


@triton.jit
def reduce_tile(out_ptr, val, acc, rows, offs, mask, R, scale, REDUCTION: tl.constexpr):
    """Elementwise store (0), accumulate for a final sum (1), or add row sums (2). Returns acc."""
    val = tl.where(mask, val, 0.0)
    if REDUCTION == 0:
        tl.store(out_ptr + offs, val, mask=mask)
    elif REDUCTION == 1:
        acc += val
    else:
        tl.atomic_add(out_ptr + rows, tl.sum(val, axis=1) * scale, mask=rows < R)
    return acc


@triton.jit
def finish_sum(out_ptr, acc, scale, REDUCTION: tl.constexpr):
    if REDUCTION == 1:
        tl.atomic_add(out_ptr, tl.sum(acc) * scale)


@triton.jit
def load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCTION: tl.constexpr, ACC: tl.constexpr):
    """The output gradient as seen by each element of the tile."""
    if REDUCTION == 0:
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(ACC)
    elif REDUCTION == 1:
        g = tl.load(grad_ptr).to(ACC) * scale + tl.zeros(offs.shape, ACC)
    else:
        g = tl.load(grad_ptr + rows, mask=rows < R, other=0.0).to(ACC)[:, None] * scale + tl.zeros(offs.shape, ACC)
    return g


@triton.jit
def load(ptr, offs, mask, ACC: tl.constexpr):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)


@triton.jit
def load_or_zero(ptr, offs, mask, PRESENT: tl.constexpr, ACC: tl.constexpr):
    """An optional input (a prior): zeros when absent, without touching memory."""
    if PRESENT:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        return tl.zeros(offs.shape, ACC)


# ---------------------------------------------------------------- losses

@triton.jit
def kl_fwd(mu_ptr, lv_ptr, pmu_ptr, plv_ptr, out_ptr, R, C, scale, n_tiles,
           HAS_PMU: tl.constexpr, HAS_PLV: tl.constexpr, REDUCTION: tl.constexpr,
           F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        mu = load(mu_ptr, offs, mask, ACC)
        lv = load(lv_ptr, offs, mask, ACC)
        if HAS_PMU or HAS_PLV:
            pmu = load_or_zero(pmu_ptr, offs, mask, HAS_PMU, ACC)
            plv = load_or_zero(plv_ptr, offs, mask, HAS_PLV, ACC)
            val = m.kl_prior(mu, lv, pmu, plv)
        else:
            val = m.kl_std(mu, lv)
        acc = reduce_tile(out_ptr, val, acc, rows, offs, mask, R, scale, REDUCTION)
    finish_sum(out_ptr, acc, scale, REDUCTION)


@triton.jit
def kl_bwd(grad_ptr, mu_ptr, lv_ptr, pmu_ptr, plv_ptr, gmu_ptr, glv_ptr, gplv_ptr, R, C, scale, n_tiles,
           HAS_PMU: tl.constexpr, HAS_PLV: tl.constexpr, REDUCTION: tl.constexpr,
           F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        g = load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCTION, ACC)
        mu = load(mu_ptr, offs, mask, ACC)
        lv = load(lv_ptr, offs, mask, ACC)
        pmu = load_or_zero(pmu_ptr, offs, mask, HAS_PMU, ACC)
        plv = load_or_zero(plv_ptr, offs, mask, HAS_PLV, ACC)
        gmu, glv, gplv = m.kl_prior_grads(mu, lv, pmu, plv, g)
        tl.store(gmu_ptr + offs, gmu, mask=mask)
        tl.store(glv_ptr + offs, glv, mask=mask)
        if HAS_PLV:
            tl.store(gplv_ptr + offs, gplv, mask=mask)


@triton.jit
def bce_fwd(x_ptr, t_ptr, out_ptr, R, C, scale, n_tiles, REDUCTION: tl.constexpr,
            F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        val = m.bce(load(x_ptr, offs, mask, ACC), load(t_ptr, offs, mask, ACC))
        acc = reduce_tile(out_ptr, val, acc, rows, offs, mask, R, scale, REDUCTION)
    finish_sum(out_ptr, acc, scale, REDUCTION)


@triton.jit
def bce_bwd(grad_ptr, x_ptr, t_ptr, gx_ptr, gt_ptr, R, C, scale, n_tiles, TARGET_GRAD: tl.constexpr,
            REDUCTION: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        g = load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCTION, ACC)
        x = load(x_ptr, offs, mask, ACC)
        tl.store(gx_ptr + offs, g * (m.sigmoid(x) - load(t_ptr, offs, mask, ACC)), mask=mask)
        if TARGET_GRAD:
            tl.store(gt_ptr + offs, -g * x, mask=mask)


@triton.jit
def gnll_fwd(mean_ptr, lv_ptr, t_ptr, out_ptr, R, C, scale, n_tiles, REDUCTION: tl.constexpr,
             F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        val = m.gauss_nll(load(mean_ptr, offs, mask, ACC), load(lv_ptr, offs, mask, ACC),
                          load(t_ptr, offs, mask, ACC))
        acc = reduce_tile(out_ptr, val, acc, rows, offs, mask, R, scale, REDUCTION)
    finish_sum(out_ptr, acc, scale, REDUCTION)


@triton.jit
def gnll_bwd(grad_ptr, mean_ptr, lv_ptr, t_ptr, gmean_ptr, glv_ptr, R, C, scale, n_tiles,
             REDUCTION: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        g = load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCTION, ACC)
        gmean, glv = m.gauss_nll_grads(load(mean_ptr, offs, mask, ACC), load(lv_ptr, offs, mask, ACC),
                                       load(t_ptr, offs, mask, ACC), g)
        tl.store(gmean_ptr + offs, gmean, mask=mask)
        tl.store(glv_ptr + offs, glv, mask=mask)


# ---------------------------------------------------------------- sampling

@triton.jit
def eps_tile(seed, offset, s, N, t, offs, R, C,
             FAST_RNG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """eps of sample s for the tile; FAST_RNG when the tile is a contiguous, 4-aligned run."""
    if FAST_RNG:
        n_cb = tl.cdiv(C, BLOCK_C)
        base = s * N + ((t // n_cb) * BLOCK_R).to(tl.int64) * C + (t % n_cb) * BLOCK_C
        return m.eps_contiguous(seed, offset, base, BLOCK_R, BLOCK_C)
    else:
        return m.eps_at(seed, offset, s * N + offs)


@triton.jit
def sample_fwd(mu_ptr, lv_ptr, philox_ptr, z_ptr, kl_ptr, R, C, S, n_tiles, WITH_KL: tl.constexpr,
               FAST_RNG: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """z[s] = mu + exp(0.5*lv) * eps for every sample s; optionally KL row sums (ROWS) as well."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    seed = tl.load(philox_ptr)
    offset = tl.load(philox_ptr + 1)
    N = tl.cast(R, tl.int64) * C  # tl.cast: R may arrive as the constexpr 1 (Triton specialises 1)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        mu = load(mu_ptr, offs, mask, ACC)
        lv = load(lv_ptr, offs, mask, ACC)
        std = tl.exp(0.5 * lv)
        for s in range(S):
            eps = eps_tile(seed, offset, s, N, t, offs, R, C, FAST_RNG, BLOCK_R, BLOCK_C).to(ACC)
            tl.store(z_ptr + s * N + offs, mu + std * eps, mask=mask)
        if WITH_KL:
            reduce_tile(kl_ptr, m.kl_std(mu, lv), mu, rows, offs, mask, R, 1.0, 2)


@triton.jit
def sample_bwd(gz_ptr, gkl_ptr, mu_ptr, lv_ptr, philox_ptr, gmu_ptr, glv_ptr, R, C, S, n_tiles,
               WITH_KL: tl.constexpr, FAST_RNG: tl.constexpr, F64: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Replays eps; grad_logvar (and with WITH_KL grad_mu too) in one pass over grad_z."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    seed = tl.load(philox_ptr)
    offset = tl.load(philox_ptr + 1)
    N = tl.cast(R, tl.int64) * C  # tl.cast: R may arrive as the constexpr 1 (Triton specialises 1)
    for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows, offs, mask = tile(t, R, C, BLOCK_R, BLOCK_C)
        lv = load(lv_ptr, offs, mask, ACC)
        std = tl.exp(0.5 * lv)
        sum_gz = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        sum_gz_eps = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for s in range(S):
            gz = load(gz_ptr + s * N, offs, mask, ACC)
            eps = eps_tile(seed, offset, s, N, t, offs, R, C, FAST_RNG, BLOCK_R, BLOCK_C).to(ACC)
            sum_gz += gz
            sum_gz_eps += gz * eps
        glv = 0.5 * std * sum_gz_eps
        if WITH_KL:
            gkl = load_grad(gkl_ptr, rows, offs, mask, R, 1.0, 2, ACC)
            mu = load(mu_ptr, offs, mask, ACC)
            tl.store(gmu_ptr + offs, sum_gz + gkl * mu, mask=mask)
            glv += 0.5 * gkl * (tl.exp(lv) - 1.0)
        tl.store(glv_ptr + offs, glv, mask=mask)
