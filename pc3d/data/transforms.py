"""Point-cloud transforms on numpy arrays (numpy in, float32 numpy out).

Randomness always comes from an explicit ``np.random.Generator`` so that datasets
can make every sample a pure function of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment_scene", "flip_scene", "flip_turn_grid", "normalize_unit_sphere", "random_pose", "random_subsample",
           "rotate_scene_quarter_turns", "rotate_scene_z", "scale_and_translate", "scale_scene", "yaw_rotation"]


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


def random_subsample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` points at random: without replacement if ``N >= n``, else with replacement.

    Args:
        points: ``(N, 3+C)`` points, xyz first (extra columns such as colours ride along), ``N >= 1``.
        n: number of points wanted.
        rng: source of randomness (the draw depends on ``N`` and ``n`` only).

    Returns:
        ``(n, 3+C)`` float32, in random order.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"expected points of shape (N, 3+C), got {tuple(points.shape)}")
    count = points.shape[0]
    if count == 0:
        raise ValueError("cannot subsample an empty point cloud")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    idx = rng.choice(count, size=n, replace=count < n)
    return np.ascontiguousarray(points[idx], dtype=np.float32)


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


# ---------------------------------------------------------------- scenes with boxes
# Points (N, 3+C) with xyz first; boxes (K, 7) [cx, cy, cz, dx, dy, dz, yaw] (pc3d/ops/boxes.py).
# Every transform moves points and boxes together, so each point stays inside the same boxes.


def flip_scene(points: np.ndarray, boxes: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mirror ``x`` (``axis=0``: yaw → π − yaw) or ``y`` (``axis=1``: yaw → −yaw)."""
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (x) or 1 (y), got {axis}")
    points, boxes = points.copy(), boxes.copy()
    points[:, axis] = -points[:, axis]
    boxes[:, axis] = -boxes[:, axis]
    boxes[:, 6] = (np.pi - boxes[:, 6]) if axis == 0 else -boxes[:, 6]
    return points, boxes


