"""bernoulli_nll's weight= and pos_weight= (fused into every backend's kernels) against
F.binary_cross_entropy_with_logits: values and gradients (logits and target), shapes, dtypes,
reductions, broadcasting; the ops under opcheck; weight/pos_weight gradients refused as in torch."""
import pytest
import torch
import torch.nn.functional as F

import vae_fast
from vae_fast._schemas import NONE, ROWS, SUM
from helpers import DTYPES, FUSED, TOL, need

BACKENDS = FUSED + ("reference",)
NAMESPACE = {"triton": "vae_fast_triton", "cpu": "vae_fast", "cuda": "vae_fast"}

# (input shape, weight shape or None, pos_weight shape or None)
CASES = [
    ((7,), (7,), None),
    ((5, 9), (9,), (9,)),
    ((5, 9), (5, 1), None),
    ((5, 9), None, (9,)),
    ((5, 9), (5, 9), (5, 9)),
    ((2, 3, 4, 5), (3, 1, 1), (5,)),
    ((3, 1100), (1100,), (1100,)),  # rows longer than a CPU block / a Triton tile
    ((2, 3, 4, 5), (), ()),  # 0-d weights broadcast too
]


def device_for(backend):
    return torch.device("cpu") if backend == "reference" else need(backend)


def bce_torch(x, t, w, pw, reduction):
    # torch computes 16-bit BCE in 16-bit steps; the reference is the float64 value
    args = [a.double() if a is not None else None for a in (x, t, w, pw)]
    if reduction == "batchmean":
        return F.binary_cross_entropy_with_logits(*args[:2], args[2], pos_weight=args[3], reduction="sum") / x.shape[0]
    return F.binary_cross_entropy_with_logits(*args[:2], args[2], pos_weight=args[3], reduction=reduction)


