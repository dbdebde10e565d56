"""Mixed floating dtypes follow torch's type promotion on every backend (issue 9.4): the result dtype
is torch.result_type of the inputs, and the values are the reference computed in that dtype."""
import pytest
import torch

import vae_fast
from helpers import close, need

BACKENDS = ("reference", "triton", "cpu", "cuda")
PAIRS = [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float16, torch.float32),
         (torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16)]


def device(backend):
    return torch.device("cpu") if backend == "reference" else need(backend)


def inputs(dev, a, b, shape=(3, 10)):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return x.to(dev, a), y.to(dev, b)


# name -> (the op's tensor arguments built from x (dtype a) and y (dtype b), the call)
CALLS = {
    "gaussian_kl": (lambda x, y: (x, y), lambda be, *t: vae_fast.gaussian_kl(*t, reduction="none", backend=be)),
    "gaussian_kl_prior": (lambda x, y: (x.detach(), x, y, y.detach() * 0.5),
                          lambda be, *t: vae_fast.gaussian_kl(*t, reduction="sum", backend=be)),
    "bernoulli_nll": (lambda x, y: (x, torch.sigmoid(y)),
                      lambda be, *t: vae_fast.bernoulli_nll(*t, reduction="sum", backend=be)),
    "gaussian_nll": (lambda x, y: (x, y, y.detach() * 0.3),
                     lambda be, *t: vae_fast.gaussian_nll(*t, reduction="none", backend=be)),
    "negative_elbo": (lambda x, y: (y, torch.sigmoid(x.detach()), x, y),
                      lambda be, *t: vae_fast.negative_elbo(*t, backend=be)),
    "sample_and_kl": (lambda x, y: (x, y), lambda be, *t: vae_fast.sample_and_kl(*t, backend=be)[1]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("a,b", PAIRS, ids=lambda d: str(d).replace("torch.", ""))
def test_mixed_dtypes_promote_like_torch(backend, name, a, b):
    dev = device(backend)
    x, y = inputs(dev, a, b)
    x.requires_grad_(True)
    y.requires_grad_(True)
    build, call = CALLS[name]
    args = build(x, y)
    out = call(backend, *args)
    want = torch.promote_types(a, b)
    assert out.dtype == want, (backend, name, out.dtype, want)
    # values: the reference backend on the same arguments cast to the promoted dtype first
    ref = call("reference", *(t.detach().to(want) for t in args))
    if name != "sample_and_kl":
        close(out.detach(), ref, want, scale=10.0)
    out.sum().backward()
    assert x.grad.dtype == a and y.grad.dtype == b  # autograd casts gradients back to each input


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_dtype_promotes(backend):
    dev = device(backend)
    mu, lv = inputs(dev, torch.float32, torch.float64)
    assert vae_fast.reparameterize(mu, lv, backend=backend).dtype == torch.float64
    z, kl = vae_fast.sample_and_kl(lv, mu, num_samples=2, backend=backend)
    assert z.dtype == kl.dtype == torch.float64 and z.shape == (2, *mu.shape)
