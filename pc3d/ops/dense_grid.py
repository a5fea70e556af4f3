"""Dense 3D grids: the input of grid encoders (radiance grids, occupancy grids of point clouds)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pc3d.ops.voxelize import voxel_mean, voxelize


@dataclass
class DenseGrid:
    """A batch of dense grids.

    Attributes:
        values: ``(B, C, X, Y, Z)`` cell values.
        valid: ``(B, X, Y, Z)`` bool: cells inside each sample's own grid (False: padding up to
            the largest grid of the batch).
        origin: ``(B, 3)`` input-frame position of the corner of cell ``(0, 0, 0)``.
        cell_size: edge of one cell, in input units.
    """

    values: Tensor
    valid: Tensor
    origin: Tensor
    cell_size: float

    def __post_init__(self) -> None:
        if self.values.dim() != 5 or self.valid.shape != (self.values.shape[0], *self.values.shape[2:]):
            raise ValueError(f"DenseGrid: expected values (B, C, X, Y, Z) and valid (B, X, Y, Z), got "
                             f"{tuple(self.values.shape)} and {tuple(self.valid.shape)}")
        if self.origin.shape != (self.values.shape[0], 3):
            raise ValueError(f"DenseGrid: origin must be (B, 3), got {tuple(self.origin.shape)}")
        if not self.cell_size > 0:
            raise ValueError(f"DenseGrid: cell_size must be > 0, got {self.cell_size}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.values.shape[2:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "DenseGrid":
        return DenseGrid(self.values.to(device), self.valid.to(device), self.origin.to(device), self.cell_size)

    def pad_to(self, multiple: int) -> "DenseGrid":
        """Zero-pad every axis at the high end to a multiple of ``multiple`` (padding cells invalid)."""
        pads = [(-s) % multiple for s in self.shape]
        if not any(pads):
            return self
        spec = (0, pads[2], 0, pads[1], 0, pads[0])
        return DenseGrid(F.pad(self.values, spec), F.pad(self.valid, spec), self.origin, self.cell_size)


def points_to_grid(points: Tensor, features: Tensor, cell_size: float, origin: Tensor | None = None,
                   shape: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Scatter per-point features into a dense grid (mean per occupied cell, 0 elsewhere).

    Args:
        points: ``(N, 3)``.
        features: ``(N, C)``.
        origin: ``(3,)`` corner of cell ``(0, 0, 0)``; default ``points.min(0)``.
        shape: ``(X, Y, Z)``; default just large enough for every point.
    Returns:
        ``values (C, X, Y, Z)`` and the ``origin (3,)`` used.
    """
    origin = points.amin(dim=0) if origin is None else origin.to(points)
    cells, inverse = voxelize(points, cell_size, origin)
    if shape is None:
        shape = tuple(int(v) for v in cells.amax(dim=0) + 1)  # type: ignore[assignment]
    inside = (cells < torch.tensor(shape, device=cells.device)).all(dim=1)
    means = voxel_mean(features, inverse, len(cells))
    values = features.new_zeros(features.shape[1], *shape)
    cells, means = cells[inside], means[inside]
    values[:, cells[:, 0], cells[:, 1], cells[:, 2]] = means.T
    return values, origin

