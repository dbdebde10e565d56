"""channels_last (4-D) and channels_last_3d (5-D) inputs give outputs and gradients in the same
layout, without copying the inputs, and the values of contiguous inputs, on every backend."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vae_fast
from helpers import FUSED, need

BACKENDS = FUSED + ("reference",)
LAYOUTS = [((2, 3, 4, 5), torch.channels_last), ((2, 3, 2, 4, 5), torch.channels_last_3d)]


def ops(backend):
    """(name, fn(a, b, c, t, reduction), differentiable input indices)"""
    yield "bernoulli_nll", lambda a, b, c, t, r: vae_fast.bernoulli_nll(a, t, reduction=r, backend=backend), (0, 3)
    yield "bernoulli_nll-weighted", lambda a, b, c, t, r: vae_fast.bernoulli_nll(
        a, t, b.detach().abs(), pos_weight=c.detach().abs(), reduction=r, backend=backend), (0, 3)
    yield "gaussian_nll", lambda a, b, c, t, r: vae_fast.gaussian_nll(a, b, c, reduction=r, backend=backend), (0, 1, 2)
    yield "gaussian_kl", lambda a, b, c, t, r: vae_fast.gaussian_kl(a, b, reduction=r, backend=backend), (0, 1)
    yield "gaussian_kl-prior", lambda a, b, c, t, r: vae_fast.gaussian_kl(a, b, c, t, reduction=r,
                                                                          backend=backend), (0, 1, 2, 3)


class _Copies(TorchDispatchMode):
    """Records full-size copies (clone, copy_, dtype/layout conversions)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.copies = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.clone.default, torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default):
            if args[0].numel() >= self.numel:
                self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=["channels_last", "channels_last_3d"])
def test_channels_last_in_channels_last_out(backend, shape, fmt):
    device = torch.device("cpu") if backend == "reference" else need(backend)
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(shape, generator=g, dtype=torch.float64).to(device) for _ in range(3)]
    base.append(torch.rand(shape, generator=g, dtype=torch.float64).to(device))
    for name, fn, diff in ops(backend):
        for reduction in ("none", "sum", "batchmean"):
            cl = [x.to(memory_format=fmt).requires_grad_(i in diff) for i, x in enumerate(base)]
            assert not cl[0].is_contiguous() and cl[0].is_contiguous(memory_format=fmt)
            ct = [x.clone().requires_grad_(i in diff) for i, x in enumerate(base)]
            with _Copies(cl[0].numel()) as mode:
                out = fn(*cl, reduction)
            label = f"{name} {reduction}"
            if backend != "reference":  # the kernels read the channels-last inputs as they are
                assert mode.copies == [], (label, mode.copies)
            ref = fn(*ct, reduction)
            if reduction == "none":
                assert out.is_contiguous(memory_format=fmt), label
                torch.testing.assert_close(out, ref, rtol=0, atol=0, msg=label)
                grad = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
                got = torch.autograd.grad(out, [cl[i] for i in diff], grad.to(memory_format=fmt))
                want = torch.autograd.grad(ref, [ct[i] for i in diff], grad)
            else:
                torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=label)
                got = torch.autograd.grad(out, [cl[i] for i in diff])
                want = torch.autograd.grad(ref, [ct[i] for i in diff])
            for i, (a, b) in zip(diff, zip(got, want)):
                if backend != "reference" or reduction == "none":  # torch's sum backward: contiguous
                    assert a.is_contiguous(memory_format=fmt), (label, i, a.stride())
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=label)


# ---- sampling: a channels-last mu gives a channels-last z (docs/rng.md: eps in memory order) ----
SAMPLERS = {
    "reparameterize": lambda mu, lv, b, S, g: (
        vae_fast.reparameterize(mu, lv, num_samples=S, generator=g, backend=b),),
    "sample_and_kl": lambda mu, lv, b, S, g: vae_fast.sample_and_kl(mu, lv, num_samples=S, generator=g, backend=b),
    "DiagonalGaussian": lambda mu, lv, b, S, g: (vae_fast.DiagonalGaussian(mu, lv, backend=b).sample(generator=g),),
}
# DiagonalGaussian.sample has diffusers' signature: one sample
CASES = [(name, S) for name in SAMPLERS for S in (None, 3) if name != "DiagonalGaussian" or S is None]


