"""Triton kernels, forward and backward.

Every kernel sees its input as an (R, C) row-major matrix (R = 1 unless the reduction is per row; a
SUM is the one row of R = 1) cut into [BLOCK_R, BLOCK_C] tiles, and walks *units* of tiles with a
grid-stride loop: unit u is tiles (rb, cb) of row band rb = u // n_seg for cb in
[seg * tps, seg * tps + tps), seg = u % n_seg (a row's last unit may reach past its end: masked). The tiling and the units depend on (R, C) only
(ops.plan), never on the grid, so every reduction is bitwise reproducible for any number of programs:
- REDUCE=False: elementwise; a unit is one tile.
- REDUCE=True, SPLIT=False: a unit holds whole rows and writes scale * their sums.
- REDUCE=True, SPLIT=True (BLOCK_R = 1, rows longer than a tile): a unit is a run of tiles of one
  row; it writes its partial sum to ws[u]. Each program then takes a ticket (one acq_rel atomic on
  a counter that ops keeps at 0 between launches); the program that takes the last one adds each
  row's n_seg partials in order, writes scale * sum, and puts the counter back to 0. No memset, no
  float atomics.
"""
import triton
import triton.language as tl

# helpers by bare name: torch.compile (inductor) copies a kernel's source with the JIT
# functions it names from its globals, not those reached as module attributes
from .math import (bce, bce_w, bce_w_grads, clamp_grad, clamp_logvar, eps_at, eps_contiguous, gauss_nll,
                   gauss_nll_grads, kl_prior, kl_prior_grads, kl_std, scale_of, sigmoid)


@triton.jit
def first_unit(n_seg):
    """(row band, segment) of this program's first unit, and the step to its next one: the
    grid-stride loop advances them without an integer division per unit."""
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    return pid // n_seg, pid % n_seg, step // n_seg, step % n_seg


@triton.jit
def next_unit(rb, seg, step_rb, step_seg, n_seg):
    seg += step_seg
    wrap = seg >= n_seg
    return rb + step_rb + wrap.to(tl.int32), tl.where(wrap, seg - n_seg, seg)


