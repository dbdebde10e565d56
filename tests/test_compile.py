"""A VAE training step on the fused ops under torch.compile(fullgraph=True): no graph break, no
recompilation on the next calls, and fresh samples on every call."""
import pytest
import torch

import vae_fast
from vae_fast.models import VAE, FusedOps
from helpers import FUSED, need


# A cold backend cache, as in a fresh process: vae_fast._backends.resolve used to write its cache
# while traced, so the guard on the missing key failed on the next call (one recompilation).
@pytest.mark.parametrize("backend", FUSED)
def test_vae_step_compiles_once_and_resamples(backend, monkeypatch):
    device = need(backend)
    torch._dynamo.reset()
    # the backend cache cold, as in a fresh process, whatever ran before in this one
    monkeypatch.setattr(vae_fast._backends, "_resolved", {})
    torch.manual_seed(0)
    model = VAE(in_dim=64, hidden=32, latent=8, ops=FusedOps(backend)).to(device)
    x = torch.rand(16, 64, device=device)
    # inductor needs a GPU for user Triton kernels; on the CPU aot_eager traces the same graph
    compile_backend = "inductor" if device.type == "cuda" else "aot_eager"

    @torch.compile(fullgraph=True, backend=compile_backend)
    def forward(x):
        loss, rec, kl = model(x)
        return loss.mean()

    def step(x):  # the backward graph is compiled by AOTAutograd along with the forward
        loss = forward(x)
        loss.backward()
        return loss.detach()

    with torch._dynamo.config.patch(error_on_recompile=True):
        losses = [step(x) for _ in range(3)]
        zs = []
        for _ in range(2):
            mu, logvar = model.encode(x)
            zs.append(torch.compile(lambda m, lv: vae_fast.sample_and_kl(m, lv, backend=backend)[0],
                                    fullgraph=True, backend=compile_backend)(mu, logvar))
    assert not torch.equal(losses[0], losses[1])  # fresh eps each call
    assert not torch.equal(zs[0], zs[1])
    assert all(torch.isfinite(loss).all() for loss in losses)
    assert next(model.parameters()).grad is not None
