"""Scan augmentations (MSM views): crop, rotation, elastic distortion, colour jitter."""

from __future__ import annotations

import numpy as np
import pytest

from pc3d.data.transforms import augment_scan, elastic_distortion, random_rotation, sphere_crop


def test_sphere_crop_keeps_the_nearest_points_of_a_random_centre():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 5, (2000, 3)).astype(np.float32)
    keep = sphere_crop(xyz, 300, np.random.default_rng(1))
    assert len(keep) == 300 and len(np.unique(keep)) == 300
    centre = xyz[np.random.default_rng(1).integers(len(xyz))]
    distance = np.linalg.norm(xyz - centre, axis=1)
    assert distance[keep].max() <= np.delete(distance, keep).min()
    np.testing.assert_array_equal(sphere_crop(xyz, 5000, rng), np.arange(2000))


def test_random_rotation_is_a_rotation_with_a_small_tilt():
    for seed in range(5):
        r = random_rotation(np.random.default_rng(seed))
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        assert r[2, 2] > np.cos(np.pi / 32) - 1e-9  # z stays within the two small tilts


def test_elastic_distortion_is_smooth_and_bounded():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 4, (5000, 3)).astype(np.float32)
    moved = elastic_distortion(xyz, np.random.default_rng(1), granularity=0.8, magnitude=1.6)
    shift = moved - xyz
    assert 0.01 < np.abs(shift).mean() < 1.6
    # nearby points move alike: shift differences grow with distance (a smooth field)
    near = np.linalg.norm(xyz[:-1] - xyz[1:], axis=1) < 0.05
    pairs = np.linalg.norm(shift[:-1] - shift[1:], axis=1)
    assert pairs[near].mean() < 0.25 * pairs[~near].mean() if near.any() else True
    np.testing.assert_array_equal(moved, elastic_distortion(xyz, np.random.default_rng(1), 0.8, 1.6))


def test_augment_scan_moves_normals_with_the_points():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 3, (3000, 2)), np.zeros(3000)].astype(np.float32)  # the floor, normal +z
    normal = np.tile(np.float32([0, 0, 1]), (3000, 1))
    color = np.full((3000, 3), 100 / 255, np.float32)  # colours in [0, 1]
    out_xyz, out_color, out_normal = augment_scan(xyz, color, normal, np.random.default_rng(2), elastic=())
    # the plane stays a plane (tilt ≤ π/32) and its normal follows: still orthogonal to the plane's spread
    centred = out_xyz - out_xyz.mean(0)
    plane_normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    assert abs(float(out_normal[0] @ plane_normal)) > 0.9999
    np.testing.assert_allclose(np.linalg.norm(out_normal, axis=1), 1.0, atol=1e-5)
    assert 0.5 < out_color.std() / 0.05 < 1.5 and out_color.min() >= 0 and out_color.max() <= 1
