"""Element math and RNG for the Triton kernels: each formula once (the C++ twin is kernels/vae_math.h,
the ground truth vae_fast/reference.py). Arguments are already in the compute dtype."""
import triton
import triton.language as tl


# ---- the RNG contract (docs/rng.md): eps(i) = tl.randn4x(seed, offset + (i >> 2))[i & 3] ----

@triton.jit
def eps_contiguous(seed, offset, base, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """eps for flat indices base .. base + BLOCK_R*BLOCK_C - 1, shaped [BLOCK_R, BLOCK_C].
    Needs base % 4 == 0: one Philox call feeds four neighbouring elements."""
    counters = offset + (base >> 2) + tl.arange(0, BLOCK_R * BLOCK_C // 4).to(tl.int64)
    n1, n2, n3, n4 = tl.randn4x(seed, counters)
    # join stacks on a new last axis: [k, j, l] = (n1, n3 | n2, n4)[l][j] -> row-major n1 n2 n3 n4
    eps = tl.join(tl.join(n1, n3), tl.join(n2, n4))
    return tl.reshape(eps, [BLOCK_R, BLOCK_C])


@triton.jit
def eps_at(seed, offset, flat):
    """eps for arbitrary flat indices (any alignment): the same values as eps_contiguous."""
    i1, i2, i3, i4 = tl.randint4x(seed, offset + (flat >> 2))
    first_pair = (flat & 3) < 2
    u_a = tl.uint_to_uniform_float(tl.where(first_pair, i1, i3))
    u_b = tl.uint_to_uniform_float(tl.where(first_pair, i2, i4))
    n_cos, n_sin = tl.pair_uniform_to_normal(u_a, u_b)
    return tl.where((flat & 1) == 0, n_cos, n_sin)


# ---- KL(N(mu, e^lv) || N(pmu, e^plv)) ----

@triton.jit
def kl_std(mu, lv):
    return 0.5 * (mu * mu + tl.exp(lv) - 1.0 - lv)


@triton.jit
def kl_prior(mu, lv, pmu, plv):
    diff = mu - pmu
    return 0.5 * (plv - lv + (tl.exp(lv) + diff * diff) * tl.exp(-plv) - 1.0)


@triton.jit
def kl_prior_grads(mu, lv, pmu, plv, g):
    """(d/dmu, d/dlv, d/dplv) of g * kl_prior; d/dpmu = -d/dmu."""
    inv_pvar = tl.exp(-plv)
    diff = mu - pmu
    ratio = tl.exp(lv) * inv_pvar
    return g * diff * inv_pvar, 0.5 * g * (ratio - 1.0), 0.5 * g * (1.0 - ratio - diff * diff * inv_pvar)


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
def sigmoid(x):
    # stable for large |x|: exp of a non-positive number only
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ---- Gaussian NLL: 0.5*(log 2pi + lv + (t - m)^2 e^-lv) ----

LOG_2PI = tl.constexpr(1.8378770664093453)


@triton.jit
def gauss_nll(m, lv, t):
    d = t - m
    return 0.5 * (LOG_2PI + lv + d * d * tl.exp(-lv))


@triton.jit
def gauss_nll_grads(m, lv, t, g):
    """(d/dmean, d/dlogvar) of g * gauss_nll; d/dtarget = -d/dmean."""
    d = t - m
    w = tl.exp(-lv)
    return -g * d * w, 0.5 * g * (1.0 - d * d * w)
