"""Surface normals of point clouds (PCA over k nearest neighbours) and of triangle meshes.

:func:`estimate_normals` fits a plane to the ``k`` nearest neighbours of every point
(the point itself included) and takes the eigenvector of the smallest eigenvalue of
their covariance. Backends:

========= ============================================================ ================
backend   how                                                          used by "auto"
========= ============================================================ ================
torch     :func:`pc3d.ops.knn` on query chunks + ``torch.linalg.eigh``  open3d missing
open3d    ``PointCloud.estimate_normals(KDTreeSearchParamKNN(k))``      when importable
========= ============================================================ ================

The inputs are CPU arrays (data preparation), so the torch path asks :func:`pc3d.ops.knn`
for its ``scipy`` backend (an exact cKDTree search; scipy is a dependency) unless
``knn_backend`` says otherwise: the pure-torch brute-force search costs O(N²) — about 30 s
for an 80k-point scan on one CPU thread, hours for a million-point S3DIS room — and gives
the same neighbours. Either way both backends take well under a second per 80k points.

**Orientation.** A PCA normal has no sign. Both backends' raw outputs are flipped by
the same rule, :func:`orient_normals`: a normal points towards the *viewpoint*, by
default ``(x_c, y_c, z_min + 0.9 (z_max - z_min))`` — above the centre of the cloud's
bounding box, just below its top. For an indoor scan (z up) that is a point inside the
room under the ceiling, so walls face inward, floors, table and bed tops face up and
ceilings face down. (On the two shared ScanNet scans: 100% of floor and table-top
normals up, 99.8% of wall normals inward.) Mesh normals (:func:`mesh_vertex_normals`)
keep the orientation of the face winding instead.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import numpy as np
import torch

from pc3d.errors import ConfigError
from pc3d.ops.backends import is_installed

__all__ = ["NORMAL_BACKENDS", "estimate_normals", "orient_normals", "default_viewpoint", "mesh_vertex_normals"]

NORMAL_BACKENDS = ("auto", "torch", "open3d")
#: viewpoint height as a fraction of the bounding box height (see the module docstring)
VIEWPOINT_HEIGHT = 0.9


def _check_coord(coord: np.ndarray) -> np.ndarray:
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3 or coord.dtype.kind != "f":
        raise ValueError(f"coord: expected a float array of shape (N, 3), got {coord.shape} {coord.dtype}")
    if not np.isfinite(coord).all():
        raise ValueError("coord: contains NaN/inf")
    return coord.astype(np.float64)


def default_viewpoint(coord: np.ndarray) -> np.ndarray:
    """``(3,)`` float64: above the bounding-box centre of ``coord (N, 3)`` at 90% of its height."""
    lo, hi = coord.min(axis=0).astype(np.float64), coord.max(axis=0).astype(np.float64)
    return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] + VIEWPOINT_HEIGHT * (hi[2] - lo[2])])


def orient_normals(coord: np.ndarray, normals: np.ndarray,
                   viewpoint: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Flip each normal that points away from ``viewpoint``.

    Args:
        coord: ``(N, 3)`` points.
        normals: ``(N, 3)`` unit normals of any sign.
        viewpoint: ``(3,)``; default :func:`default_viewpoint` of ``coord``.

    Returns:
        ``(N, 3)`` float32 normals with ``dot(n, viewpoint - p) >= 0``.
    """
    coord = _check_coord(coord)
    view = default_viewpoint(coord) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64).reshape(3)
    normals = np.asarray(normals, dtype=np.float64)
    away = np.einsum("nc,nc->n", normals, view - coord) < 0
    normals = np.where(away[:, None], -normals, normals)
    return normals.astype(np.float32)


