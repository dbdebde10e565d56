"""Values that used to be silently wrong (issue 10): the reference's bernoulli_nll gradient at logit 0,
empty means, and negative_elbo with tensors on two devices."""
import pytest
import torch
import torch.nn.functional as F

import vae_fast
from helpers import need

LOGITS = [0.0, -0.0, 1e-300, -1e-300, 1.0, -1.0, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 800.0, -800.0]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])
def test_bernoulli_nll_value_and_gradient_at_special_logits(backend):
    dev = torch.device("cpu") if backend == "reference" else need(backend)
    x = torch.tensor(LOGITS, dtype=torch.float64, device=dev, requires_grad=True)
    t = torch.linspace(0, 1, len(LOGITS), dtype=torch.float64, device=dev)
    out = vae_fast.bernoulli_nll(x, t, reduction="sum", backend=backend)
    (g,) = torch.autograd.grad(out, x)
    want = F.binary_cross_entropy_with_logits(x.detach(), t, reduction="sum")
    torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=1e-12)
    # d/dx = sigmoid(x) - t exactly, at 0 too (0.5 - t, not the subgradient -t or 1 - t)
    torch.testing.assert_close(g, torch.sigmoid(x.detach()) - t, rtol=1e-12, atol=1e-15)


def test_reference_bernoulli_gradient_matches_finite_differences_at_zero():
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: vae_fast.reference.bernoulli_nll(x, t), (x,))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])
@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_empty_mean_is_nan_like_torch(backend, reduction):
    dev = torch.device("cpu") if backend == "reference" else need(backend)
    e = torch.zeros(0, 3, device=dev)
    for out in (vae_fast.bernoulli_nll(e, e, reduction=reduction, backend=backend),
                vae_fast.gaussian_kl(e, e, reduction=reduction, backend=backend),
                vae_fast.gaussian_nll(e, e, e, reduction=reduction, backend=backend)):
        assert out.shape == () and torch.isnan(out), (backend, reduction, out)
    assert vae_fast.bernoulli_nll(e, e, reduction="sum", backend=backend).item() == 0.0


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_negative_elbo_refuses_mu_on_another_device(backend):
    dev = torch.device("cpu") if backend == "reference" else need(backend)
    logits = torch.zeros(2, 4, device=dev)
    mu = torch.zeros(2, 3, device="meta")
    with pytest.raises(RuntimeError, match="mu: expected a tensor on .* like logits, got meta"):
        vae_fast.negative_elbo(logits, logits, mu, mu, backend=backend)


@pytest.mark.parametrize("name,call", [
    ("bernoulli_nll", lambda x, b: vae_fast.bernoulli_nll(x, torch.sigmoid(x.detach()), reduction="sum", backend=b)),
    ("gaussian_nll", lambda x, b: vae_fast.gaussian_nll(x, x, x.detach() * 0.5, reduction="sum", backend=b)),
    ("gaussian_kl", lambda x, b: vae_fast.gaussian_kl(x, x * 0.5, reduction="sum", backend=b)),
    ("sample_and_kl", lambda x, b: vae_fast.sample_and_kl(x, x * 0.5, backend=b)[1].sum()),
    ("reparameterize", lambda x, b: vae_fast.reparameterize(x, x * 0.5, backend=b).sum()),
])
def test_triton_double_backward_is_a_clear_error(name, call):
    """(issue 10.2) Differentiating the Triton backend's gradients raises, naming the way out; before,
    an internal 'no autograd formula was registered' message."""
    dev = need("triton")
    x = torch.randn(3, 4, dtype=torch.float64, device=dev, requires_grad=True)
    (g,) = torch.autograd.grad(call(x, "triton"), x, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"vae_fast::{name}: double backward \(create_graph=True\) "
                                           r"is not supported by backend 'triton'; use backend='reference'"):
        torch.autograd.grad(g.sum(), x)
