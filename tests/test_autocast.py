"""Under torch.autocast (CPU here; CUDA on a GPU machine) the losses and every reduction come back
float32 like PyTorch's exp/sum/BCE policy, read from the 16-bit inputs as they are (no full-size
upcast copy in the fused backends), z keeps the input dtype, gradients have the inputs' dtype, and
a float16 KL sum of an SD-VAE latent (8x4x128x128) does not overflow."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import vae_fast
from helpers import FUSED, need

BACKENDS = FUSED + ("reference",)
HALF = (torch.bfloat16, torch.float16)
TOL32 = dict(rtol=1e-5, atol=1e-5)  # float32 math on exactly the same 16-bit values


def setup(backend, device_type):
    """The device for (backend, autocast device type), skipping with the reason when it can't run."""
    if device_type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA autocast needs a CUDA device (none here)")
    if backend == "reference":
        return torch.device(device_type)
    device = need(backend)
    if device.type != device_type:
        pytest.skip(f"backend {backend!r} takes {device.type} tensors, not {device_type}")
    return device


def inputs(shape, dtype, device, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).to(device).requires_grad_() for _ in range(n)]


def losses(backend):
    """(name, fn(a, b, c, tt), float64 twin of fn): a, b, c, and a target tt in [0, 1], of one shape"""
    for red in ("none", "sum", "mean", "batchmean"):
        div = (lambda x, a: x / a.shape[0]) if red == "batchmean" else (lambda x, a: x)
        tred = "sum" if red == "batchmean" else red
        yield (f"bernoulli_nll-{red}",
               lambda a, b, c, tt, red=red: vae_fast.bernoulli_nll(a, tt, reduction=red, backend=backend),
               lambda a, b, c, tt, tred=tred, div=div: div(F.binary_cross_entropy_with_logits(
                   a, tt, reduction=tred), a))
        yield (f"bernoulli_nll-weighted-{red}",
               lambda a, b, c, tt, red=red: vae_fast.bernoulli_nll(a, tt, c.detach()[0].abs(),
                                                               pos_weight=c.detach()[1].abs(), reduction=red,
                                                               backend=backend),
               lambda a, b, c, tt, tred=tred, div=div: div(F.binary_cross_entropy_with_logits(
                   a, tt, c[0].detach().abs(), pos_weight=c[1].detach().abs(), reduction=tred), a))
        yield (f"gaussian_nll-{red}",
               lambda a, b, c, tt, red=red: vae_fast.gaussian_nll(a, b, c, reduction=red, backend=backend),
               lambda a, b, c, tt, red=red: vae_fast.gaussian_nll(a, b, c, reduction=red, backend="reference"))
        yield (f"gaussian_kl-{red}",
               lambda a, b, c, tt, red=red: vae_fast.gaussian_kl(a, b, reduction=red, backend=backend),
               lambda a, b, c, tt, red=red: vae_fast.gaussian_kl(a, b, reduction=red, backend="reference"))
        yield (f"gaussian_kl-prior-{red}",
               lambda a, b, c, tt, red=red: vae_fast.gaussian_kl(a, b, c, c, reduction=red, backend=backend),
               lambda a, b, c, tt, red=red: vae_fast.gaussian_kl(a, b, c, c, reduction=red, backend="reference"))
    for red in ("none", "sum", "batchmean"):
        yield (f"negative_elbo-{red}",
               lambda a, b, c, tt, red=red: vae_fast.negative_elbo(a, tt, c, b, reduction=red,
                                                               backend=backend),
               lambda a, b, c, tt, red=red: vae_fast.negative_elbo(a, tt, c, b, reduction=red,
                                                               backend="reference"))


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_losses_float32_under_autocast(backend, dtype, device_type):
    device = setup(backend, device_type)
    for name, fn, twin in losses(backend):
        a, b, c = inputs((6, 2, 9), dtype, device, 3)
        tt = torch.rand(a.shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
        with torch.autocast(device_type, dtype=dtype):
            out = fn(a, b, c, tt)
        assert out.dtype == torch.float32, name
        # the float64 value of the same 16-bit inputs
        a64, b64, c64 = (x.detach().double().requires_grad_() for x in (a, b, c))
        ref = twin(a64, b64, c64, tt.double())
        torch.testing.assert_close(out.double(), ref, **TOL32, msg=name)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
        got = torch.autograd.grad(out, (a, b, c), grad, allow_unused=True)
        want = torch.autograd.grad(ref, (a64, b64, c64), grad.double(), allow_unused=True)
        for g, w in zip(got, want):
            assert (g is None) == (w is None), name
            if g is not None:
                assert g.dtype == dtype, name
                torch.testing.assert_close(g.double(), w.to(dtype).double(), rtol=2e-2, atol=2e-2, msg=name)
        # outside autocast: the input dtype, as before
        assert fn(a, b, c, tt).dtype == dtype, name


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_under_autocast(backend, dtype, device_type):
    """z keeps the input dtype (and, on the fused backends, the very values of eager mode); the
    per-sample KL of sample_and_kl is float32; gradients have the inputs' dtype."""
    device = setup(backend, device_type)
    mu, lv = inputs((5, 3, 8), dtype, device, 2)
    for num_samples in (None, 2):
        torch.manual_seed(0)
        with torch.autocast(device_type, dtype=dtype):
            z, kl = vae_fast.sample_and_kl(mu, lv, num_samples=num_samples, backend=backend)
            z2 = vae_fast.reparameterize(mu, lv, num_samples=num_samples, backend=backend)
        assert z.dtype == dtype and z2.dtype == dtype and kl.dtype == torch.float32
        torch.manual_seed(0)
        z_eager, kl_eager = vae_fast.sample_and_kl(mu, lv, num_samples=num_samples, backend=backend)
        if backend != "reference":
            assert torch.equal(z, z_eager)
        torch.testing.assert_close(kl, kl_eager.float(), rtol=2e-2, atol=2e-2)
        ref = vae_fast.gaussian_kl(mu.detach().double(), lv.detach().double(), reduction="none").flatten(1).sum(1)
        torch.testing.assert_close(kl.double(), ref, **TOL32)
        gmu, glv = torch.autograd.grad(z.float().sum() + kl.sum(), (mu, lv))
        assert gmu.dtype == dtype and glv.dtype == dtype


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_kl_sum_of_sd_latent_does_not_overflow(backend, device_type):
    device = setup(backend, device_type)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(8, 4, 128, 128, generator=g).half().to(device).requires_grad_()
    lv = (0.3 * torch.randn(8, 4, 128, 128, generator=g)).half().to(device).requires_grad_()
    true = vae_fast.gaussian_kl(mu.detach().double(), lv.detach().double(), reduction="sum", backend="reference")
    assert true > 65504  # float16's largest finite value: a float16 sum overflows
    with torch.autocast(device_type, dtype=torch.float16):
        kl = vae_fast.gaussian_kl(mu, lv, reduction="sum", backend=backend)
        _, kl_rows = vae_fast.sample_and_kl(mu, lv, backend=backend)
    assert kl.dtype == torch.float32 and torch.isfinite(kl)
    torch.testing.assert_close(kl.double(), true, rtol=1e-5, atol=0)
    torch.testing.assert_close(kl_rows.double().sum(), true, rtol=1e-5, atol=0)
    kl.backward()
    assert mu.grad.dtype == torch.float16 and torch.isfinite(mu.grad).all()


class _Copies(TorchDispatchMode):
    """Records the dtype conversions (aten._to_copy) and their sizes."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default:
            self.copies.append(args[0].numel())
        return out


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", FUSED)
def test_fused_backends_read_16bit_inputs_without_copies(backend, dtype):
    """No full-size dtype conversion in the forward under autocast: the kernels read the 16-bit
    inputs (the reference backend, plain PyTorch, does convert: PyTorch's own policy)."""
    device = need(backend)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    a, b, c = inputs((16, 64), dtype, device, 3)
    t = torch.rand(a.shape, device=device).to(dtype)
    with torch.autocast(device.type, dtype=dtype), _Copies() as mode:
        vae_fast.bernoulli_nll(a, t, reduction="sum", backend=backend)
        vae_fast.bernoulli_nll(a, t, reduction="none", backend=backend)
        vae_fast.gaussian_nll(a, b, c, reduction="mean", backend=backend)
        vae_fast.gaussian_kl(a, b, reduction="sum", backend=backend)
        vae_fast.sample_and_kl(a, b, backend=backend)
        vae_fast.negative_elbo(a, t, b, c, backend=backend)
    assert all(n < a.numel() for n in mode.copies), mode.copies


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bernoulli_nll_loss_with_float32_weights(backend, dtype, device_type):
    """BernoulliNLLLoss keeps float32 weight buffers; under autocast they are rounded to the logits'
    16 bits (small tensors) instead of promoting the logits and target to float32 (full copies)."""
    device = setup(backend, device_type)
    x, = inputs((8, 3, 16), dtype, device, 1)
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)).to(dtype).to(device)
    w = torch.rand(3, 1, device=device) + 0.5
    pw = torch.rand(16, device=device) * 3
    loss = vae_fast.nn.BernoulliNLLLoss(w, pw, backend=backend).to(device)
    with torch.autocast(device_type, dtype=dtype), _Copies() as mode:
        out = loss(x, t)
    assert out.dtype == torch.float32
    if backend != "reference":
        assert all(n < x.numel() for n in mode.copies), mode.copies
    ref = F.binary_cross_entropy_with_logits(x.double(), t.double(), w.double(), pos_weight=pw.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-2 if dtype == torch.bfloat16 else 2e-3, atol=0)
    (g,) = torch.autograd.grad(out, x)
    assert g.dtype == dtype


