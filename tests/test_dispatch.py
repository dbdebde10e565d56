"""Forward + backward of the fused API issue only the fused ops (issue 8): no select_backward of a
`z[0]`, no zeros/fill/copy of an accumulator. Seen with a TorchDispatchMode, on every fused backend."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vae_fast
from helpers import need

FORBIDDEN = ("select_backward", "zeros", "zero_", "fill_", "copy_", "new_zeros", "_to_copy", "clone")


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())  # e.g. "aten::select.int", "vae_fast::sample_and_kl"
        return func(*args, **(kwargs or {}))


def trace(fn):
    with Ops() as mode:
        fn()
    return mode.names


@pytest.mark.parametrize("backend", ["triton", "cpu", "cuda"])
def test_sample_and_kl_and_negative_elbo_issue_only_fused_ops(backend):
    dev = need(backend)
    mu = torch.randn(8, 6, device=dev, requires_grad=True)
    lv = torch.randn(8, 6, device=dev, requires_grad=True)
    logits = torch.randn(8, 12, device=dev, requires_grad=True)
    x = torch.rand(8, 12, device=dev)
    one = torch.ones((), device=dev)

    def head():
        z, kl = vae_fast.sample_and_kl(mu, lv, backend=backend)
        (z.sum() + kl.sum()).backward(one)

    def elbo():
        vae_fast.negative_elbo(logits, x, mu, lv, backend=backend).backward(one)

    for fn in (head, elbo):
        names = trace(fn)
        fused = [n for n in names if n.startswith("vae_fast")]
        assert fused, names
        bad = [n for n in names if any(f"::{b}" in n or n.endswith(b) for b in FORBIDDEN)]
        assert not bad, (fn.__name__, names)
    # the sampling head: exactly the state draw, the fused forward and the fused backward (+ the sums
    # and expand of this test's own loss)
    names = trace(head)
    ns = "vae_fast_triton" if backend == "triton" else "vae_fast"
    assert f"{ns}::sample_and_kl" in names and f"{ns}::sample_and_kl_backward" in names
    assert sum(n == "aten::randint.low" or n.startswith("aten::randint") for n in names) == 1, names


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_kernel_launches_per_fused_call(backend):
    """On a GPU, forward + backward of sample_and_kl is at most 3 kernel launches in all (the Philox
    state draw, the fused forward, the fused backward): no memset, no copy (issue 8)."""
    dev = need(backend)
    if dev.type != "cuda":
        pytest.skip("counts CUDA kernel launches: needs a GPU")
    mu = torch.randn(64, 300, device=dev, requires_grad=True)
    lv = torch.randn(64, 300, device=dev, requires_grad=True)
    gz, gkl = torch.randn(64, 300, device=dev), torch.randn(64, device=dev)

    def step():
        z, kl = vae_fast.sample_and_kl(mu, lv, backend=backend)
        torch.autograd.grad((z, kl), (mu, lv), (gz, gkl))  # no .grad accumulation (an add launch)

    step()  # compile / warm up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) <= 3, kernels
    assert not any("memset" in k.lower() or "copy" in k.lower() for k in kernels), kernels
