"""Object datasets as the CLI sees them: a prepared cache plus the seeded splits.

``data=synthetic_shapes``, ``data=modelnet10``, ``data=modelnet40``, ``data=shapenet55|shapenet34`` and
``data=scanobjectnn`` resolve to :class:`ObjectData` through the functions below (the ``_target_``
of ``configs/data/*.yaml``). ``data.root`` is a prepared cache (``pc3d prep NAME``) or the raw
download, prepared on first use into ``data.cache_dir`` (default under ``$PC3D_CACHE``). The cache
is read lazily (:class:`pc3d.data.prepared.LazyPoints`): a shape is read from disk when a sample
needs it, so a 50,000-shape cache costs no more memory than a small one.

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
from typing import Any, Callable, Mapping

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


def prepared_cache_for(root: Path, cache_dir: str | None, num_points: int | str) -> Path:
    """Where a raw tree at ``root`` is prepared: ``cache_dir`` or a folder under ``$PC3D_CACHE``
    (``num_points``: the tag of the preparation's parameters in the folder name)."""
    if cache_dir:
        return Path(cache_dir)
    digest = hashlib.sha1(os.fsencode(root.resolve())).hexdigest()[:12]
    return default_cache_root() / "prepared" / f"{root.name}-{digest}-{num_points}"


def _object_cache(root: str | None, cache_dir: str | None, node: str, tag: str, expect: Mapping[str, Any],
                  prepare: Callable[[Path, Path], Any]) -> Path:
    """The prepared cache of ``data.root``: the folder itself when it holds a manifest whose keys match
    ``expect`` (e.g. ``{"dataset": "scanobjectnn", "variant": "OBJ_BG"}``), else where ``prepare(raw, cache)``
    converts the download at ``data.root`` (``cache_dir`` or under ``$PC3D_CACHE``)."""
    from pc3d.data.prepared import read_manifest

    if root in (None, "", "???"):
        raise ConfigError(f"data.root is required for data={node} (the download or a prepared cache)")
    source = Path(root).expanduser()
    if not source.exists():
        raise ConfigError(f"data.root={source} does not exist")
    if not (source / MANIFEST).is_file():
        prepared = prepared_cache_for(source, cache_dir, tag)
        prepare(source, prepared)
        return prepared
    manifest = read_manifest(source)
    for key, value in expect.items():
        if manifest.get(key) != value:
            raise ConfigError(f"data.root={source} is a prepared cache with {key}={manifest.get(key)!r}, "
                              f"data={node} needs {key}={value!r} (prepare it with `pc3d prep` for that)")
    return source


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
    return _split(load_object_cache(prepared, lazy=True), num_points, val_fraction, split_seed, pretrain_subset, seed,
                  prepared)


def shapenet_data(root: str, cache_dir: str | None = None, benchmark: str = "shapenet55", num_points: int = 1024,
                  stored_points: int = 8192, val_fraction: float = 0.2, split_seed: int = 0,
                  pretrain_subset: str = "train", seed: int = 0) -> ObjectData:
    """ShapeNet-55 / 34 (``configs/data/shapenet55.yaml``, ``shapenet34.yaml``): Point-MAE's pretraining set (:mod:`pc3d.data.shapenet`)."""
    from pc3d.data.shapenet import prepare_shapenet

    prepared = _object_cache(root, cache_dir, benchmark, f"{benchmark}-{stored_points}", {"dataset": benchmark},
                             lambda src, dst: prepare_shapenet(src, dst, benchmark=benchmark,
                                                               num_points=stored_points, seed=split_seed))
    return _split(load_object_cache(prepared, lazy=True), num_points, val_fraction, split_seed, pretrain_subset, seed,
                  prepared)


def modelnet40_data(root: str, cache_dir: str | None = None, num_points: int = 1024, stored_points: int = 8192,
                    num_category: int = 40, allow_pickle: bool = False, val_fraction: float = 0.2, split_seed: int = 0,
                    pretrain_subset: str = "train", seed: int = 0) -> ObjectData:
    """ModelNet40 ``modelnet40_normal_resampled`` (``configs/data/modelnet40.yaml``, :mod:`pc3d.data.modelnet40`);
    ``num_points`` 1024 or 8192 (the 1k and 8k protocols) from one cache of ``stored_points``."""
    from pc3d.data.modelnet40 import prepare_modelnet40

    prepared = _object_cache(root, cache_dir, "modelnet40", f"{num_category}-{stored_points}",
                             {"dataset": f"modelnet{num_category}"},
                             lambda src, dst: prepare_modelnet40(src, dst, num_points=stored_points,
                                                                 num_category=num_category, seed=split_seed,
                                                                 allow_pickle=allow_pickle))
    return _split(load_object_cache(prepared, lazy=True), num_points, val_fraction, split_seed, pretrain_subset, seed,
                  prepared)


def scanobjectnn_data(root: str, variant: str = "PB_T50_RS", cache_dir: str | None = None, num_points: int = 2048,
                      val_fraction: float = 0.2, split_seed: int = 0, pretrain_subset: str = "train",
                      seed: int = 0) -> ObjectData:
    """ScanObjectNN OBJ_BG / OBJ_ONLY / PB_T50_RS (``configs/data/scanobjectnn.yaml``, :mod:`pc3d.data.scanobjectnn`)."""
    from pc3d.data.scanobjectnn import VARIANTS, prepare_scanobjectnn

    if variant not in VARIANTS:
        raise ConfigError(f"data.variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    prepared = _object_cache(root, cache_dir, "scanobjectnn", f"{variant}-{num_points}",
                             {"dataset": "scanobjectnn", "variant": variant},
                             lambda src, dst: prepare_scanobjectnn(src, dst, variant=variant, num_points=num_points,
                                                                   seed=split_seed))
    return _split(load_object_cache(prepared, lazy=True), num_points, val_fraction, split_seed, pretrain_subset, seed,
                  prepared)


def synthetic_shapes_data(root: str | None = None, train_per_class: int = 64, test_per_class: int = 16,
                          num_points: int = 1024, val_fraction: float = 0.2, split_seed: int = 0,
                          generator_seed: int = 0, pretrain_subset: str = "train", seed: int = 0) -> ObjectData:
    """The embedded synthetic shapes, generated into ``root`` (default under ``$PC3D_CACHE``) on first use."""
    folder = Path(root).expanduser() if root else (
        default_cache_root() / "synthetic_shapes" / f"s{generator_seed}-{train_per_class}-{test_per_class}-{num_points}")
    prepare_synthetic_shapes(folder, train_per_class=train_per_class, test_per_class=test_per_class,
                             num_points=num_points, seed=generator_seed)
    return _split(load_object_cache(folder, lazy=True), num_points, val_fraction, split_seed, pretrain_subset, seed,
                  folder)
