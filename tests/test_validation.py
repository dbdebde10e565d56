"""One error contract on every backend (issue 10): autograd modes the fused backends do not support
raise a clear error, and one validation layer in front of every backend rejects bad input with the
same message whatever the backend."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import vae_fast
from vae_fast._schemas import ROWS
from helpers import device_of, need

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
        ("log_density", lambda a, b, c, be: vae_fast.gaussian_log_prob(a, b, c, backend=be), (x, y, t)),
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
        if name in ("gaussian_kl", "bernoulli_nll", "gaussian_nll", "log_density"):  # deterministic: the reference's tangent
            _, tangent = torch.func.jvp(lambda *a: fn(*a, "reference"), args, tangents)
            ref = torch.autograd.functional.jvp(lambda *a: fn(*a, "reference"), args, tangents)[1]
            torch.testing.assert_close(tangent, ref)


@pytest.mark.parametrize("backend", FUSED)
def test_torch_func_reverse_transforms_are_a_clear_error_on_every_fused_backend(backend):
    """(issue 10.2) torch.func.grad / vjp / jacrev: csrc/autograd.cpp's text on every fused backend and
    every forward op (on Triton, and for log_density's Python autograd, torch said "must override the
    setup_context staticmethod"); the reference computes the gradient."""
    dev = need(backend)
    for name, fn, args in op_calls(dev):
        msg = (rf"vae_fast::{name}: torch.func transforms \(grad, vjp, jacrev, ...\) are not supported by "
               rf"backend '{backend}'; use backend='reference' or torch.autograd.grad")
        with pytest.raises(RuntimeError, match=msg):
            torch.func.grad(lambda a: fn(a, *args[1:], backend).sum())(args[0])
        with pytest.raises(RuntimeError, match=msg):
            torch.func.jacrev(lambda a: fn(a, *args[1:], backend))(args[0])
        if name != "reparameterize":  # deterministic: the reference's gradient is autograd's
            got = torch.func.grad(lambda a: fn(a, *args[1:], "reference").sum())(args[0])
            leaf = args[0].clone().requires_grad_()
            want, = torch.autograd.grad(fn(leaf, *args[1:], "reference").sum(), leaf)
            torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- the validation layer

def backends_here(device="cpu"):
    """The reference, then every fused backend that runs on `device`'s tensors here."""
    fused = [b for b in ("cpu", "cuda", "triton") if vae_fast.available_backends()[b].available
             and device_of(b).type == device]
    return ["reference", *fused]


def outcome(fn, backend):
    """("error", type, message) or ("ok", result) of fn(backend)."""
    try:
        return ("ok", fn(backend))
    except Exception as e:  # noqa: BLE001 - the exception is the outcome compared
        return ("error", type(e), str(e))


def test_bad_input_is_rejected_with_one_message_on_every_backend():
    """(issue 10) Each case: a TypeError/ValueError/RuntimeError naming the argument, the expected and
    the actual, identical from every backend (the layer runs before backend dispatch); before, an
    IndexError, a reshape error, an internal torch message, or accepted (NaN / negative beta)."""
    x = torch.randn(4, 3)
    e = torch.zeros(0, 3)
    cases = [  # (call, exception type, message regex)
        (lambda b: vae_fast.bernoulli_nll(x.to_sparse(), x, backend=b), TypeError,
         r"^logits: expected a dense \(strided\) tensor, got layout torch.sparse_coo$"),
        (lambda b: vae_fast.gaussian_kl(x, x.to_sparse_csr(), backend=b), TypeError,
         r"^logvar: expected a dense \(strided\) tensor, got layout torch.sparse_csr$"),
        (lambda b: vae_fast.gaussian_nll(x, torch.nested.nested_tensor([x, x]), x, backend=b), TypeError,
         r"^logvar: expected a dense \(strided\) tensor, got a nested tensor$"),
        (lambda b: vae_fast.reparameterize(x.to(torch.complex64), x, backend=b), TypeError,
         r"^mu: expected a floating-point tensor, got dtype torch.complex64$"),
        (lambda b: vae_fast.gaussian_nll(x, None, x, backend=b), TypeError,
         r"^logvar: expected a torch.Tensor, got NoneType$"),
        (lambda b: vae_fast.negative_elbo(torch.tensor(0.0), torch.tensor(0.0), x, x, backend=b), ValueError,
         r"^logits: expected at least 1 dimension \(a batch\), got a 0-d tensor$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, beta="1", backend=b), TypeError,
         r"^beta: expected a finite real number \(int or float\), got str$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, beta=None, backend=b), TypeError,
         r"^beta: expected a finite real number \(int or float\), got NoneType$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, beta=float("nan"), backend=b), ValueError,
         r"^beta: expected a finite real number, got nan$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, beta=-0.5, backend=b), ValueError,
         r"^beta: expected a number >= 0, got -0.5$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, beta=torch.ones(2), backend=b), TypeError,
         r"^beta: expected a finite real number or a 0-d real tensor, got a tensor of shape \(2,\)"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, free_bits="0.1", backend=b), TypeError,
         r"^free_bits: expected a finite real number \(int or float\), got str$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, free_bits=float("nan"), backend=b), ValueError,
         r"^free_bits: expected a finite real number, got nan$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, free_bits=-1, backend=b), ValueError,
         r"^free_bits: expected a number >= 0, got -1.0$"),
        (lambda b: vae_fast.negative_elbo(x, x, x, x, free_bits=float("inf"), backend=b), ValueError,
         r"^free_bits: expected a finite real number, got inf$"),
        (lambda b: vae_fast.reparameterize(x, x, num_samples=2 ** 63, backend=b), ValueError,
         r"^num_samples: expected at most 768614336404564650 \(the output's element count, "
         r"num_samples \* 12, must fit in int64\), got 9223372036854775808$"),
        (lambda b: vae_fast.sample_and_kl(e, e, num_samples=2 ** 64, backend=b), ValueError,
         r"^num_samples: expected at most 9223372036854775807 .* got 18446744073709551616$"),
        (lambda b: vae_fast.reparameterize(x, x, num_samples=2.0, backend=b), TypeError,
         r"^num_samples: expected an int, got float$"),
    ]
    for i, (call, exc, msg) in enumerate(cases):
        for backend in backends_here():
            with pytest.raises(exc, match=msg):
                call(backend)


