"""The native CPU kernels (torch.ops.vae_fast on CPU tensors, from vae_fast._C) against the
reference (vae_fast/reference.py, gradients by autograd), op by op, forward and backward ops called
directly: every dtype and reduction, odd / non-contiguous / empty shapes; and the RNG contract
against Triton's tl.randn4x run in the interpreter (bit for bit for the words and uniforms)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vae_fast  # noqa: F401  (registers autograd and fakes for torch.ops.vae_fast)
from vae_fast import _native, reference
from vae_fast._schemas import NONE, ROWS, SUM

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"vae_fast._C unavailable: {_native.why_not()}")

ops = torch.ops.vae_fast
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (rtol, atol) against a float64 reference computed from the same (rounded) inputs
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (1.6e-2, 1.6e-2)}
# odd sizes, rows shorter and longer than a CPU block (1024), one row, many short rows, 0-d
SHAPES = [(), (1,), (7,), (3, 5), (4, 33, 7), (2, 1500), (1, 2500), (1100, 3)]
EMPTY = [(0,), (0, 4), (3, 0)]
REDUCTIONS = [(NONE, 1.0), (SUM, 0.5), (ROWS, 0.25)]


def close(actual, expected, dtype, mag=1.0):
    """expected is float64; the tolerance's absolute part scales with the magnitude `mag`."""
    rtol, atol = TOL[dtype]
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.is_contiguous()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol * max(mag, 1.0))


