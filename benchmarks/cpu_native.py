"""Fused forward+backward on the CPU: the native kernels (torch.ops.vae_fast, vae_fast._C) against
the eager reference (vae_fast/reference.py with autograd), float32, 2^22 elements by default.

    python benchmarks/cpu_native.py [--numel 4194304] [--cols 1024] [--repeat 7] [--threads N]

Eager sample_and_kl: torch.randn eps + reference.reparameterize + reference.gaussian_kl summed per row,
backward through both. Native: the sample_and_kl op and its backward op (what autograd calls).
Eager bernoulli_nll: reference.bernoulli_nll(...).sum() and backward. Native: bernoulli_nll with
reduction SUM and its backward. Prints the best-of-N times and the speedup (eager / native).
"""
from __future__ import annotations

import argparse
import time

import torch

from vae_fast import _native, reference

SUM, ROWS = 1, 2


def best_ms(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=1 << 22)
    p.add_argument("--cols", type=int, default=1024, help="row length (rows = numel / cols)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if not _native.available():
        print(f"vae_fast._C unavailable: {_native.why_not()}")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    ops = torch.ops.vae_fast
    rows = args.numel // args.cols
    shape = (rows, args.cols)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(shape, generator=g)
    logvar = 0.5 * torch.randn(shape, generator=g)
    grad_z = torch.randn(shape, generator=g)
    grad_kl = torch.randn(rows, generator=g)
    logits = 3 * torch.randn(shape, generator=g)
    target = torch.rand(shape, generator=g)
    philox = torch.tensor([1234, 5678])
    one = torch.ones(())

    def eager_sample_and_kl():
        m, lv = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
        eps = torch.randn(shape)
        z = reference.reparameterize(m, lv, eps)
        kl = reference.per_sample(reference.gaussian_kl(m, lv))
        torch.autograd.backward((z, kl), (grad_z, grad_kl))

    def native_sample_and_kl():
        z, kl = ops.sample_and_kl(mu, logvar, philox, 1)
        ops.sample_and_kl_backward(grad_z.unsqueeze(0), grad_kl, mu, logvar, philox, 1)

    def eager_bce():
        x = logits.detach().requires_grad_()
        reference.bernoulli_nll(x, target).sum().backward()

    def native_bce():
        ops.bernoulli_nll(logits, target, SUM, 1.0)
        ops.bernoulli_nll_backward(one, logits, target, SUM, 1.0, False)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"shape {shape} ({args.numel} elements), best of {args.repeat}")
    ok = True
    for name, eager, native in (("sample_and_kl", eager_sample_and_kl, native_sample_and_kl),
                                ("bernoulli_nll", eager_bce, native_bce)):
        te, tn = best_ms(eager, args.repeat), best_ms(native, args.repeat)
        ratio = te / tn
        ok &= ratio >= 2.0
        print(f"{name:14s} fwd+bwd  eager {te:8.2f} ms   native {tn:8.2f} ms   speedup {ratio:5.2f}x")
    print("acceptance (>= 2x for both):", "PASS" if ok else "FAIL")
    return 0 if ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