def _channels_first(perm, S):
    """The permutation of z (with a leading sample dim when S is given) to its memory order."""
    return perm if S is None else (0,) + tuple(p + 1 for p in perm)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=["channels_last", "channels_last_3d"])
@pytest.mark.parametrize("name,S", CASES)
def test_sampling_channels_last(backend, shape, fmt, name, S):
    """z (each sample), grad_mu and grad_logvar of channels-last inputs are channels-last, without a
    copy, and equal bit for bit those of the contiguous tensors with the same memory (the inputs
    permuted channels-last), whose eps are the same (docs/rng.md)."""
    device = need(backend)
    fn = SAMPLERS[name]
    perm = (0, 2, 3, 1) if len(shape) == 4 else (0, 2, 3, 4, 1)
    g = torch.Generator().manual_seed(3)
    mu, lv = (torch.randn(shape, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    cl = [t.to(memory_format=fmt).requires_grad_() for t in (mu, lv)]
    flat = [t.detach().permute(perm).requires_grad_() for t in cl]  # contiguous, the same memory
    assert all(t.is_contiguous() for t in flat)
    seed = lambda: torch.Generator(device=device).manual_seed(11)  # noqa: E731
    with _Copies(mu.numel()) as mode:
        out = fn(*cl, backend, S, seed())
    assert mode.copies == [], mode.copies
    ref = fn(*flat, backend, S, seed())
    zp = _channels_first(perm, S)
    z, zr = out[0], ref[0]
    for zs in ([z] if S is None else list(z)):
        assert zs.is_contiguous(memory_format=fmt), zs.stride()
    torch.testing.assert_close(z.permute(zp), zr, rtol=0, atol=0)
    for a, b in zip(out[1:], ref[1:]):  # the KL row sums: the same walk over the same memory
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(device) for t in ref]
    inv = [sorted(range(len(zp)), key=zp.__getitem__)] + [None] * (len(ref) - 1)
    grads_cl = [gr.permute(p) if p else gr for gr, p in zip(grads, inv)]  # in z's layout
    with _Copies(mu.numel()) as mode:
        got = torch.autograd.grad(out, cl, grads_cl, retain_graph=True)
    assert mode.copies == [], mode.copies
    want = torch.autograd.grad(ref, flat, grads)
    for a, b in zip(got, want):
        assert a.is_contiguous(memory_format=fmt), a.stride()
        torch.testing.assert_close(a.permute(perm), b, rtol=0, atol=0)
    # a grad_z in another layout is brought to z's (one copy): the same gradients
    got2 = torch.autograd.grad(out, cl, [gr.contiguous() for gr in grads_cl])
    for a, b in zip(got2, want):
        torch.testing.assert_close(a.permute(perm), b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=["channels_last", "channels_last_3d"])
def test_sampling_ops_channels_last_opcheck(backend, shape, fmt):
    """The fakes give the kernels' strides (sample_out), forward and backward."""
    from vae_fast._ops import philox_state
    device = need(backend)
    ns = getattr(torch.ops, "vae_fast_triton" if backend == "triton" else "vae_fast")
    mu, lv = (torch.randn(shape, device=device).to(memory_format=fmt) for _ in range(2))
    p = philox_state(device)
    z_shape = (2, *shape)
    gz = torch.randn((2 * shape[0], *shape[1:]), device=device).to(memory_format=fmt).view(z_shape)
    for op, args in (("reparameterize", (mu, lv, p, 2, None, None)), ("sample_and_kl", (mu, lv, p, 2, -1.0, 1.0)),
                     ("reparameterize_backward", (gz, lv, p, 2, None, None)),
                     ("reparameterize_backward", (gz.contiguous(), lv, p, 2, None, None)),
                     ("sample_and_kl_backward", (gz, torch.randn(shape[0], device=device), mu, lv, p, 2, None, None)),
                     # mixed layouts: the gradients follow mu's (the forward's walk)
                     ("sample_and_kl_backward", (gz, torch.randn(shape[0], device=device), mu, lv.contiguous(), p, 2,
                                                 None, None)),
                     ("sample_and_kl_backward", (gz.contiguous(), torch.randn(shape[0], device=device), mu.contiguous(),
                                                 lv, p, 2, None, None))):
        torch.library.opcheck(getattr(ns, op).default, args)


MIXED = {  # mu and logvar in different layouts: (mu, logvar parameter) -> logvar
    "mu channels_last, logvar contiguous": (torch.channels_last, lambda p, mu: p.clone()),
    "mu contiguous, logvar channels_last": (torch.contiguous_format, lambda p, mu: p.to(memory_format=torch.channels_last)),
    "mu channels_last, logvar expanded": (torch.channels_last, lambda p, mu: p[:1, :, :1, :1].expand_as(mu)),
}


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layouts", MIXED)
@pytest.mark.parametrize("name,S", [c for c in CASES if c[0] != "DiagonalGaussian"])
def test_sampling_mixed_layouts(backend, layouts, name, S):
    """mu and logvar in different layouts (a per-channel logvar expanded over a channels-last mu):
    the backward replays the forward's eps, so the gradients are the analytic ones of the z drawn,
    dz/dmu = 1, dz/dlogvar = (z - mu) / 2 (before: grad_logvar used another eps order, off by O(1))."""
    device = need(backend)
    fmt, make_lv = MIXED[layouts]
    g = torch.Generator().manual_seed(5)
    shape = (2, 3, 4, 5)
    mu = torch.randn(shape, generator=g, dtype=torch.float64).to(device).to(memory_format=fmt).requires_grad_()
    p = (0.5 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    lv = make_lv(p, mu)
    out = SAMPLERS[name](mu, lv, backend, S, torch.Generator(device=device).manual_seed(7))
    z = out[0].detach() if S is not None else out[0].detach()[None]
    gz = torch.randn(z.shape, generator=g, dtype=torch.float64).to(device)
    grads = [gz if S is not None else gz[0]]
    want_mu = gz.sum(0)
    want_lv = 0.5 * (gz * (z - mu.detach())).sum(0)
    if name == "sample_and_kl":  # KL row sums: d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2, per row
        gk = torch.randn(shape[0], generator=g, dtype=torch.float64).to(device)
        grads.append(gk)
        row = gk.view(-1, 1, 1, 1)
        want_mu = want_mu + row * mu.detach()
        want_lv = want_lv + row * 0.5 * (lv.detach().exp() - 1)
    got_mu, got_p = torch.autograd.grad(out, (mu, p), grads)
    torch.testing.assert_close(got_mu, want_mu, rtol=1e-10, atol=1e-10)
    want_p = want_lv
    if layouts == "mu channels_last, logvar expanded":  # p[0, :, 0, 0] over every batch and pixel
        want_p = torch.zeros_like(p)
        want_p[0, :, 0, 0] = want_lv.sum((0, 2, 3))
    torch.testing.assert_close(got_p, want_p, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("first_cl", [True, False], ids=["first channels_last", "second channels_last"])
def test_loss_backward_ops_mixed_layouts_opcheck(backend, first_cl):
    """The fakes of the loss backward ops give every gradient the first input's layout, as the
    kernels do (before: the second gradient took its own input's, and torch.compile failed on a
    contiguous mean with a channels-last logvar)."""
    from vae_fast._schemas import NONE, SUM
    device = need(backend)
    ns = getattr(torch.ops, "vae_fast_triton" if backend == "triton" else "vae_fast")
    shape = (2, 3, 4, 5)
    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    a, b, c, d = (torch.randn(shape, device=device) for _ in range(4))
    a, b = (cl(a), b) if first_cl else (a, cl(b))
    t = torch.rand(shape, device=device)
    t = t.contiguous() if first_cl else cl(t)
    for reduction, grad in ((NONE, torch.randn(shape, device=device)), (SUM, torch.tensor(0.5, device=device))):
        for op, args in (("gaussian_kl_backward", (grad, a, b, c, d, reduction, 0.5, None, None)),
                         ("gaussian_kl_backward", (grad, a, b, None, None, reduction, 0.5, -1.0, 1.0)),
                         ("gaussian_nll_backward", (grad, a, b, c, reduction, 0.5)),
                         ("bernoulli_nll_backward", (grad, a, t, reduction, 0.5, True, None, None))):
            torch.library.opcheck(getattr(ns, op).default, args)