def reduce_ref(v, reduction, scale):
    if reduction == NONE:
        return v
    if reduction == SUM:
        return v.sum() * scale
    rows = v.shape[0] if v.dim() else 1
    return v.reshape(rows, v.numel() // rows if rows else 0).sum(1) * scale


def make(shape, dtype, kind, gen, layout="contiguous"):
    """A test tensor of `shape`; layout 'strided' gives a non-contiguous view with those values."""
    if kind == "normal":
        base = torch.randn(shape, generator=gen, dtype=torch.float64)
    elif kind == "logits":
        base = 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    elif kind == "logvar":
        base = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    else:  # "unit"
        base = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = base.to(dtype)
    if layout == "strided" and x.dim() >= 1:
        # the same values inside a wider buffer, read with a stride of 2 along the last dim
        wide = torch.zeros(*shape[:-1], 2 * shape[-1], dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        assert not x.is_contiguous() or x.numel() <= 1
    return x


def ref_grads(fn, inputs, grad_out):
    """Forward in float64 through the reference and the gradients of <out, grad_out>."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.double(), allow_unused=True)
    return out.detach(), [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, grads)]


def grad_for(out_shape, dtype, gen):
    return torch.randn(out_shape, generator=gen, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------------------------
# losses: bernoulli_nll, gaussian_nll, gaussian_kl

@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("reduction,scale", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + EMPTY, ids=str)
def test_bernoulli_nll(shape, dtype, reduction, scale, layout):
    gen = torch.Generator().manual_seed(1)
    x, t = make(shape, dtype, "logits", gen, layout), make(shape, dtype, "unit", gen, layout)
    out = ops.bernoulli_nll(x, t, reduction, scale)
    fn = lambda a, b: reduce_ref(reference.bernoulli_nll(a, b), reduction, scale)  # noqa: E731
    grad = grad_for(out.shape, dtype, gen)
    expected, (gx, gt) = ref_grads(fn, [x, t], grad)
    close(out, expected, dtype, mag=expected.abs().max().item() if expected.numel() else 1.0)
    for target_grad in (True, False):
        ax, at = ops.bernoulli_nll_backward(grad, x, t, reduction, scale, target_grad)
        close(ax, gx, dtype)
        if target_grad:
            close(at, gt, dtype, mag=gt.abs().max().item() if gt.numel() else 1.0)
        else:
            assert at.numel() == 0 and at.dtype == dtype


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("reduction,scale", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + EMPTY, ids=str)
def test_gaussian_nll(shape, dtype, reduction, scale, layout):
    gen = torch.Generator().manual_seed(2)
    m, lv, t = (make(shape, dtype, k, gen, layout) for k in ("normal", "logvar", "normal"))
    out = ops.gaussian_nll(m, lv, t, reduction, scale)
    fn = lambda a, b, c: reduce_ref(reference.gaussian_nll(a, b, c), reduction, scale)  # noqa: E731
    grad = grad_for(out.shape, dtype, gen)
    expected, (gm, glv, _) = ref_grads(fn, [m, lv, t], grad)
    close(out, expected, dtype, mag=expected.abs().max().item() if expected.numel() else 1.0)
    am, alv = ops.gaussian_nll_backward(grad, m, lv, t, reduction, scale)
    close(am, gm, dtype, mag=gm.abs().max().item() if gm.numel() else 1.0)
    close(alv, glv, dtype, mag=glv.abs().max().item() if glv.numel() else 1.0)


@pytest.mark.parametrize("prior", ["none", "mu", "logvar", "both"])
@pytest.mark.parametrize("reduction,scale", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (7,), (4, 33, 7), (2, 1500), (3, 0), (3, 5)], ids=str)
def test_gaussian_kl(shape, dtype, reduction, scale, prior):
    gen = torch.Generator().manual_seed(3)
    mu, lv = make(shape, dtype, "normal", gen), make(shape, dtype, "logvar", gen, "strided")
    pmu = make(shape, dtype, "normal", gen) if prior in ("mu", "both") else None
    plv = make(shape, dtype, "logvar", gen) if prior in ("logvar", "both") else None
    out = ops.gaussian_kl(mu, lv, pmu, plv, reduction, scale)
    inputs = [mu, lv] + [p for p in (pmu, plv) if p is not None]

    def fn(m, l, *priors):
        it = iter(priors)
        pm = next(it) if pmu is not None else None
        pl = next(it) if plv is not None else None
        return reduce_ref(reference.gaussian_kl(m, l, pm, pl), reduction, scale)

    grad = grad_for(out.shape, dtype, gen)
    expected, grads = ref_grads(fn, inputs, grad)
    close(out, expected, dtype, mag=expected.abs().max().item() if expected.numel() else 1.0)
    gmu, glv, gplv = ops.gaussian_kl_backward(grad, mu, lv, pmu, plv, reduction, scale)
    mag = max([g.abs().max().item() for g in grads if g.numel()] + [1.0])
    close(gmu, grads[0], dtype, mag)
    close(glv, grads[1], dtype, mag)
    if plv is not None:
        close(gplv, grads[-1], dtype, mag)
    else:
        assert gplv.numel() == 0
    if pmu is not None:  # the caller's grad_prior_mu = -grad_mu (docs/ops.md)
        torch.testing.assert_close(-gmu.double(), grads[2], rtol=TOL[dtype][0], atol=TOL[dtype][1] * mag)


# ---------------------------------------------------------------------------------------------
# sampling: reparameterize, sample_and_kl

def eps_of(philox, num_samples, shape):
    """The kernel's eps: mu = 0, logvar = 0 gives z = eps exactly (exp(0) is 1)."""
    zero = torch.zeros(shape, device=philox.device)
    return ops.reparameterize(zero, zero, philox, num_samples)


PHILOX = torch.tensor([0x123456789ABCDEF, (1 << 32) - 3])  # offset crosses 2^32 inside a call


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 1500), (1100, 3), (0, 4), (3, 0)], ids=str)
def test_reparameterize(shape, dtype, num_samples):
    gen = torch.Generator().manual_seed(4)
    mu, lv = make(shape, dtype, "normal", gen), make(shape, dtype, "logvar", gen, "strided")
    z = ops.reparameterize(mu, lv, PHILOX, num_samples)
    eps = eps_of(PHILOX, num_samples, shape).double()
    grad_z = grad_for(z.shape, dtype, gen)
    expected, (_, glv) = ref_grads(lambda m, l: reference.reparameterize(m, l, eps), [mu, lv], grad_z)
    mag = expected.abs().max().item() if expected.numel() else 1.0
    close(z, expected, dtype, mag)
    close(ops.reparameterize_backward(grad_z, lv, PHILOX, num_samples), glv, dtype,
          mag=max(glv.abs().max().item() if glv.numel() else 1.0, num_samples))


