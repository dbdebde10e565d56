"""Benchmarks: the fused ops against the eager reference, `torch.compile` of the reference, and the
device's copy bandwidth, all measured in the same run.

This module is the one source of the measurements: `vae-fast bench` (vae_fast/cli.py) and the
pytest-benchmark suites in benchmarks/ both build their cases and callables here.

What is measured (one *case* = op x direction x shape x dtype, one *row* = a case on one impl):
- ops: `reparameterize`, `gaussian_kl` (reduction "sum"), `sample_and_kl`, `bernoulli_nll`
  (reduction "mean"), `negative_elbo` (reduction "batchmean"), `negative_iwae_bound` (K = 50 samples
  drawn from mu, logvar, a stand-in log p(x|z) = -|z|^2 / 2, estimator "dreg"; shape "iwae-128x50"
  is its batch 128, latent 50; latents of at most 2^20 elements), and `vae_step`: the reference VAE of
  vae_fast.models (784-400-20 MLP) on a batch; its "fwd" is the loss, its "fwd+bwd" a whole
  training step (forward, backward and torch.optim.Adam step). `diffusers_posterior`: sample() +
  kl() of diffusers' DiagonalGaussianDistribution on `params` (mean and logvar on dim 1), patched
  (vae_fast.integrations.diffusers, the fused rows) against the unpatched class (eager, compiled),
  on latents of 4 or more dims: "ld-8x4x128x128" and the video latent "video-1x16x21x60x104".
- shapes (`FULL_SHAPES`): "mnist" (latents mu/logvar 128x20, images logits/target 128x784),
  latent-diffusion latents "ld-8x4x128x128" and "ld-8x16x64x64", streams "stream-2^24" and
  "stream-2^26" (128 rows); outside "mnist" one shape serves as both latents and images. dtypes
  float32 and bfloat16. --quick (`QUICK_SHAPES`): "mnist" and "stream-2^12", float32.
- directions: "fwd" (inputs do not require grad) and "fwd+bwd" (forward, then
  `torch.autograd.grad` of the outputs with fixed random output gradients).
- impls: every fused backend that runs on the device ("triton", "cuda", "cpu"; Triton on CPU
  tensors only under TRITON_INTERPRET=1 and only with --quick), "eager" (vae_fast.reference, the
  plain-PyTorch ground truth) and "compiled" (`torch.compile` of that same reference function;
  inductor, except aot_eager on the CPU with --quick because inductor's C++ compile is too slow).
- time: the median over `repeats` samples after warm-up; each sample times `number` back-to-back
  calls (number is calibrated so one sample lasts at least `min_sample_s`), with CUDA events and
  torch.cuda.synchronize on a GPU, time.perf_counter on the CPU.
- copy baseline: `dst.copy_(src)` on a buffer much larger than the GPU's L2 cache, bytes = 2 x size.
  A row's `copy_fraction` is its achieved GB/s over that copy's GB/s (small shapes live in cache and
  may exceed 1).
- peak memory: on a GPU, torch.cuda.max_memory_allocated during one call minus what was allocated
  before it (inputs, output gradients and model state excluded; temporaries and outputs included).
  null on the CPU (PyTorch has no allocator statistics for CPU tensors).
- dispatch overhead: microseconds per call (median and fastest sample) of bernoulli_nll and
  sample_and_kl on tiny tensors through plain torch, the reference math, the public API and each fused
  op called directly, with inputs that do not and that do require grad (`dispatch_overhead`).

Minimum bytes an op must move (`min_bytes`: the elements below times the bytes per element; N = elements of mu / logvar,
M = elements of logits / target, B = rows (batch) = mu.shape[0]; 0-d results and 0-d output
gradients are not counted). eps is drawn in-kernel, so it is never read or written:

| op | fwd | bwd (fwd+bwd = fwd + bwd) |
|---|---|---|
| reparameterize | read mu, logvar; write z: 3N | read grad_z, logvar; write grad_logvar: 3N (grad_mu is grad_z) |
| gaussian_kl | read mu, logvar: 2N | read mu, logvar; write grad_mu, grad_logvar: 4N |
| sample_and_kl | read mu, logvar; write z, kl: 3N + B | read grad_z, grad_kl, mu, logvar; write grad_mu, grad_logvar: 5N + B |
| bernoulli_nll | read logits, target: 2M | read logits, target; write grad_logits: 3M |
| negative_elbo | read logits, target, mu, logvar: 2M + 2N | 3M + 4N |
| diffusers_posterior | as sample_and_kl (N = elements of z) | as sample_and_kl |
| vae_step | null: matrix multiplies bound it, not memory traffic | null |
| negative_iwae_bound | read mu, logvar; write z (K = 50 samples), read it back: 2N + 2KN | read and write grad_z, read z; read logvar, write grad_mu, grad_logvar: 3KN + 3N |

All times, bandwidths and speedups come from the run that writes them; nothing is hard-coded.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import _backends, _outputs, _triton_loader, functional, reference
from .models import VAE, FusedOps, ReferenceOps

OPS = ("reparameterize", "gaussian_kl", "sample_and_kl", "bernoulli_nll", "negative_elbo", "vae_step",
       "diffusers_posterior", "negative_iwae_bound")
DIRECTIONS = ("fwd", "fwd+bwd")
FUSED_BACKENDS = ("triton", "cuda", "cpu")
BASELINES = ("eager", "compiled")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COMPILE_BACKENDS = ("inductor", "aot_eager", "none")
VAE_HIDDEN = 400
ROW_KEYS = ("op", "direction", "shape", "data_shape", "latent_shape", "dtype", "impl", "median_s",
            "number", "repeats", "min_bytes", "gbps", "copy_fraction", "speedup_vs_eager",
            "speedup_vs_compiled", "peak_mem_bytes", "note", "error")


class BenchError(ValueError):
    """Bad options (the CLI shows it as a usage error)."""


# ----------------------------------------------------------------------------- shapes
@dataclasses.dataclass(frozen=True)
class Shape:
    """`data`: logits / target (bernoulli_nll, negative_elbo, the VAE's input);
    `latent`: mu / logvar (reparameterize, gaussian_kl, sample_and_kl, negative_elbo)."""
    name: str
    data: tuple
    latent: tuple
    vae: bool = False  # run vae_step on it (an MLP VAE needs (batch, features) shapes)
    only: tuple | None = None  # the ops that run on it (None: every op but those needing `only`)


def _stream(log2: int, rows: int = 128) -> Shape:
    shape = (rows, 2 ** log2 // rows)
    return Shape(f"stream-2^{log2}", shape, shape)


FULL_SHAPES = (
    Shape("mnist", (128, 784), (128, 20), vae=True),            # the MNIST VAE, batch 128
    Shape("ld-8x4x128x128", (8, 4, 128, 128), (8, 4, 128, 128)),  # latent-diffusion latents
    Shape("ld-8x16x64x64", (8, 16, 64, 64), (8, 16, 64, 64)),
    _stream(24),
    _stream(26),
    # a video VAE's latents (Wan 2.1, 81 frames at 832x480): the diffusers posterior only
    Shape("video-1x16x21x60x104", (1, 16, 21, 60, 104), (1, 16, 21, 60, 104), only=("diffusers_posterior",)),
    Shape("iwae-128x50", (128, 784), (128, 50), only=("negative_iwae_bound",)),  # K = 50 (issue 12)
)
QUICK_SHAPES = (Shape("mnist", (128, 784), (128, 20), vae=True), _stream(12),
                Shape("ld-2x4x8x8", (2, 4, 8, 8), (2, 4, 8, 8), only=("diffusers_posterior",)),
                Shape("video-1x4x3x4x4", (1, 4, 3, 4, 4), (1, 4, 3, 4, 4), only=("diffusers_posterior",)))


# -------------------------------------------------------------------------------- ops
@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    inputs: tuple          # names, from: mu, logvar (latent shape), logits, target (data shape)
    grad_inputs: tuple     # the inputs that require grad in "fwd+bwd"
    reference: Callable    # eager reference: tensors -> tensor or tuple of tensors
    fused: Callable        # backend name -> (tensors -> outputs)
    bytes_fwd: Callable    # (M, N, B) -> elements the forward must move
    bytes_bwd: Callable


def _ref_reparameterize(mu, logvar):
    return reference.reparameterize(mu, logvar, torch.randn_like(mu))


def _ref_sample_and_kl(mu, logvar):
    z = reference.reparameterize(mu, logvar, torch.randn_like(mu))
    return z, reference.per_sample(reference.gaussian_kl(mu, logvar))


def _ref_gaussian_kl(mu, logvar):
    return reference.gaussian_kl(mu, logvar).sum()


def _ref_bernoulli_nll(logits, target):
    return reference.bernoulli_nll(logits, target).mean()


def _ref_negative_elbo(logits, target, mu, logvar):
    return reference.negative_elbo(logits, target, mu, logvar, reduction="batchmean")


def _diffusers_class():
    """diffusers' DiagonalGaussianDistribution (the unpatched class), or, without diffusers, a copy of
    its sample/kl (diffusers 0.42, models/autoencoders/vae.py)."""
    try:
        from diffusers.models.autoencoders import vae

        from .integrations import diffusers as patched
        return patched._original or vae.DiagonalGaussianDistribution
    except ImportError:
        class DiagonalGaussianDistribution:
            def __init__(self, parameters):
                self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
                self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
                self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)

            def sample(self):
                return self.mean + self.std * torch.randn_like(self.mean)

            def kl(self):
                return 0.5 * torch.sum(self.mean ** 2 + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return DiagonalGaussianDistribution


def _ref_diffusers_posterior(params):
    posterior = _diffusers_class()(params)
    return posterior.sample(), posterior.kl()


def _fused_diffusers_posterior(backend):
    from .integrations.diffusers import DiagonalGaussianDistribution

    def fn(params):
        posterior = DiagonalGaussianDistribution(params)
        posterior.backend = backend
        return posterior.sample(), posterior.kl()
    return fn


IW_K = 50  # importance samples of negative_iwae_bound
IW_MAX_LATENT = 2 ** 20  # latents it runs on at most (z is IW_K times larger)


def _iw_log_px(z):
    """A stand-in decoder term log p(x|z), (K, B), differentiable in z: the same for every impl."""
    return -0.5 * (z * z).flatten(2).sum(-1)


def _ref_negative_iwae_bound(mu, logvar):
    z = reference.reparameterize(mu, logvar, torch.randn((IW_K, *mu.shape), dtype=mu.dtype, device=mu.device))
    return reference.negative_iwae_bound(_iw_log_px(z), z, mu, logvar, estimator="dreg")


def _fused_negative_iwae_bound(backend):
    def fn(mu, logvar):
        z = functional.reparameterize(mu, logvar, num_samples=IW_K, backend=backend)
        return functional.negative_iwae_bound(_iw_log_px(z), z, mu, logvar, estimator="dreg",
                                              backend=backend)
    return fn


def _fused(name: str, **kwargs):
    fn = getattr(functional, name)
    return lambda backend: (lambda *tensors: fn(*tensors, backend=backend, **kwargs))


SPECS = {s.name: s for s in (
    OpSpec("reparameterize", ("mu", "logvar"), ("mu", "logvar"), _ref_reparameterize,
           _fused("reparameterize"), lambda M, N, B: 3 * N, lambda M, N, B: 3 * N),
    OpSpec("gaussian_kl", ("mu", "logvar"), ("mu", "logvar"), _ref_gaussian_kl,
           _fused("gaussian_kl", reduction="sum"), lambda M, N, B: 2 * N, lambda M, N, B: 4 * N),
    OpSpec("sample_and_kl", ("mu", "logvar"), ("mu", "logvar"), _ref_sample_and_kl,
           _fused("sample_and_kl"), lambda M, N, B: 3 * N + B, lambda M, N, B: 5 * N + B),
    OpSpec("bernoulli_nll", ("logits", "target"), ("logits",), _ref_bernoulli_nll,
           _fused("bernoulli_nll", reduction="mean"), lambda M, N, B: 2 * M, lambda M, N, B: 3 * M),
    OpSpec("negative_elbo", ("logits", "target", "mu", "logvar"), ("logits", "mu", "logvar"),
           _ref_negative_elbo, _fused("negative_elbo", reduction="batchmean"),
           lambda M, N, B: 2 * M + 2 * N, lambda M, N, B: 3 * M + 4 * N),
    # diffusers' posterior, sample() + kl() (4-D: the kl sums dims 1-3 = all but the batch, one fused
    # kernel; 5-D: a (batch, width) kl): N = elements of z (params hold 2N), sample_and_kl's bytes
    OpSpec("diffusers_posterior", ("params",), ("params",), _ref_diffusers_posterior,
           _fused_diffusers_posterior, lambda M, N, B: 3 * N + B, lambda M, N, B: 5 * N + B),
    OpSpec("negative_iwae_bound", ("mu", "logvar"), ("mu", "logvar"), _ref_negative_iwae_bound,
           _fused_negative_iwae_bound, lambda M, N, B: 2 * N + 2 * IW_K * N,
           lambda M, N, B: 3 * IW_K * N + 3 * N),
)}


USES = {name: tuple(dict.fromkeys("latent" if i in ("mu", "logvar", "params") else "data" for i in spec.inputs))
        for name, spec in SPECS.items()}  # which of Shape.data / Shape.latent each op takes


def min_bytes(op: str, direction: str, shape: Shape, dtype: torch.dtype) -> int | None:
    """The bytes `op` must read and write at least (the table in the module docstring)."""
    if op == "vae_step":
        return None
    spec = SPECS[op]
    M, N, B = math.prod(shape.data), math.prod(shape.latent), shape.latent[0]
    elems = spec.bytes_fwd(M, N, B) + (spec.bytes_bwd(M, N, B) if direction == "fwd+bwd" else 0)
    return elems * dtype.itemsize


# ------------------------------------------------------------------------------ cases
@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    direction: str
    shape: Shape
    dtype: torch.dtype
    device: torch.device

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def label(self) -> str:
        return f"{self.op} {self.direction} {self.shape.name} {self.dtype_name}"


def cases(ops, shapes, dtypes, device, directions=DIRECTIONS) -> list[Case]:
    return [Case(op, d, shape, dtype, device) for op in ops for shape in shapes
            if (op != "vae_step" or shape.vae) and _runs_on(op, shape) for dtype in dtypes for d in directions]


def _runs_on(op: str, shape: Shape) -> bool:
    if op == "diffusers_posterior":  # diffusers sums its kl over dims [1, 2, 3]: 4-D latents or more
        return len(shape.latent) >= 4
    if op == "negative_iwae_bound" and math.prod(shape.latent) > IW_MAX_LATENT:
        return False  # z is IW_K times the latent
    return shape.only is None or op in shape.only


def make_inputs(case: Case) -> dict:
    """Deterministic inputs of the case's op (mu, logvar of the latent shape; logits, target of the
    data shape; target holds probabilities)."""
    g = torch.Generator(device=case.device).manual_seed(0)
    kw = dict(device=case.device, generator=g)
    lat, dat = case.shape.latent, case.shape.data
    make = {
        "mu": lambda: torch.randn(lat, **kw),
        "logvar": lambda: 0.5 * torch.randn(lat, **kw),
        "logits": lambda: 2.0 * torch.randn(dat, **kw),
        "target": lambda: torch.rand(dat, **kw),
        "params": lambda: torch.cat([torch.randn(lat, **kw), 0.5 * torch.randn(lat, **kw)], 1),
    }
    names = ("target",) if case.op == "vae_step" else SPECS[case.op].inputs
    return {name: make[name]().to(case.dtype) for name in names}


def compile_fn(fn: Callable, compile_backend: str) -> Callable:
    torch._dynamo.reset()  # a fresh cache per case: no recompile limits, no dynamic-shape drift
    return torch.compile(fn, backend=compile_backend, dynamic=False)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def make_step(case: Case, impl: str, compile_backend: str = "inductor") -> Callable[[], object]:
    """A no-argument callable running `case` once on `impl` (a fused backend, "eager" or
    "compiled"); inputs, output gradients, models and optimizers are made here, outside timing."""
    if impl == "compiled" and compile_backend == "none":
        raise BenchError("compiled: compile backend 'none'")
    if case.op == "vae_step":
        return _vae_step(case, impl, compile_backend)
    spec = SPECS[case.op]
    fn = spec.reference if impl in BASELINES else spec.fused(impl)
    if impl == "compiled":
        fn = compile_fn(fn, compile_backend)
    inputs = make_inputs(case)
    args = [inputs[name] for name in spec.inputs]
    if case.direction == "fwd":
        return lambda: fn(*args)
    wrt = [inputs[name].requires_grad_() for name in spec.grad_inputs]
    g = torch.Generator(device=case.device).manual_seed(1)
    with torch.no_grad():
        grads = [torch.randn(o.shape, device=case.device, generator=g).to(o.dtype)
                 for o in _as_tuple(spec.reference(*[a.detach() for a in args]))]

    def step():
        return torch.autograd.grad(_as_tuple(fn(*args)), wrt, grads)
    return step


def _vae_step(case: Case, impl: str, compile_backend: str):
    ops = ReferenceOps() if impl in BASELINES else FusedOps(impl)
    with torch.random.fork_rng(devices=[]):  # the same initial weights for every impl
        torch.manual_seed(0)
        model = VAE(in_dim=case.shape.data[1], hidden=VAE_HIDDEN, latent=case.shape.latent[1], ops=ops)
    model = model.to(case.device, case.dtype)
    x = make_inputs(case)["target"]  # pixel intensities in [0, 1]

    def loss(x):
        return model(x)[0].mean()

    loss_fn = compile_fn(loss, compile_backend) if impl == "compiled" else loss
    if case.direction == "fwd":
        def forward():
            with torch.no_grad():
                return loss_fn(x)
        return forward
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        optimizer.step()
    return train_step


# ------------------------------------------------------------------------------ timing
@dataclasses.dataclass(frozen=True)
class TimerConfig:
    warmup: int = 3
    repeats: int = 15
    min_sample_s: float = 0.005
    max_number: int = 1 << 14


QUICK_TIMER = TimerConfig(warmup=1, repeats=3, min_sample_s=0.002, max_number=256)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(fn, number: int, device: torch.device, wall: bool = False) -> float:
    """Seconds for `number` back-to-back calls: CUDA events on a GPU, else (or with `wall`)
    time.perf_counter up to the end of the device's work."""
    synchronize(device)
    if device.type == "cuda" and not wall:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class Timing:
    median_s: float
    number: int       # calls per sample
    samples: list     # seconds per call, one per sample


