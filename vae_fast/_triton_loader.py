"""Imports the Triton backend (registering its ops) if triton is installed; records why not."""
import os

error = None
version = None
interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"  # triton reads it at @jit time

try:
    import triton

    version = triton.__version__
    from .triton import ops as _ops  # noqa: F401  (registers vae_fast_triton::*)
except Exception as exc:  # ImportError, or a triton too old for this torch
    error = f"{type(exc).__name__}: {exc}"
