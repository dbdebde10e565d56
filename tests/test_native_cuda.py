"""The native CUDA kernels (torch.ops.vae_fast on CUDA tensors) against the reference and against the
native CPU kernels (same op, same philox state): values and gradients, every dtype and reduction,
odd / non-contiguous / empty shapes, the RNG contract (CUDA and Triton bit for bit, the CPU within the
documented tolerance), and no host synchronisation. Skipped without a GPU and a _C built with CUDA kernels."""
import pytest
import torch

import vae_fast
from vae_fast import _native, reference
from vae_fast._schemas import NONE, ROWS, SUM
from test_native_cpu import (DTYPES, PHILOX, REDUCTIONS, close, make, reduce_ref, ref_grads, grad_for,
                             eps_of)

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
if not (_native.available() and _native.has_cuda()):
    pytest.skip(f"needs vae_fast._C with CUDA kernels: {_native.why_not() or 'built CPU-only'}",
                allow_module_level=True)

ops = torch.ops.vae_fast
SHAPES = [(), (1,), (7,), (3, 5), (4, 33, 7), (2, 1500), (1, 100003), (1100, 3), (0, 4), (3, 0)]


def cuda(*ts):
    return [None if t is None else t.cuda() for t in ts]


def in_range_of(expected, dtype):
    """The float64 `expected` as an op returning `dtype` must give it: a value past the dtype's
    range is +-inf (the float16 SUM of (1, 100003) elements is about 7e4 > 65504)."""
    rounded = expected.to(dtype).double()
    return torch.where(rounded.isinf(), rounded, expected)