def rotate_scene_z(points: np.ndarray, boxes: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about +z by ``angle`` radians (counter-clockwise from above); yaw += angle."""
    rotation = _yaw_matrix(angle)[:2, :2]
    points, boxes = points.copy(), boxes.copy()
    points[:, :2] = (points[:, :2].astype(np.float64) @ rotation.T).astype(points.dtype)
    boxes[:, :2] = (boxes[:, :2].astype(np.float64) @ rotation.T).astype(boxes.dtype)
    boxes[:, 6] = boxes[:, 6] + angle
    return points, boxes


def scale_scene(points: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale xyz, box centres and sizes by ``factor`` > 0."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    points, boxes = points.copy(), boxes.copy()
    points[:, :3] *= factor
    boxes[:, :6] *= factor
    return points, boxes


def augment_scene(points: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *,
                  flip_axes: tuple[int, ...] = (0,), max_rotation: float = np.pi / 6,
                  scale_range: tuple[float, float] = (0.85, 1.15),
                  quarter_turns: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """VoteNet-style scene augmentation: each axis in ``flip_axes`` mirrored with p = 0.5, a rotation
    uniform in ±``max_rotation`` about z, a uniform scale in ``scale_range`` (defaults: its SUN RGB-D
    setting; ScanNet uses flips of x and y and ±π/36). ``quarter_turns`` (axis-aligned data) first
    turns the scene by a uniform 0 / 90 / 180 / 270° that keeps its boxes axis-aligned, so a model
    sees every orientation a rescan can have, not only VoteNet's ±5°."""
    for axis in flip_axes:
        if rng.random() < 0.5:
            points, boxes = flip_scene(points, boxes, axis)
    if quarter_turns:
        points, boxes = rotate_scene_quarter_turns(points, boxes, int(rng.integers(4)))
    points, boxes = rotate_scene_z(points, boxes, float(rng.uniform(-max_rotation, max_rotation)))
    return scale_scene(points, boxes, float(rng.uniform(*scale_range)))


# ----------------------------------------------------------------------------- scans with colour + normals


def sphere_crop(xyz: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``max_points`` points nearest a random point of the scan (all when fewer)."""
    if len(xyz) <= max_points:
        return np.arange(len(xyz))
    centre = xyz[rng.integers(len(xyz))]
    distance = ((xyz - centre) ** 2).sum(axis=1)
    return np.sort(np.argpartition(distance, max_points - 1)[:max_points])


def random_rotation(rng: np.random.Generator, max_tilt: float = float(np.pi / 64)) -> np.ndarray:
    """``(3, 3)``: uniform yaw about z, then tilts about x and y up to ``max_tilt``."""
    def rot(axis: int, angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    yaw = rot(2, rng.uniform(0.0, 2 * np.pi))
    return rot(0, rng.uniform(-max_tilt, max_tilt)) @ rot(1, rng.uniform(-max_tilt, max_tilt)) @ yaw


def random_pose(rng: np.random.Generator, scale_range: tuple[float, float] = (0.9, 1.1), flip: bool = True,
                max_tilt: float = float(np.pi / 64)) -> tuple[np.ndarray, float]:
    """A scan's random pose: ``rotation (3, 3)`` (:func:`random_rotation`, then an x mirror with p = 0.5
    when ``flip``) and a uniform ``scale`` in ``scale_range``; a point ``p`` goes to ``scale · rotation @ p``."""
    rotation = random_rotation(rng, max_tilt)
    if flip and rng.random() < 0.5:
        rotation = np.diag([-1.0, 1.0, 1.0]) @ rotation
    return rotation, float(rng.uniform(*scale_range))


def _yaw_matrix(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_rotation(degrees: float) -> np.ndarray:
    """``(3, 3)`` rotation about +z by ``degrees`` (counter-clockwise seen from above)."""
    return _yaw_matrix(np.deg2rad(degrees))


def rotate_scene_quarter_turns(points: np.ndarray, boxes: np.ndarray, turns: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about +z by ``turns · 90°`` keeping axis-aligned boxes axis-aligned: centres rotate, an odd
    number of turns swaps ``dx`` and ``dy``, yaw is unchanged (boxes ``(K, 7)`` of axis-aligned data)."""
    turns = int(turns) % 4
    points, boxes = points.copy(), boxes.copy()
    for _ in range(turns):  # exact: (x, y) → (−y, x), no trigonometry
        points[:, :2] = np.stack([-points[:, 1], points[:, 0]], axis=1)
        boxes[:, :2] = np.stack([-boxes[:, 1], boxes[:, 0]], axis=1)
        boxes[:, 3:5] = boxes[:, [4, 3]]
    return points, boxes


def flip_turn_grid(values: np.ndarray, box: np.ndarray, boxes: np.ndarray, flips: tuple[int, ...] = (),
                   turns: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror a grid scene along x and/or y (``flips``), then turn it by ``turns`` quarter turns about +z, about
    the centre of its lattice; the boxes move with it (the conventions of :func:`flip_scene` and
    :func:`rotate_scene_quarter_turns`). Exact: cells are only re-indexed.

    Args:
        values: ``(C, X, Y, Z)`` cell values.
        box: ``(2, 3)`` world ``(min, max)`` of the lattice; cells square in x and y when ``turns`` is odd.
        boxes: ``(K, 7)`` boxes in the world frame.

    Returns:
        ``values (C, X', Y', Z)`` contiguous (``X', Y'`` swapped on odd turns), the new ``box (2, 3)``
        float64 (the same centre) and ``boxes (K, 7)`` float32.
    """
    box = np.asarray(box, dtype=np.float64)
    centre, half = (box[0] + box[1]) / 2, (box[1] - box[0]) / 2
    moved = np.asarray(boxes, dtype=np.float64).reshape(-1, 7).copy()
    moved[:, :3] -= centre
    none = np.zeros((0, 3))
    for axis in flips:
        values = np.flip(values, axis + 1)
        _, moved = flip_scene(none, moved, axis)
    turns = int(turns) % 4
    if turns:
        values = np.rot90(values, turns, axes=(1, 2))  # cell (i, j) → (Y−1−j, i): (x, y) → (−y, x) about the centre
        _, moved = rotate_scene_quarter_turns(none, moved, turns)
        if turns % 2:
            half = half[[1, 0, 2]]
    moved[:, :3] += centre
    return np.ascontiguousarray(values), np.stack([centre - half, centre + half]), moved.astype(np.float32)


def elastic_distortion(xyz: np.ndarray, rng: np.random.Generator, granularity: float, magnitude: float) -> np.ndarray:
    """Smooth random displacement field (Pointcept/MinkowskiEngine's ``ElasticDistortion``).

    Gaussian noise on a grid of spacing ``granularity``, blurred three times along each axis,
    trilinearly interpolated at the points and scaled by ``magnitude``.
    """
    from scipy.interpolate import RegularGridInterpolator
    from scipy.ndimage import uniform_filter1d

    low = xyz.min(axis=0) - granularity * 2
    shape = ((xyz.max(axis=0) - low) // granularity).astype(int) + 3
    noise = rng.standard_normal((*shape, 3)).astype(np.float32)
    for _ in range(2):
        for axis in range(3):
            noise = uniform_filter1d(noise, size=3, axis=axis, mode="constant")
    axes = [low[i] + granularity * np.arange(shape[i]) for i in range(3)]
    field = RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0.0)
    return xyz + field(xyz).astype(xyz.dtype) * magnitude


def augment_scan(points: np.ndarray, colors: np.ndarray, normals: np.ndarray, rng: np.random.Generator, *,
                 scale_range: tuple[float, float] = (0.9, 1.1), flip: bool = True,
                 elastic: tuple[tuple[float, float], ...] = ((0.2, 0.4), (0.8, 1.6)),
                 color_jitter: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random view of a scan: rotation (yaw + small tilt), scale, x flip, elastic distortion,
    colour jitter — Pointcept's ScanNet training augmentations.

    Args:
        points: ``(N, 3)``; colors: ``(N, 3)`` in [0, 1]; normals: ``(N, 3)``.
        elastic: ``(granularity, magnitude)`` pairs applied in turn (metres), ``()`` for none.
        color_jitter: std of additive Gaussian colour noise (colours in [0, 1]).
    Returns:
        ``points, colors, normals`` of the view (normals rotated and flipped with the points).
    """
    rotation, scale = random_pose(rng, scale_range, flip)
    points = (points @ rotation.T * scale).astype(np.float32)
    normals = (normals @ rotation.T).astype(np.float32)
    for granularity, magnitude in elastic:
        points = elastic_distortion(points, rng, granularity, magnitude)
    colors = np.clip(colors + rng.normal(0.0, color_jitter, colors.shape), 0.0, 1.0).astype(np.float32)
    return points, colors, normals
