"""The reference VAE of Kingma & Welling (2014) for MNIST: an MLP encoder 784-400-(mu, logvar)
and decoder latent-400-784, with a Bernoulli (logits) or Gaussian (mean, logvar) decoder.

The model does not hard-code its sampler and losses: it takes an `ops` object, so the same
network trains on the plain-PyTorch reference or on the fused kernels (`FusedOps`).
"""
from __future__ import annotations

import torch
from torch import nn

from . import _backends, functional, reference

DECODERS = ("bernoulli", "gaussian")


class ReferenceOps:
    """Sampler and losses in plain PyTorch (autograd), eps drawn with torch.randn."""

    name = "reference"

    def sample_and_kl(self, mu, logvar, generator=None):
        # generator=None is not passed: torch.compile cannot trace randn(..., generator=None) with a
        # dynamic batch size ("SymIntArrayRef expected to contain only concrete integers")
        gen = {} if generator is None else {"generator": generator}
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, **gen)
        z = reference.reparameterize(mu, logvar, eps)
        return z, reference.per_sample(reference.gaussian_kl(mu, logvar))

    def bernoulli_nll(self, logits, target):
        return reference.per_sample(reference.bernoulli_nll(logits, target))

    def gaussian_nll(self, mean, logvar, target):
        return reference.per_sample(reference.gaussian_nll(mean, logvar, target))


class FusedOps:
    """Sampler and losses on the fused kernels of `backend` (eps drawn inside the kernel)."""

    def __init__(self, backend: str = "auto"):
        self.backend = self.name = _backends.check_name(backend)

    def sample_and_kl(self, mu, logvar, generator=None):
        return functional.sample_and_kl(mu, logvar, generator=generator, backend=self.backend)

    def bernoulli_nll(self, logits, target):
        return functional.bernoulli_nll_per_sample(logits, target, backend=self.backend)

    def gaussian_nll(self, mean, logvar, target):
        return functional.gaussian_nll_per_sample(mean, logvar, target, backend=self.backend)


class VAE(nn.Module):
    def __init__(self, in_dim: int = 784, hidden: int = 400, latent: int = 20,
                 decoder: str = "bernoulli", ops=None):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder: expected one of {DECODERS}, got {decoder!r}")
        for name, value in (("in_dim", in_dim), ("hidden", hidden), ("latent", latent)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.in_dim, self.latent, self.decoder_kind = in_dim, latent, decoder
        self.ops = ops if ops is not None else ReferenceOps()
        self.enc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.enc_mu = nn.Linear(hidden, latent)
        self.enc_logvar = nn.Linear(hidden, latent)
        out = in_dim * (2 if decoder == "gaussian" else 1)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def encode(self, x: torch.Tensor):
        h = self.enc(x.reshape(x.shape[0], -1))
        return self.enc_mu(h), self.enc_logvar(h)

    def decode(self, z: torch.Tensor):
        """Bernoulli logits, or (mean, logvar) for the Gaussian decoder."""
        out = self.dec(z)
        if self.decoder_kind == "gaussian":
            mean, logvar = out.chunk(2, dim=-1)
            return mean, logvar
        return out

    def reconstruction_nll(self, decoded, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per sample, shape (batch,)."""
        x = x.reshape(x.shape[0], -1)
        if self.decoder_kind == "gaussian":
            mean, logvar = decoded
            return self.ops.gaussian_nll(mean, logvar, x)
        return self.ops.bernoulli_nll(decoded, x)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns (negative ELBO per sample, reconstruction NLL per sample, KL per sample)."""
        mu, logvar = self.encode(x)
        z, kl = self.ops.sample_and_kl(mu, logvar, generator=generator)
        rec = self.reconstruction_nll(self.decode(z), x)
        return rec + kl, rec, kl

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images (probabilities in [0, 1] for Bernoulli) decoded from z ~ N(0, I)."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent, device=p.device, dtype=p.dtype, generator=generator)
        return self.mean_image(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.mean_image(self.decode(mu))

    def mean_image(self, decoded) -> torch.Tensor:
        if self.decoder_kind == "gaussian":
            return decoded[0].clamp(0, 1)
        return torch.sigmoid(decoded)
