"""Coloured scans as radiance grids with labels: the scan datasets with boxes and classes become grid
datasets for NeRF-MAE, grid detection and a voxel probe (``pc3d prep grid format=scannet_scans|sunrgbd_scans``).

:func:`scan_to_grid` puts a coloured point cloud on a regular lattice over its bounding box:

* **cell size** ``cell`` metres, made larger when the longest side would exceed ``max_cells`` cells
  (NeRF-MAE's grids have 160 on their longest side);
* **colour**: the mean colour of the points in each cell; empty cells are black;
* **opacity**: ``occupied_alpha`` in every cell holding a point (a scan samples surfaces, so an occupied
  cell is an opaque piece of surface), 0 elsewhere. A grid fitted to images (``pc3d prep grid`` from posed
  images) has graded opacities instead; both are stored as alpha;
* **classes**: with per-point labels, each cell takes the most frequent label of its points (ties: the
  smallest), ``-1`` for empty cells and cells of unlabelled points only;
* **boxes** are kept in the world frame with their classes.

Sources (:func:`scannet_scan_grid`, :func:`sunrgbd_scan_grid`): ScanNet's numpy layout
(``<scene>_vert_all.npy``, ``_sem_label_all.npy`` → the ScanNet-20 classes, ``_bbox.npy`` → the 18
detection classes, axis-aligned) and SUN RGB-D frames (``lidar/<id>.npz`` depth points and
``label/<id>.txt`` oriented boxes of the 10 detection classes; no per-point classes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pc3d.data.detection_scenes import (SCANNET_CLASSES, SUNRGBD_CLASSES, read_scannet_boxes, read_sunrgbd_frame,
                                        split_points)
from pc3d.data.io import read_array
from pc3d.data.radiance_grid import RadianceGrid
from pc3d.data.scenes import SCANNET20_CLASSES, nyu40_to_scannet20, read_point_labels
from pc3d.errors import ConfigError, DataFormatError
from pc3d.ops.dense_grid import points_to_grid

__all__ = ["SCAN_GRID_CLASSES", "scan_to_grid", "scannet_scan_grid", "sunrgbd_scan_grid"]


def scan_to_grid(points: np.ndarray, colors: np.ndarray, cell: float, *, labels: np.ndarray | None = None,
                 boxes: np.ndarray | None = None, box_labels: np.ndarray | None = None, max_cells: int = 160,
                 occupied_alpha: float = 1.0) -> RadianceGrid:
    """``points (N, 3)``, ``colors (N, 3)`` in [0, 1] (+ ``labels (N,)`` int, -1 unlabelled; ``boxes (K, 7)``,
    ``box_labels (K,)``) → a :class:`RadianceGrid` (see the module docstring)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0 or not np.isfinite(points).all():
        raise DataFormatError(f"scan_to_grid: expected finite (N >= 1, 3) points, got {points.shape}")
    if np.shape(colors) != points.shape:
        raise DataFormatError(f"scan_to_grid: colors {np.shape(colors)} do not match points {points.shape}")
    if not cell > 0 or max_cells < 1 or not 0 < occupied_alpha <= 1:
        raise ConfigError(f"scan grid: cell must be > 0, max_cells >= 1 and occupied_alpha in (0, 1], got {cell}, "
                          f"{max_cells}, {occupied_alpha}")
    low, high = points.min(axis=0), points.max(axis=0)
    extent = np.maximum(high - low, 1e-6)
    cell = max(float(cell), float(extent.max()) / max_cells * (1 + 1e-9))
    shape = np.maximum(np.ceil(extent / cell).astype(np.int64), 1)
    center = (low + high) / 2
    box = np.stack([center - shape * cell / 2, center + shape * cell / 2])
    index = np.clip(np.floor((points - box[0]) / cell).astype(np.int64), 0, shape - 1)
    # the input adapter's scatter (mean per occupied cell), so a scan grid is what a grid encoder is given
    # for the same points at this cell size; cell centres, as a point on the box's far face has no cell
    features = np.concatenate([np.asarray(colors, np.float64), np.full((len(points), 1), occupied_alpha)], axis=1)
    values, _ = points_to_grid(torch.from_numpy(box[0] + (index + 0.5) * cell), torch.from_numpy(features), cell,
                               origin=torch.from_numpy(box[0]), shape=tuple(int(n) for n in shape))
    values = values.numpy()
    flat = np.ravel_multi_index(index.T, shape)
    cells = int(np.prod(shape))
    semantic = None
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(points):
            raise DataFormatError(f"scan_to_grid: {len(labels)} labels for {len(points)} points")
        semantic = np.full(cells, -1, dtype=np.int64)
        known = labels >= 0
        if known.any():
            classes = int(labels[known].max()) + 1
            votes = np.bincount(flat[known] * classes + labels[known], minlength=cells * classes).reshape(cells,
                                                                                                          classes)
            voted = votes.sum(axis=1) > 0
            semantic[voted] = votes[voted].argmax(axis=1)  # argmax: the smallest of tied labels
        semantic = semantic.reshape(*shape)
    return RadianceGrid(rgb=np.clip(values[:3].transpose(1, 2, 3, 0), 0.0, 1.0), alpha=values[3], box=box,
                        semantic=semantic, boxes=boxes, box_labels=box_labels)


