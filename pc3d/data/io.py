"""Point-cloud and mesh readers: every supported file becomes a :class:`PointCloud`.

``read_points(path)`` dispatches on the (lower-cased) suffix:

===============  ==========================================================================
suffix           reader
===============  ==========================================================================
``.pcd``         :func:`read_pcd`  (PCL, ``DATA ascii`` / ``binary`` / ``binary_compressed``)
``.ply``         :func:`read_ply`  (ascii or binary; a file with faces is a mesh → sampled)
``.off``         :func:`read_off`  (text mesh → sampled on the surface)
``.npy``         :func:`read_npy`  ``(N, >=3)`` array
``.npz``         :func:`read_npz`  key ``xyz`` / ``points`` / ``pc`` or the only array
``.txt .xyz``    :func:`read_txt`  (ModelNet40 ``x,y,z,nx,ny,nz`` or whitespace columns)
``.pts``
===============  ==========================================================================

Meshes are turned into points by :func:`sample_mesh_surface` (area-weighted,
uniform on each triangle, deterministic for a seed).

Extra columns of array/text files (``.npy``, ``.npz``, ``.txt``) are interpreted as
follows (see :func:`_columns_to_cloud`):

* columns ``3:6`` are **normals** if every row has unit length (``|n| = 1 ± 1e-2``),
  otherwise **colours** if all values lie in ``[0, 1]`` (kept) or ``[0, 255]``
  (divided by 255), otherwise they are ignored;
* if columns ``3:6`` were colours and columns ``6:9`` have unit rows, those are normals.

A file whose normal-like columns happen to be all non-negative and not unit length
would therefore be read as colours; pass such data as ``.npz`` with an explicit
``xyz`` key if that matters.

Every malformed input raises :class:`~pc3d.errors.DataFormatError` whose message
starts with the path and says what was expected.
"""

from __future__ import annotations

import codecs
import collections
import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pc3d.errors import DataFormatError

__all__ = [
    "PointCloud",
    "SUPPORTED_SUFFIXES",
    "read_points",
    "read_pcd",
    "read_ply",
    "read_off",
    "read_array",
    "read_json",
    "read_numpy_pickle",
    "read_npy",
    "read_npz",
    "read_txt",
    "sample_mesh_surface",
    "write_point_ply",
]


@dataclass
class PointCloud:
    """One point cloud.

    Attributes:
        points: ``(N, 3)`` float32 coordinates, all finite, ``N >= 1``.
        colors: ``(N, 3)`` float32 RGB in ``[0, 1]`` or ``None``.
        normals: ``(N, 3)`` float32 or ``None`` (for sampled meshes: the unit normal of
            the triangle each point lies on, oriented by the face winding).
    """

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])


PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _fail(path: PathLike, problem: str) -> DataFormatError:
    return DataFormatError(f"{path}: {problem}")


def _read_bytes(path: PathLike, limit: int | None = None) -> bytes:
    """The file's bytes (the first ``limit`` only if given), with house-style errors."""
    p = Path(path)
    if not p.exists():
        raise _fail(path, "file not found")
    if not p.is_file():
        raise _fail(path, "not a regular file (expected a point-cloud or mesh file)")
    try:
        if limit is None:
            return p.read_bytes()
        with open(p, "rb") as handle:
            return handle.read(limit)
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror or exc})") from exc


