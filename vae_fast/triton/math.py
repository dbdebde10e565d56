"""Element math and RNG for the Triton kernels: each formula once (the C++ twin is kernels/vae_math.h,
the ground truth vae_fast/reference.py). Arguments are already in the compute dtype.

Float64 kernels must stay float64: constants are Python floats (Triton makes them float64 next to a
float64 tensor) and no float32 scalar argument reaches the value path (ops passes `scale` as the bits
of a float64, see `scale_of`). tests/triton_aot.py checks the compiled float64 PTX for float32 math."""
import os

import triton
import triton.language as tl

# the one place TRITON_INTERPRET is read (triton reads it when @jit runs, i.e. at import)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# PTX approximations on a GPU; the interpreter has no inline asm, so it uses tl.sqrt/sin/cos
PTX_APPROX = tl.constexpr(not INTERPRETED)


@triton.jit
def scale_of(scale_bits, ACC: tl.constexpr):
    """The float64 whose bits ops passed as an int (a float argument would be float32)."""
    return tl.cast(scale_bits, tl.int64).to(tl.float64, bitcast=True).to(ACC)


# ---- the RNG contract v2 (docs/rng.md): Philox4x32-10 words -> uniforms -> fast Box-Muller ----

@triton.jit
def sqrt_approx(x):
    if PTX_APPROX:
        return tl.inline_asm_elementwise("sqrt.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.sqrt(x)


@triton.jit
def sin_approx(x):
    if PTX_APPROX:
        return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.sin(x)


@triton.jit
def cos_approx(x):
    if PTX_APPROX:
        return tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.cos(x)


@triton.jit
def vae_log(x):
    """log(x) for positive normal float32 x, exactly the contract's sequence (docs/rng.md): every
    line one rounding; each product that feeds a sum is an explicit tl.fma, so there is nothing
    left for LLVM to contract (the PTX is checked in tests/triton_aot.py)."""
    i = x.to(tl.int32, bitcast=True)
    e = ((i >> 23) & 0xFF) - 126
    m = ((i & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)  # x = m * 2^e, m in [0.5, 1)
    small = m < 0.70710678118654752
    e = tl.where(small, e - 1, e)
    m = tl.where(small, (m + m) - 1.0, m - 1.0)
    z = m * m
    y = tl.fma(7.0376836292e-2, m, -1.1514610310e-1)
    y = tl.fma(y, m, 1.1676998740e-1)
    y = tl.fma(y, m, -1.2420140846e-1)
    y = tl.fma(y, m, 1.4249322787e-1)
    y = tl.fma(y, m, -1.6668057665e-1)
    y = tl.fma(y, m, 2.0000714765e-1)
    y = tl.fma(y, m, -2.4999993993e-1)
    y = tl.fma(y, m, 3.3333331174e-1)
    y = y * m
    y = y * z
    ef = e.to(tl.float32)
    y = tl.fma(ef, -2.12194440e-4, y)
    y = tl.fma(-0.5, z, y)
    t = m + y
    return tl.fma(ef, 0.693359375, t)


@triton.jit
def box_muller(u1, u2):
    """(r*cos(th), r*sin(th)) of two float32 uniforms, step 4 of the contract."""
    u1 = tl.where(u1 > 1.0e-7, u1, 1.0e-7)
    r = sqrt_approx(-2.0 * vae_log(u1))
    th = 6.283185307179586 * u2
    return r * cos_approx(th), r * sin_approx(th)


@triton.jit
def normal4x(seed, counters):
    """The four float32 normals of Philox counter group `counters` (steps 1-3 are Triton's)."""
    i1, i2, i3, i4 = tl.randint4x(seed, counters)
    n1, n2 = box_muller(tl.uint_to_uniform_float(i1), tl.uint_to_uniform_float(i2))
    n3, n4 = box_muller(tl.uint_to_uniform_float(i3), tl.uint_to_uniform_float(i4))
    return n1, n2, n3, n4


@triton.jit
def eps_contiguous(seed, offset, base, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """eps for flat indices base .. base + BLOCK_R*BLOCK_C - 1, shaped [BLOCK_R, BLOCK_C].
    Needs base % 4 == 0: one Philox call feeds four neighbouring elements."""
    counters = offset + (base >> 2) + tl.arange(0, BLOCK_R * BLOCK_C // 4).to(tl.int64)
    n1, n2, n3, n4 = normal4x(seed, counters)
    # join stacks on a new last axis: [k, j, l] = (n1, n3 | n2, n4)[l][j] -> row-major n1 n2 n3 n4
    eps = tl.join(tl.join(n1, n3), tl.join(n2, n4))
    return tl.reshape(eps, [BLOCK_R, BLOCK_C])


@triton.jit
def eps_at(seed, offset, flat):
    """eps for arbitrary flat indices (any alignment): the same values as eps_contiguous."""
    i1, i2, i3, i4 = tl.randint4x(seed, offset + (flat >> 2))
    first_pair = (flat & 3) < 2
    n_cos, n_sin = box_muller(tl.uint_to_uniform_float(tl.where(first_pair, i1, i3)),
                              tl.uint_to_uniform_float(tl.where(first_pair, i2, i4)))
    return tl.where((flat & 1) == 0, n_cos, n_sin)


# ---- logvar clamped to [lo, hi] (kernels/vae_math.h: clamp_logvar, clamp_grad) ----

@triton.jit
def clamp_logvar(lv, lo, hi):
    """NaN stays NaN."""
    return tl.where(lv < lo, lo, tl.where(lv > hi, hi, lv))


@triton.jit
def clamp_grad(g, lv, lo, hi):
    """g times d clamp_logvar / d lv: zero outside (lo, hi) and on the bounds (vae_math.h)."""
    return tl.where((lv <= lo) | (lv >= hi), 0.0, g)


# ---- the stable forms of docs/ops.md "Numerics" ----

@triton.jit
def scaled(d, e):
    """d * e for e = exp(-v/2), so (d * e)^2 = d^2 * exp(-v): an exact 0 when d == 0 for any v,
    where d * e would be 0 * inf = NaN once exp(-v/2) overflows."""
    return tl.where(d == 0.0, 0.0, d * e)


# ---- KL(N(mu, e^lv) || N(pmu, e^plv)) ----

@triton.jit
def kl_std(mu, lv):
    return 0.5 * (mu * mu + tl.exp(lv) - 1.0 - lv)


@triton.jit
def kl_prior(mu, lv, pmu, plv):
    # e^(lv - plv), not e^lv * e^-plv (inf * 0 = NaN at lv = 100, plv = 1e4)
    q = scaled(mu - pmu, tl.exp(-0.5 * plv))
    return 0.5 * (plv - lv + tl.exp(lv - plv) + q * q - 1.0)


@triton.jit
def kl_prior_grads(mu, lv, pmu, plv, g):
    """(d/dmu, d/dlv, d/dplv) of g * kl_prior; d/dpmu = -d/dmu."""
    e = tl.exp(-0.5 * plv)
    q = scaled(mu - pmu, e)
    ratio = tl.exp(lv - plv)
    return g * scaled(q, e), 0.5 * g * (ratio - 1.0), 0.5 * g * (1.0 - ratio - q * q)


# ---- Bernoulli NLL on logits: max(x, 0) - x*t + log1p(exp(-|x|)) ----

@triton.jit
def log1p_exp_neg_abs(x):
    # log1p(y) for y = exp(-|x|) in (0, 1]: log(1 + y) loses digits for tiny y, so correct it
    # with the classic trick log1p(y) = log(u) * y / (u - 1), u = 1 + y (exact when u == 1).
    y = tl.exp(-tl.abs(x))
    u = 1.0 + y
    exact = u == 1.0
    return tl.where(exact, y, tl.log(u) * (y / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def bce(x, t):
    return tl.maximum(x, 0.0) - x * t + log1p_exp_neg_abs(x)


@triton.jit
def bce_w(x, t, w, pw):
    """F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw), elementwise:
    w * (bce(x, t) + (pw - 1) t softplus(-x)) (the C++ twin: kernels/vae_math.h bce_w)."""
    return w * (bce(x, t) + (pw - 1.0) * t * (tl.maximum(-x, 0.0) + log1p_exp_neg_abs(x)))


@triton.jit
def bce_w_grads(x, t, w, pw, g):
    """(d/dx, d/dt) of g * bce_w."""
    s = sigmoid(x)
    gw = g * w
    return (gw * ((s - t) + (pw - 1.0) * t * (s - 1.0)),
            gw * ((pw - 1.0) * (tl.maximum(-x, 0.0) + log1p_exp_neg_abs(x)) - x))


@triton.jit
def sigmoid(x):
    # stable for large |x|: exp of a non-positive number only
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ---- Gaussian NLL: 0.5*(log 2pi + lv + (t - m)^2 e^-lv) ----

LOG_2PI = tl.constexpr(1.8378770664093453)


@triton.jit
def gauss_nll(m, lv, t):
    # q^2 = (t - m)^2 e^-lv, finite at t == m for any lv
    q = scaled(t - m, tl.exp(-0.5 * lv))
    return 0.5 * (LOG_2PI + lv + q * q)


@triton.jit
def gauss_nll_grads(m, lv, t, g):
    """(d/dmean, d/dlogvar) of g * gauss_nll; d/dtarget = -d/dmean."""
    e = tl.exp(-0.5 * lv)
    q = scaled(t - m, e)
    return -g * scaled(q, e), 0.5 * g * (1.0 - q * q)


# ---- latent log-densities (vae_fast/iwae.py): a * log N(z; 0, 1) + b * log N(z; mu, e^lv) ----
# a = 1, b = -1: log p(z) - log q(z|x); b = 0 (the prior alone): pass mu = lv = 0

@triton.jit
def iw_log_density(z, mu, lv, a, b):
    q = scaled(z - mu, tl.exp(-0.5 * lv))  # (z - mu)^2 e^-lv as q^2: finite at z == mu for any lv
    return -0.5 * (a * (z * z + LOG_2PI) + b * (LOG_2PI + lv + q * q))


@triton.jit
def iw_log_density_grads(z, mu, lv, a, b, g):
    """(d/dz, d/dmu, d/dlv) of g * iw_log_density."""
    e = tl.exp(-0.5 * lv)
    q = scaled(z - mu, e)
    r = scaled(q, e)  # (z - mu) e^-lv
    return -g * (a * z + b * r), g * b * r, -0.5 * g * b * (1.0 - q * q)
