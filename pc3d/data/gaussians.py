"""3D Gaussian splatting scenes: :class:`GaussianCloud` and the standard 3DGS ``.ply`` layout.

The layout is the one the original 3DGS code writes (``point_cloud.ply``) and common splat
viewers read: one ``vertex`` element, binary little-endian, every property ``float``::

    x y z                       mean
    nx ny nz                    unused normals (written as 0, ignored on reading)
    f_dc_0 f_dc_1 f_dc_2        degree-0 SH coefficient of R, G, B
    f_rest_0 ... f_rest_{R-1}   the other SH coefficients, channel-major: all (K - 1) of R
                                (bands in order 1, 2, ...), then those of G, then of B;
                                R = 3 (K - 1), K = (degree + 1)^2
    opacity                     opacity logit (opacity = sigmoid)
    scale_0 scale_1 scale_2     log standard deviations
    rot_0 rot_1 rot_2 rot_3     rotation quaternion w, x, y, z (not necessarily unit)

so ``f_rest_{c (K - 1) + j}`` is coefficient ``1 + j`` of channel ``c``. These are exactly the
inputs of :func:`pc3d.ops.rasterize_gaussians` (``colors`` = ``sh``).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pc3d.data.folders import FolderItem, read_file_manifest, split_names, write_prepared_folder
from pc3d.data.io import _check_ply_extent, _fail, _read_bytes
from pc3d.errors import DataFormatError
from pc3d.utils.atomic import atomic_write

__all__ = ["GAUSSIAN_FORMAT", "GaussianCloud", "gaussian_ply_properties", "read_gaussian_folder",
           "read_gaussian_manifest", "read_gaussian_ply", "write_gaussian_folder", "write_gaussian_ply"]

#: manifest format of a prepared Gaussian folder (``pc3d prep gaussians``)
GAUSSIAN_FORMAT = "pc3d-gaussians-v1"

PathLike = str | os.PathLike

_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")


@dataclass
class GaussianCloud:
    """``N`` 3D Gaussians in the parameterisation of 3DGS (see :mod:`pc3d.ops.rasterize`).

    Attributes:
        means: ``(N, 3)`` float32 world positions.
        quats: ``(N, 4)`` float32 rotations ``w, x, y, z`` (any non-zero norm).
        log_scales: ``(N, 3)`` float32 log standard deviations.
        opacity_logits: ``(N,)`` float32 opacity logits.
        sh: ``(N, K, 3)`` float32 SH coefficients, ``K = (degree + 1)**2``, 3DGS basis order.
    """

    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[1]) - 1

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """The rasterizer's Gaussian arguments as float32 tensors:
        ``rasterize_gaussians(**cloud.to_torch(), viewmats=..., Ks=..., width=..., height=...)``."""
        import torch

        return {"means": torch.as_tensor(self.means, device=device),
                "quats": torch.as_tensor(self.quats, device=device),
                "log_scales": torch.as_tensor(self.log_scales, device=device),
                "opacity_logits": torch.as_tensor(self.opacity_logits, device=device),
                "colors": torch.as_tensor(self.sh, device=device)}


def gaussian_ply_properties(sh_degree: int) -> list[str]:
    """Vertex property names of the standard layout, in file order, for an SH degree."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _checked(path: PathLike, cloud: GaussianCloud) -> dict[str, np.ndarray]:
    """Validate a cloud for writing; float32 arrays by field name."""
    if not isinstance(cloud, GaussianCloud):
        raise DataFormatError(f"{path}: expected a GaussianCloud to write, got {type(cloud).__name__}")
    means = np.asarray(cloud.means)
    if means.ndim != 2 or means.shape[1] != 3:
        raise DataFormatError(f"{path}: cloud.means has shape {means.shape}, expected (N, 3)")
    num = means.shape[0]
    fields = {"means": (num, 3), "quats": (num, 4), "log_scales": (num, 3), "opacity_logits": (num,)}
    out = {}
    for name, shape in fields.items():
        value = np.asarray(getattr(cloud, name))
        if value.shape != shape:
            raise DataFormatError(f"{path}: cloud.{name} has shape {value.shape}, expected {shape}")
        out[name] = value.astype(np.float32)
    sh = np.asarray(cloud.sh)
    k = sh.shape[1] if sh.ndim == 3 else 0
    if sh.ndim != 3 or sh.shape[0] != num or sh.shape[2] != 3 or k < 1 or math.isqrt(k) ** 2 != k:
        raise DataFormatError(f"{path}: cloud.sh has shape {sh.shape}, expected (N, K, 3) with N={num} and "
                              "K = (degree + 1)**2")
    out["sh"] = sh.astype(np.float32)
    for name, value in out.items():
        if not np.isfinite(value).all():
            raise DataFormatError(f"{path}: cloud.{name} contains NaN or infinite values")
    return out


