"""Point-cloud normals (pc3d.ops.normals): PCA backends, orientation rule, mesh vertex normals."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from conftest import require_module

from pc3d.errors import ConfigError
from pc3d.ops.normals import default_viewpoint, estimate_normals, mesh_vertex_normals, orient_normals

BACKENDS = ["torch", "open3d"]


def require_backend(backend: str) -> None:
    """open3d-cpu is installed by `setup.sh --test` on Linux x86_64 (CI must test it there); elsewhere optional."""
    if backend != "open3d":
        return
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        require_module("open3d", "setup.sh --test installs open3d-cpu on Linux x86_64")
    else:
        pytest.importorskip("open3d", reason="open3d-cpu has wheels for Linux x86_64 only")


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plane_normals_face_the_viewpoint(backend):
    require_backend(backend)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1, 1, size=(2000, 2))
    coord = np.column_stack([xy, 0.3 * xy[:, 0] - 0.2 * xy[:, 1] + 1.0]).astype(np.float32)
    truth = np.array([-0.3, 0.2, 1.0]) / np.linalg.norm([-0.3, 0.2, 1.0])
    up = estimate_normals(coord, 16, backend, viewpoint=(0, 0, 10))
    assert up.dtype == np.float32 and up.shape == (2000, 3)
    np.testing.assert_allclose(up, np.broadcast_to(truth, up.shape), atol=1e-4)
    down = estimate_normals(coord, 16, backend, viewpoint=(0, 0, -10))
    np.testing.assert_allclose(down, -up, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_normals_point_inward_by_default(backend):
    require_backend(backend)
    coord = fibonacci_sphere(4000).astype(np.float32)
    # default viewpoint: above the box centre at 90% of its height, i.e. (0, 0, 0.8): inside the sphere
    np.testing.assert_allclose(default_viewpoint(coord), [0, 0, 0.8], atol=1e-3)
    normals = estimate_normals(coord, 12, backend)
    radial = np.einsum("nc,nc->n", normals, coord / np.linalg.norm(coord, axis=1, keepdims=True))
    assert (radial < -0.999).all(), radial.max()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6)


def test_torch_chunks_and_degenerate_neighbourhoods():
    coord = fibonacci_sphere(500).astype(np.float32)
    np.testing.assert_array_equal(estimate_normals(coord, 10, "torch", chunk=37, knn_backend="torch"),
                                  estimate_normals(coord, 10, "torch"))
    same = np.zeros((6, 3), np.float32)  # every neighbourhood collapses to one point
    np.testing.assert_array_equal(estimate_normals(same, 4, "torch"), np.tile([0, 0, 1], (6, 1)))
    assert estimate_normals(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert estimate_normals(coord[:2], 16, "torch").shape == (2, 3)  # k clipped to N


def test_bad_arguments():
    with pytest.raises(ConfigError, match="normals backend 'kdtree'"):
        estimate_normals(np.zeros((4, 3), np.float32), backend="kdtree")
    with pytest.raises(ValueError, match="coord: expected"):
        estimate_normals(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        estimate_normals(np.full((4, 3), np.nan, np.float32))


def test_orient_normals_rule():
    coord = np.array([[0, 0, 0], [0, 0, 2], [1, 0, 1]], np.float32)
    normals = np.array([[0, 0, -1], [0, 0, 1], [1, 0, 0]], np.float32)
    np.testing.assert_array_equal(orient_normals(coord, normals, (0, 0, 1)), [[0, 0, 1], [0, 0, -1], [-1, 0, 0]])


def test_mesh_vertex_normals_octahedron_and_area_weights():
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    np.testing.assert_allclose(mesh_vertex_normals(v, faces), v, atol=1e-6)  # outward by the winding
    np.testing.assert_allclose(mesh_vertex_normals(v, faces[:, ::-1]), -v, atol=1e-6)
    # a vertex on a big triangle (area 2, normal +z) and a small one (area 0.5, normal +x)
    v2 = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1], [5, 5, 5]], float)
    n = mesh_vertex_normals(v2, np.array([[0, 1, 2], [0, 3, 4]]))
    np.testing.assert_allclose(n[0], np.array([0.5, 0, 2]) / np.linalg.norm([0.5, 0, 2]), atol=1e-6)
    np.testing.assert_array_equal(n[5], [0, 0, 0])  # on no face
    with pytest.raises(ValueError, match="out of range"):
        mesh_vertex_normals(v, faces + 1)


def test_backends_agree_on_a_real_scan(shared_data):
    require_backend("open3d")
    coord = np.load(shared_data / "scannet" / "scene0000_00_vert_all.npy")[:, :3]
    dot = np.einsum("nc,nc->n", estimate_normals(coord, 16, "torch"), estimate_normals(coord, 16, "open3d"))
    assert (np.abs(dot) > 0.999).mean() >= 0.99
    assert (dot > 0).mean() >= 0.99  # same orientation after the shared rule


def test_orientation_rule_on_a_real_scan(shared_data):
    coord = np.load(shared_data / "scannet" / "scene0000_00_vert_all.npy")[:, :3]
    sem = np.load(shared_data / "scannet" / "scene0000_00_sem_label_all.npy")
    normals = estimate_normals(coord, 16, "torch")
    floor = (sem == 2) & (np.abs(normals[:, 2]) > 0.9)  # (not the floor-wall seam)
    assert floor.sum() > 5000 and (normals[floor, 2] > 0).mean() > 0.99  # floors face up
    table = (sem == 7) & (np.abs(normals[:, 2]) > 0.9)
    assert table.sum() > 500 and (normals[table, 2] > 0).mean() > 0.99  # table tops face up
    wall = (sem == 1) & (np.abs(normals[:, 2]) < 0.3)
    inward = np.einsum("nc,nc->n", normals[wall, :2], default_viewpoint(coord)[:2] - coord[wall, :2]) > 0
    assert wall.sum() > 5000 and inward.mean() > 0.99  # walls face into the room


def test_pure_torch_knn_gives_the_same_normals_on_a_real_scan(shared_data):
    vert = np.load(shared_data / "scannet" / "scene0000_00_vert_all.npy")
    coord = vert[vert[:, 0] < -3.0, :3]  # a strip along one wall (~4k points): brute force stays quick
    assert len(coord) > 2000
    np.testing.assert_allclose(estimate_normals(coord, 16, "torch", knn_backend="torch"),
                               estimate_normals(coord, 16, "torch"), atol=1e-6)
