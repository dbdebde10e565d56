"""Input checks shared by every backend: one place, messages that name the argument,
the expected and the actual value. Backends never see unchecked input."""
from __future__ import annotations

import math
import numbers

import torch

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def floating(name: str, x) -> torch.Tensor:
    """A dense real floating tensor: sparse (COO, CSR, ...) and nested tensors have no kernel here,
    complex and integer dtypes no formula."""
    tensor(name, x)
    if x.is_nested:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got a nested tensor")
    if x.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {x.layout}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}"
        )


def same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise RuntimeError(f"{name_b}: expected a tensor on {a.device} like {name_a}, got {b.device}")


def broadcastable_to(name: str, x: torch.Tensor, shape: torch.Size) -> None:
    try:
        if torch.broadcast_shapes(x.shape, shape) == shape:
            return
    except RuntimeError:
        pass
    raise ValueError(f"{name}: expected a shape broadcastable to {tuple(shape)}, got {tuple(x.shape)}")


def reduction(value, allowed=REDUCTIONS) -> str:
    if value not in allowed:
        raise ValueError(f"reduction: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def at_least_1d(name: str, x: torch.Tensor) -> None:
    if x.dim() < 1:
        raise ValueError(f"{name}: expected at least 1 dimension (a batch), got a 0-d tensor")


def pair(name_a: str, a, name_b: str, b) -> None:
    """Two floating tensors of the same shape, dtype and device (mu and logvar, logits and target...)."""
    floating(name_a, a)
    floating(name_b, b)
    same_shape(name_a, a, name_b, b)
    same_device(name_a, a, name_b, b)


def prior(name: str, p, like_name: str, like: torch.Tensor) -> None:
    if p is None:
        return
    floating(name, p)
    same_device(like_name, like, name, p)
    broadcastable_to(name, p, like.shape)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


INDEX_MAX = 2 ** 63 - 1  # element counts and op int arguments are int64


def num_samples(value, per_sample: int) -> int:
    """A positive int such that the (num_samples, *mu.shape) output has an int64 element count."""
    positive_int("num_samples", value)
    limit = INDEX_MAX // max(per_sample, 1)
    if value > limit:
        raise ValueError(f"num_samples: expected at most {limit} (the output's element count, "
                         f"num_samples * {per_sample}, must fit in int64), got {value}")
    return value


def _real_number(name: str, value) -> float:
    """A finite real Python number (int, float, numpy scalar; not bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite real number (int or float), got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite real number, got {value}")
    return value


def non_negative(name: str, value) -> float:
    """A finite real number >= 0, as a float."""
    value = _real_number(name, value)
    if value < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value}")
    return value


def non_negative_or_tensor(name: str, value):
    """non_negative, or a 0-d real tensor (kept as is: its value is not read, which would cost a
    host-device synchronisation on a GPU and a graph break under torch.compile)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool or value.layout != torch.strided:
            raise TypeError(f"{name}: expected a finite real number or a 0-d real tensor, got a tensor of "
                            f"shape {tuple(value.shape)} and dtype {value.dtype}")
        return value
    return non_negative(name, value)