def measure(fn, device: torch.device, timer: TimerConfig = TimerConfig(), wall: bool = False) -> Timing:
    """Median seconds per call of `fn` after warm-up (the first calls also compile)."""
    for _ in range(timer.warmup):
        fn()
    number, t = 1, _sample(fn, 1, device, wall)
    while t < timer.min_sample_s and number < timer.max_number:
        number = min(timer.max_number, max(2 * number, int(1.2 * number * timer.min_sample_s / max(t, 1e-9))))
        t = _sample(fn, number, device, wall)
    samples = [t / number] + [_sample(fn, number, device, wall) / number for _ in range(timer.repeats - 1)]
    return Timing(statistics.median(samples), number, samples)


def peak_memory(fn, device: torch.device) -> int | None:
    """Bytes allocated by one call above what was allocated before it; None on the CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_elements(device: torch.device, quick: bool) -> int:
    """float32 elements of the copy baseline's buffers: 256 MiB each on a GPU (far above any L2)."""
    return (1 << 26) if device.type == "cuda" else (1 << 20 if quick else 1 << 24)


def copy_step(device: torch.device, elements: int) -> tuple[Callable, int]:
    """(`dst.copy_(src)` on float32 buffers of `elements`, bytes it moves = 2 x size)."""
    src = torch.ones(elements, device=device)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * src.numel() * src.element_size()


