"""vae_fast.DiagonalGaussian on every backend against a plain-PyTorch twin of diffusers'
DiagonalGaussianDistribution (written here, so these tests need no diffusers; tests/test_diffusers.py
checks against the real package)."""
import math

import pytest
import torch

import vae_fast
from helpers import FUSED, TOL, close, need
from vae_fast import DiagonalGaussian

BACKENDS = ("reference",) + FUSED


def device_for(backend):
    return torch.device("cpu") if backend == "reference" else need(backend)


def twin_kl(mean, logvar, dims, pmu=None, plv=None, lo=-30.0, hi=20.0):
    """diffusers' formulas (clamp first, torch.clamp's gradient)."""
    lv = torch.clamp(logvar, lo, hi)
    if pmu is None:
        return 0.5 * torch.sum(mean ** 2 + lv.exp() - 1.0 - lv, dim=dims)
    plv = torch.clamp(plv, lo, hi)
    return 0.5 * torch.sum((mean - pmu) ** 2 / plv.exp() + lv.exp() / plv.exp() - 1.0 - lv + plv, dim=dims)


def twin_nll(mean, logvar, sample, dims):
    lv = torch.clamp(logvar, -30.0, 20.0)
    return 0.5 * torch.sum(math.log(2 * math.pi) + lv + (sample - mean) ** 2 / lv.exp(), dim=dims)


def inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    logvar = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = logvar.view(-1)
    flat[::7] = 100.0  # outside the clamp: diffusers' value and zero gradient
    flat[3::11] = -80.0
    return (mean.to(dtype).to(device).requires_grad_(), logvar.to(dtype).to(device).requires_grad_())


