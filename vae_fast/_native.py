"""Loads the native extension vae_fast._C (C++ CPU kernels, CUDA kernels when built with them).

Importing _C registers the ops `torch.ops.vae_fast.*`. Loading never raises: when _C is absent or
unusable, `available()` is False and `why_not()` says why. A _C is tied to the torch it was built
against, so the torch version recorded at build time (_build_info.py, written by setup.py next to
the .so) is checked *before* the .so is loaded: a mismatch gives a clear message, not a crash.
"""
from __future__ import annotations

import glob
import importlib
import os
import re

import torch

_loaded = False
_module = None
_why: str | None = "vae_fast._C has not been loaded yet"
_info: dict = {}

_HERE = os.path.dirname(os.path.abspath(__file__))
_REBUILD = ("rebuild it against this torch: pip install --no-build-isolation --no-deps -e . "
            "(or a wheel built with this torch)")


def _release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1' (the C++ ABI follows the release; the local part names the build)"""
    return version.split("+")[0]


def _cuda_major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def _read_build_info() -> dict:
    try:
        from . import _build_info
    except ImportError:
        return {}
    return dict(getattr(_build_info, "INFO", {}))


def _mismatch(info: dict) -> str | None:
    """Why a _C built as `info` says cannot load into this torch, or None."""
    built = info.get("torch_version")
    if not built:
        return None
    if _release(built) != _release(torch.__version__):
        return f"vae_fast._C was built against torch {built} but torch {torch.__version__} is running; " + _REBUILD
    if info.get("with_cuda"):
        if torch.version.cuda is None:
            return (f"vae_fast._C was built with CUDA {info.get('cuda_version')} kernels but this torch "
                    f"({torch.__version__}) is a CPU-only build; " + _REBUILD)
        if _cuda_major(info.get("cuda_version")) != _cuda_major(torch.version.cuda):
            return (f"vae_fast._C was built for CUDA {info.get('cuda_version')} but this torch uses CUDA "
                    f"{torch.version.cuda}; " + _REBUILD)
    return None


def load() -> bool:
    """Imports vae_fast._C once; returns available(). Never raises."""
    global _loaded, _module, _why, _info
    if _loaded:
        return _module is not None
    _loaded = True
    if not glob.glob(os.path.join(_HERE, "_C.*")):
        _why = ("vae_fast._C was not built (install with torch present: "
                "pip install --no-build-isolation -e .; VAE_FAST_BUILD_EXT=0 skips it)")
        return False
    info = _read_build_info()
    _why = _mismatch(info)
    if _why is not None:
        return False
    try:
        module = importlib.import_module("vae_fast._C")
    except Exception as e:  # ImportError, OSError (undefined symbols, missing libraries), ...
        _why = f"importing vae_fast._C failed: {type(e).__name__}: {e}"
        return False
    try:
        info = {**info, **module.build_info()}
    except Exception:  # an older _C without build_info()
        pass
    # the header compiled into _C stores the arch list ';'-joined
    if isinstance(info.get("cuda_archs"), str):
        info["cuda_archs"] = [a for a in info["cuda_archs"].split(";") if a]
    _module, _info, _why = module, info, None
    return True


def available() -> bool:
    """Whether vae_fast._C is loaded and its ops are registered."""
    return load()


def why_not() -> str | None:
    """Why the extension is not available, or None when it is."""
    load()
    return _why


def has_cuda() -> bool:
    """Whether _C holds CUDA kernels (whether a GPU is present is another question)."""
    return load() and bool(_info.get("with_cuda"))


def compiled_archs() -> list[str]:
    """The device code in _C, e.g. ['sm_80', 'sm_90', 'compute_90'] (compute_XX: PTX); [] without CUDA."""
    if not load():
        return []
    return sorted(_info.get("cuda_archs", []),
                  key=lambda a: (int(re.sub(r"\D", "", a) or 0), a.startswith("compute")))


def build_info() -> dict:
    """How _C was built: torch_version, cuda_version, cuda_archs, with_cuda ({} when not loaded)."""
    load()
    return dict(_info)


load()
