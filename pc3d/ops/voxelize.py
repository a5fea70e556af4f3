"""Grid sampling of point clouds: points → occupied voxels, with the inverse map back to every point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pc3d.ops.sparse_conv import COORD_BITS, MAX_COORD, voxel_keys


def voxelize(coord: Tensor, voxel_size: float, origin: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Occupied voxels of a point cloud.

    Args:
        coord: ``(N, 3)`` float positions.
        voxel_size: edge length, in the units of ``coord``.
        origin: ``(3,)`` grid origin; default ``coord.min(0)``, so voxel indices start at 0.
    Returns:
        ``grid (V, 3)`` int64 voxel indices sorted lexicographically (x, y, z), and
        ``inverse (N,)`` int64: the voxel of every point (``grid[inverse]``).
    Raises:
        ValueError: empty input, non-positive voxel size, or a cloud wider than
            ``MAX_COORD + 1`` voxels.
    """
    if coord.dim() != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise ValueError(f"coord: expected a non-empty (N, 3) tensor, got {tuple(coord.shape)}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size: expected > 0, got {voxel_size}")
    origin = coord.amin(dim=0) if origin is None else origin.to(coord)
    index = torch.floor((coord - origin) / voxel_size).to(torch.int64)
    if int(index.min()) < 0 or int(index.max()) > MAX_COORD:
        raise ValueError(f"voxelize: the cloud spans {int(index.max()) + 1} voxels of {voxel_size} along an axis "
                         f"(or lies below the origin); at most {MAX_COORD + 1} are supported")
    # batch 0 keeps the key layout of voxel_keys: x, y, z in the low three 16-bit fields
    unique_keys, inverse = torch.unique(voxel_keys(F.pad(index, (1, 0))), return_inverse=True)
    mask = (1 << COORD_BITS) - 1
    grid = torch.stack([unique_keys >> (2 * COORD_BITS), (unique_keys >> COORD_BITS) & mask, unique_keys & mask], 1)
    return grid, inverse


def voxel_mean(values: Tensor, inverse: Tensor, num_voxels: int) -> Tensor:
    """Mean of ``values (N, C)`` per voxel → ``(V, C)`` (``inverse`` from :func:`voxelize`)."""
    total = values.new_zeros(num_voxels, values.shape[1]).index_add_(0, inverse, values)
    count = torch.bincount(inverse, minlength=num_voxels).clamp_min(1).to(values.dtype)
    return total / count[:, None]


def voxelize_points(points: Tensor, features: Tensor, voxel_size: float) -> dict[str, Tensor]:
    """One cloud as voxels from its minimum corner, with the mean features of their points.

    Args:
        points: ``(N, 3)``; features: ``(N, C)``.
    Returns:
        ``{"coords": (V, 3) int32, "features": (V, C), "point_voxel": (N,) int64, "origin": (3,)}``
        (``point_voxel``: the voxel of every point; ``origin``: where voxel ``(0, 0, 0)``'s corner is).
    """
    origin = points.amin(dim=0)
    grid, inverse = voxelize(points, voxel_size, origin)
    return {"coords": grid.to(torch.int32), "features": voxel_mean(features, inverse, len(grid)),
            "point_voxel": inverse, "origin": origin}
