"""Autograd for the fused ops of the Triton namespace (`vae_fast_triton`; the native `vae_fast` ops
have theirs in C++, csrc/autograd.cpp, with the same formulas), fakes for the native ones, and the
RNG state that the sampling ops take as input."""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from ._schemas import SCHEMAS
from . import _shapes
from ._shapes import FAKES

PHILOX_HIGH = 2 ** 62


def philox_state(device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """[seed, offset] drawn on `device` from its torch generator (or `generator`): no host sync."""
    return torch.randint(0, PHILOX_HIGH, (2,), dtype=torch.int64, device=device, generator=generator)


def _need(ctx, i: int) -> bool:
    return ctx.needs_input_grad[i]


def _autograd(ns):
    """(setup_context, backward) per forward op, calling ns's backward ops."""

    def setup_sampling(ctx, inputs, output):
        mu, logvar, philox, num_samples, *bounds = inputs
        ctx.save_for_backward(mu, logvar, philox)
        ctx.num_samples = num_samples
        ctx.bounds = (*bounds, None, None)[:2]  # logvar_min, logvar_max (absent: None)

    def setup_reparameterize(ctx, inputs, output):
        # the backward replays eps in mu's memory order but gets no mu: logvar goes in mu's layout
        # (a copy only when the two differ; csrc/autograd.cpp does the same)
        mu, logvar, *rest = inputs
        setup_sampling(ctx, (mu, logvar.contiguous(memory_format=_shapes.memory_format(mu)), *rest), output)

    def reparameterize_bwd(ctx, grad_z):
        _, logvar, philox = ctx.saved_tensors
        glv = ns.reparameterize_backward(grad_z, logvar, philox, ctx.num_samples, *ctx.bounds)
        gmu = grad_z[0] if ctx.num_samples == 1 else _shapes.sum_samples(grad_z, logvar)
        return gmu, glv, None, None, None, None

    def sample_and_kl_bwd(ctx, grad_z, grad_kl):
        mu, logvar, philox = ctx.saved_tensors
        if grad_z is None:
            grad_z = mu.new_zeros((ctx.num_samples, *mu.shape))
        if grad_kl is None:
            grad_kl = mu.new_zeros(mu.shape[:1])
        gmu, glv = ns.sample_and_kl_backward(grad_z, grad_kl, mu, logvar, philox, ctx.num_samples, *ctx.bounds)
        return gmu, glv, None, None, None, None

    def setup_kl(ctx, inputs, output):
        mu, logvar, pmu, plv, ctx.reduction, ctx.scale, _, *bounds = _pad(inputs, 9)  # _: out_dtype
        ctx.save_for_backward(mu, logvar, pmu, plv)
        ctx.bounds = (*bounds, None, None)[:2]

    def kl_bwd(ctx, grad):
        mu, logvar, pmu, plv = ctx.saved_tensors
        gmu, glv, gplv = ns.gaussian_kl_backward(grad.to(mu.dtype), mu, logvar, pmu, plv, ctx.reduction,
                                                 ctx.scale, *ctx.bounds)
        return (gmu, glv, -gmu if pmu is not None and _need(ctx, 2) else None,
                gplv if plv is not None else None, None, None, None, None, None)

    def setup_bce(ctx, inputs, output):
        logits, target, ctx.reduction, ctx.scale, weight, pos_weight, _ = _pad(inputs, 7)
        _no_grad_for("bernoulli_nll", ctx, 4, "weight", 5, "pos_weight")
        ctx.save_for_backward(logits, target, weight, pos_weight)

    def bce_bwd(ctx, grad):
        logits, target, weight, pos_weight = ctx.saved_tensors
        gl, gt = ns.bernoulli_nll_backward(grad.to(logits.dtype), logits, target, ctx.reduction, ctx.scale,
                                           _need(ctx, 1), weight, pos_weight)
        return gl, gt if _need(ctx, 1) else None, None, None, None, None, None

    def setup_gnll(ctx, inputs, output):
        mean, logvar, target, ctx.reduction, ctx.scale, _ = _pad(inputs, 6)
        ctx.save_for_backward(mean, logvar, target)

    def gnll_bwd(ctx, grad):
        mean, logvar, target = ctx.saved_tensors
        # grad.to: an out_dtype output (autocast: float32) has a gradient of its dtype; the backward
        # op takes the inputs' (a no-op otherwise)
        gm, glv = ns.gaussian_nll_backward(grad.to(mean.dtype), mean, logvar, target, ctx.reduction, ctx.scale)
        return gm, glv, -gm if _need(ctx, 2) else None, None, None, None

    return {
        "reparameterize": (setup_reparameterize, reparameterize_bwd),
        "sample_and_kl": (setup_sampling, sample_and_kl_bwd),
        "gaussian_kl": (setup_kl, kl_bwd),
        "bernoulli_nll": (setup_bce, bce_bwd),
        "gaussian_nll": (setup_gnll, gnll_bwd),
    }


def _pad(inputs, n):
    """The op's inputs with the trailing defaulted arguments that the caller left out (None)."""
    return tuple(inputs) + (None,) * (n - len(inputs))


def _no_grad_for(op, ctx, *index_names):
    """Like torch's binary_cross_entropy_with_logits: no gradient for weight / pos_weight; asking
    for one raises instead of silently returning None."""
    for i, name in zip(index_names[::2], index_names[1::2]):
        if len(ctx.needs_input_grad) > i and ctx.needs_input_grad[i]:
            raise RuntimeError(f"vae_fast::{op}: not differentiable with respect to {name!r} (as in torch's "
                               f"binary_cross_entropy_with_logits); it must not require grad")


def register(namespace: str, *, fakes: bool) -> None:
    """Autograd (and, for ops defined in C++, fake kernels) for every op of `namespace`."""
    ns = getattr(torch.ops, namespace)
    if fakes:
        for name in SCHEMAS:
            torch.library.register_fake(f"{namespace}::{name}", FAKES[name])
    from . import _autocast
    _autocast.register(namespace)
    if namespace == "vae_fast" and torch._C._dispatch_has_kernel_for_dispatch_key(
            "vae_fast::reparameterize", "Autograd"):
        return  # autograd in C++ (csrc/autograd.cpp): ~14 us per call cheaper than the Python one
    for name, (setup, backward) in _autograd(ns).items():
        torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)
    if namespace == "vae_fast_triton":
        _reject_forward_ad(namespace, [n for n in SCHEMAS if not n.endswith("_backward")], "triton")
    # The backward ops are not differentiable: differentiating their outputs (create_graph=True,
    # Hessian-vector products) raises a clear error rather than an internal one or a silent zero.
    backend = "triton" if namespace == "vae_fast_triton" else "cpu/cuda"
    for name in SCHEMAS:
        if name.endswith("_backward"):
            torch.library.register_autograd(f"{namespace}::{name}", _no_double_backward(name[:-9], backend),
                                            setup_context=lambda ctx, inputs, output: None)