def _finish(path: PathLike, xyz: np.ndarray, colors: np.ndarray | None = None,
            normals: np.ndarray | None = None) -> PointCloud:
    """Validate and convert to the :class:`PointCloud` contract."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise _fail(path, f"expected (N, 3) coordinates, got shape {tuple(xyz.shape)}")
    if xyz.shape[0] == 0:
        raise _fail(path, "empty point cloud (expected at least one point)")
    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        raise _fail(path, f"{bad} of {xyz.shape[0]} points have NaN/inf coordinates "
                          "(expected finite x, y, z)")
    if colors is not None:
        colors = np.clip(np.nan_to_num(np.asarray(colors, dtype=np.float32)), 0.0, 1.0)
        colors = np.ascontiguousarray(colors)
    if normals is not None:
        normals = np.ascontiguousarray(np.asarray(normals, dtype=np.float32))
    return PointCloud(points=xyz, colors=colors, normals=normals)


def _unit_rows(a: np.ndarray, tol: float = 1e-2) -> bool:
    if a.shape[0] == 0 or not np.isfinite(a).all():
        return False
    return bool(np.all(np.abs(np.linalg.norm(a.astype(np.float64), axis=1) - 1.0) <= tol))


def _as_colors(a: np.ndarray) -> np.ndarray | None:
    if not np.isfinite(a).all():
        return None
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a.astype(np.float32)
    if lo >= 0.0 and hi <= 255.0:
        return (a / 255.0).astype(np.float32)
    return None


def _columns_to_cloud(path: PathLike, arr: np.ndarray) -> PointCloud:
    """``(N, C >= 3)`` numeric array → PointCloud; see the module docstring for columns 3:9."""
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise _fail(path, f"expected an (N, >=3) array of points, got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise _fail(path, f"expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    colors = normals = None
    if arr.shape[1] >= 6:
        extra = arr[:, 3:6]
        if _unit_rows(extra):
            normals = extra
        else:
            colors = _as_colors(extra)
            if colors is not None and arr.shape[1] >= 9 and _unit_rows(arr[:, 6:9]):
                normals = arr[:, 6:9]
    return _finish(path, arr[:, :3], colors, normals)


# --------------------------------------------------------------------------------------
# mesh surface sampling
# --------------------------------------------------------------------------------------


def _sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int,
                    where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(points (n,3) float64, face_index (n,), barycentric (n,3))``."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise DataFormatError(f"{where}: expected vertices of shape (V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise DataFormatError(f"{where}: expected integer triangle faces of shape (F, 3), "
                              f"got {tuple(faces.shape)} {faces.dtype}")
    if faces.shape[0] == 0:
        raise DataFormatError(f"{where}: mesh has no faces (expected at least one triangle)")
    if faces.min() < 0 or faces.max() >= vertices.shape[0]:
        raise DataFormatError(f"{where}: face vertex index out of range "
                              f"[{int(faces.min())}, {int(faces.max())}] for {vertices.shape[0]} vertices")
    if not np.isfinite(vertices).all():
        raise DataFormatError(f"{where}: mesh vertices contain NaN/inf (expected finite coordinates)")
    if n <= 0:
        raise ValueError(f"number of surface points must be positive, got {n}")
    a = vertices[faces[:, 0]]
    b = vertices[faces[:, 1]]
    c = vertices[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    areas = 0.5 * np.linalg.norm(cross, axis=1)
    total = float(areas.sum())
    if not np.isfinite(total) or total <= 0.0:
        raise DataFormatError(f"{where}: degenerate mesh with zero surface area "
                              "(expected triangles with positive area)")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas)
    cdf /= cdf[-1]
    face_idx = np.searchsorted(cdf, rng.random(n), side="right")
    np.minimum(face_idx, faces.shape[0] - 1, out=face_idx)
    u = rng.random(n)
    v = rng.random(n)
    flip = u + v > 1.0
    u[flip] = 1.0 - u[flip]
    v[flip] = 1.0 - v[flip]
    fa, fb, fc = a[face_idx], b[face_idx], c[face_idx]
    points = fa + u[:, None] * (fb - fa) + v[:, None] * (fc - fa)
    bary = np.stack([1.0 - u - v, u, v], axis=1)
    return points, face_idx, bary


def sample_mesh_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sample ``n`` points uniformly on the surface of a triangle mesh.

    Triangles are chosen with probability proportional to their area, then a point
    is drawn uniformly inside the triangle (reflected barycentric coordinates).

    Args:
        vertices: ``(V, 3)`` float coordinates.
        faces: ``(F, 3)`` integer vertex indices.
        n: number of points.
        seed: the same seed gives the same points.

    Returns:
        ``(n, 3)`` float32 points.

    Raises:
        DataFormatError: bad shapes, index out of range, non-finite vertices, or a
            mesh whose total area is zero.
    """
    points, _, _ = _sample_surface(vertices, faces, n, seed, "mesh")
    return points.astype(np.float32)


