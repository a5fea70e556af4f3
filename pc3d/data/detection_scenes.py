"""Indoor detection scenes: points + 3D boxes of ScanNet (axis-aligned) and SUN RGB-D (oriented).

Boxes follow the pc3d box contract (``pc3d/ops/boxes.py``): ``(K, 7)`` float32
``[cx, cy, cz, dx, dy, dz, yaw]``, gravity centre, full sizes, yaw counter-clockwise about +z.

ScanNet (the preprocessed ``<scene>_bbox.npy`` of the VoteNet / mmdetection3d pipeline,
``(K, 7)`` = ``[cx, cy, cz, dx, dy, dz, nyu40_id]``, axis-aligned): the 18 benchmark classes
are the NYU40 ids in :data:`SCANNET_NYU40_IDS`; boxes of other ids are dropped, and ``yaw = 0``.
Points: ``<scene>_vert_all.npy`` ``(N, 6)`` xyz + rgb (0–255 in the file, ``colors`` in [0, 1]).

SUN RGB-D (``label/<id>.txt``, one object per line: ``class xmin ymin w2d h2d cx cy cz w l h
ox oy``, already in upright depth coordinates like ``lidar/<id>.npz`` key ``pc`` ``(N, 6)``
xyz + rgb in 0–1): ``w``, ``l``, ``h`` are half sizes, ``l`` along the heading ``(ox, oy)``; so
``sizes = 2 (l, w, h)`` and ``yaw = atan2(oy, ox)`` (the heading the VoteNet/mmdetection3d
tooling rotates by). The 10 benchmark classes are :data:`SUNRGBD_CLASSES`; other lines
(lamp, ottoman, ...) are dropped. ``calib/<id>.txt`` (Rtilt, K) is only needed to project to the
image and is not read here.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pc3d.data.io import read_array
from pc3d.errors import DataFormatError

SCANNET_CLASSES = ("cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
                   "counter", "desk", "curtain", "refrigerator", "showercurtrain", "toilet", "sink", "bathtub",
                   "garbagebin")
#: NYU40 label id of each ScanNet detection class, in :data:`SCANNET_CLASSES` order.
SCANNET_NYU40_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SUNRGBD_CLASSES = ("bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night_stand", "bookshelf",
                   "bathtub")


@dataclass
class DetectionScene:
    """One scene: ``points (N, 3)`` float32, ``colors (N, 3)`` float32 in [0, 1] or None, ``boxes (K, 7)``
    float32, ``labels (K,)`` int64.

    A grid scene (a radiance grid with boxes, :func:`pc3d.data.detection_data.grid_detection_scene`) also
    holds ``grid_values (C, X, Y, Z)`` float32 and the lattice's world ``grid_box (2, 3)``: its samples are the
    grid; ``points`` / ``colors`` are then its occupied cells' centres and colours (for pictures)."""

    name: str
    points: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    colors: np.ndarray | None = None
    grid_values: np.ndarray | None = None
    grid_box: np.ndarray | None = None