_LIBS = []  # the Library objects holding the forward-AD checks (registrations live as long as they do)


def _reject_forward_ad(namespace: str, names, backend: str | None = None, info=None) -> None:
    """Forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) has no formula here: with
    no input requiring grad, torch's generated Autograd kernel of a custom op runs it below autograd
    and the outputs get no tangent, i.e. silent zeros. So each forward op's Autograd kernel checks
    the inputs' tangents first, and refuses torch.func's reverse transforms, whose error about
    setup_context would not say what to do (the C++ twins: check_no_forward_ad and
    check_no_functorch in csrc/autograd.cpp, same text). backend: the name in the message (None:
    the device type of the first input, as the native ops say). info: the (backward, setup_context)
    of an op defined in C++ (torch.library keeps no opdef for those)."""
    try:  # private torch API (torch 2.4 to 2.14 at least)
        from torch._library.autograd import make_autograd_impl
        from torch._library.custom_ops import _maybe_get_opdef
    except ImportError:  # pragma: no cover
        return
    lib = torch.library.Library(namespace, "IMPL")
    _LIBS.append(lib)
    op = getattr(torch.ops, namespace)
    for name in names:
        opdef = _maybe_get_opdef(f"{namespace}::{name}") or info  # the backward register_autograd set
        generated = make_autograd_impl(getattr(op, name).default, opdef)
        for key in ("AutogradCPU", "AutogradCUDA"):  # these take precedence over the "Autograd"
            # alias that register_autograd / triton_op used (torch < 2.14 refuses a second Python
            # kernel for one key)
            lib.impl(name, _forward_ad_checked(name, generated, backend), key, with_keyset=True)


def _forward_ad_checked(op: str, autograd_impl, backend: str | None):
    def kernel(keyset, *args, **kwargs):
        name = backend or args[0].device.type
        if fwAD._current_level >= 0:  # a dual level is open: one global read otherwise
            for a in args:
                if isinstance(a, torch.Tensor) and fwAD.unpack_dual(a).tangent is not None:
                    raise RuntimeError(f"vae_fast::{op}: forward-mode AD (torch.func.jvp, "
                                       f"torch.autograd.forward_ad) is not supported by backend "
                                       f"'{name}'; use backend='reference'")
        if torch._C._functorch.peek_interpreter_stack() is not None:  # torch.func.grad, vjp, jacrev
            raise RuntimeError(f"vae_fast::{op}: torch.func transforms (grad, vjp, jacrev, ...) are not "
                               f"supported by backend '{name}'; use backend='reference' or "
                               f"torch.autograd.grad")
        return autograd_impl(keyset, *args, **kwargs)
    return kernel


def _no_double_backward(op: str, backend: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"vae_fast::{op}: double backward (create_graph=True) is not supported by "
                           f"backend '{backend}'; use backend='reference'")
    return backward