def test_reference_on_empty_batches_behaves_like_the_fused_backends():
    """(issue 10) (0, k) inputs: the reference said "cannot reshape tensor of 0 elements"."""
    e2, e3 = torch.zeros(0, 3), torch.zeros(0, 2)
    calls = [
        lambda b: vae_fast.functional.bernoulli_nll_per_sample(e2, e2, backend=b),
        lambda b: vae_fast.functional.gaussian_nll_per_sample(e2, e2, e2, backend=b),
        lambda b: vae_fast.sample_and_kl(e2, e2, backend=b)[1],
        lambda b: vae_fast.negative_elbo(e2, e2, e3, e3, reduction="none", backend=b),
        lambda b: vae_fast.negative_elbo(e2, e2, e3, e3, reduction="sum", backend=b),
        lambda b: vae_fast.negative_elbo(e2, e2, e3, e3, reduction="sum", free_bits=0.5, backend=b),
        lambda b: vae_fast.negative_elbo(e2, e2, e3, e3, reduction="batchmean", backend=b),
    ]
    for call in calls:
        want = call("reference")
        for backend in backends_here():
            torch.testing.assert_close(call(backend), want, equal_nan=True)


def test_meta_tensors_give_shapes_on_every_backend_and_auto():
    """(issue 10) Meta tensors have no data: every backend, "auto" included, gives the result's shape
    and dtype (the reference's, the same as the fake kernels'); before, "auto" blamed the cpu backend
    and triton failed copying out of a meta tensor."""
    x = torch.zeros(4, 3, device="meta", dtype=torch.float16)
    y = torch.zeros(4, 3, device="meta")
    calls = [
        lambda b: vae_fast.bernoulli_nll(x, y, reduction="none", backend=b),
        lambda b: vae_fast.gaussian_kl(x, y, y[0], reduction="sum", backend=b),
        lambda b: vae_fast.reparameterize(x, x, num_samples=5, backend=b),
        lambda b: vae_fast.sample_and_kl(y, y, backend=b),
        lambda b: vae_fast.negative_elbo(x, x, y, y, reduction="none", backend=b),
    ]
    fused = [b for b in ("cpu", "cuda", "triton") if vae_fast.available_backends()[b].available]
    for call in calls:
        want = call("reference")
        for backend in ["auto", None, *fused]:
            got = call(backend)
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert (g.device.type, g.shape, g.dtype) == ("meta", w.shape, w.dtype)
    # the fake kernels the fused ops use under torch.compile agree with the reference's shapes
    for backend in fused:
        dev = device_of(backend)
        ns = vae_fast._backends.resolve(backend, dev)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            f = mode.from_tensor(torch.zeros(4, 3, device=dev))
            p = mode.from_tensor(torch.zeros(2, dtype=torch.int64, device=dev))
            assert ns.bernoulli_nll(f, f, ROWS, 1.0).shape == (4,)
            assert ns.reparameterize(f, f, p, 5).shape == (5, 4, 3)


