"""The embedded default dataset: procedurally generated object point clouds (no download).

Twelve classes, six primitives and six compositions of primitives::

    sphere, cuboid, cylinder, cone, torus, pyramid,
    table (top + 4 legs), chair (seat + back + 4 legs), lamp (base + stem + shade),
    dumbbell (2 spheres + bar), l_shape (2 boxes), ring_stack (2-4 stacked tori)

Every shape is built as a triangle mesh (z is up), so points are uniform on the
surface with parts weighted by their area. Per sample: random part proportions
(and for primitives their aspect ratios), a random anisotropic scale
``U[0.8, 1.25]`` per axis, a random rotation about z plus a small tilt (about 8°
standard deviation around a random horizontal axis), ``num_points`` surface samples,
unit-sphere normalisation, Gaussian noise (σ = 0.015 in unit-sphere units) and a
final unit-sphere normalisation.

Sample ``i`` of class ``c`` depends only on ``(seed, c, i)``: asking for more samples
per class keeps the first ones unchanged. Classes are meant to be separable but not
trivially (the cylinder/cuboid/cone, table/chair and torus/ring_stack pairs overlap in
coarse statistics once noise and anisotropic scale are applied).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from pc3d.data.io import sample_mesh_surface
from pc3d.data.prepared import load_object_cache, read_manifest, write_object_cache
from pc3d.data.transforms import normalize_unit_sphere
from pc3d.errors import ConfigError, DataFormatError

__all__ = ["SYNTHETIC_CLASSES", "GENERATOR_VERSION", "generate_synthetic_shapes",
           "prepare_synthetic_shapes"]

#: bump when shapes change so that existing caches are rebuilt
GENERATOR_VERSION = 1
NOISE_SIGMA = 0.015

Mesh = tuple[np.ndarray, np.ndarray]  # vertices (V, 3) float64, faces (F, 3) int64


# ---------------------------------------------------------------------------------------
# primitive meshes
# ---------------------------------------------------------------------------------------

_BOX_V = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
_BOX_F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                   [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


def _box(size: Any, center: Any = (0.0, 0.0, 0.0)) -> Mesh:
    return _BOX_V * np.asarray(size, float) + np.asarray(center, float), _BOX_F.copy()


def _grid_faces(rows: int, cols: int, wrap: bool) -> np.ndarray:
    """Quads of a (rows+1) x cols vertex grid, columns wrapping around."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    c1 = (c + 1) % cols if wrap else c + 1
    a = r * cols + c
    b = r * cols + c1
    d = (r + 1) * cols + c
    e = (r + 1) * cols + c1
    return np.concatenate([np.stack([a, b, e], -1).reshape(-1, 3),
                           np.stack([a, e, d], -1).reshape(-1, 3)])


def _revolve(profile_r: np.ndarray, profile_z: np.ndarray, segments: int = 24) -> Mesh:
    """Surface of revolution about z of a (r, z) polyline, closed with fans where r > 0 at the ends."""
    theta = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ct, st = np.cos(theta), np.sin(theta)
    rings = len(profile_r)
    v = np.stack([profile_r[:, None] * ct[None], profile_r[:, None] * st[None],
                  np.repeat(profile_z[:, None], segments, 1)], -1).reshape(-1, 3)
    faces = [_grid_faces(rings - 1, segments, wrap=True)]
    verts = [v]
    base = v.shape[0]
    for ring, z in ((0, profile_z[0]), (rings - 1, profile_z[-1])):
        if profile_r[ring] > 1e-9:
            verts.append(np.array([[0.0, 0.0, z]]))
            k = np.arange(segments)
            idx = ring * segments
            faces.append(np.stack([np.full(segments, base), idx + k, idx + (k + 1) % segments], -1))
            base += 1
    return np.concatenate(verts), np.concatenate(faces)


def _sphere(radius: float = 1.0, center: Any = (0, 0, 0), rings: int = 12) -> Mesh:
    phi = np.linspace(0.0, np.pi, rings + 1)
    v, f = _revolve(np.sin(phi) * radius, -np.cos(phi) * radius)
    return v + np.asarray(center, float), f


def _frustum(r_bottom: float, r_top: float, height: float, z0: float = 0.0,
             center_xy: Any = (0, 0)) -> Mesh:
    """Closed frustum from z0 to z0 + height (a cylinder if radii are equal, a cone if r_top=0)."""
    v, f = _revolve(np.array([r_bottom, r_top]), np.array([z0, z0 + height]))
    v[:, 0] += center_xy[0]
    v[:, 1] += center_xy[1]
    return v, f


