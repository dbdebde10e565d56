"""The numerics policy of docs/ops.md ("Numerics", issue 10.5) on a grid of special values (0, ±88,
±1e4, ±inf, NaN) for every op, forward and gradient, on every backend: each fused backend gives what
the reference gives (the same NaN and the same signed inf at the same places, close finite values),
the reference agrees with float64 torch.distributions / torch.nn.functional wherever those are finite,
and the overflow-prone cases of the issue give their true values."""
import itertools
import math

import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F

import vae_fast
from helpers import need

INF, NAN = math.inf, math.nan
GRID = (0.0, 1.0, 88.0, -88.0, 1e4, -1e4, INF, -INF, NAN)
TARGETS = (0.0, 0.25, 1.0, NAN)  # Bernoulli targets
BACKENDS = ("reference", "cpu", "triton", "cuda")
DTYPES = (torch.float32, torch.float64)
RTOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def device(backend):
    return torch.device("cpu") if backend == "reference" else need(backend)


def grid(n, values=GRID, dtype=torch.float64, dev="cpu"):
    """n tensors holding every n-tuple of `values`, one tuple per element."""
    cols = torch.tensor(list(itertools.product(values, repeat=n)), dtype=torch.float64)
    return [c.to(dtype).to(dev).contiguous() for c in cols.unbind(1)]


def kl_prior(b):
    return lambda mu, lv, pmu, plv: vae_fast.gaussian_kl(mu, lv, pmu, plv, reduction="none", backend=b)


def kl_std(b):
    return lambda mu, lv: vae_fast.gaussian_kl(mu, lv, reduction="none", backend=b)


def gnll(b):
    return lambda m, lv, t: vae_fast.gaussian_nll(m, lv, t, reduction="none", backend=b)


def bce(b):
    return lambda x, t: vae_fast.bernoulli_nll(x, t, reduction="none", backend=b)


OPS = {  # name: (fn of backend, arity, value grids per argument)
    "gaussian_kl(prior)": (kl_prior, 4, None),
    "gaussian_kl": (kl_std, 2, None),
    "gaussian_nll": (gnll, 3, None),
    "bernoulli_nll": (bce, 2, (GRID, TARGETS)),
}


def inputs(name, dtype, dev):
    _, n, values = OPS[name]
    if values is None:
        return grid(n, dtype=dtype, dev=dev)
    cols = torch.tensor(list(itertools.product(*values)), dtype=torch.float64)
    return [c.to(dtype).to(dev).contiguous() for c in cols.unbind(1)]