@pytest.mark.parametrize("backend", FUSED)
def test_out_dtype_opcheck(backend):
    """The ops' out_dtype argument (what the autocast kernels pass) under opcheck: schema, fakes,
    autograd; and a float32 out_dtype for float32 inputs is the plain op, a float16 one refused."""
    from vae_fast._schemas import NONE, ROWS, SUM
    device = need(backend)
    ns = getattr(torch.ops, {"triton": "vae_fast_triton", "cpu": "vae_fast", "cuda": "vae_fast"}[backend])
    a, b, c = inputs((4, 6), torch.bfloat16, device, 3)
    t = torch.rand(4, 6, device=device).to(torch.bfloat16)
    for red in (NONE, SUM, ROWS):
        kw = {"out_dtype": torch.float32}
        torch.library.opcheck(ns.bernoulli_nll.default, (a, t, red, 0.5), kw)
        torch.library.opcheck(ns.bernoulli_nll.default, (a, t, red, 0.5, c.detach(), None), kw)
        torch.library.opcheck(ns.gaussian_nll.default, (a, b, c, red, 0.5), kw)
        torch.library.opcheck(ns.gaussian_kl.default, (a, b, None, None, red, 0.5), kw)
        assert ns.gaussian_kl(a, b, None, None, red, 0.5, out_dtype=torch.float32).dtype == torch.float32
    x = torch.randn(4, 6, device=device)
    assert ns.gaussian_kl(x, x, None, None, SUM, 1.0, out_dtype=torch.float32).dtype == torch.float32
    with pytest.raises(RuntimeError, match="out_dtype: expected"):
        ns.gaussian_kl(x, x, None, None, SUM, 1.0, out_dtype=torch.float16)


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_diagonal_gaussian_kl_under_autocast(backend, dtype, device_type):
    """DiagonalGaussian.kl() without a sample first (its kl op gets the logvar bounds, which the
    dispatcher passes with out_dtype by position): float32 from every backend, the float64 value.
    Before: the fused backends raised "expected at most 9 argument(s) but received 10", the
    reference returned the 16-bit dtype."""
    device = setup(backend, device_type)
    mean, logvar = (t.detach() for t in inputs((2, 4, 3, 5), dtype, device, 2))
    for dims, kw in ((None, {}), ((1, 2), {}), (None, {"other": True})):
        d = vae_fast.DiagonalGaussian(mean, logvar, dims=dims, backend=backend)
        w = vae_fast.DiagonalGaussian(mean.double(), logvar.double(), dims=dims, backend="reference")
        with torch.autocast(device_type, dtype=dtype):
            kl = d.kl(d) if kw else d.kl()
        assert kl.dtype == torch.float32, (dims, kw)
        torch.testing.assert_close(kl.double(), w.kl(w) if kw else w.kl(), rtol=1e-5, atol=1e-5)
