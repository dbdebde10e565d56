"""The C++ autograd of the native ops (csrc/autograd.cpp), on the cpu and cuda backends: the
gradient formulas around the fused backward ops (which grads exist, -grad for prior_mu / target,
a missing output gradient of sample_and_kl), the no-grad path, and the autograd modes it does not
support raising a clear error instead of returning silently wrong values (issue 10): double
backward, forward-mode AD, torch.func transforms. Also torch.compile tracing through it."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

import vae_fast
from vae_fast._ops import philox_state
from vae_fast._schemas import NONE, ROWS, SUM
from helpers import need

NATIVE = ("cpu", "cuda")
FORWARD_OPS = ("reparameterize", "sample_and_kl", "gaussian_kl", "bernoulli_nll", "gaussian_nll")
ops = torch.ops.vae_fast


class Calls(TorchDispatchMode):
    """The ops below autograd, with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func.name(), args))
        return func(*args, **(kwargs or {}))

    def named(self, name):
        return [args for n, args in self.calls if n == name]


def leaves(device, *shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_() for s in shapes]


def reference_grads(fn, inputs, grad_out):
    """Gradients of the reference backend's version of fn, at the same (float64) values."""
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*ref, backend="reference")
    wanted = [t for t in ref if t.requires_grad]
    return torch.autograd.grad(out, wanted, grad_out)


@pytest.mark.parametrize("backend", NATIVE)
def test_autograd_is_the_cpp_kernel(backend):
    """Every forward op has an Autograd kernel registered from C++, and the node is a C++ Function
    (not the ~14 us/call Python kernel that torch.library.register_autograd installs)."""
    dev = need(backend)
    for name in FORWARD_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vae_fast::{name}", "Autograd"), name
    x, t = leaves(dev, (3, 4), (3, 4))
    out = ops.bernoulli_nll(x, t.detach().sigmoid(), SUM, 1.0)
    assert "BernoulliNll" in out.grad_fn.name() and type(out.grad_fn).__name__ == "CppFunction"


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("target_grad", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_bernoulli_nll_target_grad_only_when_needed(backend, target_grad, reduction):
    dev = need(backend)
    logits, = leaves(dev, (5, 3))
    target = torch.rand(5, 3, dtype=torch.float64, device=dev).requires_grad_(target_grad)
    out = vae_fast.bernoulli_nll(logits, target, reduction=reduction, backend=backend)
    grad_out = torch.randn_like(out)
    inputs = [logits, target] if target_grad else [logits]
    with Calls() as mode:
        grads = torch.autograd.grad(out, inputs, grad_out)
    (call,) = mode.named("vae_fast::bernoulli_nll_backward")
    assert call[-1] is target_grad  # the kernel computes the target's gradient only when asked
    expected = reference_grads(lambda a, b, backend: vae_fast.bernoulli_nll(a, b, reduction=reduction,
                                                                          backend=backend),
                               [logits, target], grad_out)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("prior", ["none", "mu", "logvar", "both"])
@pytest.mark.parametrize("prior_grad", [False, True])
def test_gaussian_kl_prior_grads(backend, prior, prior_grad):
    """d/d prior_mu = -d/d mu; an absent prior_mu shifts prior_logvar's autograd input index."""
    dev = need(backend)
    mu, lv, pm, plv = leaves(dev, (4, 3), (4, 3), (4, 3), (4, 3), seed=1)
    pm = pm.detach().requires_grad_(prior_grad) if prior in ("mu", "both") else None
    plv = plv.detach().requires_grad_(prior_grad) if prior in ("logvar", "both") else None
    fn = lambda a, b, c, d, backend: vae_fast.gaussian_kl(a, b, c, d, reduction="sum",  # noqa: E731
                                                          backend=backend)
    out = fn(mu, lv, pm, plv, backend)
    inputs = [t for t in (mu, lv, pm, plv) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, inputs)
    ref = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in (mu, lv, pm, plv)]
    expected = torch.autograd.grad(fn(*ref, backend="reference"),
                                   [t for t in ref if t is not None and t.requires_grad])
    assert len(grads) == len(expected) == 2 + sum(t is not None and prior_grad for t in (pm, plv))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("target_grad", [False, True])
