"""Which backends work here, the "auto" choice, and `use_backend`.

A backend is a namespace of torch ops with the schemas of _schemas.py (`vae_fast` for the native
"cpu"/"cuda" kernels, `vae_fast_triton` for "triton"), or "reference" (plain PyTorch autograd).

The default backend is "auto", or $VAE_FAST_BACKEND (read at first use); `use_backend` overrides it
for a block. When "auto" has to fall back to the reference because no fused backend runs (vae_fast._C
missing, mismatched or without CUDA kernels, Triton unusable), it warns once per device type.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import warnings

import torch

NAMES = ("auto", "triton", "cuda", "cpu", "reference")
ENV_VAR = "VAE_FAST_BACKEND"
_NAMESPACE = {"triton": "vae_fast_triton", "cuda": "vae_fast", "cpu": "vae_fast"}
_DEVICE = {"cuda": "cuda", "cpu": "cpu"}
_state = threading.local()


@dataclasses.dataclass(frozen=True)
class Status:
    available: bool
    detail: str


def _triton_status() -> Status:
    from . import _triton_loader

    error = _triton_loader.load()  # the first call imports triton and defines the ops (seconds)
    if error is not None:
        return Status(False, f"triton could not be loaded: {error}")
    if torch.cuda.is_available():
        return Status(True, f"triton {_triton_loader.version} on CUDA tensors")
    if _triton_loader.interpreted:
        return Status(True, f"triton {_triton_loader.version} interpreter (TRITON_INTERPRET=1) on CPU tensors")
    return Status(False, "no CUDA device, and TRITON_INTERPRET=1 was not set before the Triton backend "
                         "was first used")


def _native_status(device_type: str) -> Status:
    from . import _native

    if not _native.available():
        return Status(False, f"the native extension vae_fast._C is not loaded: {_native.why_not()}")
    if device_type == "cpu":
        return Status(True, "native C++ CPU kernels (vae_fast._C)")
    if not _native.has_cuda():
        return Status(False, "vae_fast._C was built without CUDA kernels")
    if not torch.cuda.is_available():
        return Status(False, "vae_fast._C has CUDA kernels but no CUDA device is available")
    return Status(True, f"native CUDA kernels for {', '.join(_native.compiled_archs())}")


def status_of(name: str) -> Status:
    """Whether backend `name` works here and why (not); for "triton" this loads the backend."""
    if name == "triton":
        return _triton_status()
    if name in _DEVICE:
        return _native_status(name)
    return Status(True, "plain PyTorch (autograd), any device")


def available_backends() -> dict[str, Status]:
    """Every backend name with whether it works here and why (not)."""
    return {name: status_of(name) for name in ("triton", "cuda", "cpu", "reference")}


def auto_choice(device: torch.device) -> str:
    """The backend "auto" picks for tensors on `device`: native first, then Triton, then reference
    (asking only as far as needed, so that CPU tensors never load the Triton backend)."""
    return next((name for name in _auto_order(device) if status_of(name).available), "reference")


def _auto_order(device: torch.device) -> tuple[str, ...]:
    return ("cuda", "triton") if device.type == "cuda" else ("cpu",)


_warned_fallback: set = set()  # device types "auto" has warned about


def _warn_fallback(device: torch.device) -> None:
    """Says once per device type that "auto" runs the (slower) reference, and why."""
    if device.type in _warned_fallback:
        return
    _warned_fallback.add(device.type)
    why = "; ".join(f"{name}: {status_of(name).detail}" for name in _auto_order(device))
    warnings.warn(f"vae_fast: backend 'auto' falls back to 'reference' (plain PyTorch, unfused) for "
                  f"{device.type} tensors because no fused backend is available ({why}). Choose "
                  f"'reference' explicitly ({ENV_VAR}=reference or backend=) to silence this.",
                  stacklevel=_user_stacklevel())


_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))


def _user_stacklevel() -> int:
    """The warnings.warn stacklevel of the caller's first frame outside vae_fast and torch (the
    user's line, not the nn.Module or functional layer in between)."""
    frame, level = sys._getframe(1), 1  # level 1: the frame calling warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


@contextlib.contextmanager
def use_backend(name: str):
    """Make `name` the default backend of the vae_fast functions inside the `with` block."""
    check_name(name)
    previous = getattr(_state, "default", None)
    _state.default = name
    try:
        yield
    finally:
        _state.default = previous


def check_name(name) -> str:
    if name not in NAMES:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, NAMES))}, got {name!r}")
    return name


_env_default: str | None = None  # $VAE_FAST_BACKEND once read


def current() -> str:
    return getattr(_state, "default", None) or default()


def _constant_result(fn):
    """torch.compiler.assume_constant_result without importing torch._dynamo (seconds at import): the
    mark it sets. Dynamo then runs `fn` at trace time and bakes its result into the graph. Traced
    instead, the caches below would guard on their first read and break the guard with their first
    write, so the first compiled call would compile twice (tests/test_compile.py)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_result
def default() -> str:
    """The default backend outside `use_backend`: $VAE_FAST_BACKEND (read at first use; unset or
    empty means "auto")."""
    global _env_default
    if _env_default is None:
        value = os.environ.get(ENV_VAR, "") or "auto"
        if value not in NAMES:
            raise ValueError(f"environment variable {ENV_VAR}: expected one of "
                             f"{', '.join(map(repr, NAMES))}, got {value!r}")
        _env_default = value
    return _env_default


_resolved: dict = {}  # (backend name, device type) -> op namespace name, or None for the reference


def resolve(backend: str | None, device: torch.device):
    """The op namespace for (backend, device), or None for the reference; raises if it can't run."""
    ns = _namespace(check_name(current() if backend is None else backend), device.type)
    return None if ns is None else getattr(torch.ops, ns)


@_constant_result
def _namespace(name: str, device_type: str) -> str | None:
    key = (name, device_type)
    if key in _resolved:
        return _resolved[key]
    if device_type == "meta":
        # meta tensors have no data, so no kernel runs: every backend gives the result's shape and
        # dtype, the reference's (the same as the fused ops' fake kernels, tests/test_validation.py)
        _resolved[key] = None
        return None
    device = torch.device(device_type)
    if name == "auto":
        name = auto_choice(device)
        if name == "reference":
            _warn_fallback(device)
    if name in _DEVICE and device_type != _DEVICE[name]:
        raise RuntimeError(f"backend {name!r}: expected tensors on {_DEVICE[name]}, got {device_type}")
    if name != "reference":
        status = status_of(name)
        if not status.available:
            raise RuntimeError(f"backend {name!r} is not available: {status.detail}")
    ns = None if name == "reference" else _NAMESPACE[name]
    _resolved[key] = ns
    return ns