def copy_bandwidth(device: torch.device, elements: int, timer: TimerConfig) -> dict:
    fn, moved = copy_step(device, elements)
    timing = measure(fn, device, timer)
    return {"elements": elements, "dtype": "float32", "bytes": moved, "median_s": timing.median_s,
            "number": timing.number, "repeats": len(timing.samples), "gbps": moved / timing.median_s / 1e9}


# ------------------------------------------------------------------- dispatch overhead
DISPATCH_SHAPE = (4, 8)
DISPATCH_OPS = ("bernoulli_nll", "sample_and_kl")


@dataclasses.dataclass(frozen=True)
class DispatchCall:
    label: str
    backend: str | None   # None: plain torch / the reference math outside the public API
    op: str               # one of DISPATCH_OPS
    grad: bool            # an input requires grad: the forward also records the autograd node
    api: bool             # the public vae_fast function (False: the op called directly, or torch)
    fn: Callable


def _dispatch_specs(device: torch.device, backends) -> list[DispatchCall]:
    """Every way of computing bernoulli_nll "mean" and sample_and_kl on tiny tensors: plain torch,
    the reference, and per fused backend the public API and the op called directly (with the
    reduction code and a Philox state prepared outside the loop), each with inputs that do not and
    that do require grad (forward only: the autograd node is recorded, no backward runs)."""
    from ._ops import philox_state
    from ._schemas import SUM

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(DISPATCH_SHAPE, device=device, generator=g)
    t = torch.rand(DISPATCH_SHAPE, device=device, generator=g)
    lv = torch.randn(DISPATCH_SHAPE, device=device, generator=g)
    xg, lvg = x.clone().requires_grad_(), lv.clone().requires_grad_()
    scale = 1.0 / x.numel()
    philox = philox_state(device)
    grad_note = {False: "", True: ", input requiring grad"}
    calls = [
        DispatchCall("torch F.binary_cross_entropy_with_logits", None, "bernoulli_nll", False, False,
                     lambda: torch.nn.functional.binary_cross_entropy_with_logits(x, t)),
        DispatchCall("vae_fast.reference.bernoulli_nll(...).mean()", None, "bernoulli_nll", False, False,
                     lambda: reference.bernoulli_nll(x, t).mean()),
        DispatchCall("vae_fast.bernoulli_nll(backend='reference')", "reference", "bernoulli_nll", False, True,
                     lambda: functional.bernoulli_nll(x, t, backend="reference")),
        DispatchCall("vae_fast.sample_and_kl(backend='reference')", "reference", "sample_and_kl", False, True,
                     lambda: functional.sample_and_kl(x, lv, backend="reference")),
    ]
    for b in backends:
        name = _backends._NAMESPACE[b]
        ns = getattr(torch.ops, name)
        bce, sample = ns.bernoulli_nll.default, ns.sample_and_kl.default
        for grad in (False, True):
            a, c = (xg, lvg) if grad else (x, lv)
            calls += [
                DispatchCall(f"vae_fast.bernoulli_nll(backend={b!r}){grad_note[grad]}", b, "bernoulli_nll",
                             grad, True, lambda a=a, b=b: functional.bernoulli_nll(a, t, backend=b)),
                DispatchCall(f"torch.ops.{name}.bernoulli_nll.default{grad_note[grad]}", b, "bernoulli_nll",
                             grad, False, lambda a=a, op=bce: op(a, t, SUM, scale)),
                DispatchCall(f"vae_fast.sample_and_kl(backend={b!r}){grad_note[grad]}", b, "sample_and_kl",
                             grad, True, lambda a=a, c=c, b=b: functional.sample_and_kl(a, c, backend=b)),
                DispatchCall(f"torch.ops.{name}.sample_and_kl.default{grad_note[grad]}", b, "sample_and_kl",
                             grad, False, lambda a=a, c=c, op=sample: op(a, c, philox, 1)),
            ]
    return calls


