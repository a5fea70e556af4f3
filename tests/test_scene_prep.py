"""ScanNet and S3DIS converters (data_prep.scannet, data_prep.s3dis) into the prepared scene folder."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from data_prep.s3dis import prepare_s3dis
from data_prep.scannet import main as scannet_main
from data_prep.scannet import prepare_scannet
from pc3d.cli import main as cli_main
from pc3d.data.detection_scenes import read_scannet_boxes
from pc3d.data.scenes import (S3DIS_CLASSES, SCANNET20_CLASSES, load_scenes, nyu40_to_scannet20, read_scene,
                              read_scene_splits)
from pc3d.errors import ConfigError, DataFormatError
from pc3d.ops.normals import estimate_normals, mesh_vertex_normals

SCANS = ("scene0000_00", "scene0000_01")
NYU40_NAMES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
               "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
               "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
               "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
               "otherfurniture", "otherprop")
#: raw ScanNet categories (aggregation labels) for each NYU40 id: the class name, a few real raw names
RAW = {i + 1: name for i, name in enumerate(NYU40_NAMES)} | {3: "kitchen cabinets", 5: "office chair",
                                                              12: "kitchen counter", 24: "refrigerator"}
FACE_VERTICES = 600  # the mesh has faces on the first 600 vertices only; the others get PCA normals
ANGLE = math.radians(30)
# axisAlignment of scene0000_01: the PLY holds the real (aligned) vertices moved by its inverse
ALIGN = np.array([[math.cos(ANGLE), -math.sin(ANGLE), 0, 0.5], [math.sin(ANGLE), math.cos(ANGLE), 0, -1.25],
                  [0, 0, 1, 0.1], [0, 0, 0, 1]])


def write_scannet_scan(folder: Path, name: str, real: Path, n: int | None = None, align: np.ndarray | None = None):
    """A ScanNet release scan folder made from the real preprocessed scan ``real/<name>_*.npy``."""
    vert = np.load(real / f"{name}_vert_all.npy")[:n]
    sem = np.load(real / f"{name}_sem_label_all.npy")[:n].astype(np.int64)
    ins = np.load(real / f"{name}_ins_label_all.npy")[:n].astype(np.int64)
    folder.mkdir(parents=True)
    xyz = vert[:, :3].astype(np.float64)
    if align is not None:
        xyz = (xyz - align[:3, 3]) @ np.linalg.inv(align[:3, :3]).T
        (folder / f"{name}.txt").write_text(f"sceneType = Bedroom\naxisAlignment = "
                                            f"{' '.join(repr(float(x)) for x in align.reshape(-1))}\n")
    vertex = np.zeros(len(vert), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                        ("blue", "u1"), ("alpha", "u1")])
    for i, key in enumerate("xyz"):
        vertex[key] = xyz[:, i]
    for i, key in enumerate(("red", "green", "blue")):
        vertex[key] = vert[:, 3 + i]
    faces = np.zeros(FACE_VERTICES // 3, dtype=[("vertex_indices", "<i4", (3,))])
    faces["vertex_indices"] = np.arange(FACE_VERTICES).reshape(-1, 3)
    PlyData([PlyElement.describe(vertex, "vertex"),
             PlyElement.describe(faces, "face", len_types={"vertex_indices": "u1"},
                                 val_types={"vertex_indices": "i4"})]).write(str(folder / f"{name}_vh_clean_2.ply"))
    seg = ins * 3 + np.arange(len(ins)) % 3  # three segments per instance; instance 0 = unannotated
    (folder / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"sceneId": name,
                                                                               "segIndices": seg.tolist()}))
    groups = [{"id": int(i) - 1, "objectId": int(i) - 1, "label": RAW[int(sem[ins == i][0])],
               "segments": [int(3 * i), int(3 * i + 1), int(3 * i + 2)]} for i in np.unique(ins) if i > 0]
    (folder / f"{name}.aggregation.json").write_text(json.dumps({"sceneId": name, "segGroups": groups}))


def write_labels_tsv(path: Path) -> None:
    rows = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyu40class\tmpcat40index\tmpcat40"]
    rows += [f"{k}\t{raw}\t{raw}\t1\t{k}\t0\t{NYU40_NAMES[k - 1]}\t0\tx" for k, raw in RAW.items()]
    rows += ["99\tunused thing\tthing\t1\t40\t0\totherprop\t0\tx"]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def release(tmp_path, shared_data) -> Path:
    src = tmp_path / "scannet"
    write_scannet_scan(src / "scans" / SCANS[0], SCANS[0], shared_data / "scannet")
    write_scannet_scan(src / "scans" / SCANS[1], SCANS[1], shared_data / "scannet", align=ALIGN)
    write_labels_tsv(src / "scannetv2-labels.combined.tsv")
    return src


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_release_layout_prepared_from_a_real_scan(release, shared_data, tmp_path):
    dst = tmp_path / "prepared"
    manifest = prepare_scannet(release, dst)
    assert manifest["format"] == "pc3d-scenes-v2" and manifest["dataset"] == "scannet"
    assert manifest["class_names"] == list(SCANNET20_CLASSES) and manifest["params"]["layout"] == "release"
    assert read_scene_splits(dst) == {"train": [SCANS[0]], "val": [SCANS[1]]}
    real = shared_data / "scannet"
    for name in SCANS:
        scene = read_scene(dst / name)
        vert = np.load(real / f"{name}_vert_all.npy")
        sem = np.load(real / f"{name}_sem_label_all.npy")
        ins = np.load(real / f"{name}_ins_label_all.npy").astype(np.int64)
        assert manifest["scenes"][name]["points"] == len(vert)
        np.testing.assert_array_equal(scene.segment, nyu40_to_scannet20(sem))
        np.testing.assert_array_equal(scene.instance, ins - 1)
        np.testing.assert_allclose(scene.colors, vert[:, 3:] / 255, atol=1e-7)  # colours in [0, 1]
        np.testing.assert_allclose(scene.points, vert[:, :3], atol=2e-5)  # scene0000_01 went through axisAlignment
        # boxes: the detection classes' instances, as in the real _bbox.npy
        np.testing.assert_allclose(np.load(dst / name / "bbox.npy"), np.load(real / f"{name}_bbox.npy"), atol=5e-5)
        boxes, labels = read_scannet_boxes(dst / name / "bbox.npy")
        real_boxes, real_labels = read_scannet_boxes(real / f"{name}_bbox.npy")
        np.testing.assert_array_equal(labels, real_labels)
        np.testing.assert_allclose(boxes, real_boxes, atol=5e-5)
        # normals: the faces' area-weighted normals where there are faces, PCA normals elsewhere
        mesh = mesh_vertex_normals(scene.points, np.arange(FACE_VERTICES).reshape(-1, 3))
        on_face = np.linalg.norm(mesh, axis=1) > 0
        assert on_face.sum() > FACE_VERTICES - 10 and not on_face[FACE_VERTICES:].any()
        np.testing.assert_allclose(scene.normals[on_face], mesh[on_face], atol=1e-3)
        np.testing.assert_allclose(scene.normals[~on_face], estimate_normals(scene.points)[~on_face], atol=1e-3)


def test_prep_is_idempotent_and_keeps_edited_splits(release, tmp_path):
    dst = tmp_path / "prepared"
    first = prepare_scannet(release, dst)
    before = snapshot(dst)
    assert prepare_scannet(release, dst) == first
    assert snapshot(dst) == before  # same bytes, nothing rewritten (same mtimes)

    edited = {"train": list(SCANS), "val": [SCANS[1]], "mine": [SCANS[0]]}
    (dst / "splits.json").write_text(json.dumps(edited))
    prepare_scannet(release, dst)
    assert read_scene_splits(dst) == edited
    assert [s.name for s in load_scenes(dst, "mine")] == [SCANS[0]]

    # one changed input file: only that scene is converted again
    edited_state = snapshot(dst)
    segs = release / "scans" / SCANS[0] / f"{SCANS[0]}_vh_clean_2.0.010000.segs.json"
    os.utime(segs, ns=(segs.stat().st_atime_ns, segs.stat().st_mtime_ns + 10**9))
    prepare_scannet(release, dst)
    after = snapshot(dst)
    for rel, (data, mtime) in edited_state.items():
        assert after[rel][0] == data or rel == "manifest.json"
        assert (after[rel][1] == mtime) == (not rel.startswith(SCANS[0]) and rel != "manifest.json"), rel

    prepare_scannet(release, dst, force=True)  # force: every scene again, default splits back
    assert read_scene_splits(dst) == {"train": [SCANS[0]], "val": [SCANS[1]]}
    assert {rel: data for rel, (data, _) in snapshot(dst).items() if rel.startswith("scene")} == \
        {rel: data for rel, (data, _) in before.items() if rel.startswith("scene")}

    (dst / "scene0000_01").rename(tmp_path / "moved")  # an incomplete folder is rebuilt
    prepare_scannet(release, dst)
    assert read_scene(dst / "scene0000_01").name == "scene0000_01"

    shutil.rmtree(release / "scans" / SCANS[1])  # a scan gone from the source: its folder goes too
    assert list(prepare_scannet(release, dst)["scenes"]) == [SCANS[0]] and not (dst / SCANS[1]).exists()
    with pytest.raises(DataFormatError, match=f"splits.json: split 'val' names scenes .* {SCANS[1]}"):
        load_scenes(dst, "val")  # the kept splits.json is checked when read


@pytest.fixture
def small_release(tmp_path, shared_data) -> Path:
    src = tmp_path / "small"
    write_scannet_scan(src / SCANS[0], SCANS[0], shared_data / "scannet", n=3000)  # SRC/<scene>/ also works
    write_labels_tsv(src / "scannetv2-labels.combined.tsv")
    return src


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("damage, culprit", [
    (lambda s: _truncate(s / SCANS[0] / f"{SCANS[0]}_vh_clean_2.ply"), "_vh_clean_2.ply"),
    (lambda s: (s / SCANS[0] / f"{SCANS[0]}_vh_clean_2.ply").write_bytes(b"ply\nformat bogus\n"), "_vh_clean_2.ply"),
    (lambda s: _truncate(s / SCANS[0] / f"{SCANS[0]}.aggregation.json"), ".aggregation.json"),
    (lambda s: _truncate(s / SCANS[0] / f"{SCANS[0]}_vh_clean_2.0.010000.segs.json", 0.9), ".segs.json"),
    (lambda s: (s / SCANS[0] / f"{SCANS[0]}_vh_clean_2.0.010000.segs.json").unlink(), ".segs.json"),
    (lambda s: (s / SCANS[0] / f"{SCANS[0]}.txt").write_text("axisAlignment = 1 0 0\n"), f"{SCANS[0]}.txt"),
    (lambda s: (s / "scannetv2-labels.combined.tsv").unlink(), "scannetv2-labels.combined.tsv"),
    (lambda s: (s / "scannetv2-labels.combined.tsv").write_text("raw_category\tnyu40id\nwall\tone\n"),
     "scannetv2-labels.combined.tsv:2"),
])
def test_corrupt_inputs_name_the_file(small_release, tmp_path, damage, culprit):
    dst = tmp_path / "prepared"
    prepare_scannet(small_release, dst)
    before = snapshot(dst)
    damage(small_release)
    with pytest.raises(DataFormatError, match=culprit):
        prepare_scannet(small_release, dst)
    assert snapshot(dst) == before  # the previous prepared folder is untouched


def test_unknown_label_and_bad_arguments(small_release, tmp_path):
    agg = small_release / SCANS[0] / f"{SCANS[0]}.aggregation.json"
    groups = json.loads(agg.read_text())
    groups["segGroups"][0]["label"] = "flux capacitor"
    agg.write_text(json.dumps(groups))
    with pytest.raises(DataFormatError, match=r"aggregation.json: label 'flux capacitor' .* not a raw_category"):
        prepare_scannet(small_release, tmp_path / "out")
    with pytest.raises(ConfigError, match="must differ"):
        prepare_scannet(small_release, small_release)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps({"format": "pc3d-object-cache"}))
    with pytest.raises(ConfigError, match="already holds a manifest.json"):
        prepare_scannet(small_release, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no ScanNet scans"):
        prepare_scannet(tmp_path / "empty", tmp_path / "x")
    with pytest.raises(DataFormatError, match="source folder not found"):
        prepare_scannet(tmp_path / "nope", tmp_path / "x")


def test_numpy_layout_prepared(shared_data, tmp_path):
    real = shared_data / "scannet"
    dst = tmp_path / "prepared"
    manifest = prepare_scannet(real, dst)
    assert sorted(manifest["scenes"]) == list(SCANS) and manifest["params"]["layout"] == "numpy"
    (val,) = load_scenes(dst, "val")
    direct = load_scenes(real, "val")[0]
    for field in ("points", "colors", "normals", "segment", "instance"):
        np.testing.assert_array_equal(getattr(val, field), getattr(direct, field))
    np.testing.assert_array_equal(val.segment, nyu40_to_scannet20(np.load(real / "scene0000_01_sem_label_all.npy")))
    np.testing.assert_allclose(np.load(dst / SCANS[1] / "bbox.npy"), np.load(real / "scene0000_01_bbox.npy"),
                               atol=1e-6)


def test_command_lines(small_release, tmp_path, capsys):
    assert cli_main(["prep", "scannet", f"src={small_release}", f"dst={tmp_path / 'a'}"]) == 0
    assert "1 scenes, 3000 points, 20 classes" in capsys.readouterr().out
    assert scannet_main([str(small_release), str(tmp_path / "b"), "--force"]) == 0
    assert (tmp_path / "a" / SCANS[0] / "segment.npy").read_bytes() == \
        (tmp_path / "b" / SCANS[0] / "segment.npy").read_bytes()
    capsys.readouterr()
    assert cli_main(["prep", "scannet", f"src={small_release}", f"dst={tmp_path / 'c'}",
                     f"labels_tsv={tmp_path / 'missing.tsv'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tsv: label map not found" in err[0]


# ----------------------------------------------------------------------------- S3DIS


def _plane_points(rng: np.random.Generator, axis: int, level: float, box: tuple[float, float, float, float],
                  n: int) -> np.ndarray:
    """n points on the plane coord[axis] = level; the other two coordinates uniform in box (lo1, hi1, lo2, hi2)."""
    pts = np.zeros((n, 3))
    others = [a for a in range(3) if a != axis]
    pts[:, others[0]] = rng.uniform(box[0], box[1], n)
    pts[:, others[1]] = rng.uniform(box[2], box[3], n)
    pts[:, axis] = level
    return pts


def write_annotation(path: Path, xyz: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([np.round(xyz, 3), np.tile(rgb, (len(xyz), 1))])
    path.write_text("".join(f"{x:.3f} {y:.3f} {z:.3f} {r:d} {g:d} {b:d}\n" for x, y, z, r, g, b in
                            [(*row[:3], *map(int, row[3:])) for row in table]))
    return table


N_PART = 400
ROOM = (0.0, 4.0, 0.0, 4.0)
WALL = (0.0, 4.0, 0.0, 3.0)


@pytest.fixture
def s3dis_tree(tmp_path) -> tuple[Path, dict[str, list[tuple[str, np.ndarray]]]]:
    """Two 4 x 4 x 3 m rooms of planes (Area_1/office_1, Area_5/hallway_1): {scene: [(stem, table) in file order]}."""
    rng = np.random.default_rng(0)
    src = tmp_path / "s3dis"
    rooms = {
        "Area_1/office_1": [("ceiling_1", 2, 3.0, ROOM), ("chair_1", 2, 1.0, (1, 2, 1, 2)), ("floor_1", 2, 0.0, ROOM),
                            ("stairs_1", 2, 2.0, (2.5, 3.5, 2.5, 3.5)), ("wall_1", 0, 0.0, WALL),
                            ("wall_2", 0, 4.0, WALL)],
        "Area_5/hallway_1": [("floor_1", 2, 0.0, ROOM), ("table_1", 2, 0.75, (1, 3, 1, 3)),
                             ("ceiling_1", 2, 3.0, ROOM)],
    }
    expected = {}
    for room, parts in rooms.items():
        tables = []
        for i, (stem, axis, level, box) in enumerate(parts):
            xyz = _plane_points(rng, axis, level, box, N_PART)
            tables.append((stem, write_annotation(src / room / "Annotations" / f"{stem}.txt", xyz,
                                                  (10 * i, 255 - i, 7))))
        (src / room / f"{room.split('/')[1]}.txt").write_text("the whole room: not read\n")
        expected[room.replace("/", "_")] = sorted(tables, key=lambda t: t[0])
    return src, expected


def test_s3dis_prepared(s3dis_tree, tmp_path):
    src, expected = s3dis_tree
    dst = tmp_path / "prepared"
    manifest = prepare_s3dis(src, dst)
    assert manifest["dataset"] == "s3dis" and manifest["class_names"] == list(S3DIS_CLASSES)
    assert read_scene_splits(dst) == {"train": ["Area_1_office_1"], "val": ["Area_5_hallway_1"]}
    for name, tables in expected.items():
        scene = read_scene(dst / name)
        points = np.concatenate([t for _, t in tables])
        np.testing.assert_allclose(scene.points, points[:, :3], atol=1e-6)
        np.testing.assert_allclose(scene.colors, points[:, 3:] / 255, atol=1e-7)
        classes = [{"stairs": "clutter"}.get(stem.split("_")[0], stem.split("_")[0]) for stem, _ in tables]
        np.testing.assert_array_equal(scene.segment, np.repeat([S3DIS_CLASSES.index(c) for c in classes], N_PART))
        np.testing.assert_array_equal(scene.instance, np.repeat(np.arange(len(tables)), N_PART))
        # orientation rule: floors up, ceilings down, walls into the room (away from the room's edges)
        inner = ((scene.points > 0.6) & (scene.points < [3.4, 3.4, 2.4])).sum(axis=1) == 2  # 2 coordinates inside
        for cls, want in (("floor", [0, 0, 1]), ("ceiling", [0, 0, -1]), ("wall", None)):
            sel = (scene.segment == S3DIS_CLASSES.index(cls)) & inner
            if want is None:  # wall_1 at x = 0 faces +x, wall_2 at x = 4 faces -x
                want = np.where(scene.points[sel, :1] < 2, [1, 0, 0], [-1, 0, 0])
            if cls != "wall" or name == "Area_1_office_1":
                assert sel.sum() > 50
            np.testing.assert_allclose(scene.normals[sel], np.broadcast_to(want, (sel.sum(), 3)), atol=1e-3)
    before = snapshot(dst)
    prepare_s3dis(src, dst)
    assert snapshot(dst) == before
    assert cli_main(["prep", "s3dis", f"src={src}", f"dst={tmp_path / 'cli'}", "val_area=1"]) == 0
    assert read_scene_splits(tmp_path / "cli") == {"train": ["Area_5_hallway_1"], "val": ["Area_1_office_1"]}


def test_s3dis_errors(s3dis_tree, tmp_path):
    src, _ = s3dis_tree
    bad = src / "Area_1" / "office_1" / "Annotations" / "chair_1.txt"
    lines = bad.read_text().splitlines()
    lines[6] = "1.0 2.0 3.0 4 5 \x10"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match="chair_1.txt:7: expected 6 numbers"):
        prepare_s3dis(src, tmp_path / "a")
    bad.write_text("1 2 3 4 5 600\n")
    with pytest.raises(DataFormatError, match="chair_1.txt: colours outside 0..255"):
        prepare_s3dis(src, tmp_path / "a")
    bad.unlink()
    (bad.parent / "spaceship_1.txt").write_text("1 2 3 4 5 6\n")
    with pytest.raises(DataFormatError, match="spaceship_1.txt: unknown S3DIS class 'spaceship'"):
        prepare_s3dis(src, tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no S3DIS rooms"):
        prepare_s3dis(tmp_path / "empty", tmp_path / "b")