# ---------------------------------------------------------------- property: one outcome on every backend

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BAD_DTYPES = (torch.int64, torch.complex64, torch.bool)
SAMPLING = ("reparameterize", "sample_and_kl")
OPS = ("bernoulli_nll", "gaussian_nll", "gaussian_kl", "negative_elbo", *SAMPLING,
       "bernoulli_nll_per_sample", "gaussian_nll_per_sample")
ARGS = {"bernoulli_nll": 2, "gaussian_nll": 3, "gaussian_kl": 4, "negative_elbo": 4, "reparameterize": 2,
        "sample_and_kl": 2, "bernoulli_nll_per_sample": 2, "gaussian_nll_per_sample": 3}
GOOD_SCALARS = (0, 1, 0.25, 2.5)
BAD_SCALARS = (-1.0, float("nan"), float("inf"), "1", None, True)


def mostly(good, bad):
    """A strategy drawing from `good` about 7 times in 8, else from `bad`."""
    return st.integers(0, 7).flatmap(lambda n: st.sampled_from(bad if n == 0 else good))


def corrupt(t, how):
    """One invalid variant of a valid tensor argument."""
    if how == "sparse":
        return t.to_sparse()
    if how == "nested":
        return torch.nested.nested_tensor([t.reshape(-1)], layout=torch.jagged)
    if how == "list":
        return t.tolist()
    if how in ("int64", "complex64", "bool"):
        return t.to(getattr(torch, how))
    if how == "meta":
        return t.to("meta")
    if how == "shape":
        return torch.cat([t, t], 0) if t.dim() else t.reshape(1)
    if how == "0d":
        return t.reshape(-1)[:1].reshape(()) if t.numel() else torch.zeros(())
    raise AssertionError(how)


