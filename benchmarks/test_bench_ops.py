"""pytest-benchmark: each op forward and forward+backward on the fused backends, the eager
reference and torch.compile of the reference, plus the copy baseline. Byte counts (in extra_info):
vae_fast.bench.min_bytes; GB/s = min_bytes / the time."""
import pytest

from vae_fast import bench

OPS = tuple(op for op in bench.OPS if op != "vae_step")


def test_op(benchmark, run_benchmark, bench_case, bench_impl, bench_settings):
    if bench_impl == "compiled" and bench_settings.compile_backend == "none":
        pytest.skip("compile backend 'none'")
    step = bench.make_step(bench_case, bench_impl, bench_settings.compile_backend)
    benchmark.group = bench_case.label
    benchmark.extra_info["min_bytes"] = bench.min_bytes(bench_case.op, bench_case.direction,
                                                       bench_case.shape, bench_case.dtype)
    run_benchmark(step)


def test_copy_baseline(benchmark, run_benchmark, bench_settings):
    """dst.copy_(src) on large float32 buffers: the bandwidth the ops are compared with."""
    fn, moved = bench.copy_step(bench_settings.device, bench.copy_elements(bench_settings.device,
                                                                           bench_settings.quick))
    benchmark.group = "copy"
    benchmark.extra_info["bytes"] = moved
    run_benchmark(fn)
