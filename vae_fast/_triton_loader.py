"""Imports the Triton backend (registering its ops) if triton is installed; records why not."""
error = None
version = None
interpreted = False  # TRITON_INTERPRET=1 at import time (triton reads it when @jit runs)

try:
    import triton

    version = triton.__version__
    from .triton import ops as _ops  # registers vae_fast_triton::*

    interpreted = _ops.INTERPRETED
except Exception as exc:  # ImportError, or a triton too old for this torch
    error = f"{type(exc).__name__}: {exc}"
