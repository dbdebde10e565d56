"""The reference VAE (vae_fast.models.VAE with ReferenceOps) against torch.distributions in
float64: the negative ELBO it returns is -log p(x|z) + KL(q(z|x) || N(0, I)) for the z it drew."""
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae_fast.models import VAE, ReferenceOps

F64 = dict(rtol=1e-10, atol=1e-10)


def batch(n=6, d=30, seed=0):
    return torch.rand(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_forward_matches_distributions(decoder):
    torch.manual_seed(0)
    model = VAE(in_dim=30, hidden=12, latent=4, decoder=decoder).double()
    x = batch()
    neg_elbo, rec, kl = model(x, generator=torch.Generator().manual_seed(7))
    # redo it by hand with the same eps
    mu, logvar = model.encode(x)
    eps = torch.randn(mu.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.loc + q.scale * eps
    out = model.dec(z)
    if decoder == "bernoulli":
        expected_rec = -Bernoulli(logits=out, validate_args=False).log_prob(x).sum(1)
    else:
        mean, lv = out.chunk(2, dim=-1)
        expected_rec = -Normal(mean, torch.exp(0.5 * lv)).log_prob(x).sum(1)
    expected_kl = kl_divergence(q, Normal(0.0, 1.0)).sum(1)
    assert neg_elbo.shape == rec.shape == kl.shape == (6,)
    torch.testing.assert_close(rec, expected_rec, **F64)
    torch.testing.assert_close(kl, expected_kl, **F64)
    torch.testing.assert_close(neg_elbo, expected_rec + expected_kl, **F64)


def test_default_sizes_are_kingma_welling():
    model = VAE()
    assert (model.enc[0].in_features, model.enc[0].out_features) == (784, 400)
    assert model.enc_mu.out_features == model.enc_logvar.out_features == 20
    assert (model.dec[0].in_features, model.dec[0].out_features, model.dec[2].out_features) == (20, 400, 784)
    assert VAE(decoder="gaussian").dec[2].out_features == 2 * 784
    assert isinstance(model.ops, ReferenceOps)


def test_image_shaped_input_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = VAE(in_dim=16, hidden=8, latent=2)
    x = torch.rand(5, 1, 4, 4)
    neg_elbo, _, _ = model(x)
    neg_elbo.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_same_generator_same_output_and_global_seed():
    model = VAE(in_dim=30, hidden=12, latent=4).double()
    x = batch()
    a = model(x, generator=torch.Generator().manual_seed(3))[0]
    b = model(x, generator=torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(5)
    c = model(x)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(model(x)[0], c, rtol=0, atol=0)


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_sample_and_reconstruct(decoder):
    torch.manual_seed(0)
    model = VAE(in_dim=30, hidden=12, latent=4, decoder=decoder)
    s = model.sample(7, generator=torch.Generator().manual_seed(0))
    r = model.reconstruct(batch().float())
    assert s.shape == (7, 30) and r.shape == (6, 30)
    for img in (s, r):
        assert not img.requires_grad and img.min() >= 0 and img.max() <= 1
    mu, _ = model.encode(batch().float())
    torch.testing.assert_close(r, model.mean_image(model.decode(mu)))


def test_custom_ops_are_used():
    class Spy(ReferenceOps):
        calls = []

        def sample_and_kl(self, mu, logvar, generator=None):
            self.calls.append("sample_and_kl")
            return super().sample_and_kl(mu, logvar, generator)

        def bernoulli_nll(self, logits, target):
            self.calls.append("bernoulli_nll")
            return super().bernoulli_nll(logits, target)

    model = VAE(in_dim=30, hidden=12, latent=4, ops=Spy())
    model(batch().float())
    assert Spy.calls == ["sample_and_kl", "bernoulli_nll"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(decoder="poisson"), "decoder: expected one of"),
    (dict(hidden=0), "hidden: expected a positive int, got 0"),
    (dict(latent=-2), "latent: expected a positive int, got -2"),
    (dict(in_dim=7.5), "in_dim: expected a positive int, got 7.5"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAE(**kwargs)


def test_bad_input_to_forward_is_a_clear_error():
    model = VAE(in_dim=30, hidden=12, latent=4)
    with pytest.raises(TypeError, match="expected a floating-point tensor"):
        model.reconstruction_nll(torch.zeros(2, 30), torch.zeros(2, 30, dtype=torch.long))