def _triangulate(path: PathLike, polygons: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Fan-triangulate polygons (each a 1-D index array, length >= 3) → ``(F, 3)`` int64."""
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        groups = {polygons.shape[1]: polygons}
    else:
        lengths = np.fromiter((len(p) for p in polygons), dtype=np.int64, count=len(polygons))
        groups = {}
        for k in np.unique(lengths):
            sel = np.flatnonzero(lengths == k)
            groups[int(k)] = np.stack([np.asarray(polygons[i], dtype=np.int64) for i in sel]) \
                if k > 0 else np.zeros((sel.size, 0), dtype=np.int64)
    tris = []
    for k, polys in groups.items():
        if k < 3:
            raise _fail(path, f"face with {k} vertices (expected polygons of at least 3 vertices)")
        polys = np.asarray(polys, dtype=np.int64)
        for i in range(1, k - 1):
            tris.append(np.stack([polys[:, 0], polys[:, i], polys[:, i + 1]], axis=1))
    if not tris:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(tris, axis=0)


def _mesh_to_cloud(path: PathLike, vertices: np.ndarray, faces: np.ndarray, n: int, seed: int,
                   vertex_colors: np.ndarray | None = None) -> PointCloud:
    vertices = np.asarray(vertices, dtype=np.float64)
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise _fail(path, f"face vertex index out of range: indices span [{int(faces.min())}, "
                          f"{int(faces.max())}] but there are {vertices.shape[0]} vertices")
    if not np.isfinite(vertices).all():
        raise _fail(path, "mesh vertices contain NaN/inf (expected finite coordinates)")
    points, face_idx, bary = _sample_surface(vertices, faces, n, seed, str(path))
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    fn = np.cross(b - a, c - a)
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-30)
    normals = fn[face_idx]
    colors = None
    if vertex_colors is not None:
        tri_cols = vertex_colors[faces[face_idx]]  # (n, 3 corners, 3 channels)
        colors = np.einsum("nk,nkc->nc", bary, tri_cols)
    return _finish(path, points, colors, normals)


# --------------------------------------------------------------------------------------
# PCD
# --------------------------------------------------------------------------------------

_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4",
              ("I", 8): "i8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def _lzf_decompress(path: PathLike, data: bytes, expected: int) -> bytes:
    """Decompress LZF (the codec of PCD ``binary_compressed``)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            run = ctrl + 1
            if i + run > n:
                raise _fail(path, "corrupt binary_compressed data (literal run past the end)")
            out += data[i:i + run]
            i += run
        else:  # back reference
            length = ctrl >> 5
            if length == 7:
                if i >= n:
                    raise _fail(path, "corrupt binary_compressed data (truncated back-reference)")
                length += data[i]
                i += 1
            if i >= n:
                raise _fail(path, "corrupt binary_compressed data (truncated back-reference)")
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            length += 2
            if ref < 0:
                raise _fail(path, "corrupt binary_compressed data (back-reference before start)")
            if ref + length <= len(out):
                out += out[ref:ref + length]
            else:  # overlapping copy, byte by byte
                for k in range(length):
                    out.append(out[ref + k])
        if len(out) > expected:
            break
    if len(out) != expected:
        raise _fail(path, f"corrupt binary_compressed data: decompressed to {len(out)} bytes, "
                          f"header says {expected}")
    return bytes(out)


def _parse_pcd_header(path: PathLike, raw: bytes) -> tuple[dict[str, list[str]], int]:
    """Return (header fields, byte offset of the data section)."""
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise _fail(path, "PCD header has no DATA line (expected FIELDS/SIZE/TYPE/COUNT/"
                              "WIDTH/HEIGHT/POINTS/DATA)")
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise _fail(path, "not a PCD file (non-ASCII header; expected '# .PCD' / 'VERSION ...')") from exc
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        key = key.upper()
        header[key] = values
        if key == "DATA":
            return header, pos
        if len(header) > 32:
            raise _fail(path, "not a PCD file (no DATA line within the first header lines)")


def _pcd_int(path: PathLike, header: dict[str, list[str]], key: str) -> int | None:
    if key not in header:
        return None
    vals = header[key]
    try:
        if len(vals) != 1:
            raise ValueError
        value = int(vals[0])
    except ValueError:
        raise _fail(path, f"PCD header {key} {' '.join(vals)!r} is not an integer") from None
    if value < 0:
        raise _fail(path, f"PCD header {key} is negative ({value})")
    return value


def read_pcd(path: PathLike) -> PointCloud:
    """Read a PCL ``.pcd`` file (``DATA ascii``, ``binary`` or ``binary_compressed``).

    Fields ``x y z`` are required; ``rgb``/``rgba`` (packed into a float32 or uint32,
    0x00RRGGBB) become colours, ``normal_x normal_y normal_z`` become normals; other
    fields (``curvature``, ``_`` padding, ...) are ignored. Binary data is little-endian.
    """
    raw = _read_bytes(path)
    header, offset = _parse_pcd_header(path, raw)
    for key in ("FIELDS", "SIZE", "TYPE"):
        if key not in header:
            raise _fail(path, f"PCD header lacks {key} (expected FIELDS, SIZE, TYPE, DATA)")
    fields = header["FIELDS"]
    sizes, types = header["SIZE"], header["TYPE"]
    counts = header.get("COUNT", ["1"] * len(fields))
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise _fail(path, f"PCD header FIELDS/SIZE/TYPE/COUNT have different lengths "
                          f"({len(fields)}/{len(sizes)}/{len(types)}/{len(counts)})")
    try:
        sizes_i = [int(s) for s in sizes]
        counts_i = [int(c) for c in counts]
    except ValueError:
        raise _fail(path, "PCD header SIZE/COUNT must be integers") from None
    for name in ("x", "y", "z"):
        if name not in fields:
            raise _fail(path, f"PCD has no field {name!r} (fields: {' '.join(fields)}; expected x y z)")
    width = _pcd_int(path, header, "WIDTH")
    height = _pcd_int(path, header, "HEIGHT")
    points = _pcd_int(path, header, "POINTS")
    if width is not None and height is not None:
        if points is None:
            points = width * height
        elif points != width * height:
            raise _fail(path, f"PCD header count mismatch: POINTS {points} != WIDTH {width} "
                              f"x HEIGHT {height}")
    if points is None:
        raise _fail(path, "PCD header has neither POINTS nor WIDTH/HEIGHT")
    data_kind = header["DATA"][0].lower() if header["DATA"] else ""

    # unique names (PCL writes several '_' padding fields)
    names: list[str] = []
    dtype_fields = []
    for i, (name, size, typ, count) in enumerate(zip(fields, sizes_i, types, counts_i)):
        code = _PCD_TYPES.get((typ.upper(), size))
        if code is None or count < 1:
            raise _fail(path, f"PCD field {name!r} has unsupported TYPE {typ} SIZE {size} COUNT {count}")
        unique = name if name not in names else f"{name}__{i}"
        names.append(unique)
        dtype_fields.append((unique, "<" + code, (count,)) if count > 1 else (unique, "<" + code))
    dtype = np.dtype(dtype_fields)

    if data_kind == "ascii":
        try:
            text = raw[offset:].decode("ascii")
        except UnicodeDecodeError:
            raise _fail(path, "ascii PCD data contains non-ASCII bytes") from None
        try:
            values = np.array(text.split(), dtype=np.float64)
        except ValueError:
            raise _fail(path, "ascii PCD data contains a non-numeric token") from None
        ncols = sum(counts_i)
        if values.size != points * ncols:
            got = values.size / ncols if ncols else 0
            raise _fail(path, f"ascii PCD has {values.size} values = {got:g} points of {ncols} "
                              f"columns, header says POINTS {points}")
        table = values.reshape(points, ncols)
        columns: dict[str, np.ndarray] = {}
        col = 0
        for name, typ, size, count in zip(names, types, sizes_i, counts_i):
            block = table[:, col:col + count]
            col += count
            if count == 1:
                block = block[:, 0]
            code = _PCD_TYPES[(typ.upper(), size)]
            if code == "f4":
                block = block.astype(np.float32)
            elif code[0] in "iu":
                block = block.astype(np.int64).astype(code)
            columns[name] = block
        get = columns.__getitem__
    elif data_kind in ("binary", "binary_compressed"):
        if data_kind == "binary":
            need = points * dtype.itemsize
            if len(raw) - offset < need:
                raise _fail(path, f"truncated binary PCD: {len(raw) - offset} data bytes, expected "
                                  f"{need} ({points} points x {dtype.itemsize} bytes)")
            if len(raw) - offset > need:  # a header that undercounts its data is as wrong as a truncation
                raise _fail(path, f"binary PCD holds {len(raw) - offset} data bytes but its header says POINTS "
                                  f"{points} ({need} bytes of {dtype.itemsize} per point)")
            arr = np.frombuffer(raw, dtype=dtype, count=points, offset=offset)
            get = arr.__getitem__
        else:
            if len(raw) - offset < 8:
                raise _fail(path, "truncated binary_compressed PCD (missing size words)")
            csize, usize = struct.unpack_from("<II", raw, offset)
            if usize != points * dtype.itemsize:
                raise _fail(path, f"binary_compressed PCD: uncompressed size {usize} does not match "
                                  f"{points} points x {dtype.itemsize} bytes")
            comp = raw[offset + 8: offset + 8 + csize]
            if len(comp) < csize:
                raise _fail(path, f"truncated binary_compressed PCD: {len(comp)} of {csize} "
                                  "compressed bytes present")
            if len(raw) - offset - 8 > csize:
                raise _fail(path, f"binary_compressed PCD has {len(raw) - offset - 8 - csize} bytes after the "
                                  f"{csize} compressed bytes its header announces")
            plain = _lzf_decompress(path, comp, usize) if usize else b""
            # column-major layout: all values of field 0, then field 1, ...
            columns = {}
            pos = 0
            for name, sub in zip(names, dtype_fields):
                code = sub[1]
                count = sub[2][0] if len(sub) == 3 else 1
                nbytes = points * np.dtype(code).itemsize * count
                block = np.frombuffer(plain, dtype=code, count=points * count, offset=pos)
                columns[name] = block.reshape(points, count) if count > 1 else block
                pos += nbytes
            get = columns.__getitem__
    else:
        raise _fail(path, f"unknown PCD DATA type {' '.join(header['DATA'])!r} "
                          "(expected ascii, binary or binary_compressed)")

    xyz = np.stack([get("x"), get("y"), get("z")], axis=1)
    colors = None
    for cname in ("rgb", "rgba"):
        if cname in names:
            packed = np.ascontiguousarray(get(cname))
            if packed.ndim != 1:
                break
            if packed.dtype.itemsize != 4:
                packed = packed.astype(np.uint32)
            bits = packed.view(np.uint32)
            colors = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1)
            colors = colors.astype(np.float32) / 255.0
            break
    normals = None
    if all(n in names for n in ("normal_x", "normal_y", "normal_z")):
        normals = np.stack([get("normal_x"), get("normal_y"), get("normal_z")], axis=1)
    return _finish(path, xyz, colors, normals)


