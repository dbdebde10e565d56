"""torch.library.opcheck on every op of every fused backend: schema, fake kernel, autograd
registration and AOT dispatch, on contiguous and permuted inputs."""
import pytest
import torch

from vae_fast._ops import philox_state
from vae_fast._schemas import NONE, ROWS, SUM
from helpers import FUSED, need

NAMESPACE = {"triton": "vae_fast_triton", "cpu": "vae_fast", "cuda": "vae_fast"}


def layouts(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g, dtype=dtype).to(device)
    yield "contiguous", lambda: (base + torch.randn(4, 6, generator=g, dtype=dtype).to(device)).requires_grad_()
    yield "permuted", lambda: (torch.randn(6, 4, generator=g, dtype=dtype).to(device).t()).requires_grad_()


def samples(device):
    for name, new in layouts(device):
        a, b, c = new(), new(), new()
        p = philox_state(device)
        for S in (1, 3):
            yield f"{name}-S{S}", "reparameterize", (a, b, p, S)
            yield f"{name}-S{S}", "sample_and_kl", (a, b, p, S)
        for red in (NONE, SUM, ROWS):
            yield f"{name}-r{red}", "bernoulli_nll", (a, c.detach().sigmoid().requires_grad_(), red, 0.5)
            yield f"{name}-r{red}", "gaussian_kl", (a, b, None, None, red, 1.0)
            yield f"{name}-r{red}-prior", "gaussian_kl", (a, b, c, new(), red, 1.0)
            yield f"{name}-r{red}", "gaussian_nll", (a, b, c, red, 0.25)


@pytest.mark.parametrize("backend", FUSED)
def test_opcheck(backend):
    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    for label, op, args in samples(device):
        try:
            torch.library.opcheck(getattr(ns, op).default, args)
        except Exception as exc:
            raise AssertionError(f"opcheck failed for {op} [{label}]") from exc


@pytest.mark.parametrize("backend", FUSED)
def test_backward_ops_opcheck(backend):
    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    x, y, t = (torch.randn(3, 5, device=device) for _ in range(3))
    p = philox_state(device)
    for red, grad in ((NONE, torch.randn(3, 5, device=device)), (SUM, torch.tensor(0.7, device=device)),
                      (ROWS, torch.randn(3, device=device))):
        torch.library.opcheck(ns.bernoulli_nll_backward.default, (grad, x, t, red, 2.0, True))
        torch.library.opcheck(ns.gaussian_kl_backward.default, (grad, x, y, t, t, red, 2.0))
        torch.library.opcheck(ns.gaussian_nll_backward.default, (grad, x, y, t, red, 2.0))
    torch.library.opcheck(ns.reparameterize_backward.default, (torch.randn(2, 3, 5, device=device), y, p, 2))
    torch.library.opcheck(ns.sample_and_kl_backward.default,
                          (torch.randn(1, 3, 5, device=device), torch.randn(3, device=device), x, y, p, 1))
