"""gaussian_kl, bernoulli_nll, gaussian_nll, negative_elbo on every fused backend against the
reference: values and gradients, all reductions, dtypes, shapes and strides."""
import pytest
import torch
import torch.nn.functional as F

import vae_fast
from vae_fast import reference
from helpers import DTYPES, FUSED, close, need

SHAPES = [(1,), (3, 5), (4, 20), (2, 3, 7), (2, 1100)]  # 1 element .. past a 2048 tile? see big test
REDUCTIONS = ("none", "sum", "mean", "batchmean")


def make(shape, dtype, device, *, lo=-3.0, hi=3.0, seed=0, transpose=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=g)
    if transpose and x.dim() >= 2:  # same values, non-contiguous layout
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    return x.to(device=device, dtype=dtype).requires_grad_()


def compare(fn_fused, fn_ref, inputs, dtype, reduction):
    out = fn_fused(*inputs)
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    ref = fn_ref(*ref_inputs)
    assert out.dtype == dtype and out.shape == ref.shape and out.device == inputs[0].device
    close(out, ref, dtype, scale=max(1.0, ref.detach().abs().max().item()))
    # drawn on the CPU (the same values on every device), then moved to the outputs' device
    grad_out = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(ref.device)
    grads = torch.autograd.grad(out, inputs, grad_out.to(out.device, dtype))
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        close(g, rg, dtype, scale=max(1.0, rg.abs().max().item()))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bernoulli_nll(backend, dtype, shape, reduction):
    device = need(backend)
    logits = make(shape, dtype, device, lo=-20, hi=20, transpose=True)
    target = make(shape, dtype, device, lo=0, hi=1, seed=1)
    compare(lambda x, t: vae_fast.bernoulli_nll(x, t, reduction=reduction, backend=backend),
            lambda x, t: reference.reduce(reference.bernoulli_nll(x, t), reduction), (logits, target),
            dtype, reduction)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gaussian_kl_standard(backend, dtype, shape, reduction):
    device = need(backend)
    mu, logvar = make(shape, dtype, device, transpose=True), make(shape, dtype, device, seed=1)
    compare(lambda m, lv: vae_fast.gaussian_kl(m, lv, reduction=reduction, backend=backend),
            lambda m, lv: reference.reduce(reference.gaussian_kl(m, lv), reduction), (mu, logvar),
            dtype, reduction)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("prior_shape", [(4, 20), (20,), (4, 1), ()], ids=str)
@pytest.mark.parametrize("reduction", ("none", "sum", "batchmean"))
def test_gaussian_kl_broadcast_prior(backend, dtype, prior_shape, reduction):
    device = need(backend)
    mu, logvar = make((4, 20), dtype, device), make((4, 20), dtype, device, seed=1)
    pmu, plv = make(prior_shape, dtype, device, seed=2), make(prior_shape, dtype, device, seed=3)
    compare(lambda m, lv, pm, pl: vae_fast.gaussian_kl(m, lv, pm, pl, reduction=reduction, backend=backend),
            lambda m, lv, pm, pl: reference.reduce(reference.gaussian_kl(m, lv, pm, pl), reduction),
            (mu, logvar, pmu, plv), dtype, reduction)


@pytest.mark.parametrize("backend", FUSED)
def test_gaussian_kl_one_prior_only(backend):
    device = need(backend)
    mu, logvar, p = (make((3, 6), torch.float64, device, seed=s) for s in range(3))
    for kwargs in ({"prior_mu": p}, {"prior_logvar": p}):
        out = vae_fast.gaussian_kl(mu, logvar, **kwargs, reduction="none", backend=backend)
        close(out, reference.gaussian_kl(mu, logvar, **kwargs), torch.float64)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gaussian_nll(backend, dtype, shape, reduction):
    device = need(backend)
    mean, target = make(shape, dtype, device, transpose=True), make(shape, dtype, device, seed=1)
    logvar = make(shape, dtype, device, lo=-2, hi=2, seed=2)
    compare(lambda m, lv, t: vae_fast.gaussian_nll(m, lv, t, reduction=reduction, backend=backend),
            lambda m, lv, t: reference.reduce(reference.gaussian_nll(m, lv, t), reduction),
            (mean, logvar, target), dtype, reduction)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ("none", "sum", "mean", "batchmean"))
@pytest.mark.parametrize("free_bits", (0.0, 0.3))
def test_negative_elbo(backend, reduction, free_bits):
    device = need(backend)
    if free_bits and reduction == "none":
        with pytest.raises(ValueError, match="free_bits"):
            vae_fast.negative_elbo(*(make((2, 3), torch.float32, device) for _ in range(4)),
                                   free_bits=free_bits, reduction=reduction, backend=backend)
        return
    dtype = torch.float64
    inputs = (make((6, 30), dtype, device), make((6, 30), dtype, device, lo=0, hi=1, seed=1),
              make((6, 5), dtype, device, seed=2), make((6, 5), dtype, device, seed=3))
    kw = dict(beta=0.7, free_bits=free_bits, reduction=reduction)
    compare(lambda *a: vae_fast.negative_elbo(*a, **kw, backend=backend),
            lambda *a: reference.negative_elbo(*a, **kw), inputs, dtype, reduction)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
