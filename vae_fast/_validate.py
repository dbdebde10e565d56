"""Input checks shared by every backend: one place, messages that name the argument,
the expected and the actual value. Backends never see unchecked input."""
from __future__ import annotations

import torch

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def floating(name: str, x) -> torch.Tensor:
    tensor(name, x)
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
