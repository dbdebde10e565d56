"""Build script. Metadata lives in pyproject.toml; this file only decides about the extension.

`vae_fast._C` (C++ CPU kernels, plus CUDA kernels when nvcc and a CUDA build of torch are found)
is built only when torch is importable at build time, i.e. with `pip install --no-build-isolation`.
Without it the package is pure Python (reference and Triton backends). VAE_FAST_BUILD_EXT=0 skips it.
"""
import os

from setuptools import setup


def extension_modules():
    """Returns (ext_modules, cmdclass); empty when the extension is not to be built."""
    if os.environ.get("VAE_FAST_BUILD_EXT", "1") == "0" or not os.path.isdir("csrc"):
        return [], {}
    try:
        import torch  # noqa: F401
    except ImportError:
        return [], {}
    return [], {}  # the C++/CUDA extension is added by the native-backends work


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