@pytest.mark.parametrize("reduction,scale", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_losses(shape, dtype, reduction, scale):
    gen = torch.Generator().manual_seed(11)
    x, t = make(shape, dtype, "logits", gen, "strided"), make(shape, dtype, "unit", gen)
    m, lv, y = (make(shape, dtype, k, gen) for k in ("normal", "logvar", "normal"))
    pm, plv = make(shape, dtype, "normal", gen), make(shape, dtype, "logvar", gen)
    # (forward, backward, reference, inputs, extra backward args, outputs): `outputs` names, for each
    # output of the backward op, the index of the input whose reference gradient it is (None: an
    # empty tensor), and (output, input) pairs whose gradient is the output negated (docs/ops.md:
    # gaussian_nll's grad_target = -grad_mean, gaussian_kl's grad_prior_mu = -grad_mu)
    cases = [
        (ops.bernoulli_nll, ops.bernoulli_nll_backward, reference.bernoulli_nll, (x, t), (True,),
         (0, 1), ()),
        (ops.gaussian_nll, ops.gaussian_nll_backward, reference.gaussian_nll, (m, lv, y), (),
         (0, 1), ((0, 2),)),
        (ops.gaussian_kl, ops.gaussian_kl_backward, reference.gaussian_kl, (m, lv, pm, plv), (),
         (0, 1, 3), ((0, 2),)),
        (ops.gaussian_kl, ops.gaussian_kl_backward, reference.gaussian_kl, (m, lv, None, None), (),
         (0, 1, None), ()),
    ]
    for fwd, bwd, ref, args, extra, outputs, negated in cases:
        tensors = [a for a in args if a is not None]
        out = fwd(*cuda(*args), reduction, scale)
        assert out.is_cuda
        grad = grad_for(out.shape, dtype, gen)
        expected, grads = ref_grads(lambda *a: reduce_ref(ref(*a), reduction, scale), tensors, grad)
        mag = max([g.abs().max().item() for g in [expected, *grads] if g.numel()] + [1.0])
        close(out.cpu(), in_range_of(expected, dtype), dtype, mag)
        got = bwd(grad.cuda(), *cuda(*args), reduction, scale, *extra)
        assert len(got) == len(outputs), (bwd, len(got))
        for g, i in zip(got, outputs):
            assert g.is_cuda
            if i is None:
                assert g.numel() == 0 and g.dtype == dtype
            else:
                close(g.cpu(), grads[i], dtype, mag)
        for o, i in negated:
            close(-got[o].cpu(), grads[i], dtype, mag)


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sampling_matches_the_cpu_kernels_and_the_reference(shape, dtype, num_samples):
    gen = torch.Generator().manual_seed(12)
    mu, lv = make(shape, dtype, "normal", gen, "strided"), make(shape, dtype, "logvar", gen)
    z, kl = ops.sample_and_kl(mu.cuda(), lv.cuda(), PHILOX.cuda(), num_samples)
    assert torch.equal(z, ops.reparameterize(mu.cuda(), lv.cuda(), PHILOX.cuda(), num_samples))
    eps = eps_of(PHILOX.cuda(), num_samples, shape).cpu().double()  # the CUDA kernels' own eps
    leaves = [a.detach().double().requires_grad_() for a in (mu, lv)]
    rz = reference.reparameterize(*leaves, eps)
    rkl = reduce_ref(reference.gaussian_kl(*leaves), ROWS, 1.0)
    gz, gk = grad_for(z.shape, dtype, gen), grad_for(kl.shape, dtype, gen)
    gmu, glv = torch.autograd.grad((rz, rkl), leaves, (gz.double(), gk.double()))
    mag = max([a.abs().max().item() for a in (rz, rkl, gmu, glv) if a.numel()] + [1.0])
    slack = 1.0 if dtype != torch.float64 else 1e5  # eps itself is float32, a few ulp apart
    close(z.cpu(), rz.detach(), dtype, mag * slack)
    close(kl.cpu(), rkl.detach(), dtype, mag)
    amu, alv = ops.sample_and_kl_backward(gz.cuda(), gk.cuda(), mu.cuda(), lv.cuda(), PHILOX.cuda(),
                                          num_samples)
    close(amu.cpu(), gmu, dtype, mag * num_samples)
    close(alv.cpu(), glv, dtype, mag * num_samples * slack)
    blv = ops.reparameterize_backward(gz.cuda(), lv.cuda(), PHILOX.cuda(), num_samples)
    _, (_, rlv) = ref_grads(lambda m, l: reference.reparameterize(m, l, eps), [mu, lv], gz)
    close(blv.cpu(), rlv, dtype, mag * num_samples * slack)


def test_eps_agrees_across_cpu_cuda_and_triton():
    """RNG contract v2 (docs/rng.md): CUDA and Triton bit for bit; the CPU within 2^-14 * max(1, |eps|)."""
    n = 4096
    on_cuda = eps_of(PHILOX.cuda(), 1, (n,)).cpu().double()
    on_cpu = eps_of(PHILOX, 1, (n,)).double()
    assert ((on_cpu - on_cuda).abs() <= 2.0 ** -14 * on_cuda.abs().clamp(min=1)).all()
    status = vae_fast.available_backends()["triton"]
    if not status.available:
        pytest.skip(f"triton backend unavailable: {status.detail}")
    for shape, samples in [((n,), None), ((7, 13), 3)]:  # aligned groups; groups straddling rows
        zero = torch.zeros(shape, device="cuda")
        z = [vae_fast.reparameterize(zero, zero, num_samples=samples, backend=b,
                                     generator=torch.Generator("cuda").manual_seed(5)) for b in ("cuda", "triton")]
        assert torch.equal(z[0], z[1])  # z = 0 + exp(0) * eps = eps


def test_no_host_synchronisation():
    mu, lv = torch.randn(64, 32, device="cuda"), torch.randn(64, 32, device="cuda")
    x, t = torch.randn(64, 784, device="cuda"), torch.rand(64, 784, device="cuda")
    philox = PHILOX.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        z, kl = ops.sample_and_kl(mu, lv, philox, 1)
        ops.sample_and_kl_backward(z, kl, mu, lv, philox, 1)
        for red in (NONE, SUM, ROWS):
            out = ops.bernoulli_nll(x, t, red, 1.0)
            ops.bernoulli_nll_backward(torch.ones_like(out), x, t, red, 1.0, True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_current_stream_and_device_guard():
    s = torch.cuda.Stream()
    x, t = torch.randn(1000, 1000, device="cuda"), torch.rand(1000, 1000, device="cuda")
    expected = ops.bernoulli_nll(x, t, SUM, 1.0)
    with torch.cuda.stream(s):
        got = ops.bernoulli_nll(x, t, SUM, 1.0)
    s.synchronize()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