def make(shape, wshape, pwshape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 4).to(dtype).to(device).requires_grad_()
    t = torch.rand(shape, generator=g).to(dtype).to(device).requires_grad_()
    w = None if wshape is None else (torch.rand(wshape, generator=g) * 2).to(dtype).to(device)
    pw = None if pwshape is None else (torch.rand(pwshape, generator=g) * 4).to(dtype).to(device)
    return x, t, w, pw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_values_and_gradients(backend, dtype, reduction, case):
    device = device_for(backend)
    x, t, w, pw = make(*case, dtype, device)
    out = vae_fast.bernoulli_nll(x, t, w, pos_weight=pw, reduction=reduction, backend=backend)
    assert out.dtype == dtype and out.device == x.device
    xd, td = x.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    ref = bce_torch(xd, td, w, pw, reduction)
    assert out.shape == ref.shape
    n = max(1, x.numel()) if reduction in ("sum", "batchmean") else 1
    tol = dict(TOL[dtype])
    if backend == "reference" and dtype in (torch.float16, torch.bfloat16):
        tol = {k: 8 * v for k, v in tol.items()}  # plain torch ops, each rounded to 16 bits
    torch.testing.assert_close(out.double(), ref, rtol=tol["rtol"], atol=tol["atol"] * n)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    gx, gt = torch.autograd.grad(out, (x, t), grad)
    rx, rt = torch.autograd.grad(ref, (xd, td), grad.double())
    torch.testing.assert_close(gx.double(), rx, **tol)
    torch.testing.assert_close(gt.double(), rt, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_and_pos_weight(backend):
    """Large |logits| stay finite and exact (softplus(-x) never overflows)."""
    device = device_for(backend)
    x = torch.tensor([-200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0], dtype=torch.float64, device=device,
                     requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.3, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device)
    pw = torch.tensor(3.0, dtype=torch.float64, device=device)
    w = torch.linspace(0.5, 2.0, 7, dtype=torch.float64, device=device)
    out = vae_fast.bernoulli_nll(x, t, w, pos_weight=pw, reduction="none", backend=backend)
    ref = F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(out.sum(), x)
    (r,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_rows(backend):
    """The ROWS reduction (per-sample sums) with weights."""
    device = device_for(backend)
    x, t, w, pw = make((4, 3, 5), (5,), (3, 1), torch.float32, device)
    out = vae_fast.functional._bernoulli_nll(x, t, vae_fast.functional.PER_SAMPLE, backend, w, pw)
    ref = F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction="none").sum((1, 2))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_weight_gradient_refused_like_torch(backend, name):
    device = device_for(backend)
    x, t, _, _ = make((3, 4), None, None, torch.float32, device)
    wt = torch.rand(4, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        F.binary_cross_entropy_with_logits(x, t, **{name: wt})
    with pytest.raises(RuntimeError, match=f"{name}.*not differentiable"):
        vae_fast.bernoulli_nll(x, t, **{name: wt}, backend=backend)
    with torch.no_grad():  # no gradient asked: allowed, as in torch
        vae_fast.bernoulli_nll(x, t, **{name: wt}, backend=backend)


@pytest.mark.parametrize("backend", FUSED)
def test_op_refuses_weight_gradient(backend):
    """The op itself (not only the Python layer) refuses a weight that requires grad."""
    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    x = torch.randn(3, 4, device=device, requires_grad=True)
    t = torch.rand(3, 4, device=device)
    for kw in ({"weight": torch.rand(3, 4, device=device, requires_grad=True)},
               {"pos_weight": torch.rand(3, 4, device=device, requires_grad=True)}):
        with pytest.raises(RuntimeError, match="not differentiable with respect to"):
            ns.bernoulli_nll(x, t, SUM, 1.0, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_weight_shape_and_device(backend):
    device = device_for(backend)
    x, t, _, _ = make((3, 4), None, None, torch.float32, device)
    with pytest.raises(ValueError, match="weight: expected a shape broadcastable to \\(3, 4\\), got \\(3,\\)"):
        vae_fast.bernoulli_nll(x, t, torch.ones(3, device=device), backend=backend)
    with pytest.raises(ValueError, match="pos_weight: expected a shape broadcastable"):
        vae_fast.bernoulli_nll(x, t, pos_weight=torch.ones(5, device=device), backend=backend)
    with pytest.raises(TypeError, match="weight: expected a floating-point tensor"):
        vae_fast.bernoulli_nll(x, t, torch.ones(4, dtype=torch.int64, device=device), backend=backend)


@pytest.mark.parametrize("backend", FUSED)
def test_op_weights_opcheck(backend):
    device = need(backend)
    ns = getattr(torch.ops, NAMESPACE[backend])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g).to(device).requires_grad_()
    t = torch.rand(4, 6, generator=g).to(device).requires_grad_()
    w = torch.rand(6, generator=g).to(device).expand(4, 6)  # a stride-0 view, as functional passes
    pw = torch.rand(4, 6, generator=g).to(device)
    for red in (NONE, SUM, ROWS):
        for weight, pos_weight in ((w, None), (None, pw), (w, pw)):
            torch.library.opcheck(ns.bernoulli_nll.default, (x, t, red, 0.5, weight, pos_weight))
            grad = torch.randn((4, 6) if red == NONE else (4,) if red == ROWS else (), device=device)
            torch.library.opcheck(ns.bernoulli_nll_backward.default,
                                  (grad, x.detach(), t.detach(), red, 0.5, True, weight, pos_weight))


@pytest.mark.parametrize("backend", FUSED)
def test_unweighted_path_unchanged(backend):
    """weight=None, pos_weight=None: the same bits as before (the unweighted kernels); all-ones
    weights (the weighted kernels) agree to rounding."""
    device = need(backend)
    x, t, _, _ = make((6, 50), None, None, torch.float32, device)
    plain = vae_fast.bernoulli_nll(x, t, reduction="none", backend=backend)
    ones = vae_fast.bernoulli_nll(x, t, torch.ones(50, device=device), pos_weight=torch.ones((), device=device),
                                  reduction="none", backend=backend)
    torch.testing.assert_close(plain, ones, rtol=1e-6, atol=1e-6)
