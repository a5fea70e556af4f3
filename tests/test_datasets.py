"""stratified_split, ObjectDataset, transforms and the embedded synthetic shapes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pc3d.data import (
    SYNTHETIC_CLASSES,
    ObjectDataset,
    generate_synthetic_shapes,
    load_object_cache,
    normalize_unit_sphere,
    prepare_synthetic_shapes,
    random_subsample,
    scale_and_translate,
    stratified_split,
)
from pc3d.errors import ConfigError

# ----------------------------------------------------------------------------- transforms


def test_normalize_unit_sphere() -> None:
    xyz = np.random.default_rng(0).normal(size=(100, 3)) * [3, 1, 0.5] + [10, -4, 2]
    out = normalize_unit_sphere(xyz)
    assert out.dtype == np.float32 and out.shape == (100, 3)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-6)
    # shape preserved: a similarity transform of the input
    c = xyz - xyz.mean(0)
    np.testing.assert_allclose(out * np.linalg.norm(c, axis=1).max(), c, atol=1e-4)


def test_random_subsample() -> None:
    xyz = np.arange(30, dtype=np.float32).reshape(10, 3)
    sub = random_subsample(xyz, 6, np.random.default_rng(0))
    assert sub.shape == (6, 3) and len({tuple(r) for r in sub}) == 6  # without replacement
    assert {tuple(r) for r in sub} <= {tuple(r) for r in xyz}
    up = random_subsample(xyz, 25, np.random.default_rng(0))
    assert up.shape == (25, 3) and up.dtype == np.float32
    np.testing.assert_array_equal(sub, random_subsample(xyz, 6, np.random.default_rng(0)))


def test_scale_and_translate_ranges() -> None:
    xyz = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    rng = np.random.default_rng(1)
    for _ in range(200):
        out = scale_and_translate(xyz, rng)
        # recover the per-axis affine map from two points
        scale = (out[1] - out[0]) / (xyz[1] - xyz[0])
        shift = out[0] - xyz[0] * scale
        np.testing.assert_allclose(out, xyz * scale + shift, atol=1e-4)
        assert np.all((scale > 2 / 3 - 1e-4) & (scale < 1.5 + 1e-4))
        assert np.all(np.abs(shift) <= 0.2 + 1e-4)
        assert out.dtype == np.float32


# ----------------------------------------------------------------------------- stratified_split


def test_stratified_split_proportions_and_determinism() -> None:
    sizes = {0: 10, 1: 20, 2: 5, 3: 1, 4: 2, 5: 50}
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    labels = labels[np.random.default_rng(0).permutation(labels.size)]
    train, val = stratified_split(labels, 0.2, seed=3)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(labels.size))
    val_counts = {c: int((labels[val] == c).sum()) for c in sizes}
    assert val_counts == {0: 2, 1: 4, 2: 1, 3: 0, 4: 1, 5: 10}
    t2, v2 = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(v2, val)
    np.testing.assert_array_equal(t2, train)
    _, v3 = stratified_split(labels, 0.2, seed=4)
    assert not np.array_equal(v3, val)
    _, v0 = stratified_split(labels, 0.0, seed=3)
    assert v0.size == 0
    with pytest.raises(ConfigError):
        stratified_split(labels, 1.0, seed=0)


# ----------------------------------------------------------------------------- ObjectDataset


@pytest.fixture
def shapes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(8, 64, 3)).astype(np.float32)
    return pts, np.arange(8) % 3


def test_dataset_item_contract_and_passthrough(shapes) -> None:
    pts, labels = shapes
    ds = ObjectDataset(pts, labels)
    item = ds[5]
    assert set(item) == {"points", "label"}
    assert item["points"].dtype == torch.float32 and item["points"].shape == (64, 3)
    assert item["label"].dtype == torch.long and item["label"].shape == () and item["label"].item() == 2
    # exactly num_points, no augmentation: stored points as-is, in order, every epoch
    np.testing.assert_array_equal(item["points"].numpy(), pts[5])
    ds.set_epoch(7)
    np.testing.assert_array_equal(ds[5]["points"].numpy(), pts[5])
    ds[5]["points"].mul_(0)  # items are copies: the source arrays are untouched
    np.testing.assert_array_equal(ds[5]["points"].numpy(), pts[5])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["points"].shape == (4, 64, 3) and batch["label"].shape == (4,)


def test_dataset_determinism_per_seed_epoch_index(shapes) -> None:
    pts, labels = shapes
    a = ObjectDataset(pts, labels, num_points=32, augment=True, seed=1)
    b = ObjectDataset(pts, labels, num_points=32, augment=True, seed=1)
    c = ObjectDataset(pts, labels, num_points=32, augment=True, seed=2)
    for ds in (a, b, c):
        ds.set_epoch(3)
    x = a[4]["points"]
    assert x.shape == (32, 3)
    assert torch.equal(b[4]["points"], x)
    assert torch.equal(a[4]["points"], x)  # no hidden state
    assert not torch.equal(c[4]["points"], x)
    assert not torch.equal(a[5]["points"], x)
    a.set_epoch(4)
    assert not torch.equal(a[4]["points"], x)
    a.set_epoch(3)
    assert torch.equal(a[4]["points"], x)
    # without augmentation a subset is fixed across epochs but is a real subset
    plain = ObjectDataset(pts, labels, num_points=32, seed=1)
    first = plain[2]["points"]
    plain.set_epoch(9)
    assert torch.equal(plain[2]["points"], first)
    rows = {tuple(r) for r in pts[2].tolist()}
    assert all(tuple(r) in rows for r in first.tolist()) and len({tuple(r) for r in first.tolist()}) == 32


def _epoch_batches(ds: ObjectDataset, loader: DataLoader, epoch: int) -> torch.Tensor:
    ds.set_epoch(epoch)
    return torch.cat([b["points"] for b in loader])


def test_dataset_reproducible_with_workers(shapes) -> None:
    pts, labels = shapes
    ds = ObjectDataset(pts, labels, num_points=48, augment=True, seed=5)
    single = DataLoader(ds, batch_size=3, num_workers=0)
    multi = DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True)
    ref0 = _epoch_batches(ds, single, 0)
    ref1 = _epoch_batches(ds, single, 1)
    assert not torch.equal(ref0, ref1)
    assert torch.equal(_epoch_batches(ds, multi, 0), ref0)
    assert torch.equal(_epoch_batches(ds, multi, 1), ref1)


def test_dataset_from_cache_split(tmp_path: Path) -> None:
    prepare_synthetic_shapes(tmp_path / "syn", train_per_class=3, test_per_class=2, num_points=64)
    train = ObjectDataset.from_cache(tmp_path / "syn", "train")
    test = ObjectDataset.from_cache(tmp_path / "syn", "test", num_points=32)
    n = len(SYNTHETIC_CLASSES)
    assert len(train) == 3 * n and len(test) == 2 * n
    assert np.bincount(train.split_labels).tolist() == [3] * n
    assert test[0]["points"].shape == (32, 3) and train.class_names == list(SYNTHETIC_CLASSES)
    tr, va = stratified_split(train.split_labels, 0.34, seed=0)
    val = ObjectDataset.from_cache(tmp_path / "syn", "train", indices=va)
    assert len(val) == n and np.bincount(val.split_labels).tolist() == [1] * n
    with pytest.raises(ConfigError):
        ObjectDataset.from_cache(tmp_path / "syn", "holdout")


# ----------------------------------------------------------------------------- synthetic shapes


def _radius_histograms(points: np.ndarray) -> np.ndarray:
    r = np.sort(np.linalg.norm(points, axis=2), axis=1)
    return np.stack([np.histogram(x, bins=16, range=(0, 1))[0] for x in r]) / points.shape[1]


def test_synthetic_shapes_properties() -> None:
    pts, labels, names = generate_synthetic_shapes(6, num_points=256, seed=0)
    assert len(names) >= 10 and len(set(names)) == len(names)
    assert pts.shape == (6 * len(names), 256, 3) and pts.dtype == np.float32
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [6] * len(names)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=2).max(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pts.mean(axis=1), 0.0, atol=1e-5)
    again, _, _ = generate_synthetic_shapes(6, num_points=256, seed=0)
    np.testing.assert_array_equal(again, pts)
    other, _, _ = generate_synthetic_shapes(6, num_points=256, seed=1)
    assert not np.allclose(other, pts)
    # sample i of a class does not depend on how many are asked for
    more, _, _ = generate_synthetic_shapes(8, num_points=256, seed=0)
    np.testing.assert_array_equal(more[8:14], pts[6:12])
    # per-sample variation: two samples of a class differ in shape, not just by noise
    assert np.abs(_radius_histograms(pts[:2])[0] - _radius_histograms(pts[:2])[1]).sum() > 0.05


def test_synthetic_classes_are_separable_but_not_trivial() -> None:
    per, n_train = 30, 20
    pts, labels, names = generate_synthetic_shapes(per, num_points=512, seed=0)
    feats = _radius_histograms(pts)
    within = np.tile(np.arange(per), len(names))
    train, test = within < n_train, within >= n_train
    centroids = np.stack([feats[train & (labels == c)].mean(0) for c in range(len(names))])
    pred = np.argmin(((feats[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = float((pred == labels[test]).mean())
    chance = 1.0 / len(names)
    assert acc > 4 * chance, acc
    assert acc < 0.95, acc


def test_prepare_synthetic_shapes_idempotent(tmp_path: Path) -> None:
    dst = tmp_path / "syn"
    m = prepare_synthetic_shapes(dst, train_per_class=4, test_per_class=2, num_points=128, seed=0)
    cache = load_object_cache(dst)
    n = len(SYNTHETIC_CLASSES)
    assert cache.points.shape == (6 * n, 128, 3)
    assert m["counts"]["torus"] == {"test": 2, "train": 4} and m["classes"] == list(SYNTHETIC_CLASSES)
    assert (cache.splits == "train").sum() == 4 * n and (cache.splits == "test").sum() == 2 * n
    stamp = (dst / "points.npy").stat()
    assert prepare_synthetic_shapes(dst, train_per_class=4, test_per_class=2, num_points=128) == m
    again = (dst / "points.npy").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    m2 = prepare_synthetic_shapes(dst, train_per_class=4, test_per_class=2, num_points=128, seed=1)
    assert m2["content_hash"] != m["content_hash"] and m2["params"]["seed"] == 1


def test_synthetic_default_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    m = prepare_synthetic_shapes(tmp_path / "syn")
    elapsed = time.perf_counter() - start
    assert m["num_shapes"] == 80 * len(SYNTHETIC_CLASSES) and m["num_points"] == 1024
    assert elapsed < 10.0, f"default synthetic dataset took {elapsed:.1f}s"
