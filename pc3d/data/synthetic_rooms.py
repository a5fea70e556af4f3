"""Embedded detection default: procedurally generated rooms with furniture and their 3D boxes (no download).

A room is a floor and four walls (``U[4, 8] × U[4, 8]`` m, 2.6 m high) holding 3–8 objects of
:data:`ROOM_CLASSES` — meshes of the synthetic-shapes generator (table, chair, lamp; a cuboid
cabinet, a cylindrical bin, an L-shaped sofa) stretched to real-world sizes, standing on the
floor at a random yaw, never overlapping in bird's-eye view. Points are sampled uniformly on all
surfaces (``density`` points per m², then Gaussian noise of 5 mm); each object's box is its
oriented extent, ``[cx, cy, cz, dx, dy, dz, yaw]`` (pc3d box contract). Scene ``i`` depends only
on ``(seed, i)``.

With ``colored=True`` every surface also gets a colour (a floor tone, a wall tone, one saturated
colour per object, each point jittered by 2 %), drawn from a separate random stream so that the
geometry, boxes and labels are those of the uncoloured room.
"""

from __future__ import annotations

import numpy as np

from pc3d.data.detection_scenes import DetectionScene
from pc3d.data.io import sample_mesh_surface
from pc3d.data.synthetic_shapes import _BUILDERS
from pc3d.errors import ConfigError

#: class → (mesh builder, size ranges (dx, dy, dz) in metres)
_ROOM_OBJECTS: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {
    "table": ("table", ((1.0, 1.8), (0.6, 1.0), (0.65, 0.8))),
    "chair": ("chair", ((0.45, 0.6), (0.45, 0.6), (0.8, 1.0))),
    "lamp": ("lamp", ((0.3, 0.5), (0.3, 0.5), (1.2, 1.7))),
    "cabinet": ("cuboid", ((0.5, 1.2), (0.4, 0.6), (0.8, 1.9))),
    "bin": ("cylinder", ((0.25, 0.45), (0.25, 0.45), (0.3, 0.6))),
    "sofa": ("l_shape", ((1.6, 2.2), (0.8, 1.0), (0.7, 0.9))),
}
ROOM_CLASSES: tuple[str, ...] = tuple(_ROOM_OBJECTS)
ROOM_HEIGHT = 2.6
NOISE_SIGMA = 0.005


def _object(name: str, rng: np.random.Generator, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(P, 3)`` in the object frame (bottom centre at the origin, yaw 0) and its sizes ``(3,)``."""
    builder, ranges = _ROOM_OBJECTS[name]
    vertices, faces = _BUILDERS[builder](rng)
    sizes = np.array([rng.uniform(lo, hi) for lo, hi in ranges])
    lo, hi = vertices.min(0), vertices.max(0)
    vertices = (vertices - (lo + hi) / 2) / (hi - lo) * sizes
    vertices[:, 2] += sizes[2] / 2
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    count = max(64, int(area * density))
    points = sample_mesh_surface(vertices, faces, count, seed=int(rng.integers(2 ** 63)))
    return points.astype(np.float64), sizes


def _plane(rng: np.random.Generator, origin: np.ndarray, u: np.ndarray, v: np.ndarray, density: float) -> np.ndarray:
    count = max(1, int(np.linalg.norm(u) * np.linalg.norm(v) * density))
    a, b = rng.random((count, 1)), rng.random((count, 1))
    return origin + a * u + b * v


def _surface_colors(rng: np.random.Generator, part_sizes: list[int], objects_from: int) -> np.ndarray:
    """``(N, 3)`` float32 colours in [0, 1]: part 0 the floor, parts ``1..objects_from-1`` the walls, then objects."""
    floor = rng.uniform([0.35, 0.22, 0.10], [0.65, 0.45, 0.30])  # wood to grey-brown
    wall = rng.uniform(0.7, 0.95) * (1.0 - rng.uniform(0.0, 0.15, 3))  # light, slightly tinted
    colors = []
    for part, size in enumerate(part_sizes):
        if part == 0:
            base = floor
        elif part < objects_from:
            base = wall
        else:  # a saturated colour of random hue
            hue, value = rng.uniform(0, 1), rng.uniform(0.5, 0.95)
            base = value * (1.0 - 0.7 * np.clip(np.abs((hue * 6 - np.array([3.0, 2.0, 4.0])) % 6 - 3) - 1, 0, 1))
        colors.append(base + rng.normal(0.0, 0.02, size=(size, 3)))
    return np.clip(np.concatenate(colors), 0.0, 1.0).astype(np.float32)


def generate_room(index: int, seed: int = 0, density: float = 400.0, max_objects: int = 8,
                  colored: bool = False) -> DetectionScene:
    """Room ``index`` of the generator seeded with ``seed``; ``points (N, 3)`` float32 (and ``colors (N, 3)``
    in [0, 1] with ``colored``)."""
    if density <= 0 or max_objects < 3:
        raise ConfigError(f"density must be > 0 and max_objects >= 3, got {density}, {max_objects}")
    rng = np.random.default_rng([seed, index])
    width, depth = rng.uniform(4.0, 8.0), rng.uniform(4.0, 8.0)
    parts = [_plane(rng, np.array([0.0, 0.0, 0.0]), np.array([width, 0, 0]), np.array([0, depth, 0]), density / 4)]
    for origin, along in (((0, 0, 0), (width, 0, 0)), ((0, depth, 0), (width, 0, 0)),
                          ((0, 0, 0), (0, depth, 0)), ((width, 0, 0), (0, depth, 0))):
        parts.append(_plane(rng, np.array(origin, float), np.array(along, float), np.array([0, 0, ROOM_HEIGHT]),
                            density / 8))
    boxes, labels, placed = [], [], []
    wanted = int(rng.integers(3, max_objects + 1))
    for _ in range(wanted * 20):  # rejection sampling of non-overlapping footprints
        if len(boxes) == wanted:
            break
        label = int(rng.integers(len(ROOM_CLASSES)))
        points, sizes = _object(ROOM_CLASSES[label], rng, density)
        radius = 0.5 * float(np.hypot(sizes[0], sizes[1]))
        if 2 * radius + 0.1 >= min(width, depth):
            continue
        centre = rng.uniform([radius + 0.05, radius + 0.05], [width - radius - 0.05, depth - radius - 0.05])
        if any(np.hypot(*(centre - c)) < radius + r + 0.05 for c, r in placed):
            continue
        yaw = float(rng.uniform(-np.pi, np.pi))
        c, s = np.cos(yaw), np.sin(yaw)
        xy = points[:, :2] @ np.array([[c, -s], [s, c]]).T + centre
        parts.append(np.column_stack([xy, points[:, 2]]))
        boxes.append([centre[0], centre[1], sizes[2] / 2, *sizes, yaw])
        labels.append(label)
        placed.append((centre, radius))
    points = np.concatenate(parts)
    points = points + rng.normal(0.0, NOISE_SIGMA, size=points.shape)
    colors = None
    if colored:
        colors = _surface_colors(np.random.default_rng([seed, index, 1]), [len(p) for p in parts],
                                 objects_from=len(parts) - len(boxes))
    return DetectionScene(name=f"room_{seed}_{index:05d}", points=points.astype(np.float32),
                          boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 7),
                          labels=np.asarray(labels, dtype=np.int64), class_names=ROOM_CLASSES, colors=colors)
