"""The Triton backend, loaded on first use rather than by `import vae_fast`: importing triton and
defining its ops pulls in torch._dynamo and torch._inductor (seconds), which users of the other
backends should not pay. `load()` imports vae_fast.triton.ops (which defines the ops
`vae_fast_triton::*`), registers their autograd and records why it failed, once.

After `load()`, `error` (None, or why the backend could not be loaded), `version` (triton's, or None)
and `interpreted` (TRITON_INTERPRET=1 when loaded: triton reads it as its @jit kernels are defined)
are module attributes; reading one of them before that loads the backend first.
"""
import threading

_FIELDS = ("error", "version", "interpreted")
_lock = threading.Lock()


def load():
    """Loads the Triton backend if not yet done; returns None, or why it could not be loaded."""
    with _lock:
        if "error" not in globals():
            globals().update(_load())
    return globals()["error"]


def _load() -> dict:
    state = {"error": None, "version": None, "interpreted": False}
    try:
        import triton

        state["version"] = triton.__version__
        from . import _ops
        from .triton import ops

        _ops.register(ops.NAMESPACE, fakes=False)
        state["interpreted"] = ops.INTERPRETED
    except Exception as exc:  # ImportError, a triton or torch this code cannot use, a schema mismatch
        state["error"] = f"{type(exc).__name__}: {exc}"
    return state


def __getattr__(name: str):
    if name in _FIELDS:
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