def dispatch_calls(device: torch.device, backends) -> list[tuple[str, str | None, Callable]]:
    """(label, backend, callable) of every call of `_dispatch_specs`."""
    return [(c.label, c.backend, c.fn) for c in _dispatch_specs(device, backends)]


def dispatch_overhead(device: torch.device, backends, timer: TimerConfig) -> dict:
    """Per-call wall time (microseconds) of the calls of `_dispatch_specs`, timed with
    time.perf_counter over back-to-back calls and one synchronize at the end: on a GPU that is the
    host-side cost, since kernels on tiny tensors finish faster than the host issues them.
    `us_per_call` is the median over the samples, `us_min` the fastest sample (host overhead on a
    machine shared with other work: the least disturbed run).
    `python_layer_us[b]` = the public bernoulli_nll minus the op called directly (fastest samples):
    the cost of vae_fast's Python layer (argument checks, reduction and backend choice);
    `python_layer_by_call[b]["<op>" or "<op> grad"]` the same for each op, with and without grad
    (for sample_and_kl it includes drawing the Philox state)."""
    # many short samples: on a shared machine some of them run undisturbed (us_min)
    timer = dataclasses.replace(timer, repeats=max(timer.repeats, 100), min_sample_s=0.001)
    rows = []
    for c in _dispatch_specs(device, backends):
        timing = measure(c.fn, device, timer, wall=True)
        note = "interpreted (TRITON_INTERPRET=1)" if c.backend == "triton" and device.type == "cpu" else ""
        rows.append({"call": c.label, "backend": c.backend, "op": c.op, "grad": c.grad, "api": c.api,
                     "us_per_call": timing.median_s * 1e6, "us_min": min(timing.samples) * 1e6,
                     "calls": timing.number, "repeats": len(timing.samples), "note": note})
    by_call = {}
    for b in backends:
        by_call[b] = {}
        for op in DISPATCH_OPS:
            for grad in (False, True):
                api, direct = (next(r for r in rows if (r["backend"], r["op"], r["grad"], r["api"]) == (b, op, grad, a))
                               for a in (True, False))
                by_call[b][op + (" grad" if grad else "")] = api["us_min"] - direct["us_min"]
    return {"shape": list(DISPATCH_SHAPE), "dtype": "float32", "rows": rows,
            "python_layer_us": {b: by_call[b]["bernoulli_nll"] for b in backends},
            "python_layer_by_call": by_call}


