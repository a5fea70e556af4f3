"""Readers of pc3d.data.io: round trips for every format, real files, malformed files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import plyfile
import pytest

from conftest import require_shared
from pc3d.data.io import (
    PointCloud,
    read_npz,
    read_off,
    read_pcd,
    read_ply,
    read_points,
    read_txt,
    sample_mesh_surface,
)
from pc3d.errors import DataFormatError, Pc3dError

RNG = np.random.default_rng(1234)
XYZ = RNG.normal(size=(50, 3)).astype(np.float32)
RGB8 = RNG.integers(0, 256, size=(50, 3)).astype(np.uint8)
NORMALS = RNG.normal(size=(50, 3))
NORMALS = (NORMALS / np.linalg.norm(NORMALS, axis=1, keepdims=True)).astype(np.float32)

# a unit cube [-0.5, 0.5]^3: 8 vertices, 6 quads
CUBE_V = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], float)
CUBE_QUADS = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]


# ----------------------------------------------------------------------------- writers


def _pack_rgb(rgb8: np.ndarray) -> np.ndarray:
    r, g, b = (rgb8[:, i].astype(np.uint32) for i in range(3))
    return (r << 16) | (g << 8) | b


def write_pcd(path: Path, xyz: np.ndarray, data: str = "binary", rgb8: np.ndarray | None = None,
              normals: np.ndarray | None = None, rgb_type: str = "F", points: int | None = None,
              payload: bytes | None = None) -> Path:
    n = xyz.shape[0]
    cols = [xyz[:, 0], xyz[:, 1], xyz[:, 2]]
    fields, sizes, types = ["x", "y", "z"], [4, 4, 4], ["F", "F", "F"]
    dtypes = ["<f4"] * 3
    if rgb8 is not None:
        packed = _pack_rgb(rgb8)
        fields.append("rgb")
        sizes.append(4)
        types.append(rgb_type)
        if rgb_type == "F":
            cols.append(packed.view(np.float32))
            dtypes.append("<f4")
        else:
            cols.append(packed)
            dtypes.append("<u4")
    if normals is not None:
        for i, name in enumerate(("normal_x", "normal_y", "normal_z")):
            fields.append(name)
            sizes.append(4)
            types.append("F")
            cols.append(normals[:, i])
            dtypes.append("<f4")
    npts = n if points is None else points
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(map(str, sizes))}\n"
        f"TYPE {' '.join(types)}\nCOUNT {' '.join('1' for _ in fields)}\n"
        f"WIDTH {npts}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {npts}\nDATA {data}\n"
    )
    if payload is not None:
        body = payload
    elif data == "binary":
        rec = np.zeros(n, dtype=[(f, d) for f, d in zip(fields, dtypes)])
        for f, c in zip(fields, cols):
            rec[f] = c
        body = rec.tobytes()
    elif data == "ascii":
        lines = []
        for i in range(n):
            vals = []
            for c, d in zip(cols, dtypes):
                vals.append(repr(float(c[i])) if d == "<f4" else str(int(c[i])))
            lines.append(" ".join(vals))
        body = ("\n".join(lines) + "\n").encode()
    elif data == "binary_compressed":
        soa = b"".join(np.asarray(c, dtype=d).tobytes() for c, d in zip(cols, dtypes))
        comp = lzf_literal_compress(soa)
        body = struct.pack("<II", len(comp), len(soa)) + comp
    else:
        raise ValueError(data)
    path.write_bytes(header.encode() + body)
    return path


def lzf_literal_compress(data: bytes) -> bytes:
    """A valid LZF stream made only of literal runs (<= 32 bytes each)."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i:i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def write_ply(path: Path, xyz: np.ndarray, text: bool, rgb8: np.ndarray | None = None,
              normals: np.ndarray | None = None, faces: list[list[int]] | None = None) -> Path:
    dt = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if rgb8 is not None:
        dt += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if normals is not None:
        dt += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    v = np.zeros(xyz.shape[0], dtype=dt)
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb8 is not None:
        v["red"], v["green"], v["blue"] = rgb8[:, 0], rgb8[:, 1], rgb8[:, 2]
    if normals is not None:
        v["nx"], v["ny"], v["nz"] = normals[:, 0], normals[:, 1], normals[:, 2]
    elements = [plyfile.PlyElement.describe(v, "vertex")]
    if faces is not None:
        f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (len(faces[0]),))])
        f["vertex_indices"] = np.asarray(faces, dtype=np.int32)
        elements.append(plyfile.PlyElement.describe(f, "face"))
    plyfile.PlyData(elements, text=text).write(str(path))
    return path