def test_gaussian_nll_target_grad(backend, target_grad):
    dev = need(backend)
    mean, lv, target = leaves(dev, (4, 3), (4, 3), (4, 3), seed=2)
    target.requires_grad_(target_grad)
    fn = lambda a, b, c, backend: vae_fast.gaussian_nll(a, b, c, reduction="sum", backend=backend)  # noqa: E731
    out = fn(mean, lv, target, backend)
    grads = torch.autograd.grad(out, [t for t in (mean, lv, target) if t.requires_grad])
    expected = reference_grads(fn, [mean, lv, target], torch.ones((), dtype=out.dtype, device=dev))
    assert len(grads) == 2 + target_grad
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("logvar_grad", [False, True])
def test_reparameterize_grads(backend, num_samples, logvar_grad):
    """d/d mu is grad_z (summed over samples); d/d logvar from the fused backward op, called only
    when logvar needs it."""
    dev = need(backend)
    mu, lv = leaves(dev, (4, 3), (4, 3), seed=3)
    lv.requires_grad_(logvar_grad)
    p = philox_state(dev)
    z = ops.reparameterize(mu, lv, p, num_samples)
    grad_z = torch.randn_like(z)
    inputs = [mu, lv] if logvar_grad else [mu]
    with Calls() as mode:
        grads = torch.autograd.grad(z, inputs, grad_z)
    torch.testing.assert_close(grads[0], grad_z.sum(0))
    assert len(mode.named("vae_fast::reparameterize_backward")) == logvar_grad
    if logvar_grad:
        eps = (z - mu) / (0.5 * lv).exp()
        torch.testing.assert_close(grads[1], (grad_z * eps * 0.5 * (0.5 * lv).exp()).sum(0).detach())


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("num_samples", [1, 2])
def test_sample_and_kl_one_output_used(backend, num_samples):
    """A missing output gradient counts as zeros: the same gradients as passing zeros for it."""
    dev = need(backend)
    mu, lv = leaves(dev, (4, 3), (4, 3), seed=4)
    p = philox_state(dev)
    z, kl = ops.sample_and_kl(mu, lv, p, num_samples)
    gz, gkl = torch.randn_like(z), torch.randn_like(kl)
    z_only = torch.autograd.grad(z, (mu, lv), gz, retain_graph=True)
    kl_only = torch.autograd.grad(kl, (mu, lv), gkl, retain_graph=True)
    for got, (a, b) in ((z_only, (gz, torch.zeros_like(kl))), (kl_only, (torch.zeros_like(z), gkl))):
        expected = torch.autograd.grad((z, kl), (mu, lv), (a, b), retain_graph=True)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)
    # the KL part is the analytic one
    torch.testing.assert_close(kl_only[0], gkl[:, None] * mu)
    torch.testing.assert_close(kl_only[1], gkl[:, None] * 0.5 * (lv.exp() - 1))


def op_cases(dev):
    """(name, fn of float64 leaves, leaves) for every forward op."""
    p = philox_state(dev)
    x, y, t, u = leaves(dev, (3, 4), (3, 4), (3, 4), (3, 4), seed=5)
    return [
        ("reparameterize", lambda a, b: ops.reparameterize(a, b, p, 2), (x, y)),
        ("sample_and_kl", lambda a, b: sum(o.sum() for o in ops.sample_and_kl(a, b, p, 1)), (x, y)),
        ("gaussian_kl", lambda a, b, c, d: ops.gaussian_kl(a, b, c, d, ROWS, 1.0), (x, y, t, u)),
        ("bernoulli_nll", lambda a, b: ops.bernoulli_nll(a, b, NONE, 0.5), (x, t)),
        ("gaussian_nll", lambda a, b, c: ops.gaussian_nll(a, b, c, SUM, 1.0), (x, y, t)),
    ]


@pytest.mark.parametrize("backend", NATIVE)
def test_double_backward_raises_instead_of_dropping_the_term(backend):
    """create_graph=True still gives the first-order gradients; differentiating them raises
    (before: silently wrong, the op's second-order term dropped — issue 10 point 2)."""
    dev = need(backend)
    for name, fn, args in op_cases(dev):
        out = fn(*args)
        grad_out = torch.randn_like(out)
        first = torch.autograd.grad(out, args, grad_out, retain_graph=True)
        again = torch.autograd.grad(out, args, grad_out, create_graph=True)
        for a, b in zip(first, again):
            torch.testing.assert_close(a, b.detach())
        msg = rf"vae_fast::{name}: double backward \(create_graph=True\) is not supported by backend '{backend}'"
        with pytest.raises(RuntimeError, match=msg):  # torch.autograd.grad(..., inputs) reaches the error
            torch.autograd.grad(sum(g.sum() for g in again), args)
        with pytest.raises(RuntimeError, match=msg):
            sum((g * g).sum() for g in again).backward()


