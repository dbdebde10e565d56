"""vae_fast: fused kernels (Triton, CUDA, C++ CPU) for the hot spots of VAE training.

    z, kl = vae_fast.sample_and_kl(mu, logvar)          # eps drawn in-kernel (Philox)
    loss = vae_fast.bernoulli_nll(logits, x, reduction="batchmean") + kl.mean()
"""
__version__ = "0.1.0"

from . import _native  # noqa: F401  (loads vae_fast._C when built; never fails)
from . import _ops, nn
from ._backends import available_backends, use_backend
from .functional import (
    bernoulli_nll,
    gaussian_kl,
    gaussian_nll,
    negative_elbo,
    reparameterize,
    sample_and_kl,
)
from .distributions import DiagonalGaussian
from .nn import gaussian_nll_loss
from .iwae import gaussian_log_prob, negative_iwae_bound, standard_normal_log_prob

# the Triton backend loads on first use (vae_fast/_triton_loader.py): importing it costs seconds
if _native.available():
    _ops.register("vae_fast", fakes=True)
    from . import _iwae_ops

    _iwae_ops.register("vae_fast")

__all__ = [
    "available_backends", "use_backend", "reparameterize", "sample_and_kl", "gaussian_kl",
    "bernoulli_nll", "gaussian_nll", "negative_elbo", "nn", "gaussian_nll_loss", "DiagonalGaussian",
    "gaussian_log_prob", "standard_normal_log_prob", "negative_iwae_bound",
]