# --------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------


def _ply_colors(names: set[str], vdata: np.ndarray) -> np.ndarray | None:
    for triple in (("red", "green", "blue"), ("r", "g", "b"),
                   ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(t in names for t in triple):
            cols = np.stack([np.asarray(vdata[t]) for t in triple], axis=1)
            if cols.dtype.kind in "iu":
                return cols.astype(np.float32) / 255.0
            cols = cols.astype(np.float32)
            if np.isfinite(cols).all() and cols.size and cols.max() > 1.0:
                cols = cols / 255.0
            return cols
    return None


def _check_ply_extent(path: PathLike, ply: Any, binary_end: int | None) -> None:
    """The header's element counts must cover the data exactly (plyfile reads the first N and stops)."""
    raw = _read_bytes(path)
    declared = sum(e.count for e in ply.elements)
    if binary_end is not None:
        extra = len(raw) - binary_end
    else:
        body = raw[raw.find(b"end_header") + len(b"end_header"):]
        extra = sum(1 for line in body.splitlines() if line.strip()) - declared
    if extra > 0:
        unit = "bytes" if binary_end is not None else "lines"
        raise _fail(path, f"PLY has {extra} {unit} of data beyond the {declared} elements its header declares "
                          f"({', '.join(f'{e.count} {e.name}' for e in ply.elements)})")


def read_ply(path: PathLike, *, num_surface_points: int = 8192, seed: int = 0) -> PointCloud:
    """Read an ascii or binary ``.ply``.

    A file with a non-empty ``face`` element (``vertex_indices``/``vertex_index``) is a
    mesh: polygons are fan-triangulated and ``num_surface_points`` points are sampled on
    its surface (vertex colours interpolated, normals from the faces). Otherwise the
    vertices are the points (``red green blue`` colours, ``nx ny nz`` normals).
    """
    import plyfile

    _read_bytes(path, 0)  # existence / regular-file checks with the house message
    try:
        with open(path, "rb") as handle:
            ply = plyfile.PlyData.read(handle, mmap=False)
            end = None if ply.text else handle.tell()
    except (plyfile.PlyParseError, ValueError, EOFError, struct.error, IndexError,
            UnicodeDecodeError) as exc:
        raise _fail(path, f"malformed PLY ({exc}); expected a valid ascii or binary PLY") from exc
    _check_ply_extent(path, ply, end)
    try:
        vertex = ply["vertex"]
    except KeyError:
        raise _fail(path, "PLY has no 'vertex' element") from None
    vdata = vertex.data
    names = set(vdata.dtype.names or ())
    for n in ("x", "y", "z"):
        if n not in names:
            raise _fail(path, f"PLY vertex element has no property {n!r} (expected x, y, z)")
    xyz = np.stack([np.asarray(vdata["x"]), np.asarray(vdata["y"]), np.asarray(vdata["z"])], axis=1)
    colors = _ply_colors(names, vdata)
    face_el = None
    for el in ply.elements:
        if el.name == "face":
            face_el = el
    if face_el is not None and face_el.count > 0:
        fnames = face_el.data.dtype.names or ()
        key = "vertex_indices" if "vertex_indices" in fnames else (
            "vertex_index" if "vertex_index" in fnames else None)
        if key is None:
            raise _fail(path, "PLY face element has no vertex_indices/vertex_index list")
        polys = list(face_el.data[key])
        faces = _triangulate(path, polys)
        if xyz.shape[0] == 0:
            raise _fail(path, "PLY mesh has faces but no vertices")
        return _mesh_to_cloud(path, xyz, faces, num_surface_points, seed, colors)
    normals = None
    if all(n in names for n in ("nx", "ny", "nz")):
        normals = np.stack([np.asarray(vdata[n]) for n in ("nx", "ny", "nz")], axis=1)
    return _finish(path, xyz, colors, normals)


def write_point_ply(path: PathLike, points: np.ndarray, colors: np.ndarray) -> None:
    """Write ``points (N, 3)`` with ``colors (N, 3)`` in [0, 1] as a binary PLY (float ``x y z``, uchar
    ``red green blue``: what point-cloud viewers open and :func:`read_ply` reads), atomically."""
    import plyfile

    from pc3d.utils.atomic import atomic_write

    points, colors = np.asarray(points, dtype=np.float32), np.asarray(colors, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"write_point_ply: expected points (N, 3) and colors of the same shape, got "
                         f"{points.shape} and {colors.shape}")
    vertex = np.empty(len(points), dtype=[(n, "<f4") for n in "xyz"] + [(n, "u1") for n in ("red", "green", "blue")])
    for i, name in enumerate("xyz"):
        vertex[name] = points[:, i]
    rgb = np.round(np.clip(np.nan_to_num(colors), 0.0, 1.0) * 255.0).astype(np.uint8)
    for i, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, i]
    ply = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_write(path, "wb") as handle:
        ply.write(handle)