@pytest.mark.parametrize("backend", NATIVE)
def test_hessian_vector_product_raises_on_native_and_works_on_reference(backend):
    """The issue's case: H·v of a loss through bernoulli_nll."""
    dev = need(backend)
    x, = leaves(dev, (4,), seed=6)
    t = torch.rand(4, dtype=torch.float64, device=dev)

    def loss(y, b):
        return vae_fast.bernoulli_nll(y, t, reduction="sum", backend=b) + (y ** 2).sum()

    v = torch.ones_like(x)
    _, hv = torch.autograd.functional.hvp(lambda y: loss(y, "reference"), x.detach(), v)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(hv, s * (1 - s) + 2)  # the true H·1, the op's term included
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.functional.hvp(lambda y: loss(y, backend), x.detach(), v)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.gradgradcheck(lambda y: loss(y, backend), (x,))


@pytest.mark.parametrize("backend", NATIVE)
def test_forward_mode_ad_raises(backend):
    """Forward-mode AD has no formula here: a clear error, not zero tangents (issue 10 point 1),
    whether or not the primal also requires grad."""
    dev = need(backend)
    msg = rf"forward-mode AD .* not supported by backend '{backend}'; use backend='reference'"
    for name, fn, args in op_cases(dev):
        primals = tuple(a.detach() for a in args)
        tangents = tuple(torch.ones_like(a) for a in primals)
        with pytest.raises(RuntimeError, match=rf"vae_fast::{name}: {msg}"):
            torch.func.jvp(fn, primals, tangents)
        for requires_grad in (False, True):
            with fwAD.dual_level(), pytest.raises(RuntimeError, match=msg):
                duals = [fwAD.make_dual(a.detach().requires_grad_(requires_grad), d)
                         for a, d in zip(primals, tangents)]
                fn(*duals)
    # the reference backend does it
    x, = leaves(dev, (3,), seed=7)
    t = torch.rand(3, dtype=torch.float64, device=dev)
    _, tangent = torch.func.jvp(lambda y: vae_fast.bernoulli_nll(y, t, reduction="sum", backend="reference"),
                                (x.detach(),), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, (torch.sigmoid(x) - t).sum().detach())


@pytest.mark.parametrize("backend", NATIVE)
def test_torch_func_transforms_raise(backend):
    dev = need(backend)
    x, = leaves(dev, (3, 4), seed=8)
    t = torch.rand(3, 4, dtype=torch.float64, device=dev)
    fn = lambda y: vae_fast.bernoulli_nll(y, t, backend=backend)  # noqa: E731
    for transform in (torch.func.grad, torch.func.jacrev):
        with pytest.raises(RuntimeError, match=rf"vae_fast::bernoulli_nll: torch.func transforms .* "
                                               rf"backend '{backend}'"):
            transform(fn)(x.detach())


@pytest.mark.parametrize("backend", NATIVE)
def test_no_grad_path(backend):
    """Under no_grad, or with no input requiring grad, the op runs without an autograd node."""
    dev = need(backend)
    for name, fn, args in op_cases(dev):
        expected = fn(*args).detach()
        with torch.no_grad():
            out = fn(*args)
        assert out.grad_fn is None and not out.requires_grad, name
        torch.testing.assert_close(out, expected)
        out = fn(*(a.detach() for a in args))
        assert out.grad_fn is None and not out.requires_grad, name
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", NATIVE)
def test_compile_traces_through_the_cpp_autograd(backend):
    """AOTAutograd traces the C++ Function: the backward graph holds the fused backward ops and the
    compiled gradients equal eager ones."""
    dev = need(backend)
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)

    torch._dynamo.reset()
    mu, lv, logits = leaves(dev, (6, 3), (6, 3), (6, 5), seed=9)
    x = torch.rand(6, 5, dtype=torch.float64, device=dev)
    p = philox_state(dev)

    def loss(mu, lv, logits):
        z, kl = ops.sample_and_kl(mu, lv, p, 1)
        return (ops.bernoulli_nll(logits, x, SUM, 1.0) + kl.sum() + z.square().sum()
                + ops.gaussian_kl(mu, lv, None, None, SUM, 0.5) + ops.gaussian_nll(logits, 0.1 * logits, x, SUM, 1.0))

    compiled = torch.compile(loss, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)
    got = torch.autograd.grad(compiled(mu, lv, logits), (mu, lv, logits))
    expected = torch.autograd.grad(loss(mu, lv, logits), (mu, lv, logits))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert len(graphs) == 2
    backward = str(graphs[1].graph)
    for name in ("sample_and_kl_backward", "bernoulli_nll_backward", "gaussian_kl_backward",
                 "gaussian_nll_backward"):
        assert f"vae_fast.{name}" in backward, backward