def _torus(major: float, minor: float, z: float = 0.0, segments: int = 24, tube: int = 12) -> Mesh:
    u = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    w = np.linspace(0.0, 2 * np.pi, tube, endpoint=False)
    uu, ww = np.meshgrid(u, w, indexing="ij")
    rr = major + minor * np.cos(ww)
    v = np.stack([rr * np.cos(uu), rr * np.sin(uu), minor * np.sin(ww) + z], -1).reshape(-1, 3)
    iu, iw = np.meshgrid(np.arange(segments), np.arange(tube), indexing="ij")
    a = iu * tube + iw
    b = ((iu + 1) % segments) * tube + iw
    c = ((iu + 1) % segments) * tube + (iw + 1) % tube
    d = iu * tube + (iw + 1) % tube
    f = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return v, f


def _pyramid(side_x: float, side_y: float, height: float) -> Mesh:
    hx, hy = side_x / 2, side_y / 2
    v = np.array([[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0], [0, 0, height]], float)
    f = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    return v, f


def _merge(parts: list[Mesh]) -> Mesh:
    verts, faces, off = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + off)
        off += v.shape[0]
    return np.concatenate(verts), np.concatenate(faces)


def _legs(rng: np.random.Generator, half_w: float, half_d: float, height: float,
          thick: float) -> list[Mesh]:
    inset = rng.uniform(0.0, 0.15)
    lx, ly = half_w * (1 - inset) - thick / 2, half_d * (1 - inset) - thick / 2
    return [_box((thick, thick, height), (sx * lx, sy * ly, height / 2))
            for sx in (-1, 1) for sy in (-1, 1)]


# ---------------------------------------------------------------------------------------
# classes
# ---------------------------------------------------------------------------------------


def _c_sphere(rng: np.random.Generator) -> Mesh:
    return _sphere(1.0)


def _c_cuboid(rng: np.random.Generator) -> Mesh:
    return _box(rng.uniform(0.5, 1.5, size=3))


def _c_cylinder(rng: np.random.Generator) -> Mesh:
    return _frustum(1.0, 1.0, rng.uniform(0.8, 2.5))


def _c_cone(rng: np.random.Generator) -> Mesh:
    return _frustum(1.0, rng.uniform(0.0, 0.2), rng.uniform(1.0, 2.5))


def _c_torus(rng: np.random.Generator) -> Mesh:
    return _torus(1.0, rng.uniform(0.2, 0.45))


def _c_pyramid(rng: np.random.Generator) -> Mesh:
    return _pyramid(rng.uniform(1.0, 1.6), rng.uniform(1.0, 1.6), rng.uniform(0.8, 1.6))


def _c_table(rng: np.random.Generator) -> Mesh:
    w, d = rng.uniform(1.2, 2.0), rng.uniform(0.8, 1.4)
    t, h = rng.uniform(0.05, 0.12), rng.uniform(0.6, 1.0)
    leg = rng.uniform(0.06, 0.12)
    return _merge([_box((w, d, t), (0, 0, h - t / 2))] + _legs(rng, w / 2, d / 2, h - t, leg))


def _c_chair(rng: np.random.Generator) -> Mesh:
    w, d = rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1)
    t, h = rng.uniform(0.06, 0.12), rng.uniform(0.4, 0.6)
    back_h, back_t = rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.1)
    leg = rng.uniform(0.05, 0.1)
    seat = _box((w, d, t), (0, 0, h - t / 2))
    back = _box((w, back_t, back_h), (0, -d / 2 + back_t / 2, h + back_h / 2))
    return _merge([seat, back] + _legs(rng, w / 2, d / 2, h - t, leg))


def _c_lamp(rng: np.random.Generator) -> Mesh:
    base_r, base_h = rng.uniform(0.35, 0.6), rng.uniform(0.04, 0.1)
    stem_r, stem_h = rng.uniform(0.03, 0.07), rng.uniform(0.8, 1.4)
    shade_b, shade_t, shade_h = rng.uniform(0.4, 0.7), rng.uniform(0.15, 0.35), rng.uniform(0.3, 0.6)
    top = base_h + stem_h
    return _merge([_frustum(base_r, base_r, base_h), _frustum(stem_r, stem_r, stem_h, base_h),
                   _frustum(shade_b, shade_t, shade_h, top - shade_h * rng.uniform(0.3, 0.7))])


def _c_dumbbell(rng: np.random.Generator) -> Mesh:
    r1 = rng.uniform(0.3, 0.5)
    r2 = r1 * rng.uniform(0.85, 1.15)
    length = rng.uniform(1.2, 2.0)
    bar_r = rng.uniform(0.06, 0.12)
    bar = _frustum(bar_r, bar_r, length, -length / 2)
    bar = (bar[0][:, [2, 1, 0]], bar[1][:, [0, 2, 1]])  # lie along x
    return _merge([bar, _sphere(r1, (-length / 2, 0, 0)), _sphere(r2, (length / 2, 0, 0))])


def _c_l_shape(rng: np.random.Generator) -> Mesh:
    h, w = rng.uniform(1.0, 1.8), rng.uniform(0.8, 1.6)
    t1, t2, d = rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.8)
    upright = _box((t1, d, h), (t1 / 2, 0, h / 2))
    foot = _box((w, d, t2), (w / 2, 0, t2 / 2))
    return _merge([upright, foot])


