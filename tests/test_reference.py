"""vae_fast.reference against torch.distributions (Normal, Bernoulli, kl_divergence) in float64,
log_marginal_likelihood against a model whose log p(x) is known in closed form, and the errors
on bad input."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from vae_fast import reference
from vae_fast.models import VAE

F64 = dict(rtol=1e-12, atol=1e-12)


def rand(*shape, lo=-3.0, hi=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=g)


# ------------------------------------------------------------------------ reparameterize
def test_reparameterize_is_normal_affine():
    mu, logvar, eps = rand(4, 5), rand(4, 5, seed=1), rand(4, 5, seed=2)
    std = Normal(mu, torch.exp(0.5 * logvar)).stddev
    torch.testing.assert_close(reference.reparameterize(mu, logvar, eps), mu + std * eps, **F64)


def test_reparameterize_leading_sample_dims_and_grad():
    mu = rand(3, 2).requires_grad_()
    logvar = rand(3, 2, seed=1).requires_grad_()
    eps = rand(7, 3, 2, seed=2)
    z = reference.reparameterize(mu, logvar, eps)
    assert z.shape == (7, 3, 2)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps, **F64)
    assert torch.autograd.gradcheck(lambda m, lv: reference.reparameterize(m, lv, eps), (mu, logvar))


def test_reparameterize_distribution():
    """z has the law of N(mu, e^logvar): its empirical mean/std match (eps from torch.randn)."""
    mu, logvar = torch.tensor([1.5, -2.0], dtype=torch.float64), torch.tensor([0.3, -1.0], dtype=torch.float64)
    eps = torch.randn(200_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = reference.reparameterize(mu, logvar, eps)
    d = Normal(mu, torch.exp(0.5 * logvar))
    torch.testing.assert_close(z.mean(0), d.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), d.stddev, atol=0.01, rtol=0)


# --------------------------------------------------------------------------- gaussian_kl
def normal(mu, logvar):
    return Normal(mu, torch.exp(0.5 * logvar))


def test_gaussian_kl_standard_prior():
    mu, logvar = rand(6, 9), rand(6, 9, seed=1)
    expected = kl_divergence(normal(mu, logvar), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar), expected, **F64)


@pytest.mark.parametrize("which", ["both", "mu", "logvar"])
def test_gaussian_kl_with_prior(which):
    mu, logvar = rand(5, 4), rand(5, 4, seed=1)
    pmu = rand(5, 4, seed=2) if which in ("both", "mu") else None
    plv = rand(5, 4, seed=3) if which in ("both", "logvar") else None
    expected = kl_divergence(normal(mu, logvar), normal(torch.zeros_like(mu) if pmu is None else pmu,
                                                        torch.zeros_like(mu) if plv is None else plv))
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, pmu, plv), expected, **F64)


def test_gaussian_kl_broadcast_prior_and_zero_at_prior():
    mu, logvar = rand(5, 4), rand(5, 4, seed=1)
    pmu, plv = rand(4, seed=2), rand(4, seed=3)
    expected = kl_divergence(normal(mu, logvar), normal(pmu.expand(5, 4), plv.expand(5, 4)))
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, pmu, plv), expected, **F64)
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, mu, logvar),
                               torch.zeros_like(mu), **F64)


# -------------------------------------------------------------------------- bernoulli_nll
def test_bernoulli_nll_binary_targets():
    logits = rand(8, 10, lo=-20, hi=20)
    target = (rand(8, 10, lo=0, hi=1, seed=1) > 0.5).double()
    expected = -Bernoulli(logits=logits).log_prob(target)
    torch.testing.assert_close(reference.bernoulli_nll(logits, target), expected, **F64)


def test_bernoulli_nll_continuous_targets():
    """Grey-scale MNIST pixels: the cross-entropy with t in [0, 1] (what Bernoulli.log_prob computes)."""
    logits, target = rand(8, 10, lo=-8, hi=8), rand(8, 10, lo=0, hi=1, seed=1)
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(target)
    torch.testing.assert_close(reference.bernoulli_nll(logits, target), expected, **F64)


def test_bernoulli_nll_extreme_logits_stable():
    logits = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=torch.float64)
    for t in (0.0, 1.0):
        target = torch.full_like(logits, t)
        out = reference.bernoulli_nll(logits, target)
        assert torch.isfinite(out).all()
        # asymptote: -log sigmoid(x) ~ max(-x, 0) for |x| large; log 2 at 0
        expected = torch.clamp(-logits if t == 1.0 else logits, min=0)
        expected[2] = math.log(2.0)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-40)
    for dtype in (torch.float32, torch.float16):
        out = reference.bernoulli_nll(logits.to(dtype), torch.ones_like(logits, dtype=dtype))
        assert torch.isfinite(out[:4]).all()  # 1e4 overflows float16 itself; the rest stay finite


def test_bernoulli_nll_grad():
    logits = rand(3, 4).requires_grad_()
    target = rand(3, 4, lo=0, hi=1, seed=1)
    (g,) = torch.autograd.grad(reference.bernoulli_nll(logits, target).sum(), logits)
    torch.testing.assert_close(g, torch.sigmoid(logits) - target, **F64)


# --------------------------------------------------------------------------- gaussian_nll
def test_gaussian_nll_matches_normal_log_prob():
    mean, logvar, target = rand(6, 7), rand(6, 7, seed=1), rand(6, 7, seed=2)
    expected = -normal(mean, logvar).log_prob(target)
    torch.testing.assert_close(reference.gaussian_nll(mean, logvar, target), expected, **F64)


def test_gaussian_nll_broadcast_logvar():
    mean, target = rand(6, 7), rand(6, 7, seed=2)
    for logvar in (rand(7, seed=1), torch.tensor(0.3, dtype=torch.float64)):
        expected = -normal(mean, logvar.expand(6, 7)).log_prob(target)
        torch.testing.assert_close(reference.gaussian_nll(mean, logvar, target), expected, **F64)


# --------------------------------------------------------------------------- negative_elbo
def test_negative_elbo_per_sample():
    logits, target = rand(4, 12), rand(4, 12, lo=0, hi=1, seed=1)
    mu, logvar = rand(4, 3, seed=2), rand(4, 3, seed=3)
    rec = -Bernoulli(logits=logits, validate_args=False).log_prob(target).sum(1)
    kl = kl_divergence(normal(mu, logvar), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(reference.negative_elbo(logits, target, mu, logvar), rec + kl, **F64)
    torch.testing.assert_close(reference.negative_elbo(logits, target, mu, logvar, beta=0.25),
                               rec + 0.25 * kl, **F64)
    for reduction, expected in (("sum", (rec + kl).sum()), ("batchmean", (rec + kl).mean()),
                                ("mean", (rec + kl).mean())):
        torch.testing.assert_close(
            reference.negative_elbo(logits, target, mu, logvar, reduction=reduction), expected, **F64)


def test_negative_elbo_free_bits():
    logits, target = rand(4, 12), rand(4, 12, lo=0, hi=1, seed=1)
    mu, logvar = rand(4, 3, seed=2, lo=-0.3, hi=0.3), rand(4, 3, seed=3, lo=-0.3, hi=0.3)
    rec = -Bernoulli(logits=logits, validate_args=False).log_prob(target).sum(1)
    kl_dims = kl_divergence(normal(mu, logvar), Normal(0.0, 1.0)).mean(0)
    lam = float(kl_dims.median())  # some dims below, some above the threshold
    expected = rec.sum() + 4 * torch.clamp(kl_dims, min=lam).sum()
    torch.testing.assert_close(reference.negative_elbo(logits, target, mu, logvar, free_bits=lam,
                                                       reduction="sum"), expected, **F64)
    torch.testing.assert_close(reference.negative_elbo(logits, target, mu, logvar, free_bits=lam,
                                                       reduction="batchmean"), expected / 4, **F64)
    with pytest.raises(ValueError, match="free_bits: needs reduction"):
        reference.negative_elbo(logits, target, mu, logvar, free_bits=lam)


def test_reduce_and_per_sample():
    x = rand(3, 4, 5)
    torch.testing.assert_close(reference.reduce(x, "none"), x)
    torch.testing.assert_close(reference.reduce(x, "sum"), x.sum())
    torch.testing.assert_close(reference.reduce(x, "mean"), x.mean())
    torch.testing.assert_close(reference.reduce(x, "batchmean"), x.sum() / 3)
    torch.testing.assert_close(reference.per_sample(x), x.sum((1, 2)))
    torch.testing.assert_close(reference.per_sample(x[:, 0, 0]), x[:, 0, 0])


# ------------------------------------------------------------------ log_marginal_likelihood
class LinearGaussian:
    """z ~ N(0, I_2); x | z ~ N(W z + b, s2 I_3), with W's columns orthogonal, so the exact
    posterior is diagonal: an encoder can return it, and then every importance weight is p(x)."""

    def __init__(self, exact=True):
        self.W = torch.tensor([[1.5, 0.0], [0.0, -0.7], [0.0, 0.0]], dtype=torch.float64)
        self.b = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
        self.s2 = 0.5
        self.exact = exact

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(3, dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def encode(self, x):
        prec = 1.0 + (self.W * self.W).sum(0) / self.s2  # diagonal of I + W^T W / s2
        mu = ((x - self.b) @ self.W) / self.s2 / prec
        logvar = -torch.log(prec).expand_as(mu)
        if not self.exact:
            mu, logvar = mu + 0.3, logvar + 0.4
        return mu, logvar

    def decode(self, z):
        return z @ self.W.T + self.b

    def reconstruction_nll(self, mean, x):  # elementwise (k*batch, 3); the per_sample_k branch
        return reference.gaussian_nll(mean, torch.tensor(math.log(self.s2), dtype=torch.float64), x)


def test_log_marginal_likelihood_exact_posterior_is_exact():
    model = LinearGaussian()
    x = rand(6, 3, seed=4)
    gen = torch.Generator().manual_seed(0)
    est = reference.log_marginal_likelihood(model, x, num_samples=7, chunk=3, generator=gen)
    assert est.shape == (6,)
    torch.testing.assert_close(est, model.log_px(x), rtol=1e-10, atol=1e-10)


def test_log_marginal_likelihood_inexact_posterior_converges_from_below():
    model = LinearGaussian(exact=False)
    x = rand(4, 3, seed=4)
    truth = model.log_px(x)
    gen = torch.Generator().manual_seed(0)
    one = torch.stack([reference.log_marginal_likelihood(model, x, 1, generator=gen) for _ in range(400)])
    many = reference.log_marginal_likelihood(model, x, 20_000, chunk=5000, generator=gen)
    assert (one.mean(0) < truth).all()  # the K=1 bound (an ELBO estimate) is below log p(x) ...
    torch.testing.assert_close(many, truth, atol=0.02, rtol=0)  # ... and large K converges to it


def test_log_marginal_likelihood_on_the_vae_beats_the_elbo():
    """VAE.reconstruction_nll returns per-sample sums (the other per_sample_k branch)."""
    torch.manual_seed(0)
    model = VAE(in_dim=20, hidden=16, latent=3).double()
    x = rand(5, 20, lo=0, hi=1, seed=5)
    gen = torch.Generator().manual_seed(1)
    est = reference.log_marginal_likelihood(model, x, num_samples=500, chunk=64, generator=gen)
    assert est.shape == (5,) and torch.isfinite(est).all()
    neg_elbo = torch.stack([model(x, generator=gen)[0] for _ in range(200)]).mean(0)
    assert (est > -neg_elbo).all()


# ---------------------------------------------------------------------------- bad input
F = torch.ones(2, 3, dtype=torch.float64)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: reference.reparameterize(F, torch.ones(2, 4, dtype=torch.float64), F), ValueError,
     r"logvar: expected the shape of mu \(2, 3\), got \(2, 4\)"),
    (lambda: reference.reparameterize(F.long(), F, F), TypeError,
     "mu: expected a floating-point tensor, got dtype torch.int64"),
    (lambda: reference.reparameterize([1.0], F, F), TypeError, "mu: expected a torch.Tensor, got list"),
    (lambda: reference.reparameterize(F, F, torch.ones(5, 4, dtype=torch.float64)), ValueError,
     r"mu: expected a shape broadcastable to \(5, 4\)"),
    (lambda: reference.reparameterize(F, F, F.int()), TypeError, "eps: expected a floating-point"),
    (lambda: reference.gaussian_kl(F, F, torch.ones(4, dtype=torch.float64)), ValueError,
     "prior_mu: expected a shape broadcastable to"),
    (lambda: reference.gaussian_kl(F, F, None, F.long()), TypeError, "prior_logvar: expected a floating"),
    (lambda: reference.bernoulli_nll(F, torch.ones(3, 2, dtype=torch.float64)), ValueError,
     r"target: expected the shape of logits \(2, 3\)"),
    (lambda: reference.bernoulli_nll(F, F.bool()), TypeError, "target: expected a floating-point"),
    (lambda: reference.gaussian_nll(F, F, F.long()), TypeError, "target: expected a floating-point"),
    (lambda: reference.gaussian_nll(F, F, torch.ones(3, dtype=torch.float64)), ValueError,
     r"mean: expected the shape of target \(3,\), got \(2, 3\)"),
    (lambda: reference.gaussian_nll(F, torch.ones(4, dtype=torch.float64), F), ValueError,
     "logvar: expected a shape broadcastable to"),
    (lambda: reference.negative_elbo(F, F, torch.ones(3, 2, dtype=torch.float64),
                                     torch.ones(3, 2, dtype=torch.float64)), ValueError,
     "mu: expected batch size 2"),
    (lambda: reference.negative_elbo(F, F, F, F, reduction="avg"), ValueError,
     "reduction: expected one of"),
    (lambda: reference.reduce(F, "max"), ValueError, "reduction: expected one of"),
    (lambda: reference.reduce(torch.tensor(1.0), "batchmean"), ValueError, "at least 1 dimension"),
    (lambda: reference.log_marginal_likelihood(LinearGaussian(), F, 0), ValueError,
     "num_samples: expected a positive int, got 0"),
    (lambda: reference.log_marginal_likelihood(LinearGaussian(), F, 2.5), TypeError,
     "num_samples: expected an int, got float"),
])
def test_bad_input_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a device mismatch")
def test_device_mismatch_error():
    with pytest.raises(RuntimeError, match="logvar: expected a tensor on cpu"):
        reference.reparameterize(F, F.cuda(), F)