# ---------------------------------------------------------------------------- the run
@dataclasses.dataclass
class Options:
    quick: bool = False
    backends: tuple | None = None   # fused backends; None: every one that runs on the device
    ops: tuple | None = None        # None: OPS
    dtypes: tuple | None = None     # names of DTYPES; None: float32 (--quick) or all
    shapes: tuple | None = None     # Shape names; None: QUICK_SHAPES or FULL_SHAPES
    directions: tuple | None = None  # of DIRECTIONS; None: both
    device: str = "auto"            # auto: cuda when available, else cpu
    compile_backend: str | None = None  # None: inductor (aot_eager on the CPU with --quick)
    threads: int | None = None      # torch CPU threads
    out: str | None = None          # None: default_out_dir(...)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is available")
    if name not in ("cuda", "cpu"):
        raise BenchError(f"--device: expected auto, cuda or cpu, got {name!r}")
    return torch.device(name)


def fused_backends(device: torch.device, quick: bool, wanted=None) -> tuple[list[str], list[str]]:
    """(backends to run, notes on the ones left out) for tensors on `device`."""
    status = _backends.available_backends()
    chosen, notes = [], []
    for name in wanted or FUSED_BACKENDS:
        if name not in FUSED_BACKENDS:
            raise BenchError(f"--backends: expected names from {', '.join(FUSED_BACKENDS)}, got {name!r}")
        if not status[name].available:
            notes.append(f"{name}: not available ({status[name].detail})")
        elif name in ("cuda", "cpu") and device.type != name:
            notes.append(f"{name}: runs on {name} tensors, this run is on {device.type}")
        elif name == "triton" and device.type == "cpu" and not _triton_loader.interpreted:
            notes.append("triton: runs on CPU tensors only in the interpreter (TRITON_INTERPRET=1)")
        elif name == "triton" and device.type == "cpu" and not quick:
            notes.append("triton: on the CPU only the interpreter runs it; measured with --quick only")
        else:
            chosen.append(name)
    return chosen, notes


