"""Run diffusers' VAE posteriors on vae_fast's fused kernels:

    from vae_fast.integrations import diffusers as vae_fast_diffusers
    vae_fast_diffusers.patch()     # vae.encode(x).latent_dist is now a vae_fast.DiagonalGaussian

`patch()` replaces `DiagonalGaussianDistribution` in diffusers' defining module
(diffusers.models.autoencoders.vae) and in every loaded diffusers module that imported it (AutoencoderKL,
the video VAEs of CogVideoX, HunyuanVideo, LTX, Mochi, Wan, ...) by `DiagonalGaussianDistribution`
below: diffusers' constructor and reductions (dims=[1, 2, 3], logvar clamped to [-30, 20]) over the
fused ops. Modules imported later import the patched class from the defining module. Classes of the
same name defined elsewhere (another distribution) are left alone. `unpatch()` restores the original.
"""
from __future__ import annotations

import sys

import torch

from ..distributions import LOGVAR_CLAMP, DiagonalGaussian

_NAME = "DiagonalGaussianDistribution"
_DEFINING_MODULE = "diffusers.models.autoencoders.vae"


class DiagonalGaussianDistribution(DiagonalGaussian):
    """diffusers' DiagonalGaussianDistribution(parameters, deterministic=False) on vae_fast's kernels.

    Differences: std, var and logvar are computed on access (the same values and gradients), and the
    deterministic kl()/nll() are zeros of the reduced shape on the parameters' device (diffusers
    returns a CPU tensor([0.])); both sum to 0."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        mean, logvar = torch.chunk(parameters, 2, dim=1)
        super().__init__(mean, logvar, logvar_clamp=LOGVAR_CLAMP, deterministic=deterministic, dims=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims=(1, 2, 3)) -> torch.Tensor:
        return super().nll(sample, dims=dims)


_original: type | None = None  # diffusers' class, once patch() has seen it


def _diffusers_modules():
    return [(name, module) for name, module in list(sys.modules.items())
            if module is not None and (name == "diffusers" or name.startswith("diffusers."))]


def _holds(module, cls) -> bool:
    try:
        return vars(module).get(_NAME) is cls
    except TypeError:  # an object without __dict__ in sys.modules
        return False


def _replace(old, new) -> list[str]:
    """Point every loaded diffusers module that holds `old` under diffusers' name at `new`; the
    names of those modules, sorted."""
    replaced = []
    for name, module in _diffusers_modules():
        if _holds(module, old):
            setattr(module, _NAME, new)
            replaced.append(name)
    return sorted(replaced)


def patch() -> list[str]:
    """Replace diffusers' DiagonalGaussianDistribution by vae_fast's. Returns the names of the modules
    it patched in this call, sorted (none when already patched: idempotent)."""
    global _original
    import importlib

    vae = importlib.import_module(_DEFINING_MODULE)
    current = vars(vae)[_NAME]
    if current is not DiagonalGaussianDistribution:
        _original = current
    return _replace(_original, DiagonalGaussianDistribution)


def unpatch() -> list[str]:
    """Put diffusers' own class back wherever patch() (or an import after it) placed vae_fast's.
    Returns the names of the modules restored, sorted."""
    if _original is None:
        return []
    return _replace(DiagonalGaussianDistribution, _original)


def is_patched() -> bool:
    vae = sys.modules.get(_DEFINING_MODULE)
    return vae is not None and _holds(vae, DiagonalGaussianDistribution)