def test_bernoulli_nll_is_a_drop_in_for_torch(backend, reduction):
    device = need(backend)
    logits = make((5, 9), torch.float32, device, lo=-100, hi=100)
    target = make((5, 9), torch.float32, device, lo=0, hi=1, seed=1)
    torch.testing.assert_close(vae_fast.bernoulli_nll(logits, target, reduction=reduction, backend=backend),
                               F.binary_cross_entropy_with_logits(logits, target, reduction=reduction))
    assert vae_fast.bernoulli_nll(logits, target, backend=backend).shape == ()  # default "mean", like torch


@pytest.mark.parametrize("backend", FUSED)
def test_large_and_odd_sizes_cross_tiles(backend):
    """Several tiles and grid-stride iterations, with a ragged tail (ROWS reduction too)."""
    device = need(backend)
    for shape in [(3, 5000), (70001,), (129, 33), (9, 10000)]:
        x = make(shape, torch.float32, device, lo=-5, hi=5)
        t = make(shape, torch.float32, device, lo=0, hi=1, seed=1)
        ref = reference.bernoulli_nll(x.double(), t.double())
        close(vae_fast.bernoulli_nll(x, t, reduction="none", backend=backend), ref, torch.float32)
        close(vae_fast.bernoulli_nll(x, t, reduction="sum", backend=backend), ref.sum(), torch.float32,
              scale=ref.sum().item())
        rows = vae_fast.negative_elbo(x.reshape(shape[0], -1), t.reshape(shape[0], -1),
                                      x.reshape(shape[0], -1)[:, :1], t.reshape(shape[0], -1)[:, :1],
                                      reduction="none", backend=backend)
        assert rows.shape == (shape[0],)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_float64(backend):
    device = need(backend)
    x, t = make((3, 4), torch.float64, device), make((3, 4), torch.float64, device, lo=0, hi=1, seed=1)
    mu, lv, pmu, plv = (make((3, 4), torch.float64, device, seed=s) for s in range(2, 6))
    for reduction in ("none", "sum", "batchmean"):
        assert torch.autograd.gradcheck(
            lambda a, b: vae_fast.bernoulli_nll(a, b, reduction=reduction, backend=backend), (x, t))
        assert torch.autograd.gradcheck(
            lambda a, b, c, d: vae_fast.gaussian_kl(a, b, c, d, reduction=reduction, backend=backend),
            (mu, lv, pmu, plv))
        assert torch.autograd.gradcheck(
            lambda a, b, c: vae_fast.gaussian_nll(a, b, c, reduction=reduction, backend=backend), (mu, lv, t))


@pytest.mark.parametrize("backend", FUSED)
def test_empty_inputs(backend):
    device = need(backend)
    x = torch.empty(0, 7, device=device, requires_grad=True)
    assert vae_fast.bernoulli_nll(x, x.detach(), reduction="none", backend=backend).shape == (0, 7)
    assert vae_fast.bernoulli_nll(x, x.detach(), reduction="sum", backend=backend).item() == 0.0
    assert vae_fast.gaussian_kl(x, x.detach(), reduction="sum", backend=backend).item() == 0.0
    out = vae_fast.bernoulli_nll(x, x.detach(), reduction="sum", backend=backend)
    out.backward()
    assert x.grad.shape == (0, 7)


@pytest.mark.parametrize("backend", FUSED)
def test_inputs_are_not_written(backend):
    device = need(backend)
    x, t = make((4, 9), torch.float32, device), make((4, 9), torch.float32, device, lo=0, hi=1)
    before = (x.detach().clone(), t.detach().clone())
    vae_fast.bernoulli_nll(x, t, backend=backend).backward()
    vae_fast.gaussian_kl(x, t, backend=backend).backward()
    assert torch.equal(x.detach(), before[0]) and torch.equal(t.detach(), before[1])


@pytest.mark.parametrize("backend", FUSED)
def test_contiguous_views_with_an_odd_storage_offset(backend):
    """x[1:] is contiguous but its data pointer is not 16-byte aligned: vectorised paths must fall back."""
    device = need(backend)
    base = make((4 * 257 + 1,), torch.float32, device, lo=-4, hi=4).detach()
    tbase = make((4 * 257 + 1,), torch.float32, device, lo=0, hi=1, seed=1).detach()
    x, t = base[1:].reshape(4, 257).requires_grad_(), tbase[1:].reshape(4, 257).requires_grad_()
    for reduction in ("none", "sum"):
        compare(lambda a, b: vae_fast.bernoulli_nll(a, b, reduction=reduction, backend=backend),
                lambda a, b: reference.reduce(reference.bernoulli_nll(a, b), reduction), (x, t),
                torch.float32, reduction)
    mu, lv = base[1:1025].reshape(4, 256), tbase[1:1025].reshape(4, 256)
    z, kl = vae_fast.sample_and_kl(mu, lv, backend=backend)
    torch.testing.assert_close(kl, reference.per_sample(reference.gaussian_kl(mu, lv)), rtol=1e-5, atol=1e-4)
    assert torch.isfinite(z).all()