def _pca_torch(coord: np.ndarray, k: int, chunk: int, knn_backend: str) -> np.ndarray:
    from pc3d.ops.neighbors import knn

    points = torch.from_numpy(coord.astype(np.float32))[None]
    full = torch.from_numpy(coord)
    out = np.empty_like(coord)
    for start in range(0, coord.shape[0], chunk):
        _, idx = knn(points[:, start:start + chunk], points, k, knn_backend)  # (1, M, k)
        nbrs = full[idx[0]]  # (M, k, 3) float64
        centred = nbrs - nbrs.mean(dim=1, keepdim=True)
        cov = centred.transpose(1, 2) @ centred  # (M, 3, 3)
        _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
        normal = vectors[:, :, 0]
        flat = cov.diagonal(dim1=1, dim2=2).sum(dim=1) == 0  # all neighbours coincide
        normal[flat] = torch.tensor([0.0, 0.0, 1.0], dtype=normal.dtype)  # what open3d returns there
        out[start:start + chunk] = normal.numpy()
    return out


def _pca_open3d(coord: np.ndarray, k: int) -> np.ndarray:
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(k))
    return np.asarray(cloud.normals, dtype=np.float64)


def _resolve(backend: str) -> str:
    if backend not in NORMAL_BACKENDS:
        raise ConfigError(f"normals backend {backend!r}: expected one of {', '.join(NORMAL_BACKENDS)}")
    has_open3d = importlib.util.find_spec("open3d") is not None
    if backend == "open3d" and not has_open3d:
        raise ConfigError("normals backend 'open3d' is not installed (pip install open3d-cpu, or use backend=torch)")
    if backend == "auto":
        return "open3d" if has_open3d else "torch"
    return backend


def estimate_normals(coord: np.ndarray, k: int = 16, backend: str = "auto", *,
                     viewpoint: Sequence[float] | np.ndarray | None = None, knn_backend: str | None = None,
                     chunk: int = 65536) -> np.ndarray:
    """PCA normals over the ``k`` nearest neighbours, oriented by :func:`orient_normals`.

    Args:
        coord: ``(N, 3)`` float points (metres for indoor scans; z up for the default viewpoint).
        k: neighbours per point, the point itself included (clipped to ``N``).
        backend: ``"auto"`` (open3d when importable, else torch), ``"torch"`` or ``"open3d"``.
        viewpoint: ``(3,)`` point the normals face; default :func:`default_viewpoint`.
        knn_backend: the :func:`pc3d.ops.knn` backend of the torch path; default ``"scipy"``
            (``"auto"`` if scipy is missing).
        chunk: queries per kNN call of the torch path (bounds its memory).

    Returns:
        ``(N, 3)`` float32 unit normals. A point whose neighbours all coincide gets
        ``(0, 0, ±1)`` (what open3d returns there).
    """
    coord = _check_coord(coord)
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    if coord.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.float32)
    k = min(int(k), coord.shape[0])
    if _resolve(backend) == "open3d":
        raw = _pca_open3d(coord, k)
    else:
        raw = _pca_torch(coord, k, chunk, knn_backend or ("scipy" if is_installed("scipy") else "auto"))
    length = np.linalg.norm(raw, axis=1, keepdims=True)
    raw = np.where(length > 0, raw / np.where(length > 0, length, 1.0), [0.0, 0.0, 1.0])
    return orient_normals(coord, raw, viewpoint)


def mesh_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a triangle mesh, oriented by the face winding.

    Each vertex gets the normalised sum of the (counter-clockwise) cross products of its
    faces, whose length is twice the face area.

    Args:
        vertices: ``(V, 3)`` float coordinates.
        faces: ``(F, 3)`` integer vertex indices in ``[0, V)``.

    Returns:
        ``(V, 3)`` float32; unit length, except zero rows for vertices that belong to no
        face of positive area.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or (faces.size and faces.dtype.kind not in "iu"):
        raise ValueError(f"faces: expected integer indices of shape (F, 3), got {faces.shape} {faces.dtype}")
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise ValueError(f"faces: vertex index out of range [0, {vertices.shape[0]})")
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    cross = np.cross(b - a, c - a)
    corner = faces.reshape(-1)  # the three corners of every face share its cross product
    normals = np.stack([np.bincount(corner, weights=np.repeat(cross[:, c], 3), minlength=vertices.shape[0])
                        for c in range(3)], axis=1)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0).astype(np.float32)