@triton.jit
def tile(rb, cb, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Tile (rb, cb) -> (row indices, flat int64 offsets, mask). Columns in C's integer type: int32
    (the code as ever) unless a row has 2^31 elements or more, where Triton passes C as int64 and
    cb * BLOCK_C would wrap in int32. Rows stay int32 (ops.launch refuses 2^31 rows)."""
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (cb + 0 * C) * BLOCK_C + tl.arange(0, BLOCK_C)  # 0 * C: C's type (int32, or int64)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    return rows, offs, mask


@triton.jit
def put(out_ptr, val, acc, offs, mask, REDUCE: tl.constexpr):
    """Elementwise store, or accumulate for the unit's row sums. Returns acc."""
    if REDUCE:
        acc += tl.where(mask, val, 0.0)
    else:
        tl.store(out_ptr + offs, val, mask=mask)
    return acc


@triton.jit
def end_unit(out_ptr, ws_ptr, acc, u, rows, R, scale, REDUCE: tl.constexpr, SPLIT: tl.constexpr):
    """A unit's row sums: scaled into out (whole rows), or its partial into ws[u] (SPLIT)."""
    if REDUCE:
        row_sums = tl.sum(acc, axis=1)
        if SPLIT:
            tl.store(ws_ptr + u, tl.sum(row_sums))
        else:
            tl.store(out_ptr + rows, row_sums * scale, mask=rows < R)


@triton.jit
def finish(out_ptr, ws_ptr, count_ptr, R, n_seg, scale, SPLIT: tl.constexpr,
           SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """SPLIT: the last program to finish sums the partials ws[row * n_seg + seg] in seg order."""
    if SPLIT:
        tl.debug_barrier()  # every thread's ws store comes before this program's release
        ticket = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
        if ticket == tl.num_programs(0) - 1:
            segs = tl.arange(0, SEG_BLOCK)
            for r0 in range(0, R, ROW_BLOCK):
                rows = r0 + tl.arange(0, ROW_BLOCK)
                inside = (rows[:, None] < R) & (segs[None, :] < n_seg)
                # .cg: read the partials from L2, where the other programs' stores are
                part = tl.load(ws_ptr + rows[:, None] * n_seg + segs[None, :], mask=inside, other=0.0,
                               cache_modifier=".cg")
                tl.store(out_ptr + rows, tl.sum(part, axis=1) * scale, mask=rows < R)
            tl.store(count_ptr, 0)  # ready for the next launch on this stream


@triton.jit
def load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCE: tl.constexpr, ACC: tl.constexpr):
    """The output gradient as seen by each element of the tile: grad[i], or scale * grad[row]
    (a SUM is the single row of R = 1)."""
    if REDUCE:
        g = tl.load(grad_ptr + rows, mask=rows < R, other=0.0).to(ACC)[:, None] * scale
        return g + tl.zeros(offs.shape, ACC)
    else:
        return tl.load(grad_ptr + offs, mask=mask, other=0.0).to(ACC)


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


# Every kernel takes (*its tensors, ws, count, R, C, n_units, n_seg, tps, scale_bits or S) and the
# constexprs REDUCE, SPLIT, F64, BLOCK_R, BLOCK_C, SEG_BLOCK, ROW_BLOCK (ops.launch).
# scale_bits: the float64 bits of `scale` (scale_of); not specialised, so no recompiles per scale.
# lo_bits, hi_bits (sampling and KL kernels): the logvar bounds, the same way; CLAMP: any bound given.

# ---------------------------------------------------------------- losses

@triton.jit(do_not_specialize=["scale_bits", "lo_bits", "hi_bits"])
def kl_fwd(mu_ptr, lv_ptr, pmu_ptr, plv_ptr, out_ptr, lo_bits, hi_bits, ws_ptr, count_ptr, R, C, n_units, n_seg, tps,
           scale_bits, HAS_PMU: tl.constexpr, HAS_PLV: tl.constexpr, CLAMP: tl.constexpr,
           REDUCE: tl.constexpr, SPLIT: tl.constexpr,
           F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
           SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    lo = scale_of(lo_bits, ACC)  # the logvar bounds (float64 bits; used with CLAMP only)
    hi = scale_of(hi_bits, ACC)
    scale = scale_of(scale_bits, ACC)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            mu = load(mu_ptr, offs, mask, ACC)
            lv = load(lv_ptr, offs, mask, ACC)
            if CLAMP:
                lv = clamp_logvar(lv, lo, hi)
            if HAS_PMU or HAS_PLV:
                pmu = load_or_zero(pmu_ptr, offs, mask, HAS_PMU, ACC)
                plv = load_or_zero(plv_ptr, offs, mask, HAS_PLV, ACC)
                val = kl_prior(mu, lv, pmu, plv)
            else:
                val = kl_std(mu, lv)
            acc = put(out_ptr, val, acc, offs, mask, REDUCE)
        end_unit(out_ptr, ws_ptr, acc, u, rb * BLOCK_R + tl.arange(0, BLOCK_R), R, scale, REDUCE, SPLIT)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)
    finish(out_ptr, ws_ptr, count_ptr, R, n_seg, scale, SPLIT, SEG_BLOCK, ROW_BLOCK)


@triton.jit(do_not_specialize=["scale_bits", "lo_bits", "hi_bits"])
def kl_bwd(grad_ptr, mu_ptr, lv_ptr, pmu_ptr, plv_ptr, gmu_ptr, glv_ptr, gplv_ptr, lo_bits, hi_bits, ws_ptr, count_ptr,
           R, C, n_units, n_seg, tps, scale_bits,
           HAS_PMU: tl.constexpr, HAS_PLV: tl.constexpr, CLAMP: tl.constexpr, REDUCE: tl.constexpr,
           SPLIT: tl.constexpr,
           F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
           SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    lo = scale_of(lo_bits, ACC)  # the logvar bounds (float64 bits; used with CLAMP only)
    hi = scale_of(hi_bits, ACC)
    scale = scale_of(scale_bits, ACC)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            g = load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCE, ACC)
            mu = load(mu_ptr, offs, mask, ACC)
            lv = load(lv_ptr, offs, mask, ACC)
            pmu = load_or_zero(pmu_ptr, offs, mask, HAS_PMU, ACC)
            plv = load_or_zero(plv_ptr, offs, mask, HAS_PLV, ACC)
            if CLAMP:
                gmu, glv, gplv = kl_prior_grads(mu, clamp_logvar(lv, lo, hi), pmu, plv, g)
                glv = clamp_grad(glv, lv, lo, hi)
            else:
                gmu, glv, gplv = kl_prior_grads(mu, lv, pmu, plv, g)
            tl.store(gmu_ptr + offs, gmu, mask=mask)
            tl.store(glv_ptr + offs, glv, mask=mask)
            if HAS_PLV:
                tl.store(gplv_ptr + offs, gplv, mask=mask)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)

@triton.jit
def load_or_one(ptr, offs, mask, PRESENT: tl.constexpr, ACC: tl.constexpr):
    """An optional weight: ones when absent, without touching memory."""
    if PRESENT:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        return tl.full(offs.shape, 1.0, ACC)


