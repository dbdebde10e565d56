"""The Triton backend's numerics: reductions that are bitwise reproducible for any grid, the float64
`scale`, and the fast Box-Muller of the RNG contract (docs/rng.md). Runs interpreted on the CPU
(tests/conftest.py) and compiled on a GPU; tests/triton_aot.py checks the compiled code itself."""
import fractions
import struct

import numpy as np
import pytest
import torch

import vae_fast
from helpers import need
import rng_numpy

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from vae_fast.triton import math as vm  # noqa: E402  (after conftest set TRITON_INTERPRET)


@pytest.fixture
def tri():
    """The Triton backend's ops module and its device (skips, saying why, when it is unavailable)."""
    device = need("triton")
    from vae_fast.triton import ops
    return ops, device


# ---------------------------------------------------------------- reductions

def reduction_calls(device, dtype, shape):
    """name -> a function of nothing returning a forward reduction output (SUM and ROWS paths)."""
    g = torch.Generator().manual_seed(3)
    x, t = (torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype) for _ in range(2))
    lv = (0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device, dtype)
    p = torch.tensor([123, 456], dtype=torch.int64, device=device)
    ns = torch.ops.vae_fast_triton
    return {
        "bce_sum": lambda: ns.bernoulli_nll(x, t.sigmoid(), 1, 1 / 3),
        "bce_rows": lambda: ns.bernoulli_nll(x, t.sigmoid(), 2, 0.25),
        "kl_sum": lambda: ns.gaussian_kl(x, lv, None, None, 1, 1.0),
        "kl_prior_rows": lambda: ns.gaussian_kl(x, lv, t, lv.flip(-1), 2, 1.0),
        "gnll_sum": lambda: ns.gaussian_nll(x, lv, t, 1, 1 / 7),
        "sample_kl_rows": lambda: ns.sample_and_kl(x, lv, p, 1)[1],
    }


