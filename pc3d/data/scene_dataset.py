"""Scans as sparse-encoder inputs: voxelised scenes, and MSM's pairs of augmented views.

A scan (:class:`~pc3d.data.scenes.Scene`) becomes voxels of ``voxel_size`` whose features
are the mean colour (scaled to [-1, 1]) and mean normal of their points (6 channels, MSM's
input). Grid indices start at 0 at the scan's (or view's) minimum corner, so the encoder's
level coordinates are metres from that corner.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pc3d.data.scenes import Scene
from pc3d.data.transforms import augment_scan, sphere_crop
from pc3d.errors import ConfigError, DataFormatError
from pc3d.ops.sparse_conv import SparseVoxels
from pc3d.ops.voxelize import voxel_mean, voxelize

IN_CHANNELS = 6


def point_features(color: np.ndarray | Tensor, normal: np.ndarray | Tensor) -> Tensor:
    """``(N, 6)`` float32 = [colour / 127.5 - 1 ‖ normal]."""
    color = torch.as_tensor(np.asarray(color), dtype=torch.float32)
    normal = torch.as_tensor(np.asarray(normal), dtype=torch.float32)
    return torch.cat([color / 127.5 - 1.0, normal], dim=1)


def voxelize_scan(xyz: np.ndarray | Tensor, features: Tensor, voxel_size: float) -> dict[str, Tensor]:
    """``{"coords": (V, 3) int32, "features": (V, C), "point_voxel": (N,) int64}`` (mean features per voxel)."""
    xyz = torch.as_tensor(np.asarray(xyz), dtype=torch.float32)
    grid, inverse = voxelize(xyz, voxel_size)
    return {"coords": grid.to(torch.int32), "features": voxel_mean(features, inverse, len(grid)),
            "point_voxel": inverse}


def scan_voxels(scene: Scene, voxel_size: float) -> tuple[SparseVoxels, Tensor]:
    """A whole scan as a batch of one: ``SparseVoxels`` and the voxel of every point ``(N,)``."""
    sample = voxelize_scan(scene.coord, point_features(scene.color, scene.normal), voxel_size)
    return collate_voxels([sample]), sample["point_voxel"]


def collate_voxels(samples: Sequence[dict[str, Tensor]], prefix: str = "") -> SparseVoxels:
    """Concatenate samples' ``{prefix}coords`` / ``{prefix}features`` with a batch column."""
    coords = torch.cat([torch.cat([torch.full((len(s[f"{prefix}coords"]), 1), b, dtype=torch.int32),
                                   s[f"{prefix}coords"]], dim=1) for b, s in enumerate(samples)])
    features = torch.cat([s[f"{prefix}features"] for s in samples])
    return SparseVoxels(features, coords, len(samples))


class SceneViewDataset(Dataset):
    """Two augmented, voxelised views of one crop of a scan per sample (MSM's input).

    Each sample takes a sphere crop of ``crop_points`` points around a random point, then draws
    two independent :func:`~pc3d.data.transforms.augment_scan` views of the same points and
    voxelises each, so every point links a voxel of view ``a`` to a voxel of view ``b``. Scans
    are repeated ``repeats`` times per epoch. Every sample depends only on ``(seed, epoch,
    index)``.

    Items: ``a_coords (Va, 3) int32``, ``a_features (Va, 6)``, ``a_point_voxel (P,)`` and the
    same for ``b``. :meth:`collate` batches them (see there).
    """

    def __init__(self, scenes: Sequence[Scene], voxel_size: float = 0.02, crop_points: int = 102400,
                 repeats: int = 1, augment: bool = True, seed: int = 0,
                 elastic: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6))) -> None:
        if not scenes:
            raise DataFormatError("the scene dataset has no scans")
        if voxel_size <= 0 or crop_points < 1 or repeats < 1:
            raise ConfigError(f"voxel_size={voxel_size}, crop_points={crop_points}, repeats={repeats}: "
                              "expected positive values")
        self.scenes, self.voxel_size, self.crop_points = list(scenes), float(voxel_size), int(crop_points)
        self.repeats, self.augment, self.seed = int(repeats), bool(augment), int(seed)
        self.elastic = tuple(tuple(float(v) for v in pair) for pair in elastic)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scenes) * self.repeats

    def _view(self, xyz: np.ndarray, color: np.ndarray, normal: np.ndarray, rng: np.random.Generator
              ) -> dict[str, Tensor]:
        if self.augment:
            xyz, color, normal = augment_scan(xyz, color, normal, rng, elastic=self.elastic)
        return voxelize_scan(xyz, point_features(color, normal), self.voxel_size)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scene = self.scenes[index % len(self.scenes)]
        keep = sphere_crop(scene.coord, self.crop_points, rng)
        xyz, color, normal = scene.coord[keep], scene.color[keep], scene.normal[keep]
        a, b = self._view(xyz, color, normal, rng), self._view(xyz, color, normal, rng)
        return {**{f"a_{k}": v for k, v in a.items()}, **{f"b_{k}": v for k, v in b.items()}}

    @staticmethod
    def collate(samples: Sequence[dict[str, Tensor]]) -> dict[str, Any]:
        """Batch: ``a_coords (ΣVa, 4) int32`` ``[batch, x, y, z]``, ``a_features (ΣVa, 6)``,
        ``a_point_voxel (ΣP,)`` indexing the batched voxels, the same for ``b``, and
        ``batch_size``."""
        batch: dict[str, Any] = {"batch_size": torch.tensor(len(samples))}
        for view in ("a", "b"):
            voxels = collate_voxels(samples, prefix=f"{view}_")
            offsets = np.cumsum([0] + [len(s[f"{view}_coords"]) for s in samples[:-1]])
            batch[f"{view}_coords"], batch[f"{view}_features"] = voxels.coords, voxels.features
            batch[f"{view}_point_voxel"] = torch.cat([s[f"{view}_point_voxel"] + int(o)
                                                      for s, o in zip(samples, offsets)])
        return batch