@triton.jit(do_not_specialize=["scale_bits"])
def bce_fwd(x_ptr, t_ptr, w_ptr, pw_ptr, out_ptr, ws_ptr, count_ptr, R, C, n_units, n_seg, tps, scale_bits,
            HAS_W: tl.constexpr, HAS_PW: tl.constexpr,
            REDUCE: tl.constexpr, SPLIT: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr,
            BLOCK_C: tl.constexpr, SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """F.binary_cross_entropy_with_logits, with weight and / or pos_weight when HAS_W / HAS_PW
    (without either: bce, not bce_w with ones, and w_ptr, pw_ptr unread)."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    scale = scale_of(scale_bits, ACC)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            x = load(x_ptr, offs, mask, ACC)
            t = load(t_ptr, offs, mask, ACC)
            if HAS_W or HAS_PW:
                val = bce_w(x, t, load_or_one(w_ptr, offs, mask, HAS_W, ACC),
                              load_or_one(pw_ptr, offs, mask, HAS_PW, ACC))
            else:
                val = bce(x, t)
            acc = put(out_ptr, val, acc, offs, mask, REDUCE)
        end_unit(out_ptr, ws_ptr, acc, u, rb * BLOCK_R + tl.arange(0, BLOCK_R), R, scale, REDUCE, SPLIT)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)
    finish(out_ptr, ws_ptr, count_ptr, R, n_seg, scale, SPLIT, SEG_BLOCK, ROW_BLOCK)


@triton.jit(do_not_specialize=["scale_bits"])
def bce_bwd(grad_ptr, x_ptr, t_ptr, w_ptr, pw_ptr, gx_ptr, gt_ptr, ws_ptr, count_ptr, R, C, n_units, n_seg, tps,
            scale_bits, HAS_W: tl.constexpr, HAS_PW: tl.constexpr,
            TARGET_GRAD: tl.constexpr, REDUCE: tl.constexpr, SPLIT: tl.constexpr, F64: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    scale = scale_of(scale_bits, ACC)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            g = load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCE, ACC)
            x = load(x_ptr, offs, mask, ACC)
            t = load(t_ptr, offs, mask, ACC)
            if HAS_W or HAS_PW:
                gx, gt = bce_w_grads(x, t, load_or_one(w_ptr, offs, mask, HAS_W, ACC),
                                       load_or_one(pw_ptr, offs, mask, HAS_PW, ACC), g)
            else:
                gx = g * (sigmoid(x) - t)
                gt = -g * x
            tl.store(gx_ptr + offs, gx, mask=mask)
            if TARGET_GRAD:
                tl.store(gt_ptr + offs, gt, mask=mask)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)


@triton.jit(do_not_specialize=["scale_bits"])
def gnll_fwd(mean_ptr, lv_ptr, t_ptr, out_ptr, ws_ptr, count_ptr, R, C, n_units, n_seg, tps, scale_bits,
             REDUCE: tl.constexpr, SPLIT: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr,
             BLOCK_C: tl.constexpr, SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    scale = scale_of(scale_bits, ACC)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            val = gauss_nll(load(mean_ptr, offs, mask, ACC), load(lv_ptr, offs, mask, ACC),
                              load(t_ptr, offs, mask, ACC))
            acc = put(out_ptr, val, acc, offs, mask, REDUCE)
        end_unit(out_ptr, ws_ptr, acc, u, rb * BLOCK_R + tl.arange(0, BLOCK_R), R, scale, REDUCE, SPLIT)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)
    finish(out_ptr, ws_ptr, count_ptr, R, n_seg, scale, SPLIT, SEG_BLOCK, ROW_BLOCK)


@triton.jit(do_not_specialize=["scale_bits"])
def gnll_bwd(grad_ptr, mean_ptr, lv_ptr, t_ptr, gmean_ptr, glv_ptr, ws_ptr, count_ptr,
             R, C, n_units, n_seg, tps, scale_bits,
             REDUCE: tl.constexpr, SPLIT: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr,
             BLOCK_C: tl.constexpr, SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    scale = scale_of(scale_bits, ACC)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            g = load_grad(grad_ptr, rows, offs, mask, R, scale, REDUCE, ACC)
            gmean, glv = gauss_nll_grads(load(mean_ptr, offs, mask, ACC), load(lv_ptr, offs, mask, ACC),
                                           load(t_ptr, offs, mask, ACC), g)
            tl.store(gmean_ptr + offs, gmean, mask=mask)
            tl.store(glv_ptr + offs, glv, mask=mask)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)

# ---------------------------------------------------------------- sampling

@triton.jit
def eps_tile(seed, offset, s, N, rb, cb, offs, C,
             FAST_RNG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """eps of sample s for tile (rb, cb); FAST_RNG when the tile is a contiguous, 4-aligned run."""
    if FAST_RNG:
        base = s * N + (rb * BLOCK_R).to(tl.int64) * C + (cb + 0 * C) * BLOCK_C  # as in tile
        return eps_contiguous(seed, offset, base, BLOCK_R, BLOCK_C)
    else:
        return eps_at(seed, offset, s * N + offs)


@triton.jit(do_not_specialize=["lo_bits", "hi_bits"])
def sample_fwd(mu_ptr, lv_ptr, philox_ptr, z_ptr, kl_ptr, lo_bits, hi_bits, ws_ptr, count_ptr, R, C, n_units, n_seg, tps,
               S, FAST_RNG: tl.constexpr, CLAMP: tl.constexpr, REDUCE: tl.constexpr, SPLIT: tl.constexpr, F64: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """z[s] = mu + exp(0.5*lv) * eps for every sample s; with REDUCE the KL row sums as well."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    lo = scale_of(lo_bits, ACC)  # the logvar bounds (float64 bits; used with CLAMP only)
    hi = scale_of(hi_bits, ACC)
    seed = tl.load(philox_ptr)
    offset = tl.load(philox_ptr + 1)
    N = tl.cast(R, tl.int64) * C  # tl.cast: R may arrive as the constexpr 1 (Triton specialises 1)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            mu = load(mu_ptr, offs, mask, ACC)
            lv = load(lv_ptr, offs, mask, ACC)
            if CLAMP:
                lv = clamp_logvar(lv, lo, hi)
            std = tl.exp(0.5 * lv)
            for s in range(S):
                eps = eps_tile(seed, offset, s, N, rb, cb, offs, C, FAST_RNG, BLOCK_R, BLOCK_C).to(ACC)
                tl.store(z_ptr + s * N + offs, mu + std * eps, mask=mask)
            if REDUCE:
                acc += tl.where(mask, kl_std(mu, lv), 0.0)
        end_unit(kl_ptr, ws_ptr, acc, u, rb * BLOCK_R + tl.arange(0, BLOCK_R), R, 1.0, REDUCE, SPLIT)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)
    finish(kl_ptr, ws_ptr, count_ptr, R, n_seg, 1.0, SPLIT, SEG_BLOCK, ROW_BLOCK)