def split_points(path: Path, table: np.ndarray, color_scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, 3+C)`` xyz (+ rgb) of a file → ``points (N, 3)``, ``colors (N, 3)`` in [0, 1] (rgb / ``color_scale``)."""
    if table.ndim != 2 or table.shape[1] < 3:
        raise DataFormatError(f"{path}: expected (N, 3+C) points, got shape {table.shape}")
    table = np.asarray(table, dtype=np.float32)
    if not np.isfinite(table[:, :3]).all():
        raise DataFormatError(f"{path}: {int((~np.isfinite(table[:, :3])).any(1).sum())} points have NaN/inf "
                              "coordinates (expected finite x, y, z)")
    colors = None
    if table.shape[1] >= 6:
        colors = np.ascontiguousarray(table[:, 3:6] / color_scale, dtype=np.float32)
        if not np.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1 + 1e-6:
            raise DataFormatError(f"{path}: colours outside 0..{color_scale:g} in columns 4-6")
        colors = np.clip(colors, 0.0, 1.0)
    return np.ascontiguousarray(table[:, :3]), colors


def read_scannet_boxes(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``<scene>_bbox.npy`` → boxes ``(K, 7)`` (yaw 0) and labels ``(K,)`` indices into :data:`SCANNET_CLASSES`."""
    path = Path(path)
    raw = read_array(path)
    if raw.ndim != 2 or raw.shape[1] != 7:
        raise DataFormatError(f"{path}: expected (K, 7) [cx, cy, cz, dx, dy, dz, nyu40_id] boxes, got {raw.shape}")
    if not np.isfinite(raw).all() or (raw[:, 3:6] < 0).any():
        raise DataFormatError(f"{path}: boxes must be finite with non-negative sizes")
    lookup = {nyu: index for index, nyu in enumerate(SCANNET_NYU40_IDS)}
    ids = raw[:, 6].round().astype(np.int64)
    keep = np.array([i in lookup for i in ids], dtype=bool)
    boxes = np.zeros((int(keep.sum()), 7), dtype=np.float32)
    boxes[:, :6] = raw[keep, :6]
    labels = np.array([lookup[i] for i in ids[keep]], dtype=np.int64)
    return boxes, labels


def read_scannet_scene(prefix: str | os.PathLike) -> DetectionScene:
    """``<prefix>_vert_all.npy`` + ``<prefix>_bbox.npy`` (e.g. ``.../scannet/scene0000_00``)."""
    prefix = Path(prefix)
    vertices = Path(f"{prefix}_vert_all.npy")
    points, colors = split_points(vertices, read_array(vertices), 255.0)
    boxes, labels = read_scannet_boxes(Path(f"{prefix}_bbox.npy"))
    return DetectionScene(prefix.name, points, boxes, labels, SCANNET_CLASSES, colors)


def read_sunrgbd_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``label/<id>.txt`` → oriented boxes ``(K, 7)`` and labels ``(K,)`` indices into :data:`SUNRGBD_CLASSES`."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    boxes, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 13:
            raise DataFormatError(f"{path}:{number}: expected 13 fields (class, 2D box, centre, half sizes "
                                  f"w l h, heading ox oy), got {len(fields)}")
        try:
            values = [float(x) for x in fields[1:]]
        except ValueError as exc:
            raise DataFormatError(f"{path}:{number}: non-numeric field ({exc})") from exc
        if not all(math.isfinite(v) for v in values):
            raise DataFormatError(f"{path}:{number}: NaN/inf value")
        name = fields[0]
        if name not in SUNRGBD_CLASSES:
            continue
        cx, cy, cz, w, l, h, ox, oy = values[4:12]
        if min(w, l, h) < 0 or (ox == 0 and oy == 0):
            raise DataFormatError(f"{path}:{number}: negative size or zero heading vector")
        boxes.append([cx, cy, cz, 2 * l, 2 * w, 2 * h, math.atan2(oy, ox)])
        labels.append(SUNRGBD_CLASSES.index(name))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 7), np.asarray(labels, dtype=np.int64)


def read_sunrgbd_frame(root: str | os.PathLike, frame: str, label_dir: str = "label") -> DetectionScene:
    """``<root>/lidar/<frame>.npz`` (key ``pc``) + ``<root>/<label_dir>/<frame>.txt`` (``label`` or ``label_v1``)."""
    root = Path(root)
    cloud = root / "lidar" / f"{frame}.npz"
    if not cloud.is_file():
        raise DataFormatError(f"{cloud}: file not found")
    try:
        with np.load(cloud, allow_pickle=False) as archive:
            if "pc" not in archive:
                raise DataFormatError(f"{cloud}: no 'pc' array (found {sorted(archive.files)})")
            points = archive["pc"]
    except DataFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{cloud}: not a readable .npz ({exc})") from exc
    boxes, labels = read_sunrgbd_labels(root / label_dir / f"{frame}.txt")
    xyz, colors = split_points(cloud, points, 1.0)
    return DetectionScene(frame, xyz, boxes, labels, SUNRGBD_CLASSES, colors)