def _pick(kind: str, wanted, known):
    if wanted is None:
        return list(known)
    for w in wanted:
        if w not in known:
            raise BenchError(f"--{kind}: expected names from {', '.join(known)}, got {w!r}")
    return [k for k in known if k in wanted]


def default_compile_backend(device: torch.device, quick: bool) -> str:
    """inductor, except aot_eager on the CPU with --quick: inductor's C++ compile takes tens of
    seconds per graph there."""
    return "aot_eager" if quick and device.type == "cpu" else "inductor"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"CPU {model}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_out_dir(device: torch.device, quick: bool) -> Path:
    """benchmarks/results/<device> for a full GPU run; runs/bench/<device> otherwise."""
    name = slug(device_name(device))
    if device.type == "cuda" and not quick:
        return Path("benchmarks") / "results" / name
    return Path("runs") / "bench" / (name + ("-quick" if quick else ""))


def check_out_dir(out: Path, device: torch.device, quick: bool) -> None:
    parts = out.resolve().parts
    in_results = any(parts[i:i + 2] == ("benchmarks", "results") for i in range(len(parts) - 1))
    if in_results and (device.type != "cuda" or quick):
        raise BenchError(f"--out {out}: benchmarks/results/ keeps full GPU runs only; "
                         "write CPU or --quick results elsewhere")
    _outputs.check_out_dir(str(out), BenchError)  # before the benchmark runs, not after


def git_commit() -> dict:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _measure_impl(case: Case, impl: str, compile_backend: str, timer: TimerConfig) -> dict:
    """median_s, number, repeats, peak_mem_bytes of one impl, or its error (one failing impl, say
    out of memory, must not lose the rest of the run)."""
    try:
        step = make_step(case, impl, compile_backend)
        timing = measure(step, case.device, timer)
        peak = peak_memory(step, case.device)
        return {"median_s": timing.median_s, "number": timing.number, "repeats": len(timing.samples),
                "peak_mem_bytes": peak}
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if case.device.type == "cuda":  # the failed step's tensors are gone with this frame's exception
        torch.cuda.empty_cache()
    return {"error": error}


