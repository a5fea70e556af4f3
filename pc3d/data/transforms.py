"""Point-cloud transforms on numpy arrays (numpy in, float32 numpy out).

Randomness always comes from an explicit ``np.random.Generator`` so that datasets
can make every sample a pure function of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_unit_sphere", "random_subsample", "scale_and_translate"]


def _check_xyz(xyz: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {tuple(xyz.shape)}")
    return xyz


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point has norm 1 (Point-MAE ``pc_normalize``).

    Args:
        xyz: ``(N, 3)`` points, ``N >= 1``.

    Returns:
        ``(N, 3)`` float32. If all points coincide the centred (all-zero) cloud is
        returned unscaled.
    """
    xyz = _check_xyz(xyz).astype(np.float64)
    if xyz.shape[0] == 0:
        raise ValueError("cannot normalise an empty point cloud")
    centred = xyz - xyz.mean(axis=0, keepdims=True)
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    if radius > 0.0:
        centred /= radius
    return centred.astype(np.float32)


def random_subsample(xyz: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` points at random: without replacement if ``N >= n``, else with replacement.

    Args:
        xyz: ``(N, 3)`` points (``N >= 1``).
        n: number of points wanted.
        rng: source of randomness.

    Returns:
        ``(n, 3)`` float32, in random order.
    """
    xyz = _check_xyz(xyz)
    count = xyz.shape[0]
    if count == 0:
        raise ValueError("cannot subsample an empty point cloud")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    idx = rng.choice(count, size=n, replace=count < n)
    return np.ascontiguousarray(xyz[idx], dtype=np.float32)


def scale_and_translate(xyz: np.ndarray, rng: np.random.Generator, scale_low: float = 2.0 / 3.0,
                        scale_high: float = 3.0 / 2.0, translate_range: float = 0.2) -> np.ndarray:
    """Random per-axis scale ``U[scale_low, scale_high]`` then per-axis shift ``U[-r, r]``.

    The augmentation of Point-MAE's ``PointcloudScaleAndTranslate``.

    Args:
        xyz: ``(N, 3)`` points.
        rng: source of randomness (draws 3 scales then 3 shifts).

    Returns:
        ``(N, 3)`` float32.
    """
    xyz = _check_xyz(xyz)
    scale = rng.uniform(scale_low, scale_high, size=3)
    shift = rng.uniform(-translate_range, translate_range, size=3)
    return (xyz.astype(np.float64) * scale + shift).astype(np.float32)
