"""The prepared object cache and the ModelNet converter (data_prep.modelnet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from data_prep.modelnet import main, prepare_modelnet
from pc3d.data.io import read_points
from pc3d.data.prepared import load_object_cache, write_object_cache
from pc3d.data.transforms import normalize_unit_sphere
from pc3d.errors import ConfigError, DataFormatError

CUBE_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
CUBE_QUADS = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]


def write_off(path: Path, vertices: np.ndarray, faces: list[list[int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"OFF{len(vertices)} {len(faces)} 0"]  # the glued ModelNet header
    lines += [" ".join(f"{c:.6f}" for c in v) for v in vertices]
    lines += [" ".join(map(str, [len(f), *f])) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src)
    except OSError:
        dst.write_bytes(src.read_bytes())


@pytest.fixture
def small_tree(tmp_path: Path, modelnet10_root: Path) -> Path:
    """chair/{train: 3, test: 1} and table/train: 2 real PCDs; box/ (flat): 2 OFF + 1 small npy."""
    src = tmp_path / "src"
    chairs = sorted((modelnet10_root / "chair" / "train").glob("*.pcd"))[:4]
    tables = sorted((modelnet10_root / "table" / "train").glob("*.pcd"))[:2]
    for p in chairs[:3]:
        _link(p, src / "chair" / "train" / p.name)
    _link(chairs[3], src / "chair" / "test" / chairs[3].name)
    for p in tables:
        _link(p, src / "table" / "train" / p.name)
    write_off(src / "box" / "box_0001.off", CUBE_V, CUBE_QUADS)
    write_off(src / "box" / "box_0002.off", CUBE_V * [2.0, 1.0, 0.5] + 3.0, CUBE_QUADS)
    np.save(src / "box" / "box_0003.npy", np.random.default_rng(0).normal(size=(100, 3)))
    (src / "box" / "README.md").write_text("not a shape\n")
    (src / ".hidden").mkdir()
    return src


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_prepare_small_tree(small_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cache"
    m = prepare_modelnet(small_tree, dst, num_points=1024, num_surface_points=4096, seed=0)
    assert m["classes"] == ["box", "chair", "table"]
    assert m["counts"] == {"box": {"test": 0, "train": 3}, "chair": {"test": 1, "train": 3},
                           "table": {"test": 0, "train": 2}}
    assert m["num_points"] == 1024 and m["num_shapes"] == 9
    assert m["format"] == "pc3d-object-cache" and m["version"] == 1
    assert len(m["content_hash"]) == 64
    assert m["source"] == str(small_tree.resolve())
    assert m["num_upsampled"] == 1 and m["upsampled_files"] == ["box/box_0003.npy"]
    assert m["ignored_files"] == 1
    assert [f[0] for f in m["files"]] == sorted(f[0] for f in m["files"]) and len(m["files"]) == 9
    assert m["params"]["num_surface_points"] == 4096
    assert json.loads((dst / "manifest.json").read_text()) == m

    cache = load_object_cache(dst)
    assert cache.points.shape == (9, 1024, 3) and cache.points.dtype == np.float32
    norms = np.linalg.norm(cache.points, axis=2)
    np.testing.assert_allclose(norms.max(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cache.points.mean(axis=1), 0.0, atol=1e-5)
    for name, label, split in zip(cache.names, cache.labels, cache.splits):
        parts = name.split("/")
        assert cache.class_names[label] == parts[0]
        assert split == (parts[1] if len(parts) == 3 else "train")
    # a 1024-point PCD is only normalised: same points, same order
    i = list(cache.names).index("chair/test/" + sorted((small_tree / "chair" / "test").iterdir())[0].name)
    direct = read_points(small_tree / cache.names[i]).points
    np.testing.assert_allclose(cache.points[i], normalize_unit_sphere(direct), atol=1e-6)
    # the OFF cube is sampled on its surface: after normalisation every point still lies
    # on one of the 6 face planes (the per-axis min / max)
    j = list(cache.names).index("box/box_0001.off")
    box = cache.points[j]
    to_face = np.minimum(np.abs(box - box.min(axis=0)), np.abs(box - box.max(axis=0))).min(axis=1)
    assert to_face.max() < 1e-5
    assert np.ptp(box, axis=0).min() > 1.0  # a cube, not a degenerate sliver
    # the upsampled npy keeps all its 100 original points
    k = list(cache.names).index("box/box_0003.npy")
    assert len(np.unique(cache.points[k], axis=0)) == 100


def test_large_files_are_subset_in_random_order(tmp_path: Path) -> None:
    # 3000 points sorted along x: the cache keeps 512 of them, and any prefix is spread out
    src = tmp_path / "src"
    (src / "line" / "train").mkdir(parents=True)
    xyz = np.random.default_rng(1).uniform(-1, 1, size=(3000, 3))
    xyz = xyz[np.argsort(xyz[:, 0])]
    np.save(src / "line" / "train" / "a.npy", xyz)
    prepare_modelnet(src, tmp_path / "c", num_points=512, seed=3)
    cached = load_object_cache(tmp_path / "c").points[0]
    assert len(np.unique(cached, axis=0)) == 512  # without replacement
    # random order: the first 64 points already span the x range, x is not sorted
    assert np.ptp(cached[:64, 0]) > 1.0 and np.any(np.diff(cached[:, 0]) < 0)
    again = tmp_path / "c2"
    prepare_modelnet(src, again, num_points=512, seed=3)
    np.testing.assert_array_equal(load_object_cache(again).points[0], cached)
    prepare_modelnet(src, tmp_path / "c3", num_points=512, seed=4)
    assert not np.array_equal(load_object_cache(tmp_path / "c3").points[0], cached)


def test_rerun_is_noop_and_changes_rebuild(small_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cache"
    m1 = prepare_modelnet(small_tree, dst, num_surface_points=2048)
    stamp = _stamp(dst / "points.npy")
    m2 = prepare_modelnet(small_tree, dst, num_surface_points=2048)
    assert m2 == m1
    assert _stamp(dst / "points.npy") == stamp

    # force rebuilds (a new file), with identical content
    before = np.load(dst / "points.npy")
    prepare_modelnet(small_tree, dst, num_surface_points=2048, force=True)
    assert _stamp(dst / "points.npy") != stamp
    np.testing.assert_array_equal(np.load(dst / "points.npy"), before)
    stamp = _stamp(dst / "points.npy")

    # touching a file (new mtime) triggers a rebuild
    off = small_tree / "box" / "box_0001.off"
    st = off.stat()
    os.utime(off, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    m3 = prepare_modelnet(small_tree, dst, num_surface_points=2048)
    assert _stamp(dst / "points.npy") != stamp
    assert m3["files"] != m1["files"] and m3["content_hash"] == m1["content_hash"]
    stamp = _stamp(dst / "points.npy")

    # changing content: new hash, new points for that shape only
    write_off(off, CUBE_V * [1.0, 1.0, 0.2], CUBE_QUADS)
    m4 = prepare_modelnet(small_tree, dst, num_surface_points=2048)
    assert m4["content_hash"] != m1["content_hash"]
    after = np.load(dst / "points.npy")
    changed = np.any(after != before, axis=(1, 2))
    names = list(np.load(dst / "names.npy"))
    assert changed.tolist() == [n == "box/box_0001.off" for n in names]

    # a new parameter rebuilds with the new shape
    m5 = prepare_modelnet(small_tree, dst, num_points=256, num_surface_points=2048)
    assert m5["num_points"] == 256 and np.load(dst / "points.npy").shape == (9, 256, 3)


def test_corrupt_file_keeps_previous_cache(small_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cache"
    prepare_modelnet(small_tree, dst, num_surface_points=1024)
    old_manifest = (dst / "manifest.json").read_bytes()
    old_points = (dst / "points.npy").read_bytes()
    bad = small_tree / "table" / "train" / "table_9999.pcd"
    good = next((small_tree / "table" / "train").iterdir())
    bad.write_bytes(good.read_bytes()[:-100])  # truncated binary PCD
    with pytest.raises(DataFormatError, match="table_9999.pcd") as info:
        prepare_modelnet(small_tree, dst, num_surface_points=1024)
    assert "truncated" in str(info.value)
    assert (dst / "manifest.json").read_bytes() == old_manifest
    assert (dst / "points.npy").read_bytes() == old_points
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "src"]  # no temp dirs left
    load_object_cache(dst)


def test_bad_trees(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        prepare_modelnet(tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="no class folders"):
        prepare_modelnet(empty, tmp_path / "out")
    (empty / "chair").mkdir()
    (empty / "chair" / "notes.md").write_text("x")
    with pytest.raises(DataFormatError, match="no recognised shape files"):
        prepare_modelnet(empty, tmp_path / "out")
    (empty / "chair" / "weird").mkdir()
    with pytest.raises(DataFormatError, match="weird"):
        prepare_modelnet(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dst_inside_src_is_refused(small_tree: Path) -> None:
    with pytest.raises(ConfigError, match="inside"):
        prepare_modelnet(small_tree, small_tree / "cache")


def test_command_line(small_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cli_cache"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PC3D_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "data_prep.modelnet", str(small_tree), str(dst),
           "--num-points", "512", "--num-surface-points", "1024"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "prepared 9 shapes" in out.stdout
    assert load_object_cache(dst).points.shape == (9, 512, 3)
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "up to date" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "data_prep.modelnet", str(tmp_path / "missing"),
                          str(dst)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "missing" in bad.stderr
    assert main([str(small_tree), str(dst), "--num-points", "512", "--num-surface-points", "1024"]) == 0


def test_full_modelnet10(modelnet10_root: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    m = prepare_modelnet(modelnet10_root, tmp_path / "mn10")
    elapsed = time.perf_counter() - start
    assert len(m["classes"]) == 10 and m["classes"] == sorted(m["classes"])
    assert sum(c["train"] for c in m["counts"].values()) == 3991
    assert m["counts"]["chair"]["train"] == 889 and m["num_upsampled"] == 0
    cache = load_object_cache(tmp_path / "mn10", mmap=True)
    assert cache.points.shape == (3991, 1024, 3)
    np.testing.assert_allclose(np.linalg.norm(cache.points, axis=2).max(axis=1), 1.0, atol=1e-5)
    assert elapsed < 60, f"preparing ModelNet10 took {elapsed:.1f}s"
    start = time.perf_counter()
    assert prepare_modelnet(modelnet10_root, tmp_path / "mn10") == m
    assert time.perf_counter() - start < elapsed


# ------------------------------------------------------------------ the cache format itself


def _write_small(dst: Path) -> dict:
    rng = np.random.default_rng(0)
    pts = np.stack([normalize_unit_sphere(rng.normal(size=(64, 3))) for _ in range(6)])
    return write_object_cache(dst, pts, np.array([0, 1, 2, 0, 1, 2]), ["train"] * 4 + ["test"] * 2,
                              [f"s{i}" for i in range(6)], ["a", "b", "c"], {"source": "unit-test"})


def test_cache_round_trip(tmp_path: Path) -> None:
    m = _write_small(tmp_path / "c")
    cache = load_object_cache(tmp_path / "c")
    assert cache.class_names == ["a", "b", "c"] and cache.manifest == m
    assert cache.labels.dtype == np.int64 and cache.splits.tolist() == ["train"] * 4 + ["test"] * 2
    assert m["counts"] == {"a": {"test": 0, "train": 2}, "b": {"test": 1, "train": 1},
                           "c": {"test": 1, "train": 1}}
    assert m["source"] == "unit-test" and len(m["content_hash"]) == 64
    np.testing.assert_array_equal(cache.split_indices("test"), [4, 5])
    assert not np.load(tmp_path / "c" / "names.npy", allow_pickle=False).dtype.hasobject


def _tamper(root: Path, fname: str, value) -> None:
    if fname == "manifest.json":
        m = json.loads((root / fname).read_text())
        m.update(value)
        (root / fname).write_text(json.dumps(m))
    elif value is None:
        (root / fname).unlink()
    else:
        np.save(root / fname, value)


@pytest.mark.parametrize("fname,value,expect", [
    ("points.npy", None, "missing"),
    ("labels.npy", None, "missing"),
    ("manifest.json", {"format": "other"}, "format"),
    ("points.npy", np.zeros((6, 64, 2), np.float32), "shape"),
    ("points.npy", np.zeros((0, 64, 3), np.float32), "empty"),
    ("points.npy", np.full((6, 64, 3), np.nan, np.float32), "NaN"),
    ("points.npy", np.zeros((6, 32, 3), np.float32), "num_points"),
    ("labels.npy", np.array([0, 1, 2, 0, 1, 3]), "out of range"),
    ("labels.npy", np.array([0, 1, 2, 0, 1]), "match"),
    ("splits.npy", np.array(["train"] * 5), "match"),
    ("splits.npy", np.array(["train"] * 5 + ["holdout"]), "holdout"),
    ("names.npy", np.arange(6), "string"),
])
def test_cache_validation(tmp_path: Path, fname: str, value, expect: str) -> None:
    root = tmp_path / "c"
    _write_small(root)
    _tamper(root, fname, value)
    with pytest.raises(DataFormatError, match=expect) as info:
        load_object_cache(root)
    assert fname in str(info.value)


def test_write_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="empty"):
        write_object_cache(tmp_path / "c", np.zeros((0, 8, 3)), np.zeros(0, int), [], [], ["a"])
    with pytest.raises(DataFormatError, match="out of range"):
        write_object_cache(tmp_path / "c", np.zeros((1, 8, 3)), np.array([1]), ["train"], ["x"], ["a"])
    assert not (tmp_path / "c").exists()
    with pytest.raises(DataFormatError, match="not found"):
        load_object_cache(tmp_path / "c")