# --------------------------------------------------------------------------------------
# OFF
# --------------------------------------------------------------------------------------

_OFF_HEADER = re.compile(r"^(C?N?OFF)\s*(.*)$")


def _read_off_mesh(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse an OFF file → ``(vertices (V,3) float64, faces (F,3) int64)``."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "OFF file is not text (expected the ASCII OFF format)") from None
    lines = []
    for line in text.splitlines():
        hash_at = line.find("#")
        if hash_at >= 0:
            line = line[:hash_at]
        line = line.strip()
        if line:
            lines.append(line)
    if not lines:
        raise _fail(path, "empty OFF file (expected 'OFF' then 'V F E')")
    first = lines[0]
    m = _OFF_HEADER.match(first)
    if m is None:
        raise _fail(path, f"bad OFF header {first[:40]!r} (expected 'OFF')")
    if m.group(2):  # counts on the header line: 'OFF 490 518 0' or the ModelNet 'OFF490 518 0'
        rest = [m.group(2)] + lines[1:]
    else:
        rest = lines[1:]
    if not rest:
        raise _fail(path, "OFF header has no counts line (expected 'V F E')")
    try:
        counts = [int(t) for t in rest[0].split()]
        if len(counts) < 2:
            raise ValueError
    except ValueError:
        raise _fail(path, f"bad OFF counts line {rest[0][:40]!r} (expected 'V F E' integers)") from None
    nv, nf = counts[0], counts[1]
    if nv < 0 or nf < 0:
        raise _fail(path, f"negative OFF counts {nv} {nf}")
    body = rest[1:]
    if len(body) != nv + nf:
        raise _fail(path, f"OFF header count mismatch: header says {nv} vertices + {nf} faces, "
                          f"file has {len(body)} data lines")
    vlines = body[:nv]
    try:
        vals = np.array(" ".join(vlines).split(), dtype=np.float64)
        if vals.size == nv * 3:
            vertices = vals.reshape(nv, 3)
        else:  # extra per-vertex columns (COFF/NOFF) or a malformed line
            rows = [ln.split() for ln in vlines]
            if any(len(r) < 3 for r in rows):
                bad = next(i for i, r in enumerate(rows) if len(r) < 3)
                raise _fail(path, f"OFF vertex {bad} has {len(rows[bad])} values (expected 3)")
            vertices = np.array([r[:3] for r in rows], dtype=np.float64)
    except ValueError:
        raise _fail(path, "OFF vertex line contains a non-numeric token") from None
    flines = body[nv:nv + nf]
    if nf == 0:
        return vertices, np.zeros((0, 3), dtype=np.int64)
    try:
        tok = " ".join(flines).split()
        if len(tok) == nf * 4:
            arr = np.array(tok, dtype=np.int64).reshape(nf, 4)
            if (arr[:, 0] == 3).all():
                faces = arr[:, 1:]
                return vertices, faces
        polys = []
        for i, ln in enumerate(flines):
            parts = ln.split()
            k = int(parts[0])
            if k < 3 or len(parts) < k + 1:
                raise _fail(path, f"OFF face {i} {ln[:40]!r}: expected 'k i1 ... ik' with k >= 3")
            polys.append(np.array(parts[1:k + 1], dtype=np.int64))
    except ValueError:
        raise _fail(path, "OFF face line contains a non-integer token") from None
    return vertices, _triangulate(path, polys)


def read_off(path: PathLike, *, num_surface_points: int = 8192, seed: int = 0) -> PointCloud:
    """Read an ASCII ``.off`` mesh and sample ``num_surface_points`` on its surface.

    Handles the ModelNet defect where ``OFF`` is glued to the counts (``OFF490 518 0``),
    ``#`` comments, ``COFF``/``NOFF`` headers (extra vertex columns ignored) and
    polygons with more than 3 vertices (fan-triangulated). An OFF with zero faces is
    read as the point cloud of its vertices.
    """
    vertices, faces = _read_off_mesh(path)
    if faces.shape[0] == 0:
        return _finish(path, vertices)
    return _mesh_to_cloud(path, vertices, faces, num_surface_points, seed)


# --------------------------------------------------------------------------------------
# numpy / text
# --------------------------------------------------------------------------------------


def read_array(path: PathLike) -> np.ndarray:
    """Any ``.npy`` array (no pickles), with house-style errors naming the file."""
    if not _read_bytes(path, 6).startswith(b"\x93NUMPY"):
        raise _fail(path, "not a .npy file (expected the NumPy array format)")
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise _fail(path, f"not a valid .npy array ({exc})") from exc


def read_json(path: PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file raises DataFormatError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc


def _numpy_callable(*dotted: str) -> Any:
    """The first importable ``module.name`` of ``dotted`` (numpy 2 moved ``numpy.core`` to ``numpy._core``)."""
    import importlib

    for entry in dotted:
        module, _, name = entry.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {dotted} is importable")


def _reconstruct_ndarray(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # the allowed constructor builds plain ndarrays only: a subclass could run code in __setstate__
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused array subclass {subtype!r}")
    return _numpy_callable("numpy._core.multiarray._reconstruct",
                           "numpy.core.multiarray._reconstruct")(subtype, shape, dtype)


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    # protocol-2 pickles store array bytes as latin-1 text re-encoded with _codecs.encode
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    frombuffer = _numpy_callable("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
    scalar = _numpy_callable("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    # protocol-2 pickles written by Python 3 spell builtins the Python 2 way
    allowed.update({("__builtin__", name): value for (module, name), value in list(allowed.items())
                    if module == "builtins"})
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct_ndarray
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.dotted = f"{module}.{name}"


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers; refuses every other global."""

    _allowed = None

    def find_class(self, module: str, name: str) -> Any:
        if _NumpyUnpickler._allowed is None:
            _NumpyUnpickler._allowed = _numpy_pickle_globals()
        try:
            return _NumpyUnpickler._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None


def read_numpy_pickle(path: PathLike) -> Any:
    """Load a pickle that holds only numpy arrays/scalars and plain containers, without running code.

    Such files are the info pickles of the mmdetection3d tooling (ScanNet, SUN RGB-D). Unpickling
    resolves a fixed list of globals: ``numpy.ndarray``, ``numpy.dtype``, numpy's array/scalar
    reconstructors (``_reconstruct`` of plain ndarrays only, ``scalar``, ``_frombuffer``),
    ``_codecs.encode`` with the latin-1 codec only (protocol-2 array bytes), and ``set``,
    ``frozenset``, ``bytearray``, ``complex``, ``collections.OrderedDict``. Any other global
    (a class, ``os.system``, ...) raises DataFormatError naming the file and the refused global
    before it is called; persistent ids are refused as well.
    """
    raw = _read_bytes(path)
    try:
        return _NumpyUnpickler(BytesIO(raw)).load()
    except _RefusedGlobal as exc:
        raise _fail(path, f"pickle refers to {exc.dotted}, which is refused (only numpy arrays, numpy "
                          "scalars and plain containers are unpickled)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, struct.error, MemoryError, RecursionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"not a readable numpy pickle ({detail})") from exc


def read_npy(path: PathLike) -> PointCloud:
    """Read an ``(N, >=3)`` ``.npy`` array (no pickles); columns 3:9 as in the module doc."""
    return _columns_to_cloud(path, read_array(path))


_NPZ_KEYS = ("xyz", "points", "pc")


def read_npz(path: PathLike) -> PointCloud:
    """Read a ``.npz``: key ``xyz``, ``points`` or ``pc`` (first present), or its only array."""
    if not _read_bytes(path, 2).startswith(b"PK"):
        raise _fail(path, "not a .npz archive (expected a zip of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            key = next((k for k in _NPZ_KEYS if k in keys), None)
            if key is None:
                if len(keys) != 1:
                    raise _fail(path, f"npz has arrays {keys}; expected one of {list(_NPZ_KEYS)} "
                                      "or a single array")
                key = keys[0]
            arr = np.asarray(z[key])
    except DataFormatError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"not a valid .npz archive ({exc})") from exc
    return _columns_to_cloud(path, arr)


def read_txt(path: PathLike) -> PointCloud:
    """Read a text point list: ``x,y,z[,nx,ny,nz]`` (ModelNet40 resampled) or whitespace columns.

    Every non-empty, non-``#`` line must have the same number of columns (>= 3).
    """
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "text point file is not UTF-8 text") from None
    lines = [ln for ln in (l.strip() for l in text.splitlines()) if ln and not ln.startswith("#")]
    if not lines:
        raise _fail(path, "empty point file (expected lines of 'x y z ...')")
    sep_comma = "," in lines[0]

    def split(ln: str) -> list[str]:
        return ln.replace(",", " ").split() if sep_comma else ln.split()

    ncols = len(split(lines[0]))
    if ncols < 3:
        raise _fail(path, f"line 1 has {ncols} columns (expected at least 3: x y z)")
    joined = " ".join(lines)
    tokens = (joined.replace(",", " ") if sep_comma else joined).split()
    if len(tokens) != ncols * len(lines):
        for i, ln in enumerate(lines):
            if len(split(ln)) != ncols:
                raise _fail(path, f"data line {i + 1} has {len(split(ln))} columns, expected {ncols} "
                                  "like the first line")
    try:
        arr = np.array(tokens, dtype=np.float64).reshape(len(lines), ncols)
    except ValueError:
        raise _fail(path, "text point file contains a non-numeric token") from None
    return _columns_to_cloud(path, arr)


# --------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------

_POINT_READERS: dict[str, Callable[[PathLike], PointCloud]] = {
    ".pcd": read_pcd, ".npy": read_npy, ".npz": read_npz,
    ".txt": read_txt, ".xyz": read_txt, ".pts": read_txt,
}
_MESH_READERS = {".ply": read_ply, ".off": read_off}

SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted({*_POINT_READERS, *_MESH_READERS}))


def read_points(path: PathLike, *, num_surface_points: int = 8192, seed: int = 0) -> PointCloud:
    """Read any supported file (see the module docstring) into a :class:`PointCloud`.

    Args:
        path: the file; the reader is chosen by its lower-cased suffix.
        num_surface_points: points sampled on the surface of meshes (``.off``, ``.ply``
            with faces); ignored for point files.
        seed: seed of the surface sampling.
    """
    suffix = Path(path).suffix.lower()
    if suffix in _POINT_READERS:
        return _POINT_READERS[suffix](path)
    if suffix in _MESH_READERS:
        return _MESH_READERS[suffix](path, num_surface_points=num_surface_points, seed=seed)
    raise _fail(path, f"unknown point-cloud suffix {suffix or '(none)'!r} "
                      f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})")
