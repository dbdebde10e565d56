"""Issue 9.6: the native ops' reductions are bitwise reproducible, run to run and whatever the thread
count (CPU) or stream (CUDA), and torch.use_deterministic_algorithms(True) changes nothing. Issue 8:
a native CUDA op direction is one kernel launch (no memset or fill), safe to capture in a CUDA graph."""
import pytest
import torch

import vae_fast
from vae_fast import _native
from vae_fast._schemas import NONE, ROWS, SUM

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"vae_fast._C unavailable: {_native.why_not()}")
ops = torch.ops.vae_fast
PHILOX = torch.tensor([0x123456789ABCDEF, 77])


def reductions(x, t, m, lv, philox):
    """Every reduced output of the native ops (forward) on these inputs, and one backward each."""
    out = []
    for red in (SUM, ROWS):
        out += [ops.bernoulli_nll(x, t, red, 0.5), ops.gaussian_nll(m, lv, t, red, 1.0),
                ops.gaussian_kl(m, lv, None, None, red, 1.0), ops.gaussian_kl(m, lv, t, x, red, 1.0)]
        g = torch.ones_like(out[-4])
        out += ops.bernoulli_nll_backward(g, x, t, red, 0.5, True)
    out += ops.sample_and_kl(m, lv, philox, 2)
    return out


def inputs(shape, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    return [a.to(device) for a in (x, torch.rand(shape, generator=gen), torch.randn(shape, generator=gen),
                                   0.5 * torch.randn(shape, generator=gen))]


# rows split into several CPU blocks (1024) / CUDA pieces (4096), many short rows, one long row
SHAPES = [(40, 10000), (3000, 20), (1, 300001)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_reductions_do_not_depend_on_the_thread_count(shape):
    args = inputs(shape, "cpu") + [PHILOX]
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(reductions(*args))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def devices():
    yield "cpu"
    if torch.cuda.is_available() and _native.has_cuda():
        yield "cuda"


@pytest.mark.parametrize("device", list(devices()))
def test_deterministic_algorithms_mode_changes_nothing(device):
    """Always deterministic, so the mode neither raises nor changes a bit (public API, fwd + bwd)."""
    x, t, m, lv = inputs((64, 5000), device)

    def run():
        leaves = [a.clone().requires_grad_() for a in (x, m, lv)]
        g = torch.Generator(device=device).manual_seed(3)
        z, kl = vae_fast.sample_and_kl(leaves[1], leaves[2], generator=g)
        loss = vae_fast.bernoulli_nll(leaves[0], t, reduction="sum") + kl.sum() + z.sum()
        return [loss.detach(), *torch.autograd.grad(loss, leaves)]

    plain = run()
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        strict = run()
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b in zip(plain, strict):
        assert torch.equal(a, b)


cuda_only = pytest.mark.skipif(not (torch.cuda.is_available() and _native.available() and _native.has_cuda()),
                               reason="needs a GPU and vae_fast._C with CUDA kernels")
CUDA_SHAPES = [(128, 1 << 15), (1, 5_000_001), (1000, 784), (3, 100003), (7, 9)]


@cuda_only
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
def test_cuda_reductions_are_reproducible_run_to_run_and_across_streams(shape):
    args = inputs(shape, "cuda") + [PHILOX.cuda()]
    first = reductions(*args)
    for _ in range(3):
        for a, b in zip(first, reductions(*args)):
            assert torch.equal(a, b)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # another stream: another reduction counter
        on_side = reductions(*args)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(first, on_side):
        assert torch.equal(a, b)
    # against float64 on the CPU: the deterministic sums are also the right sums
    x, t = (a.cpu().double() for a in args[:2])
    expected = (torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-x.abs()))).sum() * 0.5
    torch.testing.assert_close(first[0].double().cpu(), expected, rtol=1e-5, atol=1e-3)


def cuda_kernels(fn):
    """Names of the GPU activities (kernels, memsets, copies) that fn() issues."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@cuda_only
@pytest.mark.parametrize("shape", [(128, 1 << 15), (1000, 784)], ids=str)
def test_cuda_op_directions_are_one_launch_each(shape):
    x, t, m, lv = inputs(shape, "cuda")
    philox = PHILOX.cuda()
    z, kl = ops.sample_and_kl(m, lv, philox, 1)
    calls = {
        "bce sum": lambda: ops.bernoulli_nll(x, t, SUM, 1.0),
        "bce rows": lambda: ops.bernoulli_nll(x, t, ROWS, 1.0),
        "bce none": lambda: ops.bernoulli_nll(x, t, NONE, 1.0),
        "bce backward": lambda: ops.bernoulli_nll_backward(kl, x, t, ROWS, 1.0, False),
        "sample_and_kl": lambda: ops.sample_and_kl(m, lv, philox, 1),
        "sample_and_kl_backward": lambda: ops.sample_and_kl_backward(z, kl, m, lv, philox, 1),
    }
    for what, fn in calls.items():
        names = cuda_kernels(fn)
        assert len(names) == 1 and "kernel" in names[0], (what, names)


@cuda_only
def test_cuda_graph_replays_reductions_and_resamples():
    x, t, m, lv = inputs((64, 20000), "cuda")
    eager = [ops.bernoulli_nll(x, t, SUM, 1.0), ops.bernoulli_nll(x, t, ROWS, 1.0)]
    vae_fast.sample_and_kl(m, lv)  # warm up (module load, allocator) before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        captured = [ops.bernoulli_nll(x, t, SUM, 1.0), ops.bernoulli_nll(x, t, ROWS, 1.0)]
        z, kl = vae_fast.sample_and_kl(m, lv)
    draws = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, eager):
            assert torch.equal(a, b)  # the same bits as eager, every replay (the counters reset)
        draws.append(z.clone())
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    for a, b in zip(eager, [ops.bernoulli_nll(x, t, SUM, 1.0), ops.bernoulli_nll(x, t, ROWS, 1.0)]):
        assert torch.equal(a, b)  # eager launches after the graph: still right