@st.composite
def cases(draw, on):
    op = draw(st.sampled_from(OPS))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=draw(st.sampled_from((0, 1, 1, 1))), max_size=3)))
    dtype = draw(st.sampled_from(FLOATS))
    device = draw(st.sampled_from((on, on, on, "meta")))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=g).to(dtype) for _ in range(ARGS[op])]
    if op in ("bernoulli_nll", "bernoulli_nll_per_sample", "negative_elbo"):
        tensors[1] = torch.rand(shape, generator=g).to(dtype)  # targets in [0, 1]
    if op == "negative_elbo" and draw(st.booleans()) and shape:  # a latent of another width
        tensors[2:] = [torch.randn((shape[0], draw(st.integers(0, 3))), generator=g).to(dtype) for _ in range(2)]
    if draw(st.integers(0, 4)) == 0:  # mixed floating dtypes (type promotion)
        i = draw(st.integers(0, len(tensors) - 1))
        tensors[i] = tensors[i].to(draw(st.sampled_from(FLOATS)))
    if draw(st.integers(0, 3)) == 0 and len(shape) >= 2:  # non-contiguous
        tensors = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in tensors]
    if op in ("gaussian_kl", "gaussian_nll") and draw(st.booleans()) and shape:  # broadcast prior / logvar
        i = 1 if op == "gaussian_nll" else draw(st.sampled_from((2, 3)))
        small = tuple(1 if draw(st.booleans()) else d for d in shape[draw(st.integers(0, len(shape))):])
        tensors[i] = torch.randn(small, generator=g).to(tensors[i].dtype)
    if op == "gaussian_kl":
        for i in (2, 3):
            if draw(st.booleans()):
                tensors[i] = None
    tensors = [None if t is None else t.to(device) for t in tensors]
    how = draw(mostly((None,), ("sparse", "nested", "list", "int64", "complex64", "bool", "meta", "shape", "0d")))
    if how is not None:  # one argument made invalid (on the CPU: meta tensors have no data to convert)
        i = draw(st.sampled_from([i for i, t in enumerate(tensors) if t is not None]))
        tensors[i] = corrupt(torch.zeros(tensors[i].shape, dtype=tensors[i].dtype), how)
    kwargs = {}
    if op in ("bernoulli_nll", "gaussian_nll", "gaussian_kl", "negative_elbo"):
        kwargs["reduction"] = draw(mostly(("none", "sum", "mean", "batchmean"), ("avg", None, 1)))
    if op == "negative_elbo":
        kwargs["beta"] = draw(mostly(GOOD_SCALARS + (torch.tensor(0.5),), BAD_SCALARS + (torch.ones(2),)))
        kwargs["free_bits"] = draw(mostly(GOOD_SCALARS, BAD_SCALARS))
    if op in SAMPLING:
        kwargs["num_samples"] = draw(mostly((None, 1, 3), (0, -2, 2 ** 63, 1.5, True)))
    return op, tensors, kwargs


def call(op, tensors, kwargs, backend):
    with warnings.catch_warnings():  # prototype nested / beta sparse tensors warn when made and used
        warnings.simplefilter("ignore")
        return getattr(vae_fast.functional, op)(*tensors, **kwargs, backend=backend)


TOLS = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def assert_same(op, got, want, backend, tol):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g.shape, g.dtype, g.device) == (w.shape, w.dtype, w.device), (backend, i)
        if g.device.type == "meta" or (op in SAMPLING and i == 0):
            continue  # no data / samples from another RNG (docs/rng.md): shapes only
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * max(1.0, w.numel()), equal_nan=True,
                                   msg=f"{op} on {backend}")


def same_outcome(case, device):
    op, tensors, kwargs = case
    want = outcome(lambda b: call(op, tensors, kwargs, b), "reference")
    for backend in backends_here(device)[1:]:
        got = outcome(lambda b: call(op, tensors, kwargs, b), backend)
        assert got[0] == want[0], (backend, got, want)
        if want[0] == "error":
            assert got[1:] == want[1:], backend
        else:
            # the least precise input sets the tolerance (negative_elbo adds terms of two dtypes)
            tol = max(TOLS[t.dtype] for t in tensors if isinstance(t, torch.Tensor))
            assert_same(op, got[1], want[1], backend, tol)


SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(hypothesis.HealthCheck))