@triton.jit(do_not_specialize=["lo_bits", "hi_bits"])
def sample_bwd(gz_ptr, gkl_ptr, mu_ptr, lv_ptr, philox_ptr, gmu_ptr, glv_ptr, lo_bits, hi_bits, ws_ptr, count_ptr,
               R, C, n_units, n_seg, tps, S,
               FAST_RNG: tl.constexpr, CLAMP: tl.constexpr, REDUCE: tl.constexpr, SPLIT: tl.constexpr, F64: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SEG_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """Replays eps; grad_logvar (and with REDUCE, the KL's gradient, grad_mu too) in one pass over grad_z."""
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    lo = scale_of(lo_bits, ACC)  # the logvar bounds (float64 bits; used with CLAMP only)
    hi = scale_of(hi_bits, ACC)
    seed = tl.load(philox_ptr)
    offset = tl.load(philox_ptr + 1)
    N = tl.cast(R, tl.int64) * C  # tl.cast: R may arrive as the constexpr 1 (Triton specialises 1)
    rb, seg, step_rb, step_seg = first_unit(n_seg)
    for u in range(tl.program_id(0), n_units, tl.num_programs(0)):
        for j in range(tps):  # the unit's tiles; past the row's end the mask is all false
            cb = seg * tps + j
            rows, offs, mask = tile(rb, cb, R, C, BLOCK_R, BLOCK_C)
            lv_in = load(lv_ptr, offs, mask, ACC)
            lv = clamp_logvar(lv_in, lo, hi) if CLAMP else lv_in
            std = tl.exp(0.5 * lv)
            sum_gz = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            sum_gz_eps = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            for s in range(S):
                gz = load(gz_ptr + s * N, offs, mask, ACC)
                eps = eps_tile(seed, offset, s, N, rb, cb, offs, C, FAST_RNG, BLOCK_R, BLOCK_C).to(ACC)
                sum_gz += gz
                sum_gz_eps += gz * eps
            glv = 0.5 * std * sum_gz_eps
            if REDUCE:
                gkl = load_grad(gkl_ptr, rows, offs, mask, R, 1.0, True, ACC)
                mu = load(mu_ptr, offs, mask, ACC)
                tl.store(gmu_ptr + offs, sum_gz + gkl * mu, mask=mask)
                glv += 0.5 * gkl * (tl.exp(lv) - 1.0)
            if CLAMP:
                glv = clamp_grad(glv, lv_in, lo, hi)
            tl.store(glv_ptr + offs, glv, mask=mask)
        rb, seg = next_unit(rb, seg, step_rb, step_seg, n_seg)
