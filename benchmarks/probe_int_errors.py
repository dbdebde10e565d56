"""Probe of the one GPU-run failure without a known cause (2026-11-27, H200 image, commit f59572e):
pytest-xdist workers died with SIGSEGV in tests/test_native_cpu.py::test_input_checks_name_the_argument,
in exactly the cases whose _C error message formats an integer (a shape, a count); the cases with
dtype-only messages passed. It never reproduced off that machine: not with its Python 3.12 and torch
2.11.0+cu130, nor with _C built by its Ubuntu 24.04 g++ 13.2 / libstdc++ 14 (a noble chroot on the CPU
machine, 2026-11-27). What the CPU machine lacks is a GPU: those workers had run CUDA tests first.

    python benchmarks/probe_int_errors.py [--cuda-first]

Each step prints before it runs, so a crash shows which one. With --cuda-first, CUDA (and a vae_fast
CUDA op) is initialised before the first integer message of _C, as in the crashed workers; run it
under LD_DEBUG=bindings to see which library _C's ostream::_M_insert<long> binds to then.
"""
import sys

import torch

import vae_fast  # noqa: F401  (registers torch.ops.vae_fast)

ops = torch.ops.vae_fast


def step(name, call):
    print(f"{name} ...", end=" ", flush=True)
    try:
        call()
        print("no error?!", flush=True)
    except RuntimeError as e:
        print("ok:", str(e).splitlines()[0][:100], flush=True)


def cuda_init():
    x = torch.randn(4, 8, device="cuda")
    out = ops.sample_and_kl(x, x, torch.tensor([1, 2], device="cuda"), 1)
    torch.cuda.synchronize()
    print(f"CUDA initialised ({torch.cuda.get_device_name()}), a vae_fast CUDA op ran: "
          f"{[tuple(t.shape) for t in out]}", flush=True)


def main(argv):
    step("torch's own integer message", lambda: torch.zeros(2).view(3))
    step("_C, a dtype message", lambda: ops.bernoulli_nll(torch.zeros(3, dtype=torch.float64), torch.zeros(3), 0, 1.0))
    if "--cuda-first" in argv:
        cuda_init()
    step("_C, an integer message", lambda: ops.reparameterize(torch.zeros(3), torch.zeros(3), torch.tensor([1.0, 2.0]), 1))
    step("_C, a shape message", lambda: ops.bernoulli_nll(torch.zeros(3), torch.zeros(2), 0, 1.0))
    step("_C, a count message", lambda: ops.reparameterize(torch.zeros(3), torch.zeros(3), torch.tensor([1, 2]), 0))
    print("probe done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