def measure_case(case: Case, impls, compile_backend: str, timer: TimerConfig, notes: dict,
                 log=None) -> list[dict]:
    """One row per impl, speedups filled in from the eager and compiled rows of the same case."""
    rows = []
    uses = USES.get(case.op, ("data", "latent"))
    nbytes = min_bytes(case.op, case.direction, case.shape, case.dtype)
    for impl in impls:
        row = {"op": case.op, "direction": case.direction, "shape": case.shape.name,
               "data_shape": list(case.shape.data) if "data" in uses else None,
               "latent_shape": list(case.shape.latent) if "latent" in uses else None,
               "dtype": case.dtype_name, "impl": impl, "median_s": None, "number": None,
               "repeats": None, "min_bytes": nbytes, "gbps": None, "copy_fraction": None,
               "speedup_vs_eager": None, "speedup_vs_compiled": None, "peak_mem_bytes": None,
               "note": notes.get(impl, ""), "error": None}
        rows.append(row)
        if impl == "compiled" and compile_backend == "none":
            row["note"] = "torch.compile skipped (--compile-backend none)"
            continue
        row.update(_measure_impl(case, impl, compile_backend, timer))
        if row["error"] and log:
            log(f"  {case.label} {impl}: {row['error']}")
        if row["median_s"] and nbytes is not None:
            row["gbps"] = nbytes / row["median_s"] / 1e9
    base = {r["impl"]: r["median_s"] for r in rows}
    for row in rows:
        if row["median_s"]:
            for name in BASELINES:
                if base.get(name):
                    row[f"speedup_vs_{name}"] = base[name] / row["median_s"]
    return rows