def write_gaussian_ply(path: PathLike, cloud: GaussianCloud) -> None:
    """Write ``cloud`` in the standard 3DGS layout (binary little-endian float32), atomically.

    Everything is validated before the file is touched: a bad cloud raises
    :class:`DataFormatError` naming ``path`` and leaves any existing file as it was.
    """
    import plyfile

    arrays = _checked(path, cloud)
    num, k = arrays["sh"].shape[:2]
    names = gaussian_ply_properties(math.isqrt(k) - 1)
    columns = [arrays["means"], np.zeros((num, 3), np.float32), arrays["sh"][:, 0, :],
               # channel-major: (N, K-1, 3) -> (N, 3, K-1) -> R block, G block, B block
               arrays["sh"][:, 1:, :].transpose(0, 2, 1).reshape(num, 3 * (k - 1)),
               arrays["opacity_logits"][:, None], arrays["log_scales"], arrays["quats"]]
    flat = np.concatenate(columns, axis=1)
    vertex = np.empty(num, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = flat[:, i]
    ply = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_write(path, "wb") as handle:
        ply.write(handle)


def read_gaussian_ply(path: PathLike) -> GaussianCloud:
    """Read a 3DGS ``.ply`` (any byte order; float or double properties; nx/ny/nz optional).

    Raises:
        DataFormatError: naming ``path``: not a PLY, no vertex element, missing Gaussian
            properties (all of them named), an ``f_rest_*`` count that is not
            ``3 ((d + 1)^2 - 1)`` or has gaps, or NaN/infinite values.
    """
    import plyfile

    _read_bytes(path, 0)  # existence / regular-file checks with the house message
    try:
        with open(path, "rb") as handle:
            ply = plyfile.PlyData.read(handle, mmap=False)
            end = None if ply.text else handle.tell()
    except (plyfile.PlyParseError, ValueError, EOFError, struct.error, IndexError, UnicodeDecodeError) as exc:
        raise _fail(path, f"malformed PLY ({exc}); expected a 3DGS Gaussian PLY") from exc
    _check_ply_extent(path, ply, end)
    try:
        vertex = ply["vertex"].data
    except KeyError:
        raise _fail(path, "PLY has no 'vertex' element (expected 3DGS Gaussians)") from None
    names = list(vertex.dtype.names or ())
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise _fail(path, f"not a 3DGS Gaussian PLY: missing vertex properties {', '.join(missing)}")
    rest_ids = sorted(int(n[len("f_rest_"):]) for n in names
                      if n.startswith("f_rest_") and n[len("f_rest_"):].isdigit())
    count = len(rest_ids)
    k = count // 3 + 1
    if count % 3 or math.isqrt(k) ** 2 != k or rest_ids != list(range(count)):
        raise _fail(path, f"{count} f_rest_* properties (indices {_ranges(rest_ids)}); expected f_rest_0 .. "
                          "f_rest_{R-1} with R = 3 ((degree + 1)^2 - 1) = 0, 9, 24 or 45 ...")
    num = len(vertex)

    def column(name: str) -> np.ndarray:
        return np.asarray(vertex[name], dtype=np.float32)

    def stack(fields: list[str]) -> np.ndarray:
        return np.stack([column(n) for n in fields], axis=1) if fields else np.zeros((num, 0), np.float32)

    rest = stack([f"f_rest_{i}" for i in range(count)]).reshape(num, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :], rest], axis=1)
    cloud = GaussianCloud(means=stack(["x", "y", "z"]), quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
                          log_scales=stack(["scale_0", "scale_1", "scale_2"]),
                          opacity_logits=np.ascontiguousarray(column("opacity")),
                          sh=np.ascontiguousarray(sh))
    for name in _REQUIRED + tuple(f"f_rest_{i}" for i in range(count)):
        bad = int((~np.isfinite(column(name))).sum())
        if bad:
            raise _fail(path, f"{bad} of {num} Gaussians have NaN/inf {name!r} (expected finite values)")
    return cloud


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (for error messages)."""
    if not ids:
        return "none"
    parts, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


# --------------------------------------------------------------------------- prepared folders


def _write_entry(dst: Path, name: str, payload: tuple[GaussianCloud, dict[str, Any]]) -> dict[str, Any]:
    cloud, extra = payload
    write_gaussian_ply(dst / f"{name}.ply", cloud)
    means = np.asarray(cloud.means, dtype=np.float64)
    return {"file": f"{name}.ply", "gaussians": len(cloud), "sh_degree": cloud.sh_degree,
            "bounds": [means.min(0).tolist(), means.max(0).tolist()] if len(cloud) else None, **extra}


def read_gaussian_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``<root>/manifest.json`` of a prepared Gaussian folder."""
    return read_file_manifest(root, GAUSSIAN_FORMAT, "prepare Gaussians with `pc3d prep gaussians`", "scene", ".ply")


def write_gaussian_folder(dst: str | os.PathLike, sources: Sequence[FolderItem], *, dataset: str,
                          source: str | os.PathLike, params: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Write (or bring up to date) the prepared Gaussian folder ``dst``: ``<name>.ply`` per scene (the
    standard 3DGS layout), ``manifest.json`` and ``splits.json`` (every scene in ``train``), through
    :func:`pc3d.data.folders.write_prepared_folder` (idempotent, atomic, never touching files it did not write)."""
    setup = {"format": GAUSSIAN_FORMAT, "dataset": dataset, "source": str(Path(os.path.abspath(source))),
             "params": params}
    return write_prepared_folder(dst, sources, setup=setup, write=_write_entry,
                                 outputs=lambda root, name, entry: [root / entry["file"]],
                                 location=lambda root, name: root / f"{name}.ply",
                                 read_manifest=read_gaussian_manifest,
                                 splits={"train": [s.name for s in sources], "val": []}, force=force)


def read_gaussian_folder(root: str | os.PathLike, split: str | None = None) -> dict[str, GaussianCloud]:
    """The Gaussian scenes of a prepared folder (those of ``split`` in its ``splits.json``, or all), by name."""
    root = Path(root)
    scenes = read_gaussian_manifest(root)["scenes"]
    return {name: read_gaussian_ply(root / scenes[name]["file"]) for name in split_names(root, scenes, split)}