@pytest.mark.parametrize("num_samples", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (4, 33, 7), (2, 1500), (1100, 3), (0, 4), (3, 0)],
                         ids=str)
def test_sample_and_kl(shape, dtype, num_samples):
    gen = torch.Generator().manual_seed(5)
    mu, lv = make(shape, dtype, "normal", gen, "strided"), make(shape, dtype, "logvar", gen)
    z, kl = ops.sample_and_kl(mu, lv, PHILOX, num_samples)
    eps = eps_of(PHILOX, num_samples, shape).double()

    def fn(m, l):
        return reference.reparameterize(m, l, eps), reduce_ref(reference.gaussian_kl(m, l), ROWS, 1.0)

    leaves = [t.detach().double().requires_grad_() for t in (mu, lv)]
    rz, rkl = fn(*leaves)
    grad_z, grad_kl = grad_for(z.shape, dtype, gen), grad_for(kl.shape, dtype, gen)
    gmu, glv = torch.autograd.grad((rz, rkl), leaves, (grad_z.double(), grad_kl.double()))
    mag = max([t.abs().max().item() for t in (rz, rkl, gmu, glv) if t.numel()] + [1.0])
    close(z, rz.detach(), dtype, mag)
    close(kl, rkl.detach(), dtype, mag)
    amu, alv = ops.sample_and_kl_backward(grad_z, grad_kl, mu, lv, PHILOX, num_samples)
    close(amu, gmu, dtype, mag * num_samples)
    close(alv, glv, dtype, mag * num_samples)


def test_sample_and_kl_agrees_with_reparameterize_and_kl():
    mu, lv = torch.randn(6, 9), torch.randn(6, 9)
    z, kl = ops.sample_and_kl(mu, lv, PHILOX, 2)
    assert torch.equal(z, ops.reparameterize(mu, lv, PHILOX, 2))
    torch.testing.assert_close(kl, ops.gaussian_kl(mu, lv, None, None, ROWS, 1.0))


def test_eps_statistics_and_independent_streams():
    e = eps_of(torch.tensor([7, 0]), 1, (1 << 18,))
    assert abs(e.mean().item()) < 0.01 and abs(e.std().item() - 1) < 0.01
    other = eps_of(torch.tensor([8, 0]), 1, (1 << 18,))
    assert abs(torch.corrcoef(torch.stack([e.ravel(), other.ravel()]))[0, 1].item()) < 0.01


def test_results_do_not_depend_on_the_number_of_threads():
    x, t = torch.randn(300, 1000), torch.rand(300, 1000)
    mu, lv = torch.randn(3, 100000), torch.randn(3, 100000)
    before = torch.get_num_threads()

    def run():
        return (ops.bernoulli_nll(x, t, SUM, 1.0), ops.bernoulli_nll(x, t, ROWS, 1.0),
                *ops.sample_and_kl(mu, lv, PHILOX, 1))

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, before))
        many = run()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_gradcheck_float64():
    """The registered autograd (vae_fast/_ops.py) over the CPU ops, numerically."""
    gen = torch.Generator().manual_seed(6)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x, t, m, lv, pm, plv = mk(3, 4), torch.rand(3, 4, generator=gen, dtype=torch.float64).requires_grad_(), \
        mk(3, 4), mk(3, 4), mk(3, 4), mk(3, 4)
    checks = [
        (lambda a, b: ops.bernoulli_nll(a, b, ROWS, 0.5), (x, t)),
        (lambda a, b, c: ops.gaussian_nll(a, b, c, SUM, 1.0), (m, lv, t)),
        (lambda a, b, c, d: ops.gaussian_kl(a, b, c, d, NONE, 1.0), (m, lv, pm, plv)),
        (lambda a, b: ops.reparameterize(a, b, PHILOX, 2), (m, lv)),
        (lambda a, b: ops.sample_and_kl(a, b, PHILOX, 2), (m, lv)),
    ]
    for fn, args in checks:
        assert torch.autograd.gradcheck(fn, args)