SHAPES_DIMS = [((3, 4, 6, 5), None), ((3, 4, 6, 5), [1, 2, 3]), ((2, 4, 3, 4, 5), [1, 2, 3]),
               ((2, 4, 3, 4, 5), None), ((5, 7), None), ((2, 3, 4, 4), [0, 1, 2, 3]), ((2, 3, 4, 4), [-1])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,dims", SHAPES_DIMS)
def test_kl_matches_diffusers_formula(backend, dtype, shape, dims):
    device = device_for(backend)
    mean, logvar = inputs(shape, dtype, device)
    d = DiagonalGaussian(mean, logvar, dims=dims, backend=backend)
    kl = d.kl()
    ref_dims = list(range(1, len(shape))) if dims is None else dims
    m64, lv64 = (t.detach().double().requires_grad_() for t in (mean, logvar))
    ref = twin_kl(m64, lv64, ref_dims)
    assert kl.shape == ref.shape and kl.dtype == dtype and kl.device == device
    close(kl, ref, dtype, scale=50)
    g = torch.randn(kl.shape, dtype=torch.float64).to(device)  # ref is on the device too
    gm, glv = torch.autograd.grad(kl, (mean, logvar), g.to(dtype).to(device))
    rm, rlv = torch.autograd.grad(ref, (m64, lv64), g)
    close(gm, rm, dtype)
    close(glv, rlv, dtype)
    assert (glv.cpu()[logvar.detach().cpu() > 20] == 0).all() and (glv.cpu()[logvar.detach().cpu() < -30] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_other_nll_mode_attributes(backend, dtype):
    device = device_for(backend)
    mean, logvar = inputs((2, 4, 3, 4, 5), dtype, device)
    pm, plv = inputs((2, 4, 3, 4, 5), dtype, device, seed=1)
    p = DiagonalGaussian(mean, logvar, dims=[1, 2, 3], backend=backend)
    q = DiagonalGaussian(pm, plv, dims=[1, 2, 3], backend=backend)
    f64 = [t.detach().double().requires_grad_() for t in (mean, logvar, pm, plv)]
    close(p.kl(q), twin_kl(f64[0], f64[1], [1, 2, 3], f64[2], f64[3]), dtype, scale=50)
    x = torch.randn(mean.shape, dtype=dtype, device=device)
    nll = p.nll(x)
    close(nll, twin_nll(f64[0], f64[1], x.double(), [1, 2, 3]), dtype, scale=1e3)
    close(p.nll(x, dims=[1, 2, 3, 4]), twin_nll(f64[0], f64[1], x.double(), [1, 2, 3, 4]), dtype, scale=1e3)
    assert p.mode() is p.mean
    lv = torch.clamp(logvar.detach(), -30, 20)
    close(p.logvar, lv, dtype)
    close(p.std, torch.exp(0.5 * lv), dtype)
    close(p.var, torch.exp(lv), dtype)
    assert DiagonalGaussian(mean, logvar, logvar_clamp=None).logvar is logvar


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,dims", [((3, 4, 6, 5), None), ((2, 4, 3, 4, 5), [1, 2, 3])])
def test_sample_is_the_clamped_reparameterization(backend, dtype, shape, dims):
    """z equals vae_fast.reparameterize on the clamped logvar with the same generator state, and the
    gradients of z and of the (fused) kl are diffusers' with that eps."""
    device = need(backend)
    mean, logvar = inputs(shape, dtype, device)
    d = DiagonalGaussian(mean, logvar, dims=dims, backend=backend)
    z = d.sample(torch.Generator(device).manual_seed(5))
    lv = torch.clamp(logvar.detach(), -30, 20)
    expected = vae_fast.reparameterize(mean.detach(), lv, generator=torch.Generator(device).manual_seed(5),
                                       backend=backend)
    assert z.dtype == dtype and z.shape == mean.shape
    close(z, expected, dtype)
    kl = d.kl()
    gz = torch.randn(shape, dtype=dtype, device=device)
    gm, glv = torch.autograd.grad((z * gz).sum() + kl.sum(), (mean, logvar))
    # the twin with the same eps (computed in float64 from float64 math on the same Philox draws)
    eps = (vae_fast.reparameterize(torch.zeros(shape, dtype=torch.float64, device=device),
                                   torch.zeros(shape, dtype=torch.float64, device=device),
                                   generator=torch.Generator(device).manual_seed(5), backend=backend))
    m64, lv64 = (t.detach().double().requires_grad_() for t in (mean, logvar))
    ref_dims = list(range(1, len(shape))) if dims is None else dims
    zr = m64 + torch.exp(0.5 * torch.clamp(lv64, -30, 20)) * eps
    rm, rlv = torch.autograd.grad((zr * gz.double()).sum() + twin_kl(m64, lv64, ref_dims).sum(), (m64, lv64))
    close(gm, rm, dtype, scale=10)
    close(glv, rlv, dtype, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_moments(backend):
    device = device_for(backend)
    n = 1 << 16 if backend != "triton" or device.type == "cuda" else 1 << 13
    mean = torch.full((4, n), 2.0, device=device)
    logvar = torch.tensor([0.0, math.log(4.0), 100.0, -100.0], device=device)[:, None].expand(4, n).contiguous()
    torch.manual_seed(0)
    z = DiagonalGaussian(mean, logvar, backend=backend).sample()
    std = torch.tensor([1.0, 2.0, math.exp(10.0), math.exp(-15.0)], device=device)
    eps = (z - mean) / std[:, None]
    tol = 5 / math.sqrt(n)  # 5 sigma
    assert (eps.mean(1).abs() < tol).all(), eps.mean(1)
    assert ((eps.std(1) - 1).abs() < 3 * tol).all(), eps.std(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_list_draws_each_row_from_its_generator(backend):
    device = device_for(backend)
    mean, logvar = (t.detach() for t in inputs((3, 4, 5), torch.float32, device))
    d = DiagonalGaussian(mean, logvar, backend=backend)
    z = d.sample([torch.Generator(device).manual_seed(s) for s in (1, 2, 3)])
    for i, s in enumerate((1, 2, 3)):
        row = DiagonalGaussian(mean[i:i + 1], logvar[i:i + 1], backend=backend).sample(
            torch.Generator(device).manual_seed(s))
        torch.testing.assert_close(z[i:i + 1], row, rtol=0, atol=0)
    z2 = d.sample([torch.Generator(device).manual_seed(s) for s in (1, 2, 4)])
    torch.testing.assert_close(z2[:2], z[:2], rtol=0, atol=0)
    assert not torch.equal(z2[2], z[2])
    with pytest.raises(ValueError, match="generator: expected a list of 3 generators"):
        d.sample([torch.Generator(device)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CPU generator with CUDA tensors needs a GPU")
@pytest.mark.parametrize("backend", ("reference", "triton", "cuda"))
def test_cpu_generator_with_cuda_tensors(backend):
    need(backend) if backend != "reference" else None
    mean = torch.zeros(2, 3, 8, 8, device="cuda")
    d = DiagonalGaussian(mean, torch.zeros_like(mean), backend=backend)
    a = d.sample(torch.Generator().manual_seed(3))
    b = d.sample(torch.Generator().manual_seed(3))
    assert a.device.type == "cuda" and torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    device = device_for(backend)
    mean, logvar = inputs((2, 3, 4, 4), torch.float32, device)
    d = DiagonalGaussian(mean, logvar, deterministic=True, dims=[1, 2, 3], backend=backend)
    assert torch.equal(d.sample(), mean) and torch.equal(d.std, torch.zeros_like(mean))
    assert torch.equal(d.var, torch.zeros_like(mean))
    assert torch.equal(d.kl(), torch.zeros(2, device=device)) and torch.equal(d.nll(mean), torch.zeros(2, device=device))


def test_from_parameters_and_errors():
    h = torch.randn(2, 8, 3, 3)
    d = DiagonalGaussian.from_parameters(h, dims=[1, 2, 3])
    assert torch.equal(d.mean, h[:, :4]) and torch.equal(d._raw_logvar, h[:, 4:])
    with pytest.raises(ValueError, match="parameters: expected an even size of dim 1"):
        DiagonalGaussian.from_parameters(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="logvar_clamp: expected min <= max"):
        DiagonalGaussian(h, h, logvar_clamp=(1.0, -1.0))
    with pytest.raises(TypeError, match="logvar_clamp: expected None or a pair"):
        DiagonalGaussian(h, h, logvar_clamp=3.0)
    with pytest.raises(ValueError, match=r"dims: expected dims in \[-4, 4\)"):
        DiagonalGaussian(h, h, dims=[1, 4]).kl()
    with pytest.raises(ValueError, match="logvar: expected the shape of mean"):
        DiagonalGaussian(h, h[:1])
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        DiagonalGaussian(h, h).sample(3)
    with pytest.raises(TypeError, match="other: expected a vae_fast.DiagonalGaussian"):
        DiagonalGaussian(h, h).kl(h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_then_kl_reuses_the_fused_kl_only_in_the_same_grad_mode(backend):
    device = device_for(backend)
    mean, logvar = inputs((2, 3, 4, 4), torch.float32, device)
    d = DiagonalGaussian(mean, logvar, backend=backend)
    with torch.no_grad():
        d.sample()
    kl = d.kl()
    assert kl.requires_grad
    close(kl, twin_kl(mean.detach().double(), logvar.detach().double(), [1, 2, 3]), torch.float32, scale=50)


# ---- the logvar clamp inside the sampling and KL ops (logvar_min, logvar_max) ----
NAMESPACE = {"triton": "vae_fast_triton", "cpu": "vae_fast", "cuda": "vae_fast"}
BOUNDS = [(-30.0, 20.0), (None, 0.5), (-0.5, None), (0.25, 0.25)]


def _clamp_inputs(device, dtype, shape=(3, 5, 7)):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(shape, generator=g, dtype=torch.float64)
    lv = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    lv.view(-1)[::5] = 60.0
    lv.view(-1)[2::7] = -45.0
    return [t.to(dtype).to(device).requires_grad_() for t in (mu, lv)]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("lo,hi", BOUNDS)
def test_ops_clamp_equals_op_on_clamped_logvar(backend, dtype, lo, hi):
    """op(mu, logvar, ..., lo, hi) == op(mu, torch.clamp(logvar, lo, hi), ...): values, and gradients
    with torch.clamp's backward (zero outside the bounds), for every sampling and KL op."""
    from vae_fast._ops import philox_state
    from vae_fast._schemas import NONE, ROWS, SUM

    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    mu, lv = _clamp_inputs(device, dtype)
    pmu, plv = (t.detach() for t in _clamp_inputs(device, dtype, (3, 5, 7)))
    philox = philox_state(device)
    calls = [
        ("reparameterize", lambda l, *b: ns.reparameterize(mu, l, philox, 2, *b)),
        ("sample_and_kl", lambda l, *b: ns.sample_and_kl(mu, l, philox, 1, *b)),
    ] + [(f"gaussian_kl r{r}", lambda l, *b, r=r: ns.gaussian_kl(mu, l, None, None, r, 0.5, None, *b))
         for r in (NONE, SUM, ROWS)] + [
        ("gaussian_kl prior", lambda l, *b: ns.gaussian_kl(mu, l, pmu, plv.clamp(-3, 3), ROWS, 1.0, None, *b))]
    for name, call in calls:
        out = call(lv, lo, hi)
        lv2 = lv.detach().clone().requires_grad_()
        ref = call(reference_clamp(lv2, lo, hi))
        outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
        for o, r in zip(outs, refs):
            torch.testing.assert_close(o, r, rtol=0, atol=0, msg=f"{name} forward")
        grads = [torch.randn(o.shape, dtype=dtype, device=device) for o in outs]
        g1 = torch.autograd.grad(outs, (mu, lv), grads)
        g2 = torch.autograd.grad(refs, (mu, lv2), grads)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} backward")
        outside = (lv.detach() < (lo if lo is not None else -math.inf)) | (lv.detach() > (hi if hi is not None else math.inf))
        assert outside.any() and (g1[1][outside] == 0).all(), name
        assert (~outside).sum() <= 1 or (g1[1][~outside] != 0).any(), name


def reference_clamp(lv, lo, hi):
    return vae_fast.reference.clamp_logvar(lv, lo, hi)


@pytest.mark.parametrize("backend", FUSED)
def test_ops_clamp_opcheck_and_bad_bounds(backend):
    from vae_fast._ops import philox_state
    from vae_fast._schemas import ROWS

    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    mu, lv = _clamp_inputs(device, torch.float32, (4, 6))
    p = philox_state(device)
    g = torch.randn(4, device=device)
    for op, args in (("reparameterize", (mu, lv, p, 2, -1.0, 1.0)), ("sample_and_kl", (mu, lv, p, 1, None, 1.0)),
                     ("gaussian_kl", (mu, lv, None, None, ROWS, 1.0, None, -1.0, None)),
                     ("gaussian_kl", (mu, lv, mu.detach(), lv.detach(), ROWS, 1.0, None, -1.0, 1.0)),
                     ("sample_and_kl_backward", (torch.randn(1, 4, 6, device=device), g, mu.detach(), lv.detach(),
                                                 p, 1, -1.0, 1.0)),
                     ("gaussian_kl_backward", (g, mu.detach(), lv.detach(), None, None, ROWS, 1.0, -1.0, 1.0))):
        torch.library.opcheck(getattr(ns, op).default, args)
    if backend != "triton":  # the native ops check their bounds (the Python layer checks them first)
        with pytest.raises(RuntimeError, match="logvar_min: expected a number <= logvar_max"):
            ns.gaussian_kl(mu, lv, None, None, ROWS, 1.0, None, 2.0, 1.0)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape,dims", [((2, 4, 8, 8), None), ((2, 4, 3, 4, 4), [1, 2, 3])])
def test_compiles_once_fullgraph_and_resamples(backend, shape, dims):
    """posterior.sample() + kl() under torch.compile(fullgraph=True): one compile, fresh eps per call,
    the eager values with the same generator state."""
    device = need(backend)
    torch._dynamo.reset()
    compile_backend = "inductor" if device.type == "cuda" else "aot_eager"
    mean, logvar = inputs(shape, torch.float32, device)

    def step(mean, logvar):
        d = DiagonalGaussian(mean, logvar, dims=dims, backend=backend)
        z = d.sample()
        return z, d.kl()

    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.manual_seed(0)
        z1, kl1 = compiled(mean, logvar)
        z2, _ = compiled(mean, logvar)
        (z1.sum() + kl1.sum()).backward()
    assert not torch.equal(z1, z2)
    torch.manual_seed(0)
    z_eager, kl_eager = step(mean, logvar)
    torch.testing.assert_close(z1, z_eager)
    torch.testing.assert_close(kl1, kl_eager)
    assert torch.isfinite(logvar.grad).all() and (logvar.grad.view(-1)[::7] == 0).all()


@pytest.mark.parametrize("backend", FUSED)
def test_ops_clamp_gradient_is_zero_on_the_bounds(backend):
    """The minimum-norm subgradient on a bound (torch.clamp's since torch 2.14); just inside, it passes."""
    from vae_fast._ops import philox_state
    from vae_fast._schemas import ROWS

    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    lv = torch.tensor([[-30.0, 20.0, -29.5, 19.5]], device=device, requires_grad=True)
    mu = torch.ones_like(lv)
    z, kl = ns.sample_and_kl(mu, lv, philox_state(device), 1, -30.0, 20.0)
    g_sample, = torch.autograd.grad(z.sum() + kl.sum(), lv)
    g_kl, = torch.autograd.grad(ns.gaussian_kl(mu, lv, None, None, ROWS, 1.0, None, -30.0, 20.0).sum(), lv)
    for g in (g_sample, g_kl):
        assert (g[0, :2] == 0).all() and (g[0, 2:] != 0).all(), g


@pytest.mark.parametrize("backend", FUSED)
def test_generator_under_fullgraph_compile_names_the_workaround(backend):
    device = need(backend)
    torch._dynamo.reset()
    mean = torch.zeros(2, 3, device=device)

    gen = torch.Generator(device).manual_seed(0)

    def f(mean):
        return DiagonalGaussian(mean, mean, backend=backend).sample(gen)

    with pytest.raises(Exception, match="torch.compile cannot trace a torch.Generator"):
        torch.compile(f, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")(mean)
