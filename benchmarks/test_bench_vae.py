"""pytest-benchmark: the reference VAE of vae_fast.models on a batch: the loss ("fwd") and a whole
training step (forward, backward, Adam step: "fwd+bwd"), with the fused ops (FusedOps), the
reference ops (eager) and torch.compile of the reference model's loss."""
from vae_fast import bench

OPS = ("vae_step",)


def test_vae_step(benchmark, run_benchmark, bench_case, bench_impl, bench_settings):
    step = bench.make_step(bench_case, bench_impl, bench_settings.compile_backend)
    benchmark.group = bench_case.label
    run_benchmark(step)
