"""vae_fast.nn: the modules against their torch counterparts (values, gradients, broadcasting) on
every backend, ELBOLoss against negative_elbo / the reference, a tensor beta without recompiles
under torch.compile(fullgraph=True), and kl_annealing against Fu et al. 2019's schedule."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vae_fast
from vae_fast import nn as vnn
from helpers import FUSED, need

BACKENDS = FUSED + ("reference",)


def device_for(backend):
    return torch.device("cpu") if backend == "reference" else need(backend)


def grads(out, *xs):
    return torch.autograd.grad(out.sum(), xs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("wshape,pwshape", [(None, None), ((5,), None), (None, (5,)), ((3, 1), (5,)),
                                            ((4, 3, 5), (4, 3, 5))])
def test_bernoulli_nll_loss_is_bce_with_logits(backend, reduction, wshape, pwshape):
    device = device_for(backend)
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 3, 5, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    t = torch.rand(4, 3, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = None if wshape is None else torch.rand(wshape, generator=g, dtype=torch.float64).to(device)
    pw = None if pwshape is None else (3 * torch.rand(pwshape, generator=g, dtype=torch.float64)).to(device)
    ours = vnn.BernoulliNLLLoss(w, pw, reduction, backend=backend)
    theirs = torch.nn.BCEWithLogitsLoss(w, reduction=reduction, pos_weight=pw)
    a, b = ours(x, t), theirs(x, t)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for ga, gb in zip(grads(a, x, t), grads(b, x, t)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)
    assert set(dict(ours.named_buffers())) == set(dict(theirs.named_buffers()))  # weights are buffers
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_bernoulli_nll_loss_batchmean():
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.rand(6, 4, dtype=torch.float64)
    out = vnn.BernoulliNLLLoss(reduction="batchmean", backend="reference")(x, t)
    torch.testing.assert_close(out, F.binary_cross_entropy_with_logits(x, t, reduction="sum") / 6)


VAR_SHAPES = [(4, 3, 5), (4, 3), (4, 3, 1), (4, 1, 5), (1, 3, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("var_shape", VAR_SHAPES, ids=str)
def test_gaussian_nll_loss_is_torch(backend, reduction, full, var_shape):
    """Values and gradients of F.gaussian_nll_loss / nn.GaussianNLLLoss, var entries below eps
    included (torch's clamp passes the gradient through unchanged)."""
    device = device_for(backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    y = torch.randn(4, 3, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    var = torch.rand(var_shape, generator=g, dtype=torch.float64)
    var.view(-1)[::3] = 1e-9  # below eps: clamped
    var = var.to(device).requires_grad_()
    eps = 1e-4
    a = vnn.GaussianNLLLoss(full=full, eps=eps, reduction=reduction, backend=backend)(x, y, var)
    b = torch.nn.GaussianNLLLoss(full=full, eps=eps, reduction=reduction)(x, y, var)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for ga, gb in zip(grads(a, x, y, var), grads(b, x, y, var)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)
    c = vae_fast.gaussian_nll_loss(x, y, var, full, eps, reduction, backend=backend)
    torch.testing.assert_close(c, F.gaussian_nll_loss(x, y, var, full, eps, reduction), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_nll_loss_float_var_and_errors(backend):
    device = device_for(backend)
    x, y = torch.randn(3, 4, device=device), torch.randn(3, 4, device=device)
    torch.testing.assert_close(vae_fast.gaussian_nll_loss(x, y, 0.5, backend=backend), F.gaussian_nll_loss(x, y, 0.5))
    with pytest.raises(ValueError, match="var: expected non-negative"):
        vae_fast.gaussian_nll_loss(x, y, -torch.ones(3, 4, device=device), backend=backend)
    with pytest.raises(ValueError, match="var: expected the shape of input"):
        vae_fast.gaussian_nll_loss(x, y, torch.ones(2, 4, device=device), backend=backend)
    with pytest.raises(ValueError, match="reduction"):
        vae_fast.gaussian_nll_loss(x, y, torch.ones(3, 4, device=device), reduction="batchmean", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logvar_nll_and_kl_modules(backend):
    device = device_for(backend)
    g = torch.Generator().manual_seed(2)
    m, lv, t, pm, plv = (torch.randn(4, 6, generator=g, dtype=torch.float64).to(device) for _ in range(5))
    for red in ("none", "sum", "mean", "batchmean"):
        torch.testing.assert_close(vnn.GaussianLogvarNLLLoss(red, backend=backend)(m, lv, t),
                                   vae_fast.gaussian_nll(m, lv, t, reduction=red, backend="reference"))
        kl = vnn.KLDivergence(red, backend=backend)
        torch.testing.assert_close(kl(m, lv), vae_fast.gaussian_kl(m, lv, reduction=red, backend="reference"))
        torch.testing.assert_close(kl(m, lv, pm, plv),
                                   vae_fast.gaussian_kl(m, lv, pm, plv, reduction=red, backend="reference"))
    # the prior's KL against torch.distributions
    q = torch.distributions.Normal(m, (0.5 * lv).exp())
    p = torch.distributions.Normal(pm, (0.5 * plv).exp())
    torch.testing.assert_close(vnn.KLDivergence("none", backend=backend)(m, lv, pm, plv),
                               torch.distributions.kl_divergence(q, p))


def _elbo_inputs(device, decoder, seed=3):
    g = torch.Generator().manual_seed(seed)
    new = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    mu, logvar = new(5, 4), new(5, 4)
    target = torch.rand(5, 2, 6, generator=g, dtype=torch.float64).to(device)
    recon = new(5, 2, 6) if decoder == "bernoulli" else (new(5, 2, 6), new(5, 2, 6))
    return recon, target, mu, logvar


def _elbo_reference(recon, target, mu, logvar, decoder, beta, free_bits, reduction):
    """The negative ELBO from the reference functions, written out."""
    if decoder == "bernoulli":
        rec = vae_fast.reference.bernoulli_nll(recon, target)
    else:
        rec = vae_fast.reference.gaussian_nll(recon[0], recon[1], target)
    rec = rec.flatten(1).sum(1)
    kl = vae_fast.reference.gaussian_kl(mu, logvar)
    batch = mu.shape[0]
    if free_bits > 0:
        total = rec.sum() + beta * batch * kl.mean(0).clamp(min=free_bits).sum()
        return total if reduction == "sum" else total / batch
    per = rec + beta * kl.sum(1)
    return {"none": per, "sum": per.sum(), "batchmean": per.mean(), "mean": per.mean()}[reduction]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean", "mean"])
@pytest.mark.parametrize("free_bits", [0.0, 0.3])
@pytest.mark.parametrize("beta_kind", ["float", "tensor", "override"])
def test_elbo_loss(backend, decoder, reduction, free_bits, beta_kind):
    if free_bits > 0 and reduction == "none":
        with pytest.raises(ValueError, match="free_bits"):
            vnn.ELBOLoss(decoder, free_bits=free_bits, reduction=reduction)
        return
    device = device_for(backend)
    recon, target, mu, logvar = _elbo_inputs(device, decoder)
    loss = vnn.ELBOLoss(decoder, beta=0.7, free_bits=free_bits, reduction=reduction, backend=backend)
    beta = {"float": None, "tensor": torch.tensor(0.7, dtype=torch.float64, device=device), "override": 0.7}[beta_kind]
    if beta_kind == "override":
        loss.beta = 5.0  # overridden by the call's beta
    out = loss(recon, target, mu, logvar, beta=beta)
    ref = _elbo_reference(recon, target, mu, logvar, decoder, 0.7, free_bits, reduction)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    inputs = [mu, logvar] + ([recon] if decoder == "bernoulli" else list(recon))
    for a, b in zip(grads(out, *inputs), grads(ref, *inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_elbo_loss_bad_arguments():
    with pytest.raises(ValueError, match="decoder: expected 'bernoulli' or 'gaussian', got 'poisson'"):
        vnn.ELBOLoss("poisson")
    with pytest.raises(ValueError, match="free_bits: expected >= 0"):
        vnn.ELBOLoss(free_bits=-1.0)
    recon, target, mu, logvar = _elbo_inputs("cpu", "bernoulli")
    with pytest.raises(TypeError, match="recon: expected a \\(mean, logvar\\) pair"):
        vnn.ELBOLoss("gaussian", backend="reference")(recon, target, mu, logvar, beta=torch.tensor(1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_beta_does_not_recompile(backend):
    """A VAE step with beta changing every call, under torch.compile(fullgraph=True): a tensor beta
    compiles once for 10 values (a float beta would recompile for each, and stop after 8)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    device = device_for(backend)
    enc = torch.nn.Linear(12, 8, dtype=torch.float64).to(device)
    dec = torch.nn.Linear(4, 12, dtype=torch.float64).to(device)
    loss_fn = vnn.ELBOLoss("bernoulli", backend=backend)

    def step(x, beta):
        mu, logvar = enc(x).chunk(2, dim=1)
        z, _ = vae_fast.sample_and_kl(mu, logvar, backend=backend)
        return loss_fn(dec(z), x, mu, logvar, beta=beta)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.rand(6, 12, dtype=torch.float64, device=device)
    beta = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(10):
        beta.fill_(vnn.kl_annealing(i, "cyclical", total_steps=10, n_cycles=2))
        out = compiled(x, beta)
        out.backward()
        assert torch.isfinite(out)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert sum(counters["recompiles"].values()) == 0 if "recompiles" in counters else True


def _fu_frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """Fu et al. 2019's reference implementation (github.com/haofuml/cyclical_annealing)."""
    L = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and (int(i + c * period) < n_iter):
            L[int(i + c * period)] = v
            v += step
            i += 1
    return L


@pytest.mark.parametrize("n_iter,n_cycle,ratio", [(100, 4, 0.5), (1000, 4, 0.5), (90, 3, 0.25), (64, 1, 1.0)])
def test_kl_annealing_cyclical_is_fu_et_al(n_iter, n_cycle, ratio):
    ref = _fu_frange_cycle_linear(n_iter, n_cycle=n_cycle, ratio=ratio)
    ours = np.array([vnn.kl_annealing(s, "cyclical", total_steps=n_iter, n_cycles=n_cycle, ratio=ratio)
                     for s in range(n_iter)])
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    steps = torch.arange(n_iter + 5, dtype=torch.float64)
    as_tensor = vnn.kl_annealing(steps, "cyclical", total_steps=n_iter, n_cycles=n_cycle, ratio=ratio)
    np.testing.assert_allclose(as_tensor[:n_iter].numpy(), ref, atol=1e-9)
    assert (as_tensor[n_iter:] == 1.0).all()  # after total_steps: stop


def test_kl_annealing_linear():
    assert vnn.kl_annealing(0, total_steps=100) == 0.0
    assert math.isclose(vnn.kl_annealing(25, total_steps=100), 0.5)
    assert vnn.kl_annealing(50, total_steps=100) == 1.0
    assert vnn.kl_annealing(99, total_steps=100) == 1.0
    assert vnn.kl_annealing(500, total_steps=100) == 1.0
    assert math.isclose(vnn.kl_annealing(10, total_steps=100, ratio=1.0, start=0.2, stop=0.7), 0.25)
    with pytest.raises(ValueError, match="kind: expected 'linear' or 'cyclical'"):
        vnn.kl_annealing(0, "cosine", total_steps=10)
    with pytest.raises(ValueError, match="ratio"):
        vnn.kl_annealing(0, total_steps=10, ratio=0.0)


def test_exports():
    assert vae_fast.nn is vnn
    assert vae_fast.gaussian_nll_loss is vnn.gaussian_nll_loss
    for name in vnn.__all__:
        assert hasattr(vnn, name)
