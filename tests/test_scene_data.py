"""Indoor scenes (pc3d.data.scenes): ScanNet-20 labels, the prepared folder, the numpy layout read directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pc3d.data.detection_scenes import SCANNET_NYU40_IDS
from pc3d.data.scenes import (SCANNET20_CLASSES, SCANNET20_NYU40_IDS, SCENE_FORMAT, Scene, default_splits,
                              load_scenes, nyu40_to_scannet20, read_scene, read_scene_splits, scene_class_names,
                              write_scene)
from pc3d.errors import ConfigError, DataFormatError

SCANS = ("scene0000_00", "scene0000_01")


def test_scannet20_table():
    assert len(SCANNET20_CLASSES) == 20 and SCANNET20_CLASSES[0] == "wall" and SCANNET20_CLASSES[-1] == "otherfurniture"
    assert SCANNET20_NYU40_IDS == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
    assert SCANNET20_NYU40_IDS[2:] == SCANNET_NYU40_IDS  # the detection classes, shared
    ids = np.arange(-2, 43)
    expected = [SCANNET20_NYU40_IDS.index(i) if i in SCANNET20_NYU40_IDS else -1 for i in ids]
    np.testing.assert_array_equal(nyu40_to_scannet20(ids), expected)
    assert nyu40_to_scannet20(np.array([[36, 13], [40, 0]], np.uint32)).tolist() == [[18, -1], [-1, -1]]
    assert SCANNET20_CLASSES[nyu40_to_scannet20(np.array([33]))[0]] == "toilet"


def test_default_splits():
    assert default_splits(["b", "a", "c"]) == {"train": ["a", "b"], "val": ["c"]}
    assert default_splits(["a"]) == {"train": ["a"], "val": ["a"]}


def test_numpy_layout_is_read_directly(shared_data):
    folder = shared_data / "scannet"  # also holds an unlabelled .bin scan and posed images: ignored
    assert scene_class_names(folder) == list(SCANNET20_CLASSES)
    (train,), (val,) = load_scenes(folder, "train"), load_scenes(folder, "val")
    assert (train.name, val.name) == SCANS
    for scene in (train, val):
        vert = np.load(folder / f"{scene.name}_vert_all.npy")
        sem = np.load(folder / f"{scene.name}_sem_label_all.npy")
        ins = np.load(folder / f"{scene.name}_ins_label_all.npy")
        np.testing.assert_array_equal(scene.points, vert[:, :3])
        np.testing.assert_allclose(scene.colors, vert[:, 3:] / 255, atol=1e-7)  # colours in [0, 1]
        np.testing.assert_array_equal(scene.segment, nyu40_to_scannet20(sem))
        np.testing.assert_array_equal(scene.instance, ins.astype(np.int64) - 1)
        assert scene.segment.dtype == scene.instance.dtype == np.int64
        np.testing.assert_allclose(np.linalg.norm(scene.normals, axis=1), 1, atol=1e-5)
        # real labels: the floor is floor, unannotated points are ignored, chairs are chairs
        assert (scene.segment[sem == 2] == 1).all() and (scene.segment[sem == 0] == -1).all()
        assert (scene.instance[ins == 0] == -1).all() and scene.instance.max() == ins.max() - 1
        floor_up = scene.normals[(sem == 2) & (np.abs(scene.normals[:, 2]) > 0.9), 2] > 0
        assert floor_up.mean() > 0.99
    with pytest.raises(ConfigError, match="split 'test'"):
        load_scenes(folder, "test")


def _numpy_scan(tmp_path: Path, shared_data: Path, n: int = 400) -> Path:
    """The first n points of a real scan in the numpy layout."""
    folder = tmp_path / "numpy"
    folder.mkdir()
    for kind in ("vert_all", "sem_label_all", "ins_label_all"):
        np.save(folder / f"scene0000_00_{kind}.npy", np.load(shared_data / "scannet" / f"scene0000_00_{kind}.npy")[:n])
    return folder


@pytest.mark.parametrize("damage, culprit, message", [
    (lambda f: np.save(f / "scene0000_00_vert_all.npy", np.full((400, 6), np.nan, np.float32)), "vert_all", "NaN"),
    (lambda f: np.save(f / "scene0000_00_vert_all.npy", np.zeros((400, 3), np.float32)), "vert_all", "(N, 6)"),
    (lambda f: np.save(f / "scene0000_00_sem_label_all.npy", np.zeros(399, np.uint32)), "sem_label_all", "(400,)"),
    (lambda f: np.save(f / "scene0000_00_ins_label_all.npy", np.zeros(400, np.float32)), "ins_label_all", "integer"),
    (lambda f: (f / "scene0000_00_ins_label_all.npy").unlink(), "ins_label_all", "not found"),
    (lambda f: (f / "scene0000_00_sem_label_all.npy").write_bytes(b"garbage"), "sem_label_all", ".npy"),
])
def test_numpy_layout_errors_name_the_file(tmp_path, shared_data, damage, culprit, message):
    folder = _numpy_scan(tmp_path, shared_data)
    assert len(load_scenes(folder, "train")[0]) == 400
    damage(folder)
    with pytest.raises(DataFormatError, match=f"scene0000_00_{culprit}.npy") as info:
        load_scenes(folder, "train")
    assert message in str(info.value)


def _scene(n: int = 50, name: str = "room") -> Scene:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(n, 3))
    return Scene(name, rng.uniform(-2, 2, (n, 3)).astype(np.float32), (rng.integers(0, 256, (n, 3)) / 255).astype(np.float32),
                 (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
                 rng.integers(-1, 20, n), rng.integers(-1, 5, n))


def _prepared(tmp_path: Path, scenes: list[Scene]) -> Path:
    root = tmp_path / "prepared"
    for scene in scenes:
        write_scene(root / scene.name, scene)
    manifest = {"format": SCENE_FORMAT, "dataset": "scannet", "class_names": list(SCANNET20_CLASSES),
                "scenes": {s.name: {"points": len(s)} for s in scenes}, "source": "test"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "splits.json").write_text(json.dumps(default_splits([s.name for s in scenes])))
    return root


def test_prepared_folder_round_trip(tmp_path):
    scenes = [_scene(50, "a"), _scene(70, "b")]
    root = _prepared(tmp_path, scenes)
    assert read_scene_splits(root) == {"train": ["a"], "val": ["b"]}
    (a,), (b,) = load_scenes(root, "train"), load_scenes(root, "val")
    for got, want in ((a, scenes[0]), (b, scenes[1])):
        assert got.name == want.name
        for field in ("points", "colors", "normals", "segment", "instance"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
            assert getattr(got, field).dtype == getattr(want, field).dtype
    assert scene_class_names(root) == list(SCANNET20_CLASSES)
    assert sorted(p.name for p in (root / "a").iterdir()) == [f"{f}.npy" for f in
                                                              ("colors", "instance", "normals", "points", "segment")]


@pytest.mark.parametrize("field, value, message", [
    ("segment", lambda s: s.segment.astype(np.int32), "expected int64 segment"),
    ("instance", lambda s: s.instance[:-1], "expected instance of shape (50,)"),
    ("points", lambda s: np.where(np.arange(50)[:, None] == 3, np.nan, s.points).astype(np.float32), "NaN"),
    ("normals", lambda s: s.normals * 2, "not unit length"),
    ("colors", lambda s: s.colors + 300 / 255, "outside [0, 1]"),
    ("segment", lambda s: np.full(50, -2, np.int64), "out of range"),
])
def test_read_scene_errors_name_the_file(tmp_path, field, value, message):
    root = _prepared(tmp_path, [_scene()])
    np.save(root / "room" / f"{field}.npy", value(_scene()))
    with pytest.raises(DataFormatError, match=f"room/{field}.npy") as info:
        read_scene(root / "room")
    assert message in str(info.value)


def test_v1_folders_still_read_with_colours_in_0_1(tmp_path):
    """pc3d-scenes-v1 stored coord / color (0..255) / normal; they read as points / colors in [0, 1] / normals."""
    scene = _scene(40, "old")
    root = tmp_path / "v1"
    (root / "old").mkdir(parents=True)
    for field, stem in (("points", "coord"), ("normals", "normal"), ("segment", "segment"), ("instance", "instance")):
        np.save(root / "old" / f"{stem}.npy", getattr(scene, field))
    np.save(root / "old" / "color.npy", np.round(scene.colors * 255).astype(np.float32))
    manifest = {"format": "pc3d-scenes-v1", "dataset": "scannet", "class_names": list(SCANNET20_CLASSES),
                "scenes": {"old": {"points": 40}}, "source": "test"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "splits.json").write_text(json.dumps({"train": ["old"], "val": ["old"]}))
    (got,) = load_scenes(root, "train")
    np.testing.assert_allclose(got.colors, scene.colors, atol=1e-7)
    np.testing.assert_array_equal(got.points, scene.points)
    np.testing.assert_array_equal(got.normals, scene.normals)


def test_prepared_folder_errors(tmp_path):
    root = _prepared(tmp_path, [_scene(50, "a"), _scene(50, "b")])
    (root / "splits.json").write_text(json.dumps({"train": ["a", "c"], "val": ["b"]}))
    with pytest.raises(DataFormatError, match=r"splits.json: split 'train' names scenes .* c"):
        load_scenes(root, "train")
    (root / "splits.json").write_text('{"train": ["a"')
    with pytest.raises(DataFormatError, match="splits.json: not valid JSON"):
        read_scene_splits(root)
    (root / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"]}))
    (root / "b" / "normals.npy").unlink()
    with pytest.raises(DataFormatError, match="b/normals.npy: missing"):
        load_scenes(root, "val")
    np.save(root / "a" / "segment.npy", np.full(50, 20, np.int64))  # 20 classes: ids 0..19
    with pytest.raises(DataFormatError, match="a/segment.npy: segment out of range"):
        load_scenes(root, "train")
    shutil.rmtree(root / "a")
    with pytest.raises(DataFormatError, match="a: scene folder not found"):
        load_scenes(root, "train")
    (root / "manifest.json").write_text(json.dumps({"format": "pc3d-object-cache"}))
    with pytest.raises(DataFormatError, match="manifest.json: not a pc3d-scenes-v2 / pc3d-scenes-v1 manifest"):
        load_scenes(root, "train")
    (root / "manifest.json").unlink()
    with pytest.raises(DataFormatError, match="neither a prepared scene folder"):
        load_scenes(root, "train")
