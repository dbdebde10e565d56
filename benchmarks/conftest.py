"""Shared set-up of the pytest-benchmark suites: which device, cases and impls they run. Every case,
callable and byte count comes from vae_fast.bench, the code behind `vae-fast bench`.

    pytest benchmarks --benchmark-enable              # the --quick shapes (float32)
    pytest benchmarks --benchmark-enable --bench-full # every shape and dtype of `vae-fast bench`

Without --benchmark-enable (pyproject's addopts disable pytest-benchmark) each case runs once: a
smoke test of the suite.
"""
import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of vae_fast (see tests/conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vae_fast import bench  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true",
                     help="benchmark every shape and dtype of `vae-fast bench` (default: its --quick set)")


@dataclasses.dataclass(frozen=True)
class Settings:
    device: torch.device
    quick: bool
    backends: tuple
    compile_backend: str
    warmup: int

    @property
    def impls(self):
        return (*bench.BASELINES, *self.backends)


def settings(config) -> Settings:
    if not hasattr(config, "_vae_fast_bench"):
        device = bench.pick_device("auto")
        quick = not config.getoption("--bench-full")
        config._vae_fast_bench = Settings(
            device, quick, tuple(bench.fused_backends(device, quick)[0]),
            bench.default_compile_backend(device, quick),
            (bench.QUICK_TIMER if quick else bench.TimerConfig()).warmup)
    return config._vae_fast_bench


@pytest.fixture
def bench_settings(request) -> Settings:
    return settings(request.config)


def pytest_generate_tests(metafunc):
    """`bench_case` over the cases of the module's OPS, `bench_impl` over eager, compiled and the
    fused backends, `dispatch_call` over the labels of bench.dispatch_calls."""
    s = settings(metafunc.config)
    if "bench_case" in metafunc.fixturenames:
        shapes = bench.QUICK_SHAPES if s.quick else bench.FULL_SHAPES
        dtypes = [torch.float32] if s.quick else list(bench.DTYPES.values())
        found = bench.cases(metafunc.module.OPS, shapes, dtypes, s.device)
        metafunc.parametrize("bench_case", found, ids=[c.label.replace(" ", "-") for c in found])
    if "bench_impl" in metafunc.fixturenames:
        metafunc.parametrize("bench_impl", s.impls)
    if "dispatch_call" in metafunc.fixturenames:
        labels = [label for label, _, _ in bench.dispatch_calls(s.device, s.backends)]
        metafunc.parametrize("dispatch_call", labels)


@pytest.fixture
def run_benchmark(benchmark, bench_settings):
    """run_benchmark(fn): warm `fn` up (the first calls compile), then let pytest-benchmark time it;
    on a GPU each timed call ends with torch.cuda.synchronize."""
    device = bench_settings.device

    def run(fn):
        for _ in range(bench_settings.warmup):
            fn()
        bench.synchronize(device)
        return benchmark(lambda: (fn(), bench.synchronize(device)))
    return run
