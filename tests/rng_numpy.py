"""An independent NumPy twin of the RNG contract (docs/rng.md), for checking every backend: `eps`
in float32 (libm functions) and `eps_float64`, the float64 ideal the tolerances are measured from."""
import numpy as np

KEY_A, KEY_B = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
ROUND_A, ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)


def philox(seed: int, counters: np.ndarray):
    """Philox4x32-10 with c0/c1 = low/high words of the int64 counter, c2 = c3 = 0."""
    c = counters.astype(np.uint64)
    c0, c1 = (c & 0xFFFFFFFF).astype(np.uint32), (c >> np.uint64(32)).astype(np.uint32)
    c2, c3 = np.zeros_like(c0), np.zeros_like(c0)
    k0 = np.full_like(c0, seed & 0xFFFFFFFF)
    k1 = np.full_like(c0, (seed >> 32) & 0xFFFFFFFF)
    for _ in range(10):
        prod_b = ROUND_B * c2.astype(np.uint64)
        prod_a = ROUND_A * c0.astype(np.uint64)
        c0, c1, c2, c3 = ((prod_b >> np.uint64(32)).astype(np.uint32) ^ c1 ^ k0,
                          prod_b.astype(np.uint32),
                          (prod_a >> np.uint64(32)).astype(np.uint32) ^ c3 ^ k1,
                          prod_a.astype(np.uint32))
        k0, k1 = k0 + KEY_A, k1 + KEY_B
    return c0, c1, c2, c3


def uniform(x: np.ndarray) -> np.ndarray:
    i = x.view(np.int32)
    i = np.where(i < 0, ~i, i)
    return i.astype(np.float32) * np.float32(4.6566127342e-10)


def eps(seed: int, offset: int, n: int) -> np.ndarray:
    """eps(i) for i in range(n), float32."""
    i = np.arange(n, dtype=np.int64)
    u = [uniform(w) for w in philox(seed, offset + (i >> 2))]
    first = (i & 3) < 2
    ua = np.maximum(np.float32(1e-7), np.where(first, u[0], u[2]))
    ub = np.where(first, u[1], u[3])
    r = np.sqrt(np.float32(-2.0) * np.log(ua))
    th = np.float32(6.283185307179586) * ub
    return np.where((i & 1) == 0, r * np.cos(th), r * np.sin(th)).astype(np.float32)


def eps_float64(seed: int, offset: int, n: int) -> np.ndarray:
    """eps(i) for i in range(n) by the contract v2 (docs/rng.md) with its float32 steps exact (the
    uniforms, max(1e-7, u1), th = float32(2*pi) * u2 rounded to float32) and log, sqrt, cos, sin
    in float64: what every backend approximates. float64."""
    i = np.arange(n, dtype=np.int64)
    u = [uniform(w) for w in philox(seed, offset + (i >> 2))]
    first = (i & 3) < 2
    ua = np.maximum(np.float32(1e-7), np.where(first, u[0], u[2])).astype(np.float64)
    ub = np.where(first, u[1], u[3])
    th = (np.float32(6.283185307179586) * ub).astype(np.float32).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(ua))
    return np.where((i & 1) == 0, r * np.cos(th), r * np.sin(th))