def value_and_grads(fn, args):
    """fn(*args) elementwise and d sum(fn) / d each arg (elementwise too: one output per element)."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*leaves)
    return [out.detach()] + [g.detach() for g in torch.autograd.grad(out.sum(), leaves)]


def assert_same_class(actual, expected, dtype, what):
    """Same NaN places, same signed infs, finite values close (relative to their size)."""
    a, e = actual.double().cpu(), expected.double().cpu()
    bad = (a.isnan() != e.isnan()) | (a.isinf() != e.isinf()) | (a.isinf() & e.isinf() & (a != e))
    fin = a.isfinite() & e.isfinite()
    bad |= fin & ((a - e).abs() > RTOL[dtype] * (1 + e.abs()))
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.numel()} differ; first at " \
                          f"{bad.nonzero()[:5].flatten().tolist()}: got {a[bad][:5].tolist()}, want {e[bad][:5].tolist()}"


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_fused_backends_follow_the_reference_on_special_values(name, dtype, backend):
    """Forward and every gradient, on all combinations of the special values (9^4 for the KL to a
    prior). Before the policy: triton NaN where the reference has -inf (d KL / d prior_logvar at
    prior_logvar = -100) and every backend NaN at lv = 100, plv = 1e4 or target == mean, lv < -88.7."""
    dev = device(backend)
    make = OPS[name][0]
    args = inputs(name, dtype, dev)
    want = value_and_grads(make("reference"), args)
    got = value_and_grads(make(backend), args)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_same_class(g, w, dtype, f"{name} {'value' if i == 0 else f'grad {i - 1}'} on {backend} {dtype}")


def normal(mean, logvar):
    return D.Normal(mean, torch.exp(0.5 * logvar), validate_args=False)  # special values on purpose


def torch_truth(name, args):
    """The same quantity from float64 torch.distributions / F (value and gradients), or None."""
    if name == "gaussian_kl(prior)":
        def fn(mu, lv, pmu, plv):
            return D.kl_divergence(normal(mu, lv), normal(pmu, plv))
    elif name == "gaussian_kl":
        def fn(mu, lv):
            return D.kl_divergence(normal(mu, lv), normal(torch.zeros_like(mu), torch.zeros_like(lv)))
    elif name == "gaussian_nll":
        def fn(m, lv, t):
            return -normal(m, lv).log_prob(t)
    else:
        def fn(x, t):
            return F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return value_and_grads(fn, args)


@pytest.mark.parametrize("name", list(OPS))
def test_reference_agrees_with_float64_torch_where_torch_is_finite(name):
    """Where float64 torch.distributions (or F.binary_cross_entropy_with_logits) gives a finite value
    or gradient from finite inputs, the reference gives the same; where torch overflows or divides
    0 by 0 (scales of e^(±5000)), the reference may be finite (the stable forms)."""
    args = inputs(name, torch.float64, "cpu")
    finite_in = torch.stack([a.isfinite() for a in args]).all(0)
    ours = value_and_grads(OPS[name][0]("reference"), args)
    theirs = torch_truth(name, args)
    for i, (o, t) in enumerate(zip(ours, theirs)):
        if name == "bernoulli_nll" and i == 2:
            continue  # d/dtarget: F's is -x as ours
        sel = finite_in & t.isfinite()
        assert sel.sum() > 0
        torch.testing.assert_close(o[sel], t[sel], rtol=1e-9, atol=1e-9, msg=f"{name} output {i}")
        # where torch is finite, so are we
        assert o[sel].isfinite().all()


def all_backends():
    return [b for b in BACKENDS if b == "reference" or vae_fast.available_backends()[b].available]


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_overflow_cases_of_the_issue_have_their_true_values(dtype):
    """(issue 10.5) on every backend here."""
    for backend in all_backends():
        dev = device(backend)
        t = lambda *v: torch.tensor(v, dtype=dtype, device=dev)  # noqa: E731
        # KL to a prior at lv = 100, plv = 1e4: e^(lv - plv) = 0, so 0.5 * (1e4 - 100 - 1) = 4949.5
        kl = vae_fast.gaussian_kl(t(0.0), t(100.0), t(0.0), t(1e4), reduction="none", backend=backend)
        assert kl.item() == 4949.5, (backend, kl)
        # d KL / d prior_logvar at plv = -100 (lv = 0, mu = pmu = 0): 0.5 * (1 - e^100), which
        # overflows float32 to -inf (like torch's float32 arithmetic), and is finite in float64
        plv = t(-100.0).requires_grad_()
        (g,) = torch.autograd.grad(vae_fast.gaussian_kl(t(0.0), t(0.0), t(0.0), plv, reduction="sum",
                                                        backend=backend), plv)
        want = 0.5 * (1 - math.exp(100.0)) if dtype == torch.float64 else -INF
        assert g.item() == pytest.approx(want, rel=1e-12), (backend, g)
        # gaussian_nll at target == mean, logvar < -88.7 (and -1e4, -inf): 0.5 * (log(2 pi) + lv)
        lv = t(-88.8, -100.0, -1e4, -INF).requires_grad_()
        m = torch.zeros_like(lv)
        nll = vae_fast.gaussian_nll(m, lv, m, reduction="none", backend=backend)
        want = 0.5 * (math.log(2 * math.pi) + lv.detach().double())
        torch.testing.assert_close(nll.double(), want, rtol=1e-6, atol=0)
        (g,) = torch.autograd.grad(nll.sum(), lv)
        assert (g == 0.5).all(), (backend, g)