OPCHECK_ARGS = {
    "reparameterize": lambda x: (x, x * 0.5, PHILOX, 2),
    "reparameterize_backward": lambda x: (torch.stack([x, x]), x * 0.5, PHILOX, 2),
    "sample_and_kl": lambda x: (x, x * 0.5, PHILOX, 1),
    "sample_and_kl_backward": lambda x: (x[None], x[:, 0], x, x * 0.5, PHILOX, 1),
    "gaussian_kl": lambda x: (x, x * 0.5, x * 0.1, None, ROWS, 0.5),
    "gaussian_kl_backward": lambda x: (x[:, 0], x, x * 0.5, None, x * 0.1, ROWS, 0.5),
    "bernoulli_nll": lambda x: (x, torch.sigmoid(x), SUM, 0.25),
    "bernoulli_nll_backward": lambda x: (torch.ones((), dtype=x.dtype), x, torch.sigmoid(x), SUM, 0.25, True),
    "gaussian_nll": lambda x: (x, x * 0.5, x * 2, NONE, 1.0),
    "gaussian_nll_backward": lambda x: (x, x, x * 0.5, x * 2, NONE, 1.0),
}


@pytest.mark.parametrize("name", sorted(OPCHECK_ARGS))
def test_opcheck(name):
    x = torch.randn(4, 6, dtype=torch.float64)
    args = OPCHECK_ARGS[name](x)
    if "backward" not in name and name != "reparameterize_backward":
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
    torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.parametrize("bad,message", [
    (lambda x: ops.bernoulli_nll(x, x.float(), NONE, 1.0), "target: expected dtype"),
    (lambda x: ops.bernoulli_nll(x, x[:2], NONE, 1.0), "target: expected shape"),
    (lambda x: ops.gaussian_nll(x, x, x, 5, 1.0), "reduction: expected 0"),
    (lambda x: ops.reparameterize(x, x, torch.tensor([1.0, 2.0]), 1), "philox: expected an int64"),
    (lambda x: ops.reparameterize(x, x, PHILOX, 0), "num_samples: expected a positive"),
    (lambda x: ops.bernoulli_nll(x.long(), x.long(), NONE, 1.0), "logits: expected float16"),
    (lambda x: ops.bernoulli_nll_backward(x, x, x, SUM, 1.0, False), "grad: expected shape"),
    (lambda x: ops.sample_and_kl_backward(x[None], x, x, x, PHILOX, 1), "grad_kl: expected shape"),
])
def test_input_checks_name_the_argument(bad, message):
    with pytest.raises(RuntimeError, match=message):
        bad(torch.randn(3, 4, dtype=torch.float64))


def test_no_op_writes_into_its_inputs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 1100, generator=gen)
    t, g = torch.rand(5, 1100, generator=gen), torch.randn(5, 1100, generator=gen)
    keep = [a.clone() for a in (x, t, g)]
    ops.bernoulli_nll(x, t, NONE, 1.0)
    ops.bernoulli_nll_backward(g, x, t, NONE, 1.0, True)
    ops.gaussian_nll_backward(g, x, t, g, NONE, 1.0)
    ops.gaussian_kl_backward(g, x, t, g, t, NONE, 1.0)
    ops.sample_and_kl_backward(g[None], g[:, 0], x, t, PHILOX, 1)
    ops.reparameterize_backward(g[None], t, PHILOX, 1)
    for a, b in zip((x, t, g), keep):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# RNG contract against Triton (interpreted on the CPU; tests/conftest.py sets TRITON_INTERPRET=1)

