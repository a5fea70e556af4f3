"""The standard 3DGS .ply layout: exact round trip, field names/order, hand-made files, bad files."""

from __future__ import annotations

import numpy as np
import plyfile
import pytest
import torch

from pc3d.data import GaussianCloud, read_gaussian_ply, write_gaussian_ply
from pc3d.data.gaussians import gaussian_ply_properties
from pc3d.errors import DataFormatError
from pc3d.ops import rasterize_gaussians


def make_cloud(n: int, degree: int, seed: int = 0) -> GaussianCloud:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    return GaussianCloud(
        means=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=rng.uniform(-3.5, -2.0, (n, 3)).astype(np.float32),
        opacity_logits=rng.uniform(-1, 3, n).astype(np.float32),
        sh=(0.5 * rng.normal(size=(n, k, 3))).astype(np.float32),
    )


def assert_same_cloud(a: GaussianCloud, b: GaussianCloud):
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), f"{name} is not bit-exact"


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, degree):
    cloud = make_cloud(37, degree, seed=degree)
    cloud.means[0] = [np.float32(1e-38), np.float32(-0.0), np.float32(3.4e38)]  # extremes survive as bits
    path = tmp_path / "scene.ply"
    write_gaussian_ply(path, cloud)
    back = read_gaussian_ply(path)
    assert_same_cloud(cloud, back)
    assert back.sh_degree == degree and len(back) == 37


def test_file_has_the_standard_fields_in_order(tmp_path):
    path = tmp_path / "scene.ply"
    write_gaussian_ply(path, make_cloud(5, 3))
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header and "element vertex 5" in header
    ply = plyfile.PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    props = ply["vertex"].properties
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert [p.name for p in props] == expected == gaussian_ply_properties(3)
    assert all(p.val_dtype in ("f4", "float32", "float") for p in props)
    assert len(expected) == 62  # the count 3DGS's degree-3 point_cloud.ply has
    assert np.all(ply["vertex"]["nx"] == 0)


def test_hand_made_standard_file_reads_with_channel_major_sh(tmp_path):
    """Write the layout by hand: f_rest_{c*(K-1)+j} is coefficient 1+j of channel c. Every value
    is distinct, so any other ordering (interleaved RGB, band-major) reads different numbers."""
    n, degree = 3, 2
    k = (degree + 1) ** 2
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
             + [f"f_rest_{i}" for i in range(3 * (k - 1))]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    vertex = np.zeros(n, dtype=[(name, "<f4") for name in names])
    expected_sh = np.zeros((n, k, 3), np.float32)
    for g in range(n):
        for c in range(3):
            expected_sh[g, 0, c] = 1000 * g + c
            vertex[f"f_dc_{c}"][g] = 1000 * g + c
            for j in range(k - 1):
                value = 1000 * g + 100 * (j + 1) + c
                vertex[f"f_rest_{c * (k - 1) + j}"][g] = value
                expected_sh[g, j + 1, c] = value
        vertex["x"][g], vertex["y"][g], vertex["z"][g] = g, -g, 2 * g
        vertex["opacity"][g] = 0.5 * g
        for i in range(3):
            vertex[f"scale_{i}"][g] = -3 - i
        for i in range(4):
            vertex[f"rot_{i}"][g] = i + 1  # w, x, y, z
    path = tmp_path / "hand.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))
    cloud = read_gaussian_ply(path)
    np.testing.assert_array_equal(cloud.sh, expected_sh)
    np.testing.assert_array_equal(cloud.means, [[0, 0, 0], [1, -1, 2], [2, -2, 4]])
    np.testing.assert_array_equal(cloud.quats, np.tile([1, 2, 3, 4], (3, 1)))
    np.testing.assert_array_equal(cloud.log_scales, np.tile([-3, -4, -5], (3, 1)))
    np.testing.assert_array_equal(cloud.opacity_logits, [0, 0.5, 1.0])
    # and our writer produces the same bytes for the same cloud
    again = tmp_path / "again.ply"
    write_gaussian_ply(again, cloud)
    assert again.read_bytes() == path.read_bytes()


def test_reads_double_big_endian_and_no_normals(tmp_path):
    cloud = make_cloud(4, 1)
    names = [n for n in gaussian_ply_properties(1) if n not in ("nx", "ny", "nz")]
    vertex = np.zeros(4, dtype=[(name, ">f8") for name in names])
    rest = cloud.sh[:, 1:, :].transpose(0, 2, 1).reshape(4, -1)
    cols = dict(zip(["x", "y", "z"], cloud.means.T))
    cols.update({f"f_dc_{c}": cloud.sh[:, 0, c] for c in range(3)})
    cols.update({f"f_rest_{i}": rest[:, i] for i in range(9)})
    cols.update(opacity=cloud.opacity_logits, **{f"scale_{i}": cloud.log_scales[:, i] for i in range(3)},
                **{f"rot_{i}": cloud.quats[:, i] for i in range(4)})
    for name, value in cols.items():
        vertex[name] = value
    path = tmp_path / "big.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], byte_order=">").write(str(path))
    assert_same_cloud(cloud, read_gaussian_ply(path))


