"""One error contract on every backend (issue 10): autograd modes the fused backends do not support
raise a clear error, and one validation layer in front of every backend rejects bad input with the
same message whatever the backend."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import vae_fast
from helpers import need

FUSED = ("cpu", "triton", "cuda")


def op_calls(dev):
    """(op name, fn of float64 tensors, inputs) through the public API, per forward op."""
    g = torch.Generator().manual_seed(3)
    x, y, t, u = (torch.randn(3, 4, generator=g, dtype=torch.float64).to(dev) for _ in range(4))
    return [
        ("reparameterize", lambda a, b, be: vae_fast.reparameterize(a, b, num_samples=2, backend=be), (x, y)),
        ("sample_and_kl", lambda a, b, be: vae_fast.sample_and_kl(a, b, backend=be)[1], (x, y)),
        ("gaussian_kl", lambda a, b, c, d, be: vae_fast.gaussian_kl(a, b, c, d, reduction="none", backend=be),
         (x, y, t, u)),
        ("bernoulli_nll", lambda a, b, be: vae_fast.bernoulli_nll(a, b, reduction="none", backend=be), (x, t)),
        ("gaussian_nll", lambda a, b, c, be: vae_fast.gaussian_nll(a, b, c, reduction="sum", backend=be),
         (x, y, t)),
    ]


@pytest.mark.parametrize("backend", FUSED)
def test_forward_mode_ad_is_a_clear_error_on_every_fused_backend(backend):
    """(issue 10.1) torch.func.jvp / jacfwd / torch.autograd.forward_ad: the text of csrc/autograd.cpp
    on every fused backend (the Triton one returned zero tangents), whether or not the primal also
    requires grad; the reference computes the true tangent."""
    dev = need(backend)
    for name, fn, args in op_calls(dev):
        msg = (rf"vae_fast::{name}: forward-mode AD \(torch.func.jvp, torch.autograd.forward_ad\) is not "
               rf"supported by backend '{backend}'; use backend='reference'")
        tangents = tuple(torch.ones_like(a) for a in args)
        with pytest.raises(RuntimeError, match=msg):
            torch.func.jvp(lambda *a: fn(*a, backend), args, tangents)
        with pytest.raises(RuntimeError, match=msg):
            torch.func.jacfwd(lambda a: fn(a, *args[1:], backend), randomness="same")(args[0])
        for requires_grad in (False, True):
            with fwAD.dual_level(), pytest.raises(RuntimeError, match=msg):
                fn(*(fwAD.make_dual(a.clone().requires_grad_(requires_grad), d) for a, d in zip(args, tangents)),
                   backend)
        # a tangent on one input only (here the last) is enough to refuse
        with fwAD.dual_level(), pytest.raises(RuntimeError, match=msg):
            fn(*args[:-1], fwAD.make_dual(args[-1], tangents[-1]), backend)
        # no tangent anywhere: runs, inside a dual level too
        with fwAD.dual_level():
            fn(*args, backend)
        if name in ("gaussian_kl", "bernoulli_nll", "gaussian_nll"):  # deterministic: the reference's tangent
            _, tangent = torch.func.jvp(lambda *a: fn(*a, "reference"), args, tangents)
            ref = torch.autograd.functional.jvp(lambda *a: fn(*a, "reference"), args, tangents)[1]
            torch.testing.assert_close(tangent, ref)