def scannet_scan_grid(prefix: str | os.PathLike, cell: float, max_cells: int = 160,
                      occupied_alpha: float = 1.0) -> RadianceGrid:
    """``<prefix>_vert_all.npy`` (+ ``_sem_label_all.npy``: ScanNet-20 cell classes, :data:`SCANNET20_CLASSES`;
    ``_bbox.npy``: boxes of :data:`~pc3d.data.detection_scenes.SCANNET_CLASSES`) as a grid."""
    prefix = Path(prefix)
    vertices = Path(f"{prefix}_vert_all.npy")
    points, colors = split_points(vertices, read_array(vertices), 255.0)
    if colors is None:
        raise DataFormatError(f"{vertices}: expected (N, 6) xyz + rgb")
    bbox = Path(f"{prefix}_bbox.npy")
    boxes, box_labels = read_scannet_boxes(bbox) if bbox.is_file() else (None, None)
    semantic_file = Path(f"{prefix}_sem_label_all.npy")
    labels = (nyu40_to_scannet20(read_point_labels(semantic_file, len(points))) if semantic_file.is_file()
              else None)
    return scan_to_grid(points, colors, cell, labels=labels, boxes=boxes, box_labels=box_labels,
                        max_cells=max_cells, occupied_alpha=occupied_alpha)


def sunrgbd_scan_grid(root: str | os.PathLike, frame: str, cell: float, max_cells: int = 160,
                      occupied_alpha: float = 1.0, label_dir: str = "label") -> RadianceGrid:
    """SUN RGB-D ``lidar/<frame>.npz`` + ``<label_dir>/<frame>.txt`` (oriented boxes of
    :data:`~pc3d.data.detection_scenes.SUNRGBD_CLASSES`) as a grid, in the frame's upright depth coordinates."""
    scene = read_sunrgbd_frame(root, frame, label_dir)
    if scene.colors is None:
        raise DataFormatError(f"{Path(root) / 'lidar' / f'{frame}.npz'}: expected xyz + rgb points")
    return scan_to_grid(scene.points, scene.colors, cell, boxes=scene.boxes, box_labels=scene.labels,
                        max_cells=max_cells, occupied_alpha=occupied_alpha)


#: what the classes of a scan grid's ``semantic`` and ``box_labels`` index, per source format
SCAN_GRID_CLASSES = {"scannet_scans": {"semantic": SCANNET20_CLASSES, "boxes": SCANNET_CLASSES},
                     "sunrgbd_scans": {"semantic": (), "boxes": SUNRGBD_CLASSES}}
