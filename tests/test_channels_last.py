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
