"""Object point-cloud datasets over arrays of shapes (from a prepared cache).

Randomness of a sample is a pure function of ``(seed, epoch, index)``: the
generator is ``np.random.default_rng([seed, epoch, index])``. This makes training
reproducible with any number of DataLoader workers and any worker start method.
The epoch lives in a shared-memory tensor, so :meth:`ObjectDataset.set_epoch` called
in the main process before iterating reaches the workers, also with
``persistent_workers=True``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from pc3d.data.base import SampleDataset
from pc3d.data.prepared import VALID_SPLITS, load_object_cache
from pc3d.data.transforms import random_subsample, scale_and_translate
from pc3d.errors import ConfigError

__all__ = ["stratified_split", "ObjectDataset"]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into train and validation.

    Each class with ``n`` samples gives ``round(val_fraction * n)`` samples to
    validation, at least 1 when ``n >= 2`` and ``val_fraction > 0``, and never all of
    them (a class with a single sample stays in train).

    Args:
        labels: ``(S,)`` integer labels.
        val_fraction: in ``[0, 1)``.
        seed: the same seed gives the same split.

    Returns:
        ``(train_idx, val_idx)``, both sorted int64, disjoint, covering ``range(S)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = members.size
        k = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = min(k, max(n - 1, 0))
        if k:
            val.append(rng.permutation(members)[:k])
        else:
            rng.permutation(members)  # keep the stream independent of which classes are empty
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx


class ObjectDataset(SampleDataset):
    """Shapes with labels; items are ``{"points": (num_points, 3) float32, "label": () int64}``.

    Args:
        points: ``(S, N, 3)`` float array (a cache's ``points``; may be a memmap).
        labels: ``(S,)`` integer labels.
        num_points: points per item (default ``N``). ``N > num_points``: a random subset
            without replacement; ``N < num_points``: sampled with replacement.
        augment: apply :func:`~pc3d.data.transforms.scale_and_translate` (per-axis scale
            ``U[2/3, 3/2]``, shift ``U[-0.2, 0.2]``) and draw a fresh subset every epoch.
        seed: base seed.
        indices: optional ``(K,)`` subset of shape indices (e.g. a split).
        class_names: optional label names, kept as an attribute.

    With ``augment=False`` every item is a fixed function of ``(seed, index)`` (same
    subset every epoch) and, when ``N == num_points``, the stored points are returned
    unchanged, in stored order. With ``augment=True`` it depends on ``(seed, epoch,
    index)``; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, points: np.ndarray, labels: np.ndarray, num_points: int | None = None,
                 augment: bool = False, seed: int = 0, indices: np.ndarray | None = None,
                 class_names: list[str] | None = None) -> None:
        if points.ndim != 3 or points.shape[2] != 3:
            raise ConfigError(f"points must have shape (S, N, 3), got {tuple(points.shape)}")
        labels = np.asarray(labels)
        if labels.shape != (points.shape[0],):
            raise ConfigError(f"labels must have shape ({points.shape[0]},), got {tuple(labels.shape)}")
        self.points = points
        self.labels = labels.astype(np.int64, copy=False)
        self.num_points = int(num_points) if num_points is not None else int(points.shape[1])
        if self.num_points < 1:
            raise ConfigError(f"num_points must be >= 1, got {self.num_points}")
        self.augment = bool(augment)
        self.seed = int(seed)
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        if indices is None:
            self.indices = np.arange(points.shape[0], dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64)
            if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= points.shape[0]):
                raise ConfigError("indices out of range of the points array")
        self.class_names = list(class_names) if class_names is not None else None
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @classmethod
    def from_cache(cls, root: str | os.PathLike, split: str = "train", *, num_points: int | None = None,
                   augment: bool = False, seed: int = 0, indices: np.ndarray | None = None,
                   mmap: bool = False) -> "ObjectDataset":
        """Dataset over one split of a prepared cache (:func:`~pc3d.data.prepared.load_object_cache`).

        Args:
            split: ``train``/``val``/``test``, or ``all``.
            indices: optional positions *within the split* (e.g. from :func:`stratified_split`
                on ``dataset.split_labels``).
        """
        cache = load_object_cache(root, mmap=mmap)
        if split == "all":
            members = np.arange(len(cache), dtype=np.int64)
        elif split in VALID_SPLITS:
            members = cache.split_indices(split)
        else:
            raise ConfigError(f"split must be one of {list(VALID_SPLITS) + ['all']}, got {split!r}")
        if indices is not None:
            members = members[np.asarray(indices, dtype=np.int64)]
        return cls(cache.points, cache.labels, num_points=num_points, augment=augment, seed=seed,
                   indices=members, class_names=cache.class_names)

    @property
    def split_labels(self) -> np.ndarray:
        """``(len(self),)`` labels of the items, in item order."""
        return self.labels[self.indices]

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (shared with DataLoader workers)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = int(index) % len(self)
        shape = int(self.indices[index])
        pts = np.asarray(self.points[shape])
        stored = pts.shape[0]
        if not self.augment and stored == self.num_points:
            out = np.array(pts, dtype=np.float32, copy=True)
        else:
            epoch = self.epoch if self.augment else 0
            rng = np.random.default_rng([self.seed, epoch, index])
            out = random_subsample(pts, self.num_points, rng)
            if self.augment:
                out = scale_and_translate(out, rng)
        return {"points": torch.from_numpy(out), "label": torch.tensor(self.labels[shape], dtype=torch.long)}
