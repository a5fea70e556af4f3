"""Object datasets as the CLI sees them: a prepared cache plus the seeded splits.

``data=synthetic_shapes`` and ``data=modelnet10`` both resolve to :class:`ObjectData`
through the functions below (the ``_target_`` of ``configs/data/*.yaml``).

Splits: ``train`` is the official train split; the probe fits on a seeded,
stratified ``fit`` part of it and chooses C on the ``val`` part; ``test`` is the
official test split when the data has one. Pretraining uses ``pretrain_subset``
(default ``train``: the whole official train split — labels are never read — as in
the reference run; ``fit`` keeps the val shapes out of pretraining too).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pc3d.errors import ConfigError, DataFormatError
from pc3d.data.object_dataset import ObjectDataset, stratified_split
from pc3d.data.prepared import ObjectCache, load_object_cache
from pc3d.data.synthetic_shapes import prepare_synthetic_shapes

MANIFEST = "manifest.json"


def default_cache_root() -> Path:
    return Path(os.environ.get("PC3D_CACHE", Path.home() / ".cache" / "pc3d"))


@dataclass
class ObjectData:
    """A prepared object dataset and its index splits (indices into ``cache``)."""

    cache: ObjectCache
    train: np.ndarray
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    num_points: int
    pretrain_subset: str = "train"
    seed: int = 0

    @property
    def class_names(self) -> list[str]:
        return list(self.cache.class_names)

    def points(self, indices: np.ndarray) -> np.ndarray:
        """``(len(indices), num_points, 3)`` clouds, the first ``num_points`` of each (deterministic)."""
        return self.cache.points[indices, : self.num_points]

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return self.cache.labels[indices]

    def pretrain_dataset(self, augment: bool = True) -> ObjectDataset:
        """The unlabelled pretraining set (``pretrain_subset``), with augmentation."""
        indices = {"train": self.train, "fit": self.fit}.get(self.pretrain_subset)
        if indices is None:
            raise ConfigError(f"data.pretrain_subset must be 'train' or 'fit', got {self.pretrain_subset!r}")
        return ObjectDataset(self.cache.points, self.cache.labels, num_points=self.num_points, augment=augment,
                             seed=self.seed, indices=indices, class_names=self.class_names)


def _split(cache: ObjectCache, num_points: int, val_fraction: float, split_seed: int,
           pretrain_subset: str, seed: int, source: Path) -> ObjectData:
    if num_points > cache.points.shape[1]:
        raise ConfigError(f"data.num_points={num_points} but {source} holds {cache.points.shape[1]} points per shape")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    splits = np.asarray(cache.splits).astype(str)
    train = np.flatnonzero(splits == "train")
    test = np.flatnonzero(splits == "test")
    if len(train) == 0:
        raise DataFormatError(f"{source}: the prepared data has no 'train' split")
    fit_local, val_local = stratified_split(cache.labels[train], val_fraction, split_seed)
    return ObjectData(cache=cache, train=train, fit=train[fit_local], val=train[val_local], test=test,
                      num_points=num_points, pretrain_subset=pretrain_subset, seed=seed)


def prepared_cache_for(root: Path, cache_dir: str | None, num_points: int) -> Path:
    """Where a raw tree at ``root`` is prepared: ``cache_dir`` or a folder under ``$PC3D_CACHE``."""
    if cache_dir:
        return Path(cache_dir)
    digest = hashlib.sha1(os.fsencode(root.resolve())).hexdigest()[:12]
    return default_cache_root() / "prepared" / f"{root.name}-{digest}-{num_points}"


def modelnet_data(root: str, cache_dir: str | None = None, num_points: int = 1024, val_fraction: float = 0.2,
                  split_seed: int = 0, num_surface_points: int = 8192, pretrain_subset: str = "train",
                  seed: int = 0) -> ObjectData:
    """A ModelNet-style dataset: ``root`` is a prepared cache or a raw tree (prepared on first use)."""
    from pc3d.data.modelnet import prepare_modelnet

    if root in (None, "", "???"):
        raise ConfigError("data.root is required for data=modelnet10 (a ModelNet tree or a prepared cache)")
    source = Path(root).expanduser()
    if not source.exists():
        raise ConfigError(f"data.root={source} does not exist")
    if (source / MANIFEST).is_file():
        prepared = source
    else:
        prepared = prepared_cache_for(source, cache_dir, num_points)
        prepare_modelnet(source, prepared, num_points=num_points, num_surface_points=num_surface_points,
                         seed=split_seed)
    return _split(load_object_cache(prepared), num_points, val_fraction, split_seed, pretrain_subset, seed, prepared)


def synthetic_shapes_data(root: str | None = None, train_per_class: int = 64, test_per_class: int = 16,
                          num_points: int = 1024, val_fraction: float = 0.2, split_seed: int = 0,
                          generator_seed: int = 0, pretrain_subset: str = "train", seed: int = 0) -> ObjectData:
    """The embedded synthetic shapes, generated into ``root`` (default under ``$PC3D_CACHE``) on first use."""
    folder = Path(root).expanduser() if root else (
        default_cache_root() / "synthetic_shapes" / f"s{generator_seed}-{train_per_class}-{test_per_class}-{num_points}")
    prepare_synthetic_shapes(folder, train_per_class=train_per_class, test_per_class=test_per_class,
                             num_points=num_points, seed=generator_seed)
    return _split(load_object_cache(folder), num_points, val_fraction, split_seed, pretrain_subset, seed, folder)