@pytest.fixture(scope="module")
def tl_rng():
    """(randint4x words, rand4x uniforms, randn4x normals) of counter groups [0, n), from Triton."""
    triton = pytest.importorskip("triton")
    import triton.language as tl
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1 set before triton is imported")

    @triton.jit
    def kernel(words_ptr, unif_ptr, norm_ptr, seed, offset, N: tl.constexpr):
        i = tl.arange(0, N)
        c = offset + i.to(tl.int64)
        a, b, cc, d = tl.randint4x(seed, c)
        tl.store(words_ptr + 4 * i, a.to(tl.int64) & 0xFFFFFFFF)
        tl.store(words_ptr + 4 * i + 1, b.to(tl.int64) & 0xFFFFFFFF)
        tl.store(words_ptr + 4 * i + 2, cc.to(tl.int64) & 0xFFFFFFFF)
        tl.store(words_ptr + 4 * i + 3, d.to(tl.int64) & 0xFFFFFFFF)
        u1, u2, u3, u4 = tl.rand4x(seed, c)
        tl.store(unif_ptr + 4 * i, u1)
        tl.store(unif_ptr + 4 * i + 1, u2)
        tl.store(unif_ptr + 4 * i + 2, u3)
        tl.store(unif_ptr + 4 * i + 3, u4)
        n1, n2, n3, n4 = tl.randn4x(seed, c)
        tl.store(norm_ptr + 4 * i, n1)
        tl.store(norm_ptr + 4 * i + 1, n2)
        tl.store(norm_ptr + 4 * i + 2, n3)
        tl.store(norm_ptr + 4 * i + 3, n4)

    def run(seed, offset, n):
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        words = torch.zeros(4 * n, dtype=torch.int64, device=dev)
        unif, norm = torch.zeros(4 * n, device=dev), torch.zeros(4 * n, device=dev)
        kernel[(1,)](words, unif, norm, seed, offset, N=n)
        return words.cpu().view(n, 4), unif.cpu().view(n, 4), norm.cpu().view(n, 4)

    return run


SEEDS = [(0x123456789ABCDEF, (1 << 33) + 5), (2 ** 62 - 1, (1 << 32) - 100), (42, 0)]


@pytest.mark.parametrize("seed,offset", SEEDS, ids=str)
def test_words_and_uniforms_are_triton_bit_for_bit(tl_rng, seed, offset):
    words, unif, _ = tl_rng(seed, offset, 256)
    ours_w, ours_u = torch.ops.vae_fast_testing.philox_uniform(torch.tensor([seed, offset]), 256)
    assert torch.equal(ours_w, words)
    assert torch.equal(ours_u, unif)


def ulps(actual, expected):
    """|actual - expected| in float32 ulps of max(|expected|, 2^-10)."""
    e = expected.numpy().astype(np.float32)
    spacing = np.spacing(np.maximum(np.abs(e), np.float32(2.0 ** -10)))
    return float((np.abs(actual.numpy() - e) / spacing).max())


@pytest.mark.parametrize("seed,offset", SEEDS, ids=str)
def test_reparameterize_matches_triton_randn4x(tl_rng, seed, offset):
    """z = mu + std * eps, eps from Triton, to a few ulp (docs/rng.md: log/sin/cos differ by ulps)."""
    n_groups = 1024
    _, _, normals = tl_rng(seed, offset, n_groups)
    eps = normals.reshape(-1)  # flat element i is component i & 3 of group i >> 2
    philox = torch.tensor([seed, offset])
    assert ulps(eps_of(philox, 1, (4 * n_groups,)).reshape(-1), eps) <= 8
    # misaligned rows and several samples: element (s, j) uses flat index s * N + j
    shape, S = (7, 13), 3
    z = eps_of(philox, S, shape)
    assert ulps(z.reshape(-1), eps[: z.numel()]) <= 8
    gen = torch.Generator().manual_seed(8)
    mu, lv = torch.randn(shape, generator=gen), 0.5 * torch.randn(shape, generator=gen)
    expected = (mu.double() + torch.exp(0.5 * lv.double()) * eps[: S * 91].reshape(S, *shape).double())
    torch.testing.assert_close(ops.reparameterize(mu, lv, philox, S).double(), expected, rtol=4e-6, atol=4e-6)


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_every_cpu_philox_path_gives_the_same_words(isa):
    """The AVX-512 / AVX2 / scalar Philox (picked by CPU, forced by VAE_FAST_CPU_ISA) agree."""
    code = ("import torch, vae_fast; w, u = torch.ops.vae_fast_testing.philox_uniform("
            "torch.tensor([0x123456789ABCDEF, (1 << 32) - 37]), 203); "
            "z = torch.ops.vae_fast.reparameterize(torch.zeros(1001), torch.zeros(1001), "
            "torch.tensor([5, (1 << 32) - 37]), 1); print(int(w.sum()), float(u.double().sum()), "
            "float(z.double().sum()))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "VAE_FAST_CPU_ISA": v}) for v in ("", isa)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout
