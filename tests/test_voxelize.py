"""pc3d.ops.voxelize: grid sampling against numpy and loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pc3d.ops.voxelize import voxel_mean, voxelize


def random_cloud(n=3000, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([4.0, 3.0, 2.5], dtype=dtype)
            - torch.tensor([1.7, -0.3, 5.0], dtype=dtype))


@pytest.mark.parametrize("voxel_size", [0.05, 0.2, 0.37])
def test_voxelize_matches_numpy(voxel_size):
    points = random_cloud()
    grid, inverse = voxelize(points, voxel_size)
    p = points.numpy()
    index = np.floor((p - p.min(0)) / voxel_size).astype(np.int64)
    expected, expected_inverse = np.unique(index, axis=0, return_inverse=True)  # lexicographic rows
    assert grid.dtype == torch.int64 and inverse.dtype == torch.int64
    np.testing.assert_array_equal(grid.numpy(), expected)
    np.testing.assert_array_equal(inverse.numpy(), expected_inverse.reshape(-1))
    assert int(grid.min()) == 0 and len(grid) < len(points)  # starts at 0 and really merges points


def test_inverse_maps_every_point_to_its_voxel():
    points = random_cloud(seed=1, dtype=torch.float32)
    size = 0.1
    grid, inverse = voxelize(points, size)
    origin = points.amin(0)
    low = origin + grid[inverse].to(points.dtype) * size
    eps = 1e-5
    assert torch.all(points >= low - eps) and torch.all(points < low + size + eps)
    assert torch.equal(torch.unique(inverse), torch.arange(len(grid)))  # every voxel holds a point
    assert len(torch.unique(grid, dim=0)) == len(grid)


def test_explicit_origin():
    points = torch.tensor([[0.05, 0.05, 0.05], [0.15, 0.05, 0.05], [0.95, 0.55, 0.05]], dtype=torch.float64)
    grid, inverse = voxelize(points, 0.1, origin=torch.tensor([0.0, 0.0, 0.0]))
    assert grid.tolist() == [[0, 0, 0], [1, 0, 0], [9, 5, 0]]
    assert inverse.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="origin"):
        voxelize(points, 0.1, origin=torch.tensor([0.5, 0.0, 0.0]))  # points below the origin


def test_voxel_mean_matches_loop():
    points = random_cloud(n=500, seed=2)
    values = torch.randn(500, 4, dtype=torch.float64)
    grid, inverse = voxelize(points, 0.5)
    mean = voxel_mean(values, inverse, len(grid))
    expected = torch.zeros(len(grid), 4, dtype=torch.float64)
    for v in range(len(grid)):
        expected[v] = values[inverse == v].mean(0)
    assert torch.allclose(mean, expected, atol=1e-12)
    counts = torch.bincount(inverse)
    assert counts.max() > 1  # the check averages several points per voxel


def test_voxel_mean_leaves_empty_voxels_at_zero():
    mean = voxel_mean(torch.tensor([[2.0], [4.0]]), torch.tensor([0, 0]), 3)
    assert mean.tolist() == [[3.0], [0.0], [0.0]]


def test_bad_inputs_raise():
    points = random_cloud(n=10)
    with pytest.raises(ValueError, match="non-empty"):
        voxelize(torch.zeros(0, 3), 0.1)
    with pytest.raises(ValueError, match="coord"):
        voxelize(torch.zeros(5, 2), 0.1)
    for size in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="voxel_size"):
            voxelize(points, size)
    wide = torch.tensor([[0.0, 0.0, 0.0], [70.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="65533"):
        voxelize(wide, 0.001)  # 70,000 voxels along x
    # exactly at the limit (binary-exact sizes): index 65532 (MAX_COORD) fits, 65533 does not
    grid, _ = voxelize(torch.tensor([[0.0, 0.0, 0.0], [0.0, 32766.25, 0.0]], dtype=torch.float64), 0.5)
    assert grid.tolist() == [[0, 0, 0], [0, 65532, 0]]
    with pytest.raises(ValueError, match="65533"):
        voxelize(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 32766.5]], dtype=torch.float64), 0.5)
