"""Shared test helpers: which fused backends to test, on which device, and tolerances."""
import pytest
import torch

import vae_fast

FUSED = ("triton", "cpu", "cuda")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def device_of(backend: str) -> torch.device:
    """The device whose tensors the fused `backend` takes: its own for "cpu" and "cuda"; for
    "triton" CUDA when there is a GPU, else the CPU (interpreted, tests/conftest.py)."""
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "cuda":
        return torch.device("cuda")
    if backend == "triton":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise ValueError(f"backend: expected one of {FUSED}, got {backend!r}")


def need(backend: str) -> torch.device:
    """Skip (saying why) unless `backend` runs here; returns the device to test it on."""
    status = vae_fast.available_backends()[backend]
    if not status.available:
        pytest.skip(f"backend {backend!r} unavailable: {status.detail}")
    return device_of(backend)


def close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)