def test_render_write_read_render_is_identical(tmp_path):
    cloud = make_cloud(300, 3, seed=7)
    f, w, h = 40.0, 48, 36
    viewmats = torch.eye(4)[None].clone()
    viewmats[0, 2, 3] = 3.0
    ks = torch.tensor([[[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]]])

    def render(c: GaussianCloud):
        return rasterize_gaussians(**c.to_torch(), viewmats=viewmats, Ks=ks, width=w, height=h,
                                   background=torch.tensor([0.1, 0.2, 0.3]), backend="torch")

    before = render(cloud)
    path = tmp_path / "scene.ply"
    write_gaussian_ply(path, cloud)
    after = render(read_gaussian_ply(path))
    assert before.alpha.max() > 0.5
    for key in ("rgb", "depth", "alpha", "radii", "means2d"):
        assert torch.equal(getattr(before, key), getattr(after, key)), key


# --------------------------------------------------------------------------- bad files


def _write_vertex(path, names, n=2, fill=0.5):
    vertex = np.full(n, fill, dtype=[(name, "<f4") for name in names])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


def test_missing_fields_are_named(tmp_path):
    names = [n for n in gaussian_ply_properties(0) if n not in ("rot_2", "scale_0")]
    path = _write_vertex(tmp_path / "partial.ply", names)
    with pytest.raises(DataFormatError, match=r"partial\.ply: not a 3DGS Gaussian PLY: missing vertex "
                                              r"properties scale_0, rot_2$"):
        read_gaussian_ply(path)
    plain = _write_vertex(tmp_path / "points.ply", ["x", "y", "z", "red", "green", "blue"])
    with pytest.raises(DataFormatError, match=r"points\.ply: .*missing vertex properties f_dc_0, f_dc_1"):
        read_gaussian_ply(plain)


@pytest.mark.parametrize("rest, fragment", [
    (5, r"5 f_rest_\* properties \(indices 0-4\)"),
    (12, r"12 f_rest_\* properties"),  # a multiple of 3 that is no SH degree
    ((0, 1, 2, 3, 4, 5, 6, 7, 9), r"9 f_rest_\* properties \(indices 0-7, 9\)"),  # a gap
])
def test_inconsistent_f_rest_count(tmp_path, rest, fragment):
    ids = range(rest) if isinstance(rest, int) else rest
    names = gaussian_ply_properties(0) + [f"f_rest_{i}" for i in ids]
    path = _write_vertex(tmp_path / "rest.ply", names)
    with pytest.raises(DataFormatError, match=r"rest\.ply: " + fragment):
        read_gaussian_ply(path)


def test_nan_values_are_reported(tmp_path):
    path = tmp_path / "nan.ply"
    cloud = make_cloud(6, 1)
    cloud.sh[4, 2, 1] = np.nan
    with pytest.raises(DataFormatError, match=r"nan\.ply: cloud\.sh contains NaN"):
        write_gaussian_ply(path, cloud)
    assert not path.exists(), "nothing is written for a bad cloud"
    names = gaussian_ply_properties(1)
    vertex = np.zeros(3, dtype=[(name, "<f4") for name in names])
    vertex["scale_1"][2] = np.nan
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    with pytest.raises(DataFormatError, match=r"nan\.ply: 1 of 3 Gaussians have NaN/inf 'scale_1'"):
        read_gaussian_ply(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "scene.ply"
    write_gaussian_ply(path, make_cloud(3, 0))
    before = path.read_bytes()
    bad = make_cloud(3, 0)
    bad.quats = bad.quats[:, :3]
    with pytest.raises(DataFormatError, match=r"scene\.ply: cloud\.quats has shape \(3, 3\), expected \(3, 4\)"):
        write_gaussian_ply(path, bad)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["scene.ply"]


def test_not_a_ply_and_missing_file(tmp_path):
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"hello world\n")
    with pytest.raises(DataFormatError, match=r"junk\.ply: malformed PLY"):
        read_gaussian_ply(junk)
    with pytest.raises(DataFormatError, match=r"absent\.ply: file not found"):
        read_gaussian_ply(tmp_path / "absent.ply")
    faces = tmp_path / "faces.ply"
    face = np.zeros(1, dtype=[("vertex_indices", "i4", (3,))])
    plyfile.PlyData([plyfile.PlyElement.describe(face, "face")]).write(str(faces))
    with pytest.raises(DataFormatError, match=r"faces\.ply: PLY has no 'vertex' element"):
        read_gaussian_ply(faces)