def _c_ring_stack(rng: np.random.Generator) -> Mesh:
    count = int(rng.integers(2, 5))
    parts, z = [], 0.0
    for _ in range(count):
        major, minor = rng.uniform(0.6, 1.0), rng.uniform(0.12, 0.25)
        parts.append(_torus(major, minor, z + minor))
        z += 2 * minor * rng.uniform(0.9, 1.3)
    return _merge(parts)


_BUILDERS: dict[str, Callable[[np.random.Generator], Mesh]] = {
    "sphere": _c_sphere, "cuboid": _c_cuboid, "cylinder": _c_cylinder, "cone": _c_cone,
    "torus": _c_torus, "pyramid": _c_pyramid, "table": _c_table, "chair": _c_chair,
    "lamp": _c_lamp, "dumbbell": _c_dumbbell, "l_shape": _c_l_shape, "ring_stack": _c_ring_stack,
}
#: class names in label order
SYNTHETIC_CLASSES: tuple[str, ...] = tuple(_BUILDERS)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    yaw = rng.uniform(0.0, 2 * np.pi)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    tilt = rng.normal(0.0, np.deg2rad(8.0))
    axis_angle = rng.uniform(0.0, 2 * np.pi)
    k = np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0])
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rt = np.eye(3) + np.sin(tilt) * kx + (1 - np.cos(tilt)) * (kx @ kx)  # Rodrigues
    return rt @ rz


def _one_shape(class_index: int, sample_index: int, num_points: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, class_index, sample_index])
    vertices, faces = _BUILDERS[SYNTHETIC_CLASSES[class_index]](rng)
    vertices = vertices * rng.uniform(0.8, 1.25, size=3)
    vertices = vertices @ _rotation(rng).T
    pts = sample_mesh_surface(vertices, faces, num_points, seed=int(rng.integers(2 ** 63)))
    pts = normalize_unit_sphere(pts).astype(np.float64)
    pts += rng.normal(0.0, NOISE_SIGMA, size=pts.shape)
    return normalize_unit_sphere(pts)


def generate_synthetic_shapes(num_per_class: int, num_points: int = 1024,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generate ``num_per_class`` shapes of each class.

    Returns:
        ``(points (S, num_points, 3) float32, labels (S,) int64, class_names)`` with
        ``S = num_per_class * len(SYNTHETIC_CLASSES)``, ordered class by class; every
        cloud is unit-sphere normalised.
    """
    if num_per_class < 0:
        raise ConfigError(f"num_per_class must be >= 0, got {num_per_class}")
    if num_points < 1:
        raise ConfigError(f"num_points must be >= 1, got {num_points}")
    num_classes = len(SYNTHETIC_CLASSES)
    points = np.empty((num_classes * num_per_class, num_points, 3), dtype=np.float32)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), num_per_class)
    for c in range(num_classes):
        for i in range(num_per_class):
            points[c * num_per_class + i] = _one_shape(c, i, num_points, seed)
    return points, labels, list(SYNTHETIC_CLASSES)


def prepare_synthetic_shapes(dst: str | os.PathLike, *, train_per_class: int = 64,
                             test_per_class: int = 16, num_points: int = 1024,
                             seed: int = 0) -> dict[str, Any]:
    """Write the synthetic dataset as an object cache with ``train``/``test`` splits.

    Sample ``i`` of a class goes to ``train`` if ``i < train_per_class``, else to
    ``test``. If ``dst`` already holds a cache made with the same parameters (and
    generator version) it is returned untouched.

    Returns:
        The manifest.
    """
    if train_per_class < 1 or test_per_class < 0:
        raise ConfigError(f"need train_per_class >= 1 and test_per_class >= 0, got "
                          f"{train_per_class}, {test_per_class}")
    params = {"train_per_class": int(train_per_class), "test_per_class": int(test_per_class),
              "num_points": int(num_points), "seed": int(seed),
              "generator_version": GENERATOR_VERSION}
    if os.path.isfile(os.path.join(dst, "manifest.json")):
        try:
            old = read_manifest(dst)
            if old.get("producer") == __name__ and old.get("params") == params:
                load_object_cache(dst, mmap=True)
                return old
        except DataFormatError:
            pass
    per_class = train_per_class + test_per_class
    points, labels, class_names = generate_synthetic_shapes(per_class, num_points, seed)
    within = np.tile(np.arange(per_class), len(class_names))
    splits = np.where(within < train_per_class, "train", "test")
    names = [f"{class_names[lab]}_{i:04d}" for lab, i in zip(labels.tolist(), within.tolist())]
    extra = {"producer": __name__, "source": f"{__name__} (procedural, v{GENERATOR_VERSION})",
             "params": params, "splits": sorted(set(splits.tolist()))}
    return write_object_cache(dst, points, labels, splits, names, class_names, extra)
