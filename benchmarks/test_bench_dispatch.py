"""pytest-benchmark: per-call cost of bernoulli_nll and sample_and_kl on tiny tensors through plain
torch, the reference, the public API (each backend) and each fused op called directly, with and
without inputs requiring grad; API minus the direct op call is the cost of vae_fast's Python layer."""
from vae_fast import bench


def test_dispatch(benchmark, dispatch_call, bench_settings):
    calls = {label: fn for label, _, fn in bench.dispatch_calls(bench_settings.device, bench_settings.backends)}
    fn = calls[dispatch_call]
    benchmark.group = "dispatch"
    for _ in range(bench_settings.warmup):
        fn()
    benchmark(fn)  # host-side time per call: no synchronize per call (bench.dispatch_overhead)
