"""Input validation shared by the ops: one message format, naming argument and shapes."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def without_autocast(fn: F) -> F:
    """Run a geometry op in the dtypes it is given, also inside ``torch.autocast``.

    Under bf16 autocast a distance matmul would round coordinates to 8 bits of mantissa
    and pick wrong neighbours; the ops' own precision handling assumes their input dtype.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_points(name: str, tensor: object) -> torch.Tensor:
    """Require a floating ``(B, N, 3)`` tensor; raise ``ValueError`` naming ``name``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape (B, N, 3), got {type(tensor).__name__}")
    if tensor.dim() != 3 or tensor.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (B, N, 3), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor


def check_pair(query_name: str, query: torch.Tensor, points_name: str, points: torch.Tensor) -> None:
    """Require two ``(B, *, 3)`` tensors with the same batch size, dtype and device."""
    check_points(query_name, query)
    check_points(points_name, points)
    if query.shape[0] != points.shape[0]:
        raise ValueError(f"{query_name} {tuple(query.shape)} and {points_name} {tuple(points.shape)}: "
                         "batch sizes differ")
    if query.dtype != points.dtype or query.device != points.device:
        raise ValueError(f"{query_name} ({query.dtype}, {query.device}) and {points_name} "
                         f"({points.dtype}, {points.device}): dtype/device differ")


def check_count(name: str, value: int, tensor_name: str, tensor: torch.Tensor) -> int:
    """Require an ``int`` with ``1 <= value <= N`` where ``tensor`` is ``(B, N, 3)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    n = tensor.shape[1]
    if value < 1 or value > n:
        raise ValueError(f"{name}={value}: must be in [1, N] where N={n} is the number of points "
                         f"of {tensor_name} with shape {tuple(tensor.shape)}")
    return value
