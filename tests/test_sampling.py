"""reparameterize and sample_and_kl: the RNG contract, statistics, determinism, the replay of eps in
backward, and values/gradients against the reference."""
import numpy as np
import pytest
import torch

import vae_fast
from vae_fast import reference
from helpers import DTYPES, FUSED, close, need
import rng_numpy

# (shape, num_samples): tiles that take the 4-aligned fast RNG path and the per-element one
CASES = [((1,), None), ((3, 5), None), ((4, 20), None), ((2, 64), None), ((6, 3), 3), ((3000,), None),
         ((2, 4, 8), 2), ((5,), 4)]


def philox_of(fn, *args, **kwargs):
    """Call fn with the philox state it draws recorded (so tests can recompute eps)."""
    seen = []
    original = vae_fast._ops.philox_state

    def spy(device, generator=None):
        state = original(device, generator)
        seen.append(state.cpu().tolist())
        return state

    vae_fast.functional.philox_state = spy
    try:
        return fn(*args, **kwargs), seen[0]
    finally:
        vae_fast.functional.philox_state = original


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape,num_samples", CASES, ids=str)
def test_eps_follows_the_rng_contract(backend, shape, num_samples):
    device = need(backend)
    mu, logvar = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    z, (seed, offset) = philox_of(vae_fast.reparameterize, mu, logvar, num_samples=num_samples, backend=backend)
    expected = rng_numpy.eps(seed, offset, z.numel()).reshape(z.shape)
    np.testing.assert_allclose(z.cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_numpy_twin_matches_triton_uniforms_bit_for_bit():
    """The integer half of the contract is exact: compare Philox words with tl.randint4x."""
    device = need("triton")
    import triton
    import triton.language as tl

    @triton.jit
    def words(out_ptr, seed, offset, N: tl.constexpr):
        a, b, c, d = tl.randint4x(seed, offset + tl.arange(0, N).to(tl.int64))
        i = tl.arange(0, N)
        tl.store(out_ptr + i * 4, a.to(tl.int64, bitcast=False) & 0xFFFFFFFF)
        tl.store(out_ptr + i * 4 + 1, b.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + i * 4 + 2, c.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + i * 4 + 3, d.to(tl.int64) & 0xFFFFFFFF)

    seed, offset = 0x123456789ABCDEF, (1 << 33) + 5
    out = torch.zeros(64 * 4, dtype=torch.int64, device=device)
    words[(1,)](out, seed, offset, 64)
    expected = np.stack(rng_numpy.philox(seed, offset + np.arange(64, dtype=np.int64)), 1).astype(np.int64)
    np.testing.assert_array_equal(out.cpu().numpy().reshape(64, 4), expected)


@pytest.mark.parametrize("backend", FUSED)
def test_same_seed_same_samples_and_fresh_samples_otherwise(backend):
    device = need(backend)
    mu, logvar = torch.randn(8, 20, device=device), torch.randn(8, 20, device=device)
    torch.manual_seed(7)
    a = vae_fast.reparameterize(mu, logvar, backend=backend)
    b = vae_fast.reparameterize(mu, logvar, backend=backend)
    torch.manual_seed(7)
    assert torch.equal(a, vae_fast.reparameterize(mu, logvar, backend=backend))
    assert not torch.equal(a, b)
    g1, g2 = (torch.Generator(device=device).manual_seed(3) for _ in range(2))
    assert torch.equal(vae_fast.sample_and_kl(mu, logvar, generator=g1, backend=backend)[0],
                       vae_fast.sample_and_kl(mu, logvar, generator=g2, backend=backend)[0])


@pytest.mark.parametrize("backend", FUSED)
def test_sample_statistics(backend):
    device = need(backend)
    n = 20000
    mu = torch.tensor([1.5, -2.0], device=device).repeat(n // 2)
    logvar = torch.tensor([0.0, 2 * np.log(3.0)], device=device).repeat(n // 2)
    z = vae_fast.reparameterize(mu, logvar, num_samples=2, backend=backend).reshape(-1, 2).double()
    m, s = z.mean(0).cpu(), z.std(0).cpu()
    true_s = torch.tensor([1.0, 3.0], dtype=torch.float64)
    se_mean, se_std = true_s / np.sqrt(n), true_s / np.sqrt(2 * n)
    assert ((m - torch.tensor([1.5, -2.0], dtype=torch.float64)).abs() < 5 * se_mean).all(), m
    assert ((s - true_s).abs() < 5 * se_std).all(), s


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape,num_samples", CASES, ids=str)
def test_backward_replays_the_forward_eps(backend, shape, num_samples):
    device = need(backend)
    mu = torch.randn(shape, device=device, requires_grad=True)
    logvar = torch.randn(shape, device=device, requires_grad=True)
    z = vae_fast.reparameterize(mu, logvar, num_samples=num_samples, backend=backend)
    grad_z = torch.randn_like(z)
    gmu, glv = torch.autograd.grad(z, (mu, logvar), grad_z)
    expected_glv = 0.5 * grad_z * (z - mu).detach()
    if num_samples is not None:
        expected_glv, grad_z = expected_glv.sum(0), grad_z.sum(0)
    torch.testing.assert_close(glv, expected_glv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gmu, grad_z)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,num_samples", CASES, ids=str)
def test_sample_and_kl_matches_reference(backend, dtype, shape, num_samples):
    device = need(backend)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
    logvar = (0.5 * torch.randn(shape, generator=g)).to(device, dtype).requires_grad_()
    (z, kl), (seed, offset) = philox_of(vae_fast.sample_and_kl, mu, logvar, num_samples=num_samples,
                                        backend=backend)
    eps = torch.from_numpy(rng_numpy.eps(seed, offset, z.numel())).double().reshape(z.shape).to(device)
    rmu, rlv = (t.detach().double().requires_grad_() for t in (mu, logvar))
    rz = reference.reparameterize(rmu, rlv, eps)
    rkl = reference.per_sample(reference.gaussian_kl(rmu, rlv))
    assert z.dtype == dtype and kl.dtype == dtype and kl.shape == (shape[0],)
    # eps is a float32 quantity whose log/sin/cos may differ by a few ulp between libraries
    eps_dtype = torch.float32 if dtype == torch.float64 else dtype
    close(z, rz, eps_dtype, scale=8)
    close(kl, rkl, dtype, scale=rkl.abs().max().item())
    # drawn on the CPU like mu and logvar (the same values on every device), then moved there
    gz, gkl = (torch.randn(t.shape, dtype=torch.float64, generator=g).to(device) for t in (rz, rkl))
    grads = torch.autograd.grad((z, kl), (mu, logvar), (gz.to(dtype), gkl.to(dtype)))
    ref_grads = torch.autograd.grad((rz, rkl), (rmu, rlv), (gz, gkl))
    close(grads[0], ref_grads[0], dtype, scale=8 * (num_samples or 1))
    close(grads[1], ref_grads[1], eps_dtype, scale=8 * (num_samples or 1))


@pytest.mark.parametrize("backend", FUSED)
def test_sample_and_kl_with_one_output_unused(backend):
    device = need(backend)
    mu = torch.randn(4, 6, device=device, requires_grad=True)
    logvar = torch.randn(4, 6, device=device, requires_grad=True)
    z, kl = vae_fast.sample_and_kl(mu, logvar, backend=backend)
    kl.sum().backward()
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1))


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_float64(backend):
    device = need(backend)
    mu = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    logvar = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    for num_samples in (None, 2):
        def f(m, lv):  # the same generator state every call, so eps is fixed for gradcheck
            g = torch.Generator(device=device).manual_seed(0)
            return vae_fast.sample_and_kl(m, lv, num_samples=num_samples, generator=g, backend=backend)

        assert torch.autograd.gradcheck(f, (mu, logvar))
