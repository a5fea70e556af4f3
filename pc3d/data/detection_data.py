"""Detection datasets as the CLI sees them: scenes with boxes, split into train and val.

``data=synthetic_rooms`` (embedded default), ``data=scannet`` and ``data=sunrgbd`` resolve to
:class:`DetectionData` through the functions below (the ``_target_`` of ``configs/data/*.yaml``);
``data=grids`` (radiance grids of scans, with boxes) through :meth:`pc3d.data.grid_data.GridData.detection`.
:class:`DetectionDataset` turns scenes into fixed-size training samples, or a grid scene into its grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pc3d.data.base import SampleDataset
from pc3d.data.detection_scenes import (SCANNET_CLASSES, SUNRGBD_CLASSES, DetectionScene, read_scannet_scene,
                                        read_sunrgbd_frame)
from pc3d.data.synthetic_rooms import ROOM_CLASSES, generate_room
from pc3d.data.transforms import (augment_scene, flip_turn_grid, random_subsample, rotate_scene_quarter_turns,
                                  rotate_scene_z)
from pc3d.errors import ConfigError, DataFormatError


@dataclass
class DetectionData:
    """Train and val scenes of one dataset; ``oriented``: boxes carry a yaw (IoU and head use it)."""

    train: list[DetectionScene]
    val: list[DetectionScene]
    class_names: tuple[str, ...]
    oriented: bool
    num_points: int
    flip_axes: tuple[int, ...] = (0,)
    max_rotation: float = float(np.pi / 6)
    scale_range: tuple[float, float] = (0.85, 1.15)
    seed: int = 0
    quarter_turns: bool = False
    val_rotation: float = 0.0

    def rotated_val(self, degrees: float) -> "DetectionData":
        """The same data with every val scene turned in place by ``degrees`` about z (about the centre of
        its points' bounding box), boxes with it: a rescan in another orientation. Axis-aligned data
        takes multiples of 90° only (its boxes stay axis-aligned: ``dx`` and ``dy`` swap on odd turns)."""
        degrees = float(degrees)
        if degrees % 360 == 0:
            return self
        if not self.oriented and degrees % 90 != 0:
            raise ConfigError(f"detect.val_rotation={degrees:g}: this data's boxes are axis-aligned, so the val "
                              "scenes can only be turned by multiples of 90 degrees")
        if degrees % 90 != 0 and any(s.grid_values is not None for s in self.val):
            raise ConfigError(f"detect.val_rotation={degrees:g}: grid scenes turn by multiples of 90 degrees only "
                              "(their cells are re-indexed, never resampled)")
        return replace(self, val=[rotated_detection_scene(s, degrees, quarter_turns=not self.oriented)
                                  for s in self.val])

    def pretrain_dataset(self, augment: bool = True) -> "DetectionDataset":
        """The train scenes for self-supervised pretraining (``pc3d pretrain data=synthetic_rooms``),
        seeded with ``seed``; methods read ``points`` and ignore the boxes."""
        return self.dataset("train", augment=augment, seed=self.seed)

    def dataset(self, split: str, augment: bool, seed: int) -> "DetectionDataset":
        scenes = {"train": self.train, "val": self.val}.get(split)
        if scenes is None:
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        return DetectionDataset(scenes, self.num_points, augment=augment, seed=seed, flip_axes=self.flip_axes,
                                max_rotation=self.max_rotation, scale_range=self.scale_range,
                                quarter_turns=self.quarter_turns)


class DetectionDataset(SampleDataset):
    """``{"points": (num_points, 3), "gt_boxes": (K_max, 7), "gt_labels": (K_max,)}`` per scene, plus
    ``"colors" (num_points, 3)`` in [0, 1] when the scenes have them.

    Points are a random subset of the scene (with replacement only when it has fewer); with
    ``augment`` the VoteNet-style :func:`~pc3d.data.transforms.augment_scene` moves points and
    boxes together. Boxes are padded to the largest count of the dataset with label -1. Every
    sample depends only on ``(seed, epoch, index)``.
    """

    def __init__(self, scenes: Sequence[DetectionScene], num_points: int, augment: bool, seed: int,
                 flip_axes: tuple[int, ...] = (0,), max_rotation: float = float(np.pi / 6),
                 scale_range: tuple[float, float] = (0.85, 1.15), quarter_turns: bool = False) -> None:
        if not scenes:
            raise DataFormatError("the detection dataset has no scenes")
        self.scenes = list(scenes)
        self.num_points, self.augment, self.seed = num_points, augment, seed
        self.flip_axes, self.max_rotation, self.scale_range = tuple(flip_axes), max_rotation, tuple(scale_range)
        self.quarter_turns = quarter_turns
        self.max_boxes = max(1, max(len(s.boxes) for s in self.scenes))

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scenes[index]
        rng = self.sample_rng(index)
        if scene.grid_values is not None:
            return self._grid_sample(scene, rng)
        table = scene.points if scene.colors is None else np.concatenate([scene.points, scene.colors], axis=1)
        table, boxes = random_subsample(table, self.num_points, rng), scene.boxes  # colours ride along
        if self.augment:
            table, boxes = augment_scene(table, boxes, rng, flip_axes=self.flip_axes,
                                         max_rotation=self.max_rotation, scale_range=self.scale_range,
                                         quarter_turns=self.quarter_turns)
        points = table[:, :3]
        sample = {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
                  **self._padded_boxes(boxes, scene.labels)}
        if scene.colors is not None:
            sample["colors"] = torch.from_numpy(np.ascontiguousarray(table[:, 3:6], dtype=np.float32))
        return sample

    def _padded_boxes(self, boxes: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        gt_boxes = np.zeros((self.max_boxes, 7), dtype=np.float32)
        gt_labels = np.full(self.max_boxes, -1, dtype=np.int64)
        gt_boxes[:len(boxes)] = boxes
        gt_labels[:len(boxes)] = labels
        return {"gt_boxes": torch.from_numpy(gt_boxes), "gt_labels": torch.from_numpy(gt_labels)}

    def _grid_sample(self, scene: DetectionScene, rng: np.random.Generator) -> dict[str, Any]:
        """``{"grid" (C, X, Y, Z), "grid_origin" (3,), "grid_cell_size", "gt_boxes", "gt_labels"}``: the whole
        grid in the world frame; with ``augment`` a flip of each of ``flip_axes`` (p = 0.5) and, for
        ``quarter_turns`` data, 0-3 quarter turns, boxes with it (exact, :func:`flip_turn_grid`)."""
        flips: tuple[int, ...] = ()
        turns = 0
        if self.augment:
            flips = tuple(axis for axis in self.flip_axes if rng.random() < 0.5)
            turns = int(rng.integers(4)) if self.quarter_turns else 0
        values, box, boxes = flip_turn_grid(scene.grid_values, scene.grid_box, scene.boxes, flips, turns)
        return {"grid": torch.from_numpy(values.astype(np.float32, copy=False)),
                "grid_origin": torch.from_numpy(box[0].astype(np.float32)),
                "grid_cell_size": float((box[1, 0] - box[0, 0]) / values.shape[1]),
                **self._padded_boxes(boxes, scene.labels)}


def grid_detection_scene(name: str, values: np.ndarray, box: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                         class_names: tuple[str, ...], min_alpha: float = 0.01) -> DetectionScene:
    """A grid scene: ``values (4, X, Y, Z)`` (R, G, B, alpha) on the lattice ``box (2, 3)`` with ``boxes (K, 7)``
    of ``labels (K,)``; its ``points`` are the centres of the cells with alpha > ``min_alpha``.

    Raises:
        DataFormatError: the cells are not cubes (a grid encoder takes one cell size), or no cell is occupied.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    box = np.asarray(box, dtype=np.float64)
    cell = (box[1] - box[0]) / np.asarray(values.shape[1:], dtype=np.float64)
    if not np.allclose(cell, cell[0], rtol=1e-4, atol=0.0):
        raise DataFormatError(f"{name}: grid cells of {np.round(cell, 6).tolist()} are not cubes; grid detection "
                              "takes one cell size (prepare the grid with `pc3d prep grid format=*_scans`)")
    occupied = np.argwhere(values[3] > min_alpha)
    if len(occupied) == 0:
        raise DataFormatError(f"{name}: no cell has alpha > {min_alpha:g}")
    points = (box[0] + (occupied + 0.5) * cell).astype(np.float32)
    colors = values[:3, occupied[:, 0], occupied[:, 1], occupied[:, 2]].T.copy()
    return DetectionScene(name, points, np.asarray(boxes, dtype=np.float32).reshape(-1, 7),
                          np.asarray(labels, dtype=np.int64).reshape(-1), tuple(class_names), colors, values, box)


def rotated_detection_scene(scene: DetectionScene, degrees: float, quarter_turns: bool) -> DetectionScene:
    """``scene`` turned in place by ``degrees`` about z (about its points' bounding-box centre), boxes with it:
    ``quarter_turns`` (axis-aligned boxes, ``degrees`` a multiple of 90) keeps them axis-aligned, otherwise
    their yaw turns. A grid scene turns about its lattice's centre (``degrees`` a multiple of 90)."""
    if scene.grid_values is not None:
        turns = int(round(degrees / 90))
        values, box, boxes = flip_turn_grid(scene.grid_values, scene.grid_box, scene.boxes, (), turns)
        return grid_detection_scene(f"{scene.name}@rot{degrees:g}", values, box, boxes, scene.labels,
                                    scene.class_names)
    centre = (scene.points.min(axis=0) + scene.points.max(axis=0)) / 2
    centre[2] = 0.0
    points, boxes = scene.points - centre, scene.boxes.copy()
    boxes[:, :3] -= centre
    if quarter_turns:
        points, boxes = rotate_scene_quarter_turns(points, boxes, int(round(degrees / 90)))
    else:
        points, boxes = rotate_scene_z(points, boxes, float(np.deg2rad(degrees)))
    boxes[:, :3] += centre
    return replace(scene, name=f"{scene.name}@rot{degrees:g}", points=(points + centre).astype(np.float32),
                   boxes=boxes.astype(np.float32))


def synthetic_rooms_data(train_scenes: int = 64, val_scenes: int = 16, num_points: int = 8192,
                         density: float = 400.0, generator_seed: int = 0, seed: int = 0) -> DetectionData:
    """Rooms ``0..train_scenes-1`` for training, the next ``val_scenes`` held out."""
    if train_scenes < 1 or val_scenes < 1:
        raise ConfigError(f"data.train_scenes and data.val_scenes must be >= 1, got {train_scenes}, {val_scenes}")
    rooms = [generate_room(i, seed=generator_seed, density=density) for i in range(train_scenes + val_scenes)]
    return DetectionData(rooms[:train_scenes], rooms[train_scenes:], ROOM_CLASSES, oriented=True,
                         num_points=num_points, flip_axes=(0, 1), max_rotation=float(np.pi), seed=seed)


def _names(value: Sequence[str] | str, key: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ConfigError(f"data.{key} is empty")
    return names


def scannet_data(root: str | os.PathLike, train: Sequence[str], val: Sequence[str] | None = None,
                 num_points: int = 40000, seed: int = 0) -> DetectionData:
    """ScanNet scenes ``<root>/<name>_{vert_all,bbox}.npy``; ``val`` defaults to ``train`` (fitting check)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"data.root={root}: directory not found")
    train_scenes = [read_scannet_scene(root / name) for name in _names(train, "train")]
    val_scenes = [read_scannet_scene(root / name) for name in _names(val, "val")] if val else train_scenes
    return DetectionData(train_scenes, val_scenes, SCANNET_CLASSES, oriented=False, num_points=num_points,
                         flip_axes=(0, 1), max_rotation=float(np.pi / 36), seed=seed, quarter_turns=True,
                         val_rotation=90.0)


def sunrgbd_data(root: str | os.PathLike, train: Sequence[str], val: Sequence[str] | None = None,
                 num_points: int = 20000, label_dir: str = "label", seed: int = 0) -> DetectionData:
    """SUN RGB-D frames ``<root>/lidar/<id>.npz`` + ``<root>/<label_dir>/<id>.txt``; ``val`` defaults to ``train``."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"data.root={root}: directory not found")
    train_frames = [read_sunrgbd_frame(root, str(name), label_dir) for name in _names(train, "train")]
    val_frames = ([read_sunrgbd_frame(root, str(name), label_dir) for name in _names(val, "val")]
                  if val else train_frames)
    return DetectionData(train_frames, val_frames, SUNRGBD_CLASSES, oriented=True, num_points=num_points,
                         seed=seed)
