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
    g = torch.randn(kl.shape, dtype=torch.float64)
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
