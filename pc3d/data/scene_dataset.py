"""MSM's training samples: pairs of augmented, voxelised views of crops of scans.

A view's voxels hold the mean input channels of their points (``input_features``, see
:mod:`pc3d.data.features`; MSM: colour in [-1, 1] and normal, 6 channels). Grid indices start
at 0 at the view's minimum corner. Scans as inputs of any other encoder go through the one
adapter, :mod:`pc3d.encoders.inputs`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from pc3d.data.base import SampleDataset
from pc3d.data.features import point_input_features
from pc3d.data.scenes import Scene
from pc3d.data.transforms import augment_scan, sphere_crop
from pc3d.errors import ConfigError, DataFormatError
from pc3d.ops.sparse_conv import SparseVoxels
from pc3d.ops.voxelize import voxelize_points


class SceneViewDataset(SampleDataset):
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
                 elastic: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6)),
                 input_features: Sequence[str] = ("color", "normal")) -> None:
        if not scenes:
            raise DataFormatError("the scene dataset has no scans")
        if voxel_size <= 0 or crop_points < 1 or repeats < 1:
            raise ConfigError(f"voxel_size={voxel_size}, crop_points={crop_points}, repeats={repeats}: "
                              "expected positive values")
        self.scenes, self.voxel_size, self.crop_points = list(scenes), float(voxel_size), int(crop_points)
        self.repeats, self.augment, self.seed = int(repeats), bool(augment), int(seed)
        self.elastic = tuple(tuple(float(v) for v in pair) for pair in elastic)
        self.input_features = tuple(input_features)

    def __len__(self) -> int:
        return len(self.scenes) * self.repeats

    def _view(self, points: np.ndarray, colors: np.ndarray, normals: np.ndarray, rng: np.random.Generator
              ) -> dict[str, Tensor]:
        if self.augment:
            points, colors, normals = augment_scan(points, colors, normals, rng, elastic=self.elastic)
        points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
        features = point_input_features(self.input_features, points, torch.as_tensor(np.asarray(colors)),
                                        torch.as_tensor(np.asarray(normals)))
        voxels = voxelize_points(points, features, self.voxel_size)
        return {"coords": voxels["coords"], "features": voxels["features"], "point_voxel": voxels["point_voxel"]}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scene = self.scenes[index % len(self.scenes)]
        keep = sphere_crop(scene.points, self.crop_points, rng)
        points, colors, normals = scene.points[keep], scene.colors[keep], scene.normals[keep]
        a, b = self._view(points, colors, normals, rng), self._view(points, colors, normals, rng)
        return {**{f"a_{k}": v for k, v in a.items()}, **{f"b_{k}": v for k, v in b.items()}}

    @staticmethod
    def collate(samples: Sequence[dict[str, Tensor]]) -> dict[str, Any]:  # type: ignore[override]
        """Batch: ``a_coords (ΣVa, 4) int32`` ``[batch, x, y, z]``, ``a_features (ΣVa, C)``,
        ``a_point_voxel (ΣP,)`` indexing the batched voxels, the same for ``b``, and
        ``batch_size`` (int)."""
        batch: dict[str, Any] = {"batch_size": len(samples)}
        for view in ("a", "b"):
            voxels = SparseVoxels.batch([s[f"{view}_coords"] for s in samples], [s[f"{view}_features"] for s in samples])
            offsets = np.cumsum([0] + [len(s[f"{view}_coords"]) for s in samples[:-1]])
            batch[f"{view}_coords"], batch[f"{view}_features"] = voxels.coords, voxels.features
            batch[f"{view}_point_voxel"] = torch.cat([s[f"{view}_point_voxel"] + int(o)
                                                      for s, o in zip(samples, offsets)])
        return batch
