"""``data=grids``: a prepared radiance-grid folder (``pc3d prep grid``) as NeRF-MAE's training samples.

Each sample is one grid: ``{"grid": (4, X, Y, Z)`` R, G, B, alpha in ``[0, 1]``, ``"grid_origin": (3,)``,
``"grid_cell_size": ()``, ``"name"``}`` — what :meth:`pc3d.methods.NeRFMAE.pretrain_dataset` asks of
``grid_dataset()``. Augmentation is NeRF-MAE's: a flip of each horizontal axis and a quarter turn about
z, each with probability 0.5, drawn from ``(seed, epoch, index)`` so a resumed run sees the same grids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pc3d.data.base import SampleDataset
from pc3d.data.detection_data import DetectionData, grid_detection_scene
from pc3d.data.detection_scenes import DetectionScene
from pc3d.data.folders import split_names
from pc3d.data.radiance_grid import RadianceGrid, read_grid_folder, read_grid_manifest, read_radiance_grid
from pc3d.data.transforms import flip_turn_grid
from pc3d.errors import ConfigError, DataFormatError


def radiance_grid_sample(grid: RadianceGrid) -> dict[str, Any]:
    """A :class:`RadianceGrid` as a sample dict (``grid (4, X, Y, Z)`` in cell units, its world ``grid_box``)."""
    values = torch.from_numpy(np.ascontiguousarray(grid.rgb_alpha().transpose(3, 0, 1, 2)))
    return {"grid": values, "grid_origin": torch.zeros(3), "grid_cell_size": 1.0,
            "grid_box": torch.from_numpy(grid.box.astype(np.float32))}


def augment_grid(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """NeRF-MAE's grid augmentation of ``values (C, X, Y, Z)``: flip x, flip y, quarter turn about z, each p=0.5."""
    draws = torch.rand(3, generator=generator).tolist()
    flips = tuple(axis for axis, draw in zip((0, 1), draws[:2]) if draw < 0.5)
    lattice = np.array([(0, 0, 0), values.shape[1:]], dtype=np.float64)  # samples are in cell units
    moved, _, _ = flip_turn_grid(values.numpy(), lattice, np.zeros((0, 7)), flips, int(draws[2] < 0.5))
    return torch.from_numpy(moved)


class GridDataset(SampleDataset):
    """The grids of a prepared folder's splits, optionally augmented (see the module docstring)."""

    def __init__(self, grids: Sequence[RadianceGrid], names: Sequence[str], augment: bool, seed: int) -> None:
        if not grids:
            raise ConfigError("data=grids: no grid in the chosen splits")
        self.grids, self.names = list(grids), list(names)
        self.augment, self.seed = augment, int(seed)

    def __len__(self) -> int:
        return len(self.grids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = radiance_grid_sample(self.grids[index])
        if self.augment:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(index))) % (2**63))
            sample["grid"] = augment_grid(sample["grid"], generator)
        sample["name"] = self.names[index]
        return sample

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Grids keep their own shapes (a list; the encoder input pads them) and names stay a list; the
        rest is stacked."""
        return {key: [s[key] for s in samples] if key in ("grid", "name") else
                torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}


@dataclass
class GridData:
    """A prepared grid folder: ``pretrain_splits`` feed pretraining (``grid_dataset``); the grids named in
    ``train`` / ``val`` (with boxes: grids of scans) are ``pc3d detect``'s scenes (:meth:`detection`)."""

    root: str
    pretrain_splits: Sequence[str] = ("train",)
    seed: int = 0
    train: Sequence[str] | None = None
    val: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not Path(self.root).is_dir():
            raise ConfigError(f"data.root={self.root}: folder not found (prepare grids with `pc3d prep grid`)")

    def grids(self, splits: Sequence[str]) -> dict[str, RadianceGrid]:
        out: dict[str, RadianceGrid] = {}
        for split in splits:
            out.update(read_grid_folder(self.root, split))
        return out

    def grid_dataset(self, augment: bool = True) -> GridDataset:
        grids = self.grids(self.pretrain_splits)
        return GridDataset(list(grids.values()), list(grids), augment, self.seed)

    def detection(self) -> DetectionData:
        """The grids ``train`` (default: the folder's ``train`` split) and ``val`` (default: the train grids, a
        fitting check) as grid detection scenes: boxes and classes from ``pc3d prep grid format=*_scans``.
        ScanNet grids have axis-aligned boxes (flips in x and y, quarter turns; val turned 90° by default),
        SUN RGB-D grids oriented ones (flips in x; val upright), as ``data=scannet`` / ``data=sunrgbd``.

        Raises:
            ConfigError: a name that is not in the folder.
            DataFormatError: a grid without boxes, grids of different sources or box classes, cells that are
                not cubes.
        """
        root = Path(self.root)
        scenes = read_grid_manifest(root)["scenes"]
        train = list(split_names(root, scenes, "train")) if self.train is None else [str(n) for n in self.train]
        val = train if self.val is None else [str(n) for n in self.val]
        for key, names in (("train", train), ("val", val)):
            missing = [n for n in names if n not in scenes]
            if missing or not names:
                raise ConfigError(f"data.{key}: no grid {missing or names} in {root} (has {sorted(scenes)[:10]})")
        kinds = {(scenes[n].get("source_format"), tuple(scenes[n].get("box_classes") or ())) for n in {*train, *val}}
        if len(kinds) != 1:
            raise DataFormatError(f"{root}/manifest.json: the chosen grids mix sources or box classes {sorted(kinds)}")
        source_format, class_names = kinds.pop()
        if source_format not in ("scannet_scans", "sunrgbd_scans") or not class_names:
            raise DataFormatError(f"{root}/manifest.json: grid detection needs grids of scans with boxes "
                                  f"(`pc3d prep grid format=scannet_scans|sunrgbd_scans`), got "
                                  f"source_format={source_format!r}")

        def scene(name: str) -> DetectionScene:
            path = root / scenes[name]["file"]
            grid = read_radiance_grid(path, density="alpha")
            if grid.boxes is None:
                raise DataFormatError(f"{path}: no boxes / box_labels in the grid file")
            try:
                return grid_detection_scene(name, grid.rgb_alpha().transpose(3, 0, 1, 2), grid.box, grid.boxes,
                                            grid.box_labels, class_names)
            except DataFormatError as exc:  # the file, not the scene name, locates the problem
                raise DataFormatError(f"{path}: {str(exc).removeprefix(f'{name}: ')}") from None

        read = {name: scene(name) for name in dict.fromkeys([*train, *val])}
        axis_aligned = source_format == "scannet_scans"
        return DetectionData([read[n] for n in train], [read[n] for n in val], class_names,
                             oriented=not axis_aligned, num_points=0, flip_axes=(0, 1) if axis_aligned else (0,),
                             seed=self.seed, quarter_turns=axis_aligned, val_rotation=90.0 if axis_aligned else 0.0)


def grid_folder(root: str | os.PathLike, pretrain_splits: Sequence[str] = ("train",), seed: int = 0,
                train: Sequence[str] | str | None = None, val: Sequence[str] | str | None = None) -> GridData:
    """The ``data=grids`` node (``configs/data/grids.yaml``)."""
    def names(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
        return None if value is None else (str(value),) if isinstance(value, str) else tuple(map(str, value))
    return GridData(str(root), tuple(pretrain_splits), int(seed), names(train), names(val))