@hypothesis.settings(max_examples=300, **SETTINGS)
@hypothesis.given(cases("cpu"))
def test_every_backend_gives_the_same_outcome_on_cpu_tensors(case):
    """Random valid and invalid input (shapes incl. empty, dtypes incl. mixed and invalid, layouts,
    meta, broadcast priors, reductions, scalars) through every backend here: the same exception type
    and message as the reference, or the same result (values; shapes for samples and meta tensors)."""
    if len(backends_here("cpu")) < 2:
        pytest.skip("no fused backend runs on CPU tensors here (vae_fast._C not built, Triton not interpreted)")
    same_outcome(case, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CPU test covers the rest")
@hypothesis.settings(max_examples=50, **SETTINGS)  # each may compile new Triton specialisations
@hypothesis.given(cases("cuda"))
def test_every_backend_gives_the_same_outcome_on_cuda_tensors(case):
    same_outcome(case, "cuda")


# ---------------------------------------------------------------- torch.compile

COMPILE_ONCE = r"""
import json, sys, torch, vae_fast
from torch._dynamo.utils import counters
from vae_fast.models import VAE, FusedOps
torch._dynamo.config.error_on_recompile = True
device, compile_backend = sys.argv[1], sys.argv[2]
graphs = {}
STEP = '''
def step(x):
    loss, rec, kl = model(x)
    return loss.mean() + vae_fast.negative_elbo(x, x.sigmoid(), x[:, :4], x[:, 4:8], backend=backend)
'''
for backend in json.loads(sys.argv[3]):
    torch.manual_seed(0)
    model = VAE(in_dim=16, hidden=8, latent=4, ops=FusedOps(backend or "auto")).to(device)
    x = torch.rand(4, 16, device=device)

    torch._dynamo.reset_code_caches()  # torch 2.11 guards a wrapper of the backward on the step's code
    scope = dict(model=model, vae_fast=vae_fast, backend=backend)
    exec(compile(STEP, f"<step {backend}>", "exec"), scope)  # a new code object: dynamo caches per code object
    step = scope["step"]

    before = counters["stats"]["unique_graphs"]
    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    for _ in range(3):
        compiled(x).backward()
    graphs[str(backend)] = counters["stats"]["unique_graphs"] - before
print(json.dumps(graphs))
"""


def test_compiling_a_step_compiles_once_in_a_fresh_process():
    """(issue 10) A cold backend cache, in a fresh process, for the default (None, from
    $VAE_FAST_BACKEND), "auto", and every backend here: one graph per compiled step, no recompilation
    on the next calls (error_on_recompile). Before the constant-result mark on the cache: two."""
    import json
    import os
    import subprocess
    import sys

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    fused = [b for b in backends_here(dev)[1:]]
    env = dict(os.environ, VAE_FAST_BACKEND=fused[0] if fused else "reference")
    backends = [None, "auto", "reference", *fused]
    compile_backend = "inductor" if dev == "cuda" else "aot_eager"
    r = subprocess.run([sys.executable, "-c", COMPILE_ONCE, dev, compile_backend, json.dumps(backends)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {str(b): 1 for b in backends}


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda"])
def test_generator_under_torch_compile_breaks_the_graph_with_the_workaround(backend):
    """(issue 10) generator= cannot be traced: without fullgraph the draw runs eagerly (same samples
    as eager), with fullgraph=True the error names the workaround (before: dynamo's "Failed to
    convert args/kwargs to proxy")."""
    dev = torch.device("cpu") if backend == "reference" else need(backend)
    torch._dynamo.reset()
    g = torch.Generator(dev)
    x = torch.randn(4, 3, device=dev)

    def draw(x):
        return vae_fast.reparameterize(x, x, generator=g, backend=backend) * 2

    def draw_full(x):
        return vae_fast.sample_and_kl(x, x, generator=g, backend=backend)[0] * 2

    g.manual_seed(3)
    compiled = torch.compile(draw, backend="aot_eager")(x)
    g.manual_seed(3)
    torch.testing.assert_close(compiled, draw(x), rtol=0, atol=0)
    with pytest.raises(Exception, match=r"generator=: torch.compile cannot trace a torch.Generator.*"
                                        r"call the function outside the compiled region, or seed the global RNG"):
        torch.compile(draw_full, fullgraph=True, backend="aot_eager")(x)


def test_use_backend_inside_and_around_a_compiled_function():
    """(issue 10) use_backend inside a compiled function works under fullgraph=True; around one, the
    compiled code follows the backend of each call (a guard, not a baked-in first choice)."""
    torch._dynamo.reset()
    x = torch.randn(4, 3)
    t = torch.rand(4, 3)
    want = vae_fast.bernoulli_nll(x, t, backend="reference")

    def inside(x):
        with vae_fast.use_backend("reference"):
            return vae_fast.bernoulli_nll(x, t)

    torch.testing.assert_close(torch.compile(inside, fullgraph=True, backend="aot_eager")(x), want)

    def around(x):
        return vae_fast.bernoulli_nll(x, t)

    compiled = torch.compile(around, fullgraph=True, backend="aot_eager")
    with vae_fast.use_backend("reference"):
        torch.testing.assert_close(compiled(x), want)
    # a backend that cannot run CPU tensors: the compiled code must not reuse the reference's graph
    with vae_fast.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda'"):
        compiled(x)
