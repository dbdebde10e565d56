"""The reference VAE trains through the fused ops: with the same eps (the RNG contract replayed in
NumPy for the reference), the fused and reference trajectories agree; and the CLI runs with
--backend triton/cpu."""
import json
import subprocess
import sys

import pytest
import torch

import vae_fast
from vae_fast import data, functional
from vae_fast.models import VAE, FusedOps, ReferenceOps
from helpers import FUSED, need
import rng_numpy


class ContractEpsReferenceOps(ReferenceOps):
    """The reference sampler fed the eps of the RNG contract: it draws the same philox state as the
    fused ops (same generator consumption), then computes eps in NumPy."""

    def sample_and_kl(self, mu, logvar, generator=None):
        seed, offset = vae_fast._ops.philox_state(mu.device, generator).tolist()
        eps = torch.from_numpy(rng_numpy.eps(seed, offset, mu.numel())).reshape(mu.shape).to(mu)
        return vae_fast.reference.reparameterize(mu, logvar, eps), vae_fast.reference.per_sample(
            vae_fast.reference.gaussian_kl(mu, logvar))


def train_small(ops, device, epochs=3):
    torch.manual_seed(0)
    mnist = data.load()
    train_x, test_x = mnist.train[:1024].to(device), mnist.test[:256].to(device)
    model = VAE(hidden=64, latent=8, ops=ops).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(train_x), 128):
            loss = model(train_x[i:i + 128])[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return model(test_x)[0].mean().item()


@pytest.mark.parametrize("backend", FUSED)
def test_fused_training_follows_the_reference_trajectory(backend):
    device = need(backend)
    fused = train_small(FusedOps(backend), device)
    ref = train_small(ContractEpsReferenceOps(), device)
    assert abs(fused - ref) < 0.5, (fused, ref)   # same eps: only rounding separates them
    assert fused < 400  # it did learn (an untrained model is at ~545 nats)


@pytest.mark.parametrize("backend", FUSED)
def test_cli_trains_with_a_fused_backend(backend, tmp_path):
    device = need(backend)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vae_fast", "train", "--backend", backend, "--device", device.type,
           "--epochs", "1", "--hidden", "32", "--iw-samples", "2", "--quiet", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=600)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["backend"] == backend and metrics["device"].split(":")[0] == device.type
    assert metrics["final"]["test_neg_elbo"] > 0