def run(options: Options, stdout=None) -> dict:
    """Measure, print the table, write bench.json and bench.png into the out dir; returns the report."""
    stdout = stdout or sys.stdout

    def log(msg=""):
        print(msg, file=stdout, flush=True)

    device = pick_device(options.device)
    quick = options.quick
    ops = _pick("ops", options.ops, OPS)
    dtype_names = _pick("dtypes", options.dtypes, ("float32",) if quick else tuple(DTYPES))
    shape_list = QUICK_SHAPES if quick else FULL_SHAPES
    shapes = [s for s in shape_list if s.name in _pick("shapes", options.shapes, [s.name for s in shape_list])]
    directions = _pick("directions", options.directions, DIRECTIONS)
    compile_backend = options.compile_backend or default_compile_backend(device, quick)
    if compile_backend not in COMPILE_BACKENDS:
        raise BenchError(f"--compile-backend: expected one of {', '.join(COMPILE_BACKENDS)}, got {compile_backend!r}")
    backends, left_out = fused_backends(device, quick, options.backends)
    out = Path(options.out) if options.out else default_out_dir(device, quick)
    check_out_dir(out, device, quick)
    if options.threads:
        torch.set_num_threads(options.threads)
    timer = QUICK_TIMER if quick else TimerConfig()

    notes = {"compiled": f"backend={compile_backend}"}
    if "triton" in backends and device.type == "cpu":
        notes["triton"] = "interpreted"
    report = {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"type": device.type, "name": device_name(device)},
        "versions": {"torch": torch.__version__, "triton": _triton_loader.version,
                     "cuda": torch.version.cuda, "python": platform.python_version(),
                     "vae_fast": _package_version()},
        "git": git_commit(),
        "quick": quick,
        "options": {"backends": backends, "ops": ops, "dtypes": dtype_names,
                    "shapes": [s.name for s in shapes], "directions": directions,
                    "compile_backend": compile_backend,
                    "threads": torch.get_num_threads(), "timer": dataclasses.asdict(timer)},
        "backends_left_out": left_out,
        "notes": [],
    }
    if compile_backend != "inductor":
        report["notes"].append(f"compiled: torch.compile(backend={compile_backend!r}), not inductor "
                               "(inductor's C++ compile takes tens of seconds per graph on the CPU)")
    if "triton" in backends and device.type == "cpu":
        report["notes"].append("triton: the Triton interpreter (TRITON_INTERPRET=1) on CPU tensors; its "
                               "times check that the suite runs, they say nothing of the kernels' speed")
    if device.type == "cpu":
        report["notes"].append("peak_mem_bytes is null on the CPU: PyTorch keeps no allocator "
                               "statistics for CPU tensors")
    if "vae_step" in ops:
        report["notes"].append(f"vae_step: VAE {VAE_HIDDEN} hidden units; fwd = the loss, fwd+bwd = "
                               "forward + backward + Adam step; min_bytes/gbps are null (GEMM-bound)")
    log(f"vae-fast bench on {report['device']['name']} ({device.type}), torch {torch.__version__}, "
        f"triton {_triton_loader.version}, {'quick, ' if quick else ''}fused: {', '.join(backends) or 'none'}")
    for note in left_out:
        log(f"  left out: {note}")

    copy_elems = copy_elements(device, quick)
    report["copy"] = copy_bandwidth(device, copy_elems, timer)
    log(f"copy baseline: dst.copy_(src), 2 x {copy_elems * 4 / 2**20:.0f} MiB: "
        f"{report['copy']['gbps']:.1f} GB/s")

    impls = [*BASELINES, *backends]
    report["complete"] = False  # until the last case and the dispatch rows are in
    report["rows"] = rows = []
    todo = cases(ops, shapes, [DTYPES[d] for d in dtype_names], device, directions)
    for i, case in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {case.label}")
        new = measure_case(case, impls, compile_backend, timer, notes, log)
        for row in new:
            if row["gbps"] is not None:
                row["copy_fraction"] = row["gbps"] / report["copy"]["gbps"]
        log(format_case(new))
        rows += new
        # a run cut short (a time limit on a lent GPU) keeps every case it finished
        write_json(report, out / "bench.json")
    report["dispatch"] = dispatch_overhead(device, backends, timer)
    report["complete"] = True

    log()
    log(format_table(rows))
    log()
    log(format_dispatch(report["dispatch"]))
    write_json(report, out / "bench.json")
    try:
        plot(report, out / "bench.png")
    except OSError as e:  # checked at the start; e.g. removed or a full disk since
        raise BenchError(f"--out {out}: cannot write the results: {e}") from None
    log(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return report


def write_json(report: dict, path: Path) -> None:
    """Replace `path` with the report in one step (a reader never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        tmp.replace(path)
    except OSError as e:  # checked at the start; e.g. removed or a full disk since
        raise BenchError(f"--out {path.parent}: cannot write the results: {e}") from None


def _package_version():
    from . import __version__
    return __version__


# ----------------------------------------------------------------------------- output
def _fmt_time(s):
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows) -> str:
    header = ("op", "dir", "shape", "dtype", "impl", "time", "GB/s", "copy%", "x eager",
              "x compiled", "peak MiB", "note")
    lines = [header]
    for r in rows:
        lines.append((r["op"], r["direction"], r["shape"], r["dtype"], r["impl"], _fmt_time(r["median_s"]),
                      _fmt(r["gbps"], ".3g"), _fmt(r["copy_fraction"] and 100 * r["copy_fraction"], ".0f"),
                      _fmt(r["speedup_vs_eager"], ".2f"), _fmt(r["speedup_vs_compiled"], ".2f"),
                      _fmt(r["peak_mem_bytes"] and r["peak_mem_bytes"] / 2**20, ".3g"),
                      r["error"] or r["note"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     + "  " + line[-1] for line in lines).rstrip()


def format_case(rows) -> str:
    """One line per impl of a case, as it is measured: time, fraction of copy, speedups."""
    return "\n".join(
        f"  {r['impl']:9s} {_fmt_time(r['median_s']):>9s}  copy {_fmt(r['copy_fraction'] and 100 * r['copy_fraction'], '.0f'):>3s}%"
        f"  x eager {_fmt(r['speedup_vs_eager'], '.2f'):>5s}  x compiled {_fmt(r['speedup_vs_compiled'], '.2f'):>5s}"
        + (f"  {r['error']}" if r["error"] else "") for r in rows)


def format_dispatch(dispatch) -> str:
    lines = [f"dispatch overhead: bernoulli_nll(reduction='mean') and sample_and_kl on "
             f"{'x'.join(map(str, dispatch['shape']))} {dispatch['dtype']} tensors, microseconds per call "
             f"(median, fastest sample); forward only"]
    width = max(len(r["call"]) for r in dispatch["rows"])
    for r in dispatch["rows"]:
        lines.append(f"  {r['call'].ljust(width)}  {r['us_per_call']:8.1f} us  {r['us_min']:8.1f} us  "
                     f"{r['note']}".rstrip())
    for b, layer in dispatch.get("python_layer_by_call", {}).items():
        note = next(r["note"] for r in dispatch["rows"] if r["backend"] == b)
        parts = ", ".join(f"{call} {us:.1f} us" for call, us in layer.items())
        lines.append(f"  Python layer of vae_fast ({b}), API minus the op called directly (fastest): {parts}"
                     f"{' (' + note + ': interpreter noise)' if note else ''}")
    return "\n".join(lines)


def plot(report, path) -> None:
    """Speedup of each fused backend vs eager and vs compiled (left), and the fraction of the copy
    bandwidth of every impl (right), one line per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["median_s"]]
    keys = list(dict.fromkeys((r["op"], r["direction"], r["shape"], r["dtype"]) for r in rows))
    index = {k: i for i, k in enumerate(keys)}
    labels = [" ".join(k) for k in keys]
    fused = [b for b in report["options"]["backends"]]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(13, 1.5 + 0.22 * max(len(keys), 4)))
    for r in rows:
        y = index[(r["op"], r["direction"], r["shape"], r["dtype"])]
        if r["impl"] in fused:
            for base, marker in (("eager", "o"), ("compiled", "s")):
                if r[f"speedup_vs_{base}"]:
                    left.scatter(r[f"speedup_vs_{base}"], y, marker=marker, color=colors[r["impl"]],
                                 facecolors="none" if base == "compiled" else colors[r["impl"]])
        if r["copy_fraction"] is not None:
            right.scatter(r["copy_fraction"], y, color=colors[r["impl"]], s=14)
    for b in fused:
        for base, marker in (("eager", "o"), ("compiled", "s")):
            left.scatter([], [], marker=marker, color=colors[b], facecolors="none" if base == "compiled" else colors[b],
                         label=f"{b} vs {base}")
    for impl in impls:
        right.scatter([], [], color=colors[impl], label=impl)
    left.axvline(1.0, color="gray", lw=0.8)
    left.set_xscale("log")
    left.set_xlabel("speedup (x, log scale)")
    left.set_title("fused vs eager (filled) and vs torch.compile (open)" if fused else "no fused backend ran")
    right.axvline(1.0, color="gray", lw=0.8)
    right.set_xlabel(f"fraction of copy bandwidth ({report['copy']['gbps']:.0f} GB/s)")
    right.set_title("achieved GB/s of the minimum bytes / copy GB/s")
    left.set_yticks(range(len(keys)), labels, fontsize=7)
    left.invert_yaxis()
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"vae-fast bench: {report['device']['name']}, torch {report['versions']['torch']}, "
                 f"{report['date']}{' (quick)' if report['quick'] else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
