"""Object caches read lazily at dataset scale: LazyPoints, the streamed writer, DataLoader workers, flat memory."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pc3d.data.object_data import modelnet_data
from pc3d.data.object_dataset import ObjectDataset
from pc3d.data.prepared import LazyPoints, load_object_cache, write_object_cache, write_object_cache_streamed
from pc3d.errors import DataFormatError
from pc3d.train.trainer import epoch_batches

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import rss_mib  # noqa: E402


def small_cache(root: Path, shapes: int = 40, points: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clouds = rng.normal(size=(shapes, points, 3)).astype(np.float32)
    write_object_cache(root, clouds, np.arange(shapes) % 4, ["train"] * (shapes - 8) + ["test"] * 8,
                       [f"s{i:05d}" for i in range(shapes)], ["a", "b", "c", "d"])
    return clouds


def test_lazy_points_index_like_the_array(tmp_path):
    clouds = small_cache(tmp_path / "c")
    lazy = load_object_cache(tmp_path / "c", lazy=True).points
    assert isinstance(lazy, LazyPoints) and lazy.shape == clouds.shape and len(lazy) == 40 and lazy.ndim == 3
    for key in (3, -1, np.int64(7), slice(5, 12, 3), [0, 39, 4], np.array([2, 2, 9]), (np.array([1, 8]), slice(None, 16)),
                (4, slice(2, 5)), np.arange(40) % 3 == 0):
        np.testing.assert_array_equal(lazy[key], clouds[key])
    np.testing.assert_array_equal(np.asarray(lazy), clouds)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy))[11], clouds[11])  # spawn workers reopen the file
    out = lazy[0]
    out[0, 0] = 99.0  # a fresh, writable array each read
    assert lazy[0][0, 0] == clouds[0, 0, 0]
    with pytest.raises(IndexError):
        lazy[40]


def test_lazy_read_names_a_corrupt_shape(tmp_path):
    small_cache(tmp_path / "c")
    lazy = load_object_cache(tmp_path / "c", lazy=True).points
    with open(tmp_path / "c" / "points.npy", "r+b") as handle:  # a NaN written into shape 17 after the prep
        handle.seek(lazy.offset + 17 * 64 * 3 * 4 + 8)
        handle.write(np.float32(np.nan).tobytes())
    np.asarray(lazy[16])
    with pytest.raises(DataFormatError, match=r"points.npy: shape 17 contains NaN"):
        lazy[17]
    with open(tmp_path / "c" / "points.npy", "r+b") as handle:
        handle.truncate(lazy.offset + 100)
    with pytest.raises(DataFormatError, match="truncated"):
        load_object_cache(tmp_path / "c", lazy=True)


def test_streamed_writer_equals_the_in_memory_writer(tmp_path):
    clouds = small_cache(tmp_path / "a")
    labels = np.arange(40) % 4
    manifest = write_object_cache_streamed(tmp_path / "b", iter(clouds), num_shapes=40, num_points=64, labels=labels,
                                           splits=["train"] * 32 + ["test"] * 8, names=[f"s{i:05d}" for i in range(40)],
                                           class_names=["a", "b", "c", "d"])
    assert manifest["content_hash"] == load_object_cache(tmp_path / "a").manifest["content_hash"]
    for name in ("points.npy", "labels.npy", "splits.npy", "names.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))
    with pytest.raises(DataFormatError, match="3 shapes arrived, 4 were announced"):
        write_object_cache_streamed(tmp_path / "d", iter(clouds[:3]), num_shapes=4, num_points=64, labels=[0] * 4,
                                    splits=["train"] * 4, names=list("wxyz"), class_names=["a"])
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d*"))


def _batches(dataset, workers: int, seed: int = 5, epoch: int = 1) -> list[dict]:
    dataset.set_epoch(epoch)
    sampler = epoch_batches(len(dataset), 8, seed, epoch)  # the Trainer's seeded order
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    return list(loader)


def test_lazy_cache_with_workers_gives_the_in_memory_batches(tmp_path):
    small_cache(tmp_path / "c", shapes=48, points=96)
    memory = load_object_cache(tmp_path / "c")
    lazy = load_object_cache(tmp_path / "c", lazy=True)
    reference = _batches(ObjectDataset(memory.points, memory.labels, num_points=64, augment=True, seed=3), 0)
    for workers in (0, 2):
        got = _batches(ObjectDataset(lazy.points, lazy.labels, num_points=64, augment=True, seed=3), workers)
        assert len(got) == len(reference) == 6
        for a, b in zip(got, reference):
            assert torch.equal(a["points"], b["points"]) and torch.equal(a["label"], b["label"])


def test_object_data_nodes_read_lazily(shared_data, tmp_path):
    data = modelnet_data(str(shared_data / "modelnet10"), cache_dir=str(tmp_path / "mn10"), num_points=256)
    assert isinstance(data.cache.points, LazyPoints)
    full = load_object_cache(tmp_path / "mn10")
    np.testing.assert_array_equal(data.points(data.val[:5]), full.points[data.val[:5], :256])


def test_reading_a_whole_cache_lazily_keeps_memory_flat(tmp_path):
    """A pass over a 48 MiB cache: a memmap's pages stay resident (its RSS grows by the file), LazyPoints' do not."""
    rng = np.random.default_rng(0)
    shapes, points = 4096, 1024
    write_object_cache_streamed(tmp_path / "big", (rng.normal(size=(points, 3)).astype(np.float32)
                                                   for _ in range(shapes)),
                                num_shapes=shapes, num_points=points, labels=np.zeros(shapes, int),
                                splits=["train"] * shapes, names=[f"s{i}" for i in range(shapes)], class_names=["a"])
    size_mib = shapes * points * 12 / 2**20
    lazy = load_object_cache(tmp_path / "big", lazy=True).points
    before = rss_mib()
    if before is None:
        pytest.skip("no /proc/self/status on this platform")
    total = 0.0
    for i in range(shapes):
        total += float(lazy[i][0, 0])
    lazy_growth = rss_mib() - before
    mapped = np.load(tmp_path / "big" / "points.npy", mmap_mode="r")
    before = rss_mib()
    total_mapped = sum(float(np.asarray(mapped[i])[0, 0]) for i in range(shapes))
    mapped_growth = rss_mib() - before
    assert total == pytest.approx(total_mapped)
    assert lazy_growth < 0.1 * size_mib, (lazy_growth, size_mib)
    assert mapped_growth > 0.5 * size_mib, (mapped_growth, size_mib)  # the check above can fail
