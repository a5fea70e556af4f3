"""The one input adapter: a sample → the input its encoder declares (:class:`~pc3d.encoders.base.EncoderSpec`).

A sample is a dict with ``points (N, 3)`` and, when the data has them, ``colors (N, 3)`` in
[0, 1] and ``normals (N, 3)``; a radiance-grid sample carries ``grid (C, X, Y, Z)`` (plus
``grid_origin (3,)``, ``grid_cell_size``) instead. :func:`sample_input` runs per sample — in
DataLoader workers, on the CPU — and does the expensive part (voxelisation, PCA normals when
the data has none, scattering points into a grid); :func:`collate_input` batches the results:

=========  ================================================  ==================================
input      per sample (:func:`sample_input`)                  batch (:func:`collate_input`)
=========  ================================================  ==================================
points     nothing (the points are the input)                 ``(B, N, 3)`` tensor
voxels     ``voxel_coords (V, 3)``, ``voxel_features (V,C)``,  :class:`~pc3d.ops.sparse_conv.SparseVoxels`
           ``voxel_origin (3,)``                              with each sample's origin
grid       ``grid (C, X, Y, Z)``, ``grid_origin (3,)``,        :class:`~pc3d.ops.dense_grid.DenseGrid`
           ``grid_cell_size`` (``grid_valid (X, Y, Z)``)      (zero-padded to the largest grid)
=========  ================================================  ==================================

Input channels follow ``spec.input_features`` (:data:`~pc3d.encoders.base.INPUT_FEATURES`):
``color`` = colours mapped to [-1, 1] (neutral 0 when the data has none), ``rgb`` = colours in
[0, 1] (0.5 grey when none), ``normal`` = the data's normals or PCA normals
(:func:`pc3d.ops.normals.estimate_normals`), ``alpha`` = 1 in occupied cells. Voxels and
grids start at each sample's minimum corner (``origin``); encoders return their levels in the
sample's own frame.

:class:`EncoderInputDataset` wraps any dataset of such samples so that every batch carries
``batch["input"]``, ready for ``encoder(batch["input"])``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from pc3d.data.base import SampleDataset
from pc3d.data.features import point_input_features
from pc3d.encoders.base import EncoderSpec
from pc3d.errors import DataFormatError
from pc3d.ops.dense_grid import DenseGrid, points_to_grid
from pc3d.ops.sparse_conv import SparseVoxels
from pc3d.ops.voxelize import voxelize_points

INPUT_KEYS = ("voxel_coords", "voxel_features", "voxel_origin", "grid", "grid_valid", "grid_origin",
              "grid_cell_size")


def _tensor(sample: Mapping[str, Any], key: str) -> Tensor | None:
    value = sample.get(key)
    if value is None:
        return None
    return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value, dtype=torch.float32)


def check_input_kind(spec: EncoderSpec, sample: Mapping[str, Any]) -> None:
    """Raise :class:`DataFormatError` when ``sample`` is a radiance grid and the encoder does not take grids
    (there are no points to give it)."""
    if "grid" in sample and spec.input != "grid":
        raise DataFormatError(f"a radiance-grid sample needs a grid encoder (input: grid, e.g. encoder=swin3d); "
                              f"this encoder takes {spec.input}")


def sample_input(spec: EncoderSpec, sample: Mapping[str, Any]) -> dict[str, Any]:
    """The per-sample part of the encoder input (see the module docstring); CPU tensors."""
    check_input_kind(spec, sample)
    if spec.input == "points":
        return {}
    if spec.input == "grid" and "grid" in sample:  # a radiance grid: already the encoder's input
        grid = torch.as_tensor(sample["grid"], dtype=torch.float32)
        if grid.shape[0] != spec.in_channels:
            raise DataFormatError(f"grid sample has {grid.shape[0]} channels; the encoder takes {spec.in_channels} "
                                  f"({', '.join(spec.input_features)})")
        out = {"grid": grid, "grid_origin": torch.as_tensor(sample.get("grid_origin", torch.zeros(3)),
                                                           dtype=torch.float32),
               "grid_cell_size": float(sample.get("grid_cell_size", spec.voxel_size))}
        if sample.get("grid_valid") is not None:
            out["grid_valid"] = torch.as_tensor(sample["grid_valid"], dtype=torch.bool)
        return out
    points = _tensor(sample, "points")
    if points is None or points.dim() != 2 or points.shape[1] != 3 or len(points) == 0:
        raise DataFormatError(f"an encoder input needs non-empty points (N, 3), got "
                              f"{None if points is None else tuple(points.shape)}")
    features = point_input_features(spec.input_features, points, _tensor(sample, "colors"), _tensor(sample, "normals"))
    if spec.input == "voxels":
        voxels = voxelize_points(points, features, spec.voxel_size)
        return {"voxel_coords": voxels["coords"], "voxel_features": voxels["features"],
                "voxel_origin": voxels["origin"]}
    values, origin = points_to_grid(points, features, spec.voxel_size)
    return {"grid": values, "grid_origin": origin, "grid_cell_size": float(spec.voxel_size)}


def collate_input(spec: EncoderSpec, samples: Sequence[Mapping[str, Any]]) -> Tensor | SparseVoxels | DenseGrid:
    """Batch the per-sample inputs of :func:`sample_input` (with the samples' points for point encoders)."""
    if spec.input == "points":
        return torch.stack([torch.as_tensor(s["points"], dtype=torch.float32) for s in samples])
    if spec.input == "voxels":
        return SparseVoxels.batch([s["voxel_coords"] for s in samples], [s["voxel_features"] for s in samples],
                                  origins=[s["voxel_origin"] for s in samples])
    sizes = {float(s["grid_cell_size"]) for s in samples}
    if len(sizes) != 1:
        raise DataFormatError(f"grids of one batch must share a cell size, got {sorted(sizes)}")
    shape = [max(int(s["grid"].shape[axis]) for s in samples) for axis in (1, 2, 3)]
    values = samples[0]["grid"].new_zeros(len(samples), samples[0]["grid"].shape[0], *shape)
    valid = torch.zeros(len(samples), *shape, dtype=torch.bool)
    for b, s in enumerate(samples):
        x, y, z = s["grid"].shape[1:]
        values[b, :, :x, :y, :z] = s["grid"]
        valid[b, :x, :y, :z] = s.get("grid_valid", torch.ones(x, y, z, dtype=torch.bool))
    origin = torch.stack([torch.as_tensor(s["grid_origin"], dtype=torch.float32) for s in samples])
    return DenseGrid(values, valid, origin, sizes.pop())


def encoder_input(spec: EncoderSpec, samples: Sequence[Mapping[str, Any]]) -> Tensor | SparseVoxels | DenseGrid:
    """:func:`sample_input` then :func:`collate_input`, in the calling process (evaluation of a few samples)."""
    return collate_input(spec, [{**s, **sample_input(spec, s)} for s in samples])


class EncoderInputDataset(SampleDataset):
    """``dataset``'s samples with their encoder input added (computed in the DataLoader worker).

    :meth:`collate` batches the wrapped dataset's own fields as it would (its ``collate``, or
    torch's default) and adds ``batch["input"]`` (:func:`collate_input`).
    """

    def __init__(self, dataset: Dataset, spec: EncoderSpec) -> None:
        self.dataset, self.spec = dataset, spec

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.dataset, SampleDataset):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        return {**sample, **sample_input(self.spec, sample)}

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        inputs = collate_input(self.spec, samples)
        own = [{k: v for k, v in s.items() if k not in INPUT_KEYS} for s in samples]
        batch = self.dataset.collate(own) if isinstance(self.dataset, SampleDataset) else default_collate(own)
        return {**batch, "input": inputs}