def write_off(path: Path, vertices: np.ndarray, faces: list[list[int]], header: str = "plain") -> Path:
    """header: 'plain' (OFF / counts), 'glued' (ModelNet's 'OFF8 6 0'), 'same_line' ('OFF 8 6 0')."""
    counts = f"{len(vertices)} {len(faces)} 0"
    lines = {"plain": ["OFF", counts], "glued": [f"OFF{counts}"], "same_line": [f"OFF {counts}"]}[header]
    lines += [" ".join(f"{c:.6f}" for c in v) for v in vertices]
    lines += [" ".join(map(str, [len(f), *f])) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def cube_face_ids(xyz: np.ndarray, half: float = 0.5) -> np.ndarray:
    """Index 0..5 of the cube face each point lies on (axis * 2 + positive side)."""
    axis = np.argmax(np.isclose(np.abs(xyz), half, atol=1e-5), axis=1)
    return axis * 2 + (xyz[np.arange(len(xyz)), axis] > 0)


def assert_on_cube_surface(xyz: np.ndarray, half: float = 0.5) -> None:
    assert np.all(np.abs(xyz) <= half + 1e-5)
    on_face = np.isclose(np.abs(xyz), half, atol=1e-5).any(axis=1)
    assert on_face.all(), f"{(~on_face).sum()} points not on a face"


# ----------------------------------------------------------------------------- PCD


@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_pcd_round_trip(tmp_path: Path, data: str) -> None:
    p = write_pcd(tmp_path / f"c_{data}.pcd", XYZ, data, rgb8=RGB8, normals=NORMALS)
    pc = read_points(p)
    assert isinstance(pc, PointCloud)
    assert pc.points.dtype == np.float32 and pc.points.shape == (50, 3)
    np.testing.assert_allclose(pc.points, XYZ, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pc.colors, RGB8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(pc.normals, NORMALS, atol=1e-6)


def test_pcd_uint_rgb_and_xyz_only(tmp_path: Path) -> None:
    pc = read_pcd(write_pcd(tmp_path / "u.pcd", XYZ, "binary", rgb8=RGB8, rgb_type="U"))
    np.testing.assert_allclose(pc.colors, RGB8 / 255.0, atol=1e-6)
    pc = read_pcd(write_pcd(tmp_path / "plain.pcd", XYZ, "ascii"))
    assert pc.colors is None and pc.normals is None
    np.testing.assert_allclose(pc.points, XYZ, atol=1e-6)


def test_pcd_lzf_back_reference(tmp_path: Path) -> None:
    # SoA layout x0 x1 y0 y1 z0 z1, compressed with literals and one back-reference
    xs = np.array([1.5, 1.5], np.float32).tobytes()
    ys = np.array([-2.0, -2.0], np.float32).tobytes()
    zs = np.array([3.25, 3.25], np.float32).tobytes()
    soa = xs + ys + zs
    # literal x0 (4 bytes), then back-ref length 4 offset 4 (copies x0 as x1), rest literal
    comp = bytes([3]) + xs[:4] + bytes([((4 - 2) << 5) | 0, 3]) + bytes([15]) + ys + zs
    p = write_pcd(tmp_path / "lzf.pcd", np.zeros((2, 3), np.float32), "binary_compressed",
                  payload=struct.pack("<II", len(comp), len(soa)) + comp)
    pc = read_pcd(p)
    np.testing.assert_array_equal(pc.points, [[1.5, -2.0, 3.25], [1.5, -2.0, 3.25]])


def test_real_modelnet10_pcd(modelnet10_root: Path) -> None:
    path = modelnet10_root / "chair" / "train" / "chair_0001.pcd"
    pc = read_points(path)
    assert pc.points.shape == (1024, 3) and pc.points.dtype == np.float32
    assert np.isfinite(pc.points).all()
    raw = path.read_bytes()
    np.testing.assert_array_equal(pc.points.ravel(), np.frombuffer(raw[-1024 * 12:], "<f4"))
    assert np.ptp(pc.points, axis=0).min() > 0


# ----------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_ply_point_round_trip(tmp_path: Path, text: bool) -> None:
    p = write_ply(tmp_path / "c.ply", XYZ, text, rgb8=RGB8, normals=NORMALS)
    pc = read_points(p)
    np.testing.assert_allclose(pc.points, XYZ, atol=1e-6)
    np.testing.assert_allclose(pc.colors, RGB8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(pc.normals, NORMALS, atol=1e-6)


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_ply_mesh_is_sampled_on_surface(tmp_path: Path, text: bool) -> None:
    p = write_ply(tmp_path / "cube.ply", CUBE_V.astype(np.float32), text, faces=CUBE_QUADS)
    pc = read_ply(p, num_surface_points=3000, seed=3)
    assert pc.points.shape == (3000, 3)
    assert_on_cube_surface(pc.points)
    # all 6 faces (12 triangles after fan triangulation of the quads) are covered
    assert np.all(np.bincount(cube_face_ids(pc.points), minlength=6) > 300)
    # normals are the face normals: unit, axis-aligned
    np.testing.assert_allclose(np.linalg.norm(pc.normals, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.abs(pc.normals).max(axis=1), 1.0, atol=1e-5)
    again = read_ply(p, num_surface_points=3000, seed=3)
    np.testing.assert_array_equal(again.points, pc.points)
    other = read_ply(p, num_surface_points=3000, seed=4)
    assert not np.array_equal(other.points, pc.points)


def _on_mesh(points: np.ndarray, v: np.ndarray, f: np.ndarray, tol: float) -> np.ndarray:
    """For each point, whether it lies in some triangle (plane distance and barycentrics)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e0, e1 = b - a, c - a
    n = np.cross(e0, e1)
    keep = np.linalg.norm(n, axis=1) > 1e-12
    a, e0, e1, n = a[keep], e0[keep], e1[keep], n[keep]
    n_unit = n / np.linalg.norm(n, axis=1, keepdims=True)
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    den = d00 * d11 - d01 * d01
    ok = np.zeros(len(points), bool)
    for i, p in enumerate(points):
        w = p - a
        plane = np.abs((w * n_unit).sum(1))
        d20, d21 = (w * e0).sum(1), (w * e1).sum(1)
        bv = (d11 * d20 - d01 * d21) / den
        bw = (d00 * d21 - d01 * d20) / den
        inside = (bv >= -1e-4) & (bw >= -1e-4) & (bv + bw <= 1 + 1e-4)
        ok[i] = bool(np.any(inside & (plane <= tol)))
    return ok


@pytest.mark.parametrize("name", ["airplane", "ant", "nut"])
def test_real_mesh_ply(name: str) -> None:
    path = require_shared("meshes") / f"{name}.ply"
    ply = plyfile.PlyData.read(str(path))
    v = np.stack([ply["vertex"].data[k] for k in "xyz"], 1).astype(np.float64)
    f = np.stack(list(ply["face"].data["vertex_indices"]))
    assert f.shape[1] == 3  # these meshes are triangulated
    pc = read_points(path, num_surface_points=2048, seed=0)
    assert pc.points.shape == (2048, 3) and np.isfinite(pc.points).all()
    scale = float(np.ptp(v, axis=0).max())
    assert _on_mesh(pc.points[:200].astype(np.float64), v, f, tol=1e-5 * scale).all()


# ----------------------------------------------------------------------------- OFF


@pytest.mark.parametrize("header", ["plain", "glued", "same_line"])
def test_off_mesh(tmp_path: Path, header: str) -> None:
    p = write_off(tmp_path / "cube.off", CUBE_V, CUBE_QUADS, header=header)
    if header == "glued":
        assert p.read_text().startswith("OFF8 6 0\n")
    pc = read_points(p, num_surface_points=2000, seed=0)
    assert pc.points.shape == (2000, 3)
    assert_on_cube_surface(pc.points)
    # area weighting over the 6 equal quads (12 triangles after fan triangulation)
    frac = np.bincount(cube_face_ids(pc.points), minlength=6) / 2000
    assert np.all(np.abs(frac - 1 / 6) < 0.04), frac


def test_off_with_comments_and_polygons(tmp_path: Path) -> None:
    # a pentagon (fan-triangulated) in the plane z = 1, with comments and blank lines
    ang = np.linspace(0, 2 * np.pi, 5, endpoint=False)
    verts = np.stack([np.cos(ang), np.sin(ang), np.ones(5)], 1)
    text = "OFF\n# a comment\n\n5 1 0\n" + "\n".join(" ".join(map(str, v)) for v in verts) \
        + "\n5 0 1 2 3 4\n"
    p = tmp_path / "penta.off"
    p.write_text(text)
    pc = read_off(p, num_surface_points=500, seed=1)
    np.testing.assert_allclose(pc.points[:, 2], 1.0, atol=1e-6)
    assert (np.linalg.norm(pc.points[:, :2], axis=1) <= 1.0 + 1e-6).all()
    # points cover all 3 fan triangles, not just the first
    angle = np.mod(np.arctan2(pc.points[:, 1], pc.points[:, 0]), 2 * np.pi)
    assert angle.max() > 5.0 and angle.min() < 1.0


# ----------------------------------------------------------------------------- numpy / text


def test_npy_round_trip(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", XYZ)
    pc = read_points(tmp_path / "a.npy")
    np.testing.assert_array_equal(pc.points, XYZ)
    assert pc.colors is None and pc.normals is None
    # xyz + rgb in 0..255 → colours / 255
    np.save(tmp_path / "b.npy", np.concatenate([XYZ, RGB8.astype(np.float32)], 1))
    pc = read_points(tmp_path / "b.npy")
    np.testing.assert_allclose(pc.colors, RGB8 / 255.0, atol=1e-6)
    # xyz + unit normals → normals, not colours
    np.save(tmp_path / "c.npy", np.concatenate([XYZ, NORMALS], 1))
    pc = read_points(tmp_path / "c.npy")
    assert pc.colors is None
    np.testing.assert_allclose(pc.normals, NORMALS, atol=1e-6)
    # xyz + rgb in 0..1 + normals
    np.save(tmp_path / "d.npy", np.concatenate([XYZ, RGB8 / 255.0, NORMALS], 1))
    pc = read_points(tmp_path / "d.npy")
    np.testing.assert_allclose(pc.colors, RGB8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(pc.normals, NORMALS, atol=1e-6)
    # other extra columns (e.g. labels) are ignored
    np.save(tmp_path / "e.npy", np.concatenate([XYZ, np.full((50, 3), -7.0, np.float32)], 1))
    pc = read_points(tmp_path / "e.npy")
    assert pc.colors is None and pc.normals is None


@pytest.mark.parametrize("key", ["xyz", "points", "pc", "anything"])
def test_npz_keys(tmp_path: Path, key: str) -> None:
    np.savez(tmp_path / "a.npz", **{key: XYZ})
    np.testing.assert_array_equal(read_points(tmp_path / "a.npz").points, XYZ)


def test_npz_prefers_known_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", labels=np.zeros(50), points=XYZ)
    np.testing.assert_array_equal(read_npz(tmp_path / "a.npz").points, XYZ)


def test_txt_comma_and_whitespace(tmp_path: Path) -> None:
    comma = tmp_path / "airplane_0001.txt"
    comma.write_text("\n".join(",".join(f"{x:.6f}" for x in row)
                               for row in np.concatenate([XYZ, NORMALS], 1)) + "\n")
    pc = read_txt(comma)
    np.testing.assert_allclose(pc.points, XYZ, atol=1e-5)
    np.testing.assert_allclose(pc.normals, NORMALS, atol=1e-5)
    ws = tmp_path / "ws.txt"
    ws.write_text("# x y z\n" + "\n".join("  ".join(f"{x:.6f}" for x in row) for row in XYZ) + "\n")
    pc = read_points(ws)
    np.testing.assert_allclose(pc.points, XYZ, atol=1e-5)
    assert pc.normals is None and pc.colors is None


def test_real_npz_with_colours() -> None:
    path = require_shared("sunrgbd/lidar/000001.npz")
    pc = read_points(path)
    assert pc.points.shape == (50000, 3)
    assert pc.colors is not None and 0.0 <= pc.colors.min() and pc.colors.max() <= 1.0


# ----------------------------------------------------------------------------- surface sampler


def test_sampler_on_unit_cube_faces() -> None:
    tris = np.array([[q[0], q[1], q[2]] for q in CUBE_QUADS] + [[q[0], q[2], q[3]] for q in CUBE_QUADS])
    pts = sample_mesh_surface(CUBE_V, tris, 5000, seed=0)
    assert pts.shape == (5000, 3) and pts.dtype == np.float32
    assert_on_cube_surface(pts)
    np.testing.assert_array_equal(pts, sample_mesh_surface(CUBE_V, tris, 5000, seed=0))


def test_sampler_is_area_proportional_and_uniform() -> None:
    # triangle A (area 1) in z=0, triangle B (area 3) in z=5
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 2, 5]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    pts = sample_mesh_surface(v, f, 40000, seed=7)
    on_b = pts[:, 2] > 2.5
    assert abs(on_b.mean() - 0.75) < 0.01
    # uniform inside a triangle: mean is its centroid, and all points are inside
    a = pts[~on_b]
    np.testing.assert_allclose(a.mean(0), v[:3].mean(0), atol=0.01)
    assert np.all(a[:, 0] / 2 + a[:, 1] <= 1 + 1e-6) and a[:, :2].min() >= -1e-7


def test_sampler_rejects_degenerate_mesh() -> None:
    v = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]], float)
    with pytest.raises(DataFormatError, match="zero surface area"):
        sample_mesh_surface(v, np.array([[0, 1, 2]]), 10)


# ----------------------------------------------------------------------------- malformed files


def _bad_truncated_binary_pcd(d: Path) -> Path:
    p = write_pcd(d / "trunc.pcd", XYZ, "binary")
    p.write_bytes(p.read_bytes()[:-7])
    return p


def _bad_truncated_binary_ply(d: Path) -> Path:
    p = write_ply(d / "trunc.ply", XYZ, text=False)
    p.write_bytes(p.read_bytes()[:-9])
    return p


def _bad_pcd_header(d: Path) -> Path:
    p = d / "noheader.pcd"
    p.write_text("VERSION 0.7\nWIDTH 1\nHEIGHT 1\nPOINTS 1\nDATA ascii\n1 2 3\n")
    return p


def _bad_pcd_count(d: Path) -> Path:
    p = write_pcd(d / "count.pcd", XYZ, "ascii", points=51)
    return p


def _bad_pcd_width_height(d: Path) -> Path:
    p = d / "wh.pcd"
    p.write_text("FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 3\nHEIGHT 2\nPOINTS 5\nDATA ascii\n"
                 + "1 2 3\n" * 5)
    return p


def _bad_nan_pcd(d: Path) -> Path:
    xyz = XYZ.copy()
    xyz[3, 1] = np.nan
    return write_pcd(d / "nan.pcd", xyz, "binary")


def _bad_inf_npy(d: Path) -> Path:
    xyz = XYZ.copy()
    xyz[0, 0] = np.inf
    np.save(d / "inf.npy", xyz)
    return d / "inf.npy"


def _bad_empty_txt(d: Path) -> Path:
    (d / "empty.txt").write_text("\n\n")
    return d / "empty.txt"


def _bad_empty_npy(d: Path) -> Path:
    np.save(d / "empty.npy", np.zeros((0, 3), np.float32))
    return d / "empty.npy"


def _bad_suffix(d: Path) -> Path:
    (d / "shape.obj").write_text("v 0 0 0\n")
    return d / "shape.obj"


def _bad_missing(d: Path) -> Path:
    return d / "does_not_exist.pcd"


def _bad_off_index(d: Path) -> Path:
    return write_off(d / "badindex.off", CUBE_V, [[0, 1, 8]])


def _bad_off_header(d: Path) -> Path:
    (d / "hdr.off").write_text("OFX\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    return d / "hdr.off"


def _bad_off_count(d: Path) -> Path:
    (d / "short.off").write_text("OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    return d / "short.off"


def _bad_off_zero_area(d: Path) -> Path:
    return write_off(d / "flat.off", np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2.0]]), [[0, 1, 2]])


def _bad_txt_columns(d: Path) -> Path:
    (d / "cols.txt").write_text("1 2\n3 4\n")
    return d / "cols.txt"


def _bad_txt_ragged(d: Path) -> Path:
    (d / "ragged.txt").write_text("1,2,3\n4,5,6\n7,8\n")
    return d / "ragged.txt"


def _bad_npy_columns(d: Path) -> Path:
    np.save(d / "twocol.npy", np.zeros((10, 2), np.float32))
    return d / "twocol.npy"


def _bad_npz_ambiguous(d: Path) -> Path:
    np.savez(d / "ambig.npz", a=XYZ, b=XYZ)
    return d / "ambig.npz"


def _bad_npz_not_zip(d: Path) -> Path:
    (d / "junk.npz").write_bytes(b"not a zip at all")
    return d / "junk.npz"


def _bad_ply_garbage(d: Path) -> Path:
    (d / "garbage.ply").write_bytes(b"plx\nformat ascii 1.0\n")
    return d / "garbage.ply"


def _bad_pcd_compressed_corrupt(d: Path) -> Path:
    p = write_pcd(d / "lzfbad.pcd", XYZ, "binary_compressed")
    raw = bytearray(p.read_bytes())
    hdr_end = raw.index(b"DATA binary_compressed\n") + len("DATA binary_compressed\n")
    raw[hdr_end + 8] = 0xE0  # long back-reference at the very start
    p.write_bytes(bytes(raw))
    return p


BAD_FILES = [_bad_truncated_binary_pcd, _bad_truncated_binary_ply, _bad_pcd_header, _bad_pcd_count,
             _bad_pcd_width_height, _bad_nan_pcd, _bad_inf_npy, _bad_empty_txt, _bad_empty_npy,
             _bad_suffix, _bad_missing, _bad_off_index, _bad_off_header, _bad_off_count,
             _bad_off_zero_area, _bad_txt_columns, _bad_txt_ragged, _bad_npy_columns,
             _bad_npz_ambiguous, _bad_npz_not_zip, _bad_ply_garbage, _bad_pcd_compressed_corrupt]


@pytest.mark.parametrize("make", BAD_FILES, ids=[f.__name__[5:] for f in BAD_FILES])
def test_malformed_files_raise_data_format_error(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(DataFormatError) as info:
        read_points(path, num_surface_points=64)
    message = str(info.value)
    assert path.name in message
    assert message.startswith(str(path))
    assert "\n" not in message  # the CLI prints it on one line
    assert isinstance(info.value, Pc3dError)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    d = tmp_path / "folder.pcd"
    d.mkdir()
    with pytest.raises(DataFormatError, match="folder.pcd"):
        read_points(d)


def test_read_array_reads_any_npy_and_names_bad_files(tmp_path):
    from pc3d.data.io import read_array

    good = tmp_path / "boxes.npy"
    np.save(good, np.arange(14.0).reshape(2, 7))
    assert read_array(good).shape == (2, 7)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(DataFormatError, match="bad.npy: not a .npy file"):
        read_array(bad)