# (shape, MAX_PARTIALS): rows longer than a tile split over units of one or several tiles, whole rows
# per tile, and a SUM cut into units of several tiles
SPLIT_CASES = [((3, 40000), 1024), ((3, 40000), 4), ((37, 50), 1024), ((70000,), 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape,max_partials", SPLIT_CASES, ids=str)
def test_reductions_are_bitwise_reproducible_for_any_grid(tri, monkeypatch, dtype, shape, max_partials):
    ops, device = tri
    monkeypatch.setattr(ops, "MAX_PARTIALS", max_partials)
    ops.plan.cache_clear()
    try:
        calls = reduction_calls(device, dtype, shape)
        plans = [ops.plan(*ops.rows_cols(torch.empty(shape), red), True) for red in (1, 2)]
        if len(shape) > 1 and shape[1] > ops.MAX_TILE:
            assert any(p.constexprs["SPLIT"] for p in plans)  # the last-program path is exercised
        if max_partials < 1024 and shape[-1] > ops.MAX_TILE:
            assert any(p.tps > 1 for p in plans)  # units of several tiles
        results = {}
        for programs in (1, 2, 3, 7, 1000):
            monkeypatch.setattr(ops, "max_programs", lambda device, n=programs: n)
            for name, call in calls.items():
                results.setdefault(name, []).append(call())
        for name, outs in results.items():
            for out in outs[1:]:
                assert torch.equal(out, outs[0]), (name, out, outs[0])
        for count in ops._COUNTERS.values():  # the last program put every counter back to 0
            assert int(count.item()) == 0
    finally:
        ops.plan.cache_clear()


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_split_sum_matches_float64_reference(tri, reduction):
    """The split path's partials add up to the right total (float32 inputs, float64 reference)."""
    ops, device = tri
    x = torch.randn(5, 3 * ops.MAX_TILE + 17, device=device)
    t = torch.rand_like(x)
    got = vae_fast.bernoulli_nll(x, t, reduction=reduction, backend="triton")
    ref = vae_fast.bernoulli_nll(x.double(), t.double(), reduction=reduction, backend="reference")
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=0)
    rows = torch.ops.vae_fast_triton.bernoulli_nll(x, t, 2, 1.0)
    ref_rows = torch.nn.functional.binary_cross_entropy_with_logits(x.double(), t.double(), reduction="none").sum(1)
    torch.testing.assert_close(rows.double(), ref_rows, rtol=2e-6, atol=0)


def test_float64_scale_keeps_float64_precision(tri):
    """`scale` reaches float64 kernels with all 53 bits (Triton would pass a float as float32)."""
    ops, device = tri
    for scale in (1 / 3, 1 / 15, 0.1, -2.5e-300, 0.0, float("nan"), 1e300):
        assert struct.unpack("<d", struct.pack("<q", ops.scale_bits(scale)))[0] == scale or scale != scale
    x = torch.full((15,), 1.0, dtype=torch.float64, device=device)
    t = torch.zeros_like(x)
    for scale in (1 / 15, 1 / 3, 1 / 7):
        got = torch.ops.vae_fast_triton.gaussian_nll(x, torch.zeros_like(x), t, 1, scale).item()
        one = 0.5 * (np.log(2 * np.pi) + 1.0)
        assert abs(got - 15 * one * scale) <= 1e-14 * abs(got), (scale, got)  # float32: ~1e-8


# ---------------------------------------------------------------- the RNG contract v2

CONSTANTS = ["1e-7", "0.70710678118654752", "7.0376836292e-2", "-1.1514610310e-1", "1.1676998740e-1",
             "-1.2420140846e-1", "1.4249322787e-1", "-1.6668057665e-1", "2.0000714765e-1", "-2.4999993993e-1",
             "3.3333331174e-1", "-2.12194440e-4", "0.693359375", "6.283185307179586", "4.6566127342e-10"]


def nearest_f32(value) -> float:
    """The float32 nearest to a decimal string or Fraction (ties to even), as a C compiler reads
    `<decimal>f`."""
    exact = fractions.Fraction(value)
    x = np.float32(float(exact))
    candidates = [np.nextafter(x, np.float32(-np.inf)), x, np.nextafter(x, np.float32(np.inf))]
    best = min(candidates, key=lambda c: (abs(fractions.Fraction(float(c)) - exact),
                                          int(np.array(c).view(np.int32)) & 1))
    return float(best)


@pytest.mark.parametrize("decimal", CONSTANTS)
def test_contract_constants_round_like_c_float_literals(decimal):
    """Triton rounds a Python float (the decimal read as float64) to float32: twice. It must land on
    the float32 the CUDA/C++ twin's `...f` literal gives (one rounding), or eps would differ."""
    assert float(np.float32(float(decimal))) == nearest_f32(decimal)


def fma32(a, b, c):
    """float32 fma, correctly rounded: a*b is exact in float64; TwoSum gives the float64 sum's error,
    which only matters when that sum is exactly a float32 midpoint (then its sign decides)."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    r = s.astype(np.float32)
    up = r.astype(np.float64) > s
    lo = np.where(up, np.nextafter(r, np.float32(-np.inf)), r)
    hi = np.where(up, r, np.nextafter(r, np.float32(np.inf)))
    midpoint = (lo.astype(np.float64) + hi.astype(np.float64)) / 2 == s
    return np.where(midpoint & (err != 0), np.where(err > 0, hi, lo), r).astype(np.float32)


def test_fma32_twin_rounds_once():
    """The test's float32 fma against exact rational arithmetic, near-ties included."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(4000).astype(np.float32) for _ in range(2))
    c = -(a.astype(np.float64) * b).astype(np.float32)  # catastrophic cancellation
    c[::2] = rng.standard_normal(2000).astype(np.float32)
    # exact float64 ties: (1 + 2^-23)(1 - 2^-23) + (2^24 + 2) = 2^24 + 3 - 2^-46 rounds (float64) to
    # the float32 midpoint 2^24 + 3; the fma rounds down to 2^24 + 2 where ties-to-even gives 2^24 + 4
    u, d = np.float32(1 + 2.0 ** -23), np.float32(1 - 2.0 ** -23)
    a = np.concatenate([a, [u, u, -u, u]]).astype(np.float32)
    b = np.concatenate([b, [d, d, d, u]]).astype(np.float32)
    c = np.concatenate([c, [2.0 ** 24 + 2, 2.0 ** 24, -(2.0 ** 24 + 2), -(2.0 ** 24)]]).astype(np.float32)
    got = fma32(a, b, c)
    assert got[-4] == np.float32(2.0 ** 24 + 2) and got[-2] == np.float32(-(2.0 ** 24 + 2))
    for x, y, z, r in zip(a, b, c, got):
        exact = fractions.Fraction(float(x)) * fractions.Fraction(float(y)) + fractions.Fraction(float(z))
        assert float(r) == nearest_f32(exact)


def vae_log_twin(x):
    """docs/rng.md's vae_log, line by line in NumPy float32 with exact fma."""
    f32 = np.float32
    x = np.asarray(x, f32)
    i = x.view(np.int32)
    e = ((i >> 23) & 0xFF) - 126
    m = ((i & 0x007FFFFF) | 0x3F000000).view(f32)
    small = m < f32(0.70710678118654752)
    e = np.where(small, e - 1, e)
    m = np.where(small, (m + m) - f32(1), m - f32(1)).astype(f32)
    z = m * m
    y = f32(7.0376836292e-2)
    for c in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
              2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        y = fma32(y, m, f32(c))
    y = y * m
    y = y * z
    ef = e.astype(f32)
    y = fma32(ef, f32(-2.12194440e-4), y)
    y = fma32(f32(-0.5), z, y)
    t = m + y
    return fma32(ef, f32(0.693359375), t)


@triton.jit
def _log_and_normals(u_ptr, log_ptr, n_ptr, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    u1 = tl.load(u_ptr + 2 * i, mask=ok, other=0.5)
    u2 = tl.load(u_ptr + 2 * i + 1, mask=ok, other=0.5)
    tl.store(log_ptr + i, vm.vae_log(u1), mask=ok)
    n1, n2 = vm.box_muller(u1, u2)
    tl.store(n_ptr + 2 * i, n1, mask=ok)
    tl.store(n_ptr + 2 * i + 1, n2, mask=ok)


def run_rng_math(u: np.ndarray, device):
    """(vae_log(u[:, 0]), box_muller(u[:, 0], u[:, 1])) from the Triton kernels."""
    n = u.shape[0]
    ut = torch.from_numpy(np.ascontiguousarray(u, np.float32)).to(device)
    log = torch.empty(n, device=device)
    normals = torch.empty(n, 2, device=device)
    _log_and_normals[(triton.cdiv(n, 1024),)](ut, log, normals, n, BLOCK=1024)
    return log.cpu().numpy(), normals.cpu().numpy()


def uniforms(n, seed=0):
    """Contract uniforms (Philox words -> step 3), plus the edge values of u1."""
    words = rng_numpy.philox(seed, np.arange(n // 2, dtype=np.int64))
    u = np.stack([rng_numpy.uniform(w) for w in words], 1).reshape(-1, 2)
    edges = np.array([[0.0, 0.0], [1e-7, 0.25], [2.0 ** -24, 0.5], [0.5, 0.75], [0.70710677, 1 - 2 ** -24],
                      [0.7071068, 0.999], [1 - 2 ** -24, 1e-9], [(2 ** 31 - 1) * 4.6566127342e-10, 0.0]],
                     np.float32)
    return np.concatenate([edges, u.astype(np.float32)])


def test_vae_log_follows_the_contract(tri):
    """Compiled (GPU): bit for bit the contract's sequence. Interpreted (CPU): Triton's interpreter
    rounds tl.fma twice, so within 2 ulp of it; and always within 2 ulp of the true log."""
    _, device = tri
    u = uniforms(1 << 14)
    u1 = np.maximum(u[:, 0], np.float32(1e-7))  # vae_log's domain: positive normal floats
    got, _ = run_rng_math(np.stack([u1, u[:, 1]], 1), device)
    twin = vae_log_twin(u1)
    exact = np.log(u1.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(twin - exact) / ulp) <= 2.0
    assert np.max(np.abs(got - exact) / ulp) <= 2.0
    if device.type == "cuda":
        np.testing.assert_array_equal(got.view(np.int32), twin.view(np.int32))
    else:
        assert np.max(np.abs(got - twin) / ulp) <= 2.0


def test_box_muller_within_the_documented_tolerance(tri):
    """|eps - exact Box-Muller of the same uniforms| <= 2^-14 * max(1, |eps|) (docs/rng.md; GPU
    sin/cos/sqrt.approx), including u1 = 0 (clamped to 1e-7) and th close to 2 pi."""
    _, device = tri
    u = uniforms(1 << 15)
    _, n = run_rng_math(u, device)
    u1 = np.maximum(u[:, 0], np.float32(1e-7)).astype(np.float64)
    th = (np.float32(6.283185307179586) * u[:, 1]).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(u1))
    exact = np.stack([r * np.cos(th), r * np.sin(th)], 1)
    err = np.abs(n - exact) / np.maximum(1.0, np.abs(exact))
    assert err.max() <= 2.0 ** -14, err.max()
    if device.type == "cpu":  # interpreted: tl.sqrt/sin/cos in float32, a few ulp
        assert err.max() <= 2.0 ** -20, err.max()


def test_eps_contiguous_and_eps_at_agree(tri):
    """The 4-aligned tile path and the per-element path give the same eps (sampling op level)."""
    _, device = tri
    p = torch.tensor([0x123456789ABCDEF, (1 << 33) + 5], device=device)
    mu = torch.zeros(4096, device=device)
    fast = torch.ops.vae_fast_triton.reparameterize(mu, mu, p, 1).reshape(-1)  # FAST_RNG tiles
    slow = torch.ops.vae_fast_triton.reparameterize(mu[:4095], mu[:4095], p, 1).reshape(-1)  # eps_at
    assert torch.equal(fast[:4095], slow)
    expected = rng_numpy.eps(0x123456789ABCDEF, (1 << 33) + 5, 4096)
    np.testing.assert_allclose(fast.cpu().numpy(), expected, rtol=2 ** -14, atol=2 ** -14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_split_reductions_and_sampling_under_cuda_graph_capture(tri):
    """A captured split reduction gets its own zeroed counter: replays and the eager calls around
    them stay exact; each replay draws fresh eps."""
    ops, device = tri
    x = torch.randn(4, 3 * ops.MAX_TILE + 5, device=device)
    t = torch.rand_like(x)
    mu, lv = torch.randn(8, 3 * ops.MAX_TILE, device=device), torch.zeros(8, 3 * ops.MAX_TILE, device=device)
    eager = vae_fast.bernoulli_nll(x, t, reduction="sum", backend="triton")  # warm-up: compiles
    kl0 = vae_fast.sample_and_kl(mu, lv, backend="triton")[1]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = vae_fast.bernoulli_nll(x, t, reduction="sum", backend="triton")
        z, kl = vae_fast.sample_and_kl(mu, lv, backend="triton")
    samples = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager) and torch.equal(kl, kl0)
        samples.append(z.clone())
        assert torch.equal(vae_fast.bernoulli_nll(x, t, reduction="sum", backend="triton"), eager)
    assert not torch.equal(samples[0], samples[1])
    assert all(int(c.item()) == 0 for c in ops._COUNTERS.values())


def test_launch_refuses_2_31_rows(tri):
    """Row indices are int32 in the kernels (kernels.tile): 2^31 rows are refused with a message,
    never walked with wrapped indices (rows of 2^31+ elements are fine: tests/triton_aot.py index64)."""
    ops, device = tri
    from vae_fast.triton import kernels
    x = torch.zeros(4, device=device)
    with pytest.raises(RuntimeError, match=r"fewer than 2\^31 rows, got 2147483648; use the cuda backend"):
        ops.launch(kernels.kl_fwd, x, 2 ** 31, 1, (x,) * 5, ops.scale_bits(1.0), 2, out=x)
