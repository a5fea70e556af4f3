"""Radiance grids on disk: NeRF-MAE's ``.npz`` layout, with the density convention recorded.

A radiance grid is a NeRF sampled on a regular lattice: colour and density per cell. NeRF-MAE
and NeRF-RPN store one scene per ``.npz``:

* ``rgbsigma (X, Y, Z, 4)``: R, G, B in ``[0, 1]`` and a density channel, x outermost
  (NeRF-MAE's ``(W, L, H, 4)``); ``uint8`` files are scaled by ``1 / 255``;
* ``resolution (3,)``: ``X, Y, Z``;
* optionally ``bbox_min``, ``bbox_max`` ``(3,)``: the lattice's box in the scene's world frame (and
  ``scale``, ``offset`` of the extraction, kept but not used here).

The density channel means different things in different releases, and reading it with the wrong
meaning silently ruins every result. pc3d never guesses: the convention is an explicit option of
:func:`read_radiance_grid` (one of :data:`DENSITY_CONVENTIONS`) unless the file records its own
(pc3d's files carry ``density = "alpha"``). Every grid is held in memory as opacity ``alpha`` in
``[0, 1]``, the quantity NeRF-MAE's loss and metric use.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pc3d.data.folders import FolderItem, read_file_manifest, split_names, write_prepared_folder
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.atomic import atomic_write

GRID_FORMAT = "pc3d-radiance-grids-v1"

#: density convention → what the 4th channel holds (and how pc3d turns it into alpha)
DENSITY_CONVENTIONS: dict[str, str] = {
    "alpha": "opacity in [0, 1], used as is (pc3d's grids, NeRF-MAE's Hypersim grids)",
    "instant_ngp": "instant-ngp's raw density s: alpha = clip(1 - exp(-exp(s) / 100), 0, 1) (NeRF-MAE's Front3D grids)",
    "relu": "a density s: alpha = 1 - exp(-max(s, 0) / 100) (NeRF-MAE's ScanNet grids)",
}


def density_to_alpha(density: np.ndarray, convention: str) -> np.ndarray:
    """``density`` (any shape) → opacity in ``[0, 1]`` under ``convention`` (float32)."""
    if convention not in DENSITY_CONVENTIONS:
        raise ConfigError(f"density convention {convention!r} is unknown (expected one of "
                          f"{', '.join(DENSITY_CONVENTIONS)})")
    density = np.asarray(density, dtype=np.float64)
    if convention == "alpha":
        alpha = density
    elif convention == "instant_ngp":
        with np.errstate(over="ignore"):
            alpha = 1.0 - np.exp(-np.exp(density) / 100.0)
    else:
        alpha = 1.0 - np.exp(-np.maximum(density, 0.0) / 100.0)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


@dataclass
class RadianceGrid:
    """One scene's radiance grid.

    Attributes:
        rgb: ``(X, Y, Z, 3)`` float32 in ``[0, 1]``, the colour at each cell centre.
        alpha: ``(X, Y, Z)`` float32 in ``[0, 1]``, each cell's opacity.
        box: ``(2, 3)`` float64 ``(min, max)`` of the lattice in the scene's world frame; cell
            ``(i, j, k)`` covers ``box_min + [i, i + 1) * (box_max - box_min) / X`` along x (likewise
            y, z).
        semantic: ``(X, Y, Z)`` int64 class of each cell (-1: none), or None (grids of scans with labels).
        boxes: ``(K, 7)`` float32 3D boxes in the world frame (pc3d's box contract) and ``box_labels (K,)``
            int64 their classes, or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    box: np.ndarray
    semantic: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.rgb = np.ascontiguousarray(self.rgb, dtype=np.float32)
        self.alpha = np.ascontiguousarray(self.alpha, dtype=np.float32)
        self.box = np.asarray(self.box, dtype=np.float64)
        if self.semantic is not None:
            self.semantic = np.ascontiguousarray(self.semantic, dtype=np.int64)
            if self.semantic.shape != self.alpha.shape:
                raise ValueError(f"RadianceGrid: semantic must be (X, Y, Z) {self.alpha.shape}, got "
                                 f"{self.semantic.shape}")
        if (self.boxes is None) != (self.box_labels is None):
            raise ValueError("RadianceGrid: boxes and box_labels come together")
        if self.boxes is not None:
            self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float32).reshape(-1, 7)
            self.box_labels = np.ascontiguousarray(self.box_labels, dtype=np.int64).reshape(-1)
            if len(self.box_labels) != len(self.boxes):
                raise ValueError(f"RadianceGrid: {len(self.boxes)} boxes but {len(self.box_labels)} box_labels")
        if self.rgb.ndim != 4 or self.rgb.shape[3] != 3 or self.alpha.shape != self.rgb.shape[:3]:
            raise ValueError(f"RadianceGrid: expected rgb (X, Y, Z, 3) and alpha (X, Y, Z), got {self.rgb.shape} "
                             f"and {self.alpha.shape}")
        if self.box.shape != (2, 3) or not (self.box[1] > self.box[0]).all():
            raise ValueError(f"RadianceGrid: box must be (2, 3) with max > min, got {self.box.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.alpha.shape)  # type: ignore[return-value]

    @property
    def cell_size(self) -> np.ndarray:
        """``(3,)`` edge of a cell along each axis."""
        return (self.box[1] - self.box[0]) / np.asarray(self.shape, dtype=np.float64)

    def rgb_alpha(self) -> np.ndarray:
        """``(X, Y, Z, 4)`` float32: colour and opacity, NeRF-MAE's ``rgbsigma`` after its conversion."""
        return np.concatenate([self.rgb, self.alpha[..., None]], axis=3)


def write_radiance_grid(path: str | os.PathLike, grid: RadianceGrid) -> None:
    """Write ``grid`` atomically as a NeRF-MAE ``.npz`` (``rgbsigma`` holding alpha) with ``density = "alpha"``;
    a grid with labels adds ``semantic (X, Y, Z)`` int16, ``boxes (K, 7)`` and ``box_labels (K,)`` (keys
    NeRF-MAE's loader ignores)."""
    buffer = io.BytesIO()
    labels = {} if grid.semantic is None else {"semantic": grid.semantic.astype(np.int16)}
    if grid.boxes is not None:
        labels.update(boxes=grid.boxes, box_labels=grid.box_labels)
    np.savez(buffer, rgbsigma=grid.rgb_alpha(), resolution=np.asarray(grid.shape, dtype=np.int64),
             bbox_min=grid.box[0], bbox_max=grid.box[1], density=np.asarray("alpha"), **labels)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def _fail(path: Path, problem: str) -> DataFormatError:
    return DataFormatError(f"{path}: {problem}")


def read_radiance_grid(path: str | os.PathLike, density: str | None = None) -> RadianceGrid:
    """Read a radiance grid ``.npz`` (NeRF-MAE / NeRF-RPN layout, or pc3d's).

    Args:
        path: the file.
        density: the density convention (a key of :data:`DENSITY_CONVENTIONS`); required unless the
            file records one, and then it must agree with it.
    Raises:
        DataFormatError: missing, unreadable or malformed file, non-finite values, colours outside
            ``[0, 1]``, a box that disagrees with itself.
        ConfigError: no convention given or recorded, an unknown one, or one that contradicts the file's.
    """
    path = Path(path)
    if density is not None and density not in DENSITY_CONVENTIONS:
        raise ConfigError(f"density={density!r} is unknown (expected one of {', '.join(DENSITY_CONVENTIONS)})")
    if not path.is_file():
        raise _fail(path, "radiance grid not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(path, f"not a readable .npz ({' '.join(str(exc).split()) or type(exc).__name__})") from exc
    if "rgbsigma" not in arrays:
        raise _fail(path, f"no 'rgbsigma' array (expected NeRF-MAE's layout; found {sorted(arrays) or 'nothing'})")
    values = arrays["rgbsigma"]
    recorded = str(arrays["density"]) if "density" in arrays else None
    if recorded is not None and recorded not in DENSITY_CONVENTIONS:
        raise _fail(path, f"records density={recorded!r}, which pc3d does not know")
    if density is not None and recorded is not None and density != recorded:
        raise ConfigError(f"{path}: density={density} contradicts the file's recorded density={recorded}")
    convention = density or recorded
    if convention is None:
        raise ConfigError(f"{path}: no density convention recorded; give density= one of "
                          f"{', '.join(DENSITY_CONVENTIONS)} (the grid's source says which)")
    resolution = np.asarray(arrays["resolution"]).reshape(-1) if "resolution" in arrays else None
    if resolution is not None and values.ndim == 2:  # flattened (X * Y * Z, 4)
        if resolution.size != 3 or int(np.prod(resolution)) != values.shape[0]:
            raise _fail(path, f"rgbsigma {values.shape} does not match resolution {resolution.tolist()}")
        values = values.reshape(*resolution.astype(int), values.shape[1])
    if values.ndim != 4 or values.shape[3] != 4 or min(values.shape[:3]) < 1:
        raise _fail(path, f"rgbsigma must be (X, Y, Z, 4), got {values.shape}")
    if resolution is not None and list(resolution) != list(values.shape[:3]):
        raise _fail(path, f"rgbsigma {values.shape} does not match resolution {resolution.tolist()}")
    if values.dtype == np.uint8:
        values = values.astype(np.float32) / 255.0
    elif not np.issubdtype(values.dtype, np.floating):
        raise _fail(path, f"rgbsigma must be float or uint8, got {values.dtype}")
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise _fail(path, f"rgbsigma holds a non-finite value (first at cell {bad[:3].tolist()}, channel {bad[3]})")
    rgb = values[..., :3]
    if rgb.min() < -1e-6 or rgb.max() > 1 + 1e-6:
        raise _fail(path, f"rgbsigma colours must be in [0, 1], found [{rgb.min():.4g}, {rgb.max():.4g}]")
    if convention == "alpha" and (values[..., 3].min() < -1e-6 or values[..., 3].max() > 1 + 1e-6):
        raise _fail(path, "density=alpha but the density channel leaves [0, 1] "
                          f"([{values[..., 3].min():.4g}, {values[..., 3].max():.4g}])")
    shape = np.asarray(values.shape[:3], dtype=np.float64)
    if "bbox_min" in arrays or "bbox_max" in arrays:
        try:
            box = np.stack([np.asarray(arrays["bbox_min"], dtype=np.float64).reshape(3),
                            np.asarray(arrays["bbox_max"], dtype=np.float64).reshape(3)])
        except (KeyError, ValueError) as exc:
            raise _fail(path, "bbox_min and bbox_max must both be 3 numbers") from exc
        if not np.isfinite(box).all() or not (box[1] > box[0]).all():
            raise _fail(path, f"bbox_max must exceed bbox_min on every axis, got {box.tolist()}")
    else:
        box = np.stack([np.zeros(3), shape])  # no box recorded: one unit per cell
    semantic = arrays.get("semantic")
    if semantic is not None and (semantic.shape != values.shape[:3] or semantic.dtype.kind not in "iu"):
        raise _fail(path, f"semantic must be integer (X, Y, Z) {list(values.shape[:3])}, got {semantic.dtype} "
                          f"{list(semantic.shape)}")
    boxes, box_labels = arrays.get("boxes"), arrays.get("box_labels")
    if (boxes is None) != (box_labels is None):
        raise _fail(path, "boxes and box_labels must both be present or both absent")
    if boxes is not None:
        if boxes.ndim != 2 or boxes.shape[1] != 7 or not np.isfinite(boxes).all() or (boxes[:, 3:6] < 0).any():
            raise _fail(path, f"boxes must be finite (K, 7) [cx, cy, cz, dx, dy, dz, yaw] with sizes >= 0, got "
                              f"{list(boxes.shape)}")
        if box_labels.shape != (len(boxes),) or box_labels.dtype.kind not in "iu":
            raise _fail(path, f"box_labels must be ({len(boxes)},) integers, got {box_labels.dtype} "
                              f"{list(box_labels.shape)}")
    return RadianceGrid(rgb=np.clip(rgb, 0.0, 1.0), alpha=density_to_alpha(values[..., 3], convention), box=box,
                        semantic=semantic, boxes=boxes, box_labels=box_labels)


# ----------------------------------------------------------------------------- prepared grid folders


def _write_entry(dst: Path, name: str, payload: tuple[RadianceGrid, dict[str, Any]]) -> dict[str, Any]:
    grid, extra = payload
    write_radiance_grid(dst / f"{name}.npz", grid)
    return {"file": f"{name}.npz", "shape": list(grid.shape), "box": grid.box.tolist(), **extra}


def read_grid_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``<root>/manifest.json`` of a prepared grid folder."""
    return read_file_manifest(root, GRID_FORMAT, "prepare grids with `pc3d prep grid`", "grid", ".npz")


def write_grid_folder(dst: str | os.PathLike, sources: Sequence[FolderItem], *, dataset: str,
                      source: str | os.PathLike, params: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Write (or bring up to date) the prepared grid folder ``dst``: ``<name>.npz`` per grid (density
    ``alpha``), ``manifest.json`` and ``splits.json`` (every grid in ``train``), through
    :func:`pc3d.data.folders.write_prepared_folder` (idempotent, atomic, never touching files it did not write)."""
    setup = {"format": GRID_FORMAT, "dataset": dataset, "density": "alpha",
             "source": str(Path(os.path.abspath(source))), "params": params}
    return write_prepared_folder(dst, sources, setup=setup, write=_write_entry,
                                 outputs=lambda root, name, entry: [root / entry["file"]],
                                 location=lambda root, name: root / f"{name}.npz", read_manifest=read_grid_manifest,
                                 splits={"train": [s.name for s in sources], "val": []}, force=force)


def read_grid_folder(root: str | os.PathLike, split: str | None = None) -> dict[str, RadianceGrid]:
    """The grids of a prepared folder (those of ``split`` in its ``splits.json``, or all), by name."""
    root = Path(root)
    scenes = read_grid_manifest(root)["scenes"]
    return {name: read_radiance_grid(root / scenes[name]["file"], density="alpha")
            for name in split_names(root, scenes, split)}


__all__ = ["DENSITY_CONVENTIONS", "GRID_FORMAT", "RadianceGrid", "density_to_alpha",
           "read_grid_folder", "read_grid_manifest", "read_radiance_grid", "write_grid_folder",
           "write_radiance_grid"]
