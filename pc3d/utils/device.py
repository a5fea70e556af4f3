"""Moving nested batches to a device."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, runtime_checkable

import torch


@runtime_checkable
class Movable(Protocol):
    """A batch value that moves itself: tensors, ``SparseVoxels``, ``DenseGrid``."""

    def to(self, device: torch.device | str) -> Any: ...


def move_to(value: Any, device: torch.device | str, keep_on_cpu: tuple[str, ...] = ()) -> Any:
    """``value`` with every tensor in it on ``device``.

    Dicts, lists, tuples and dataclasses are walked; values that move themselves
    (:class:`Movable`) are moved; anything else (ints, strings, paths) is returned as it is.
    Dict entries named in ``keep_on_cpu`` are left alone (per-sample seeds draw masks on the CPU).
    """
    if isinstance(value, Mapping):
        return {k: v if k in keep_on_cpu else move_to(v, device, keep_on_cpu) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move_to(v, device, keep_on_cpu) for v in value)
    if isinstance(value, Movable) and not isinstance(value, type):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: move_to(getattr(value, f.name), device, keep_on_cpu)
                                             for f in dataclasses.fields(value) if f.init})
    return value
