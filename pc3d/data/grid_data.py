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
from pc3d.data.radiance_grid import RadianceGrid, read_grid_folder
from pc3d.errors import ConfigError


def radiance_grid_sample(grid: RadianceGrid) -> dict[str, Any]:
    """A :class:`RadianceGrid` as a sample dict (``grid (4, X, Y, Z)`` in cell units, its world ``grid_box``)."""
    values = torch.from_numpy(np.ascontiguousarray(grid.rgb_alpha().transpose(3, 0, 1, 2)))
    return {"grid": values, "grid_origin": torch.zeros(3), "grid_cell_size": 1.0,
            "grid_box": torch.from_numpy(grid.box.astype(np.float32))}


def augment_grid(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """NeRF-MAE's grid augmentation of ``values (C, X, Y, Z)``: flip x, flip y, quarter turn about z, each p=0.5."""
    draws = torch.rand(3, generator=generator)
    if draws[0] < 0.5:
        values = values.flip(1)
    if draws[1] < 0.5:
        values = values.flip(2)
    if draws[2] < 0.5:
        values = values.rot90(1, dims=(1, 2))
    return values.contiguous()


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
    """A prepared grid folder: ``pretrain_splits`` feed pretraining (``grid_dataset``)."""

    root: str
    pretrain_splits: Sequence[str] = ("train",)
    seed: int = 0

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


def grid_folder(root: str | os.PathLike, pretrain_splits: Sequence[str] = ("train",), seed: int = 0) -> GridData:
    """The ``data=grids`` node (``configs/data/grids.yaml``)."""
    return GridData(str(root), tuple(pretrain_splits), int(seed))
