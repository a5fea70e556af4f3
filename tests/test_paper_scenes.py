"""ScanNet200 labels and the official ScanNet split lists (data_prep.scannet), data=scannet benchmark checks,
data=s3dis under the Area-5 protocol, and prepared scans read lazily (StoredScene)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.s3dis import prepare_s3dis
from data_prep.scannet import prepare_scannet
from pc3d.cli import main as cli_main
from pc3d.data.scannet200 import SCANNET200_CLASSES, SCANNET200_IDS, raw_id_to_scannet200
from pc3d.data.scene_data import StoredScene, s3dis_scenes, scannet_scenes
from pc3d.data.scene_dataset import SceneViewDataset
from pc3d.data.scenes import SCANNET20_CLASSES, load_scenes, read_scene, read_scene_splits
from pc3d.errors import ConfigError, DataFormatError
from test_scene_prep import RAW, SCANS, s3dis_tree, write_scannet_scan  # noqa: F401 (s3dis_tree is a fixture)

#: rows of ScanNet's scannetv2-labels.combined.tsv (id, category) for the raw labels of the fixture scans;
#: "sofa" (id 1313) is not one of the 200 (ScanNet200 scores "couch"), "kitchen counter" (159) is
CATEGORY = {"wall": (1, "wall"), "floor": (3, "floor"), "kitchen cabinets": (29, "kitchen cabinet"), "bed": (11, "bed"),
            "office chair": (10, "office chair"), "sofa": (1313, "sofa"), "table": (4, "table"), "door": (5, "door"),
            "window": (16, "window"), "bookshelf": (18, "bookshelf"), "picture": (15, "picture"),
            "kitchen counter": (159, "kitchen counter"), "blinds": (86, "blinds"), "desk": (9, "desk"),
            "curtain": (21, "curtain"), "dresser": (36, "dresser"), "pillow": (13, "pillow"), "mirror": (71, "mirror"),
            "clothes": (32, "clothes"), "ceiling": (41, "ceiling"), "books": (22, "book"),
            "refrigerator": (27, "refrigerator"), "paper": (79, "paper"), "towel": (31, "towel"),
            "shower curtain": (55, "shower curtain"), "box": (26, "box"), "whiteboard": (52, "whiteboard"),
            "person": (80, "person"), "toilet": (17, "toilet"), "sink": (14, "sink"), "lamp": (28, "lamp"),
            "bathtub": (42, "bathtub"), "bag": (47, "bag")}


def write_tsv_200(path: Path) -> None:
    """scannetv2-labels.combined.tsv with ScanNet200 ids: each raw label's id, category and NYU40 id."""
    rows = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyu40class"]
    for nyu, raw in RAW.items():
        ident, category = CATEGORY.get(raw, (2000 + nyu, f"{raw} (not in ScanNet's table)"))
        rows.append(f"{ident}\t{raw}\t{category}\t1\t{nyu}\t0\t{raw}")
    path.write_text("\n".join(rows) + "\n")


def test_scannet200_table_ids_and_names():
    assert len(SCANNET200_IDS) == 200 == len(set(SCANNET200_IDS)) == len(set(SCANNET200_CLASSES))
    assert list(SCANNET200_IDS) == sorted(SCANNET200_IDS)
    # hand-checked rows of ScanNet's label table
    for ident, name in ((1, "wall"), (2, "chair"), (3, "floor"), (4, "table"), (7, "cabinet"), (10, "office chair"),
                        (27, "refrigerator"), (29, "kitchen cabinet"), (35, "counter"), (1191, "mattress")):
        assert SCANNET200_CLASSES[SCANNET200_IDS.index(ident)] == name
    np.testing.assert_array_equal(raw_id_to_scannet200(np.array([0, 1, 12, 1191, 5000, -2])),
                                  [-1, 0, -1, 199, -1, -1])


@pytest.fixture
def release(tmp_path, shared_data) -> Path:
    src = tmp_path / "scannet"
    for name in SCANS:
        write_scannet_scan(src / "scans" / name, name, shared_data / "scannet", n=4000)
    write_tsv_200(src / "scannetv2-labels.combined.tsv")
    return src


def test_scannet200_segments_follow_the_tsv_id_column(release, tmp_path, shared_data, capsys):
    dst = tmp_path / "sn200"
    assert cli_main(["prep", "scannet", f"src={release}", f"dst={dst}", "benchmark=scannet200"]) == 0
    capsys.readouterr()
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["class_names"] == list(SCANNET200_CLASSES) and manifest["params"]["benchmark"] == "scannet200"
    twenty = prepare_scannet(release, tmp_path / "sn20")
    assert twenty["class_names"] == list(SCANNET20_CLASSES)
    seen = set()
    for name in SCANS:
        scene, scene20 = read_scene(dst / name), read_scene(tmp_path / "sn20" / name)
        sem = np.load(shared_data / "scannet" / f"{name}_sem_label_all.npy")[:4000].astype(int)
        for nyu in np.unique(sem):
            category = CATEGORY.get(RAW.get(int(nyu), ""), (0, "other"))[1] if nyu > 0 else "unannotated"
            at = sem == nyu
            expected = SCANNET200_CLASSES.index(category) if category in SCANNET200_CLASSES else -1
            assert (scene.segment[at] == expected).all(), (nyu, category)
            seen.add(category)
        np.testing.assert_array_equal(scene.points, scene20.points)  # only the labels differ
        np.testing.assert_array_equal(scene.instance, scene20.instance)
    assert {"wall", "floor"} <= seen
    assert scannet_scenes(dst, benchmark="scannet200").class_names == list(SCANNET200_CLASSES)
    with pytest.raises(ConfigError, match="prepared for scannet200"):
        scannet_scenes(dst)
    with pytest.raises(ConfigError, match="prepared for scannet20"):
        scannet_scenes(tmp_path / "sn20", benchmark="scannet200")


def test_scannet200_needs_the_release_layout(shared_data, tmp_path):
    with pytest.raises(ConfigError, match="numpy layout"):
        prepare_scannet(shared_data / "scannet", tmp_path / "x", benchmark="scannet200")
    assert not (tmp_path / "x").exists()


def test_official_split_lists_are_read_when_present(release, tmp_path):
    (release / "scannetv2_train.txt").write_text(f"{SCANS[1]}\n")
    (release / "scannetv2_val.txt").write_text(f"{SCANS[0]}\n")
    prepare_scannet(release, tmp_path / "official")
    assert read_scene_splits(tmp_path / "official") == {"train": [SCANS[1]], "val": [SCANS[0]]}
    prepare_scannet(release, tmp_path / "default", splits="default")  # pc3d's rule: the last scene is val
    assert read_scene_splits(tmp_path / "default") == {"train": [SCANS[0]], "val": [SCANS[1]]}
    lists = tmp_path / "Benchmark"
    lists.mkdir()
    for f in ("scannetv2_train.txt", "scannetv2_val.txt"):
        (release / f).rename(lists / f)
    prepare_scannet(release, tmp_path / "elsewhere", split_dir=lists)
    assert read_scene_splits(tmp_path / "elsewhere") == {"train": [SCANS[1]], "val": [SCANS[0]]}


@pytest.mark.parametrize("case,named", [("one_list", "scannetv2_val.txt"), ("absent_scene", "scene0707_00"),
                                        ("official_without_lists", "scannetv2_train.txt"),
                                        ("in_both", "also in")])
def test_official_split_lists_wrong(release, tmp_path, capsys, case, named):
    extra = []
    if case == "one_list":
        (release / "scannetv2_train.txt").write_text(f"{SCANS[0]}\n")
    elif case == "absent_scene":
        (release / "scannetv2_train.txt").write_text(f"{SCANS[0]}\nscene0707_00\n")
        (release / "scannetv2_val.txt").write_text(f"{SCANS[1]}\n")
    elif case == "official_without_lists":
        extra = ["splits=official"]
    else:
        (release / "scannetv2_train.txt").write_text(f"{SCANS[0]}\n{SCANS[1]}\n")
        (release / "scannetv2_val.txt").write_text(f"{SCANS[1]}\n")
    dst = tmp_path / "out"
    assert cli_main(["prep", "scannet", f"src={release}", f"dst={dst}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not dst.exists()


def test_s3dis_node_holds_the_area5_protocol(s3dis_tree, tmp_path):
    src, _ = s3dis_tree
    dst = tmp_path / "s3dis_prepared"
    prepare_s3dis(src, dst)
    data = s3dis_scenes(dst)
    assert [s.name for s in data.scenes("val")] == ["Area_5_hallway_1"]
    assert [s.name for s in data.scenes("train")] == ["Area_1_office_1"]
    with pytest.raises(ConfigError, match="holds s3dis scans"):
        data.detection()
    with pytest.raises(ConfigError, match="use data=s3dis"):
        scannet_scenes(dst)
    (dst / "splits.json").write_text(json.dumps({"train": ["Area_1_office_1", "Area_5_hallway_1"],
                                                 "val": ["Area_5_hallway_1"]}))
    with pytest.raises(ConfigError, match="Area_5_hallway_1 of the held-out Area_5 is in a training split"):
        s3dis_scenes(dst)
    (dst / "splits.json").write_text(json.dumps({"train": ["Area_5_hallway_1"], "val": ["Area_1_office_1"]}))
    with pytest.raises(ConfigError, match="exactly the 1 rooms of Area_5"):
        s3dis_scenes(dst)
    assert s3dis_scenes(dst, val_area=1, probe_train="train").probe_val == "val"


def test_prepared_scans_are_read_lazily_and_give_the_same_samples(release, tmp_path):
    dst = tmp_path / "prepared"
    prepare_scannet(release, dst)
    data = scannet_scenes(dst)
    lazy = data.scenes("train") + data.scenes("val")
    assert all(isinstance(s, StoredScene) for s in lazy) and [len(s) for s in lazy] == [4000, 4000]
    eager = load_scenes(dst, "train") + load_scenes(dst, "val")
    for stored, scene in zip(lazy, eager):
        for field in ("points", "colors", "normals", "segment", "instance"):
            np.testing.assert_array_equal(getattr(stored, field), getattr(scene, field))
    a = SceneViewDataset(lazy, voxel_size=0.05, crop_points=1000, seed=3)
    b = SceneViewDataset(eager, voxel_size=0.05, crop_points=1000, seed=3)
    for index in (0, 1):
        x, y = a[index], b[index]
        assert all(np.array_equal(x[k].numpy(), y[k].numpy()) for k in x)
    (dst / SCANS[0] / "colors.npy").unlink()  # read only when used, with the file named
    with pytest.raises(DataFormatError, match="colors.npy"):
        scannet_scenes(dst).scenes("train")[0].colors


@pytest.mark.slow
def test_s3dis_prep_then_msm_pretrain_then_probe_on_area5(s3dis_tree, tmp_path, capsys):
    """The README's S3DIS commands: prep, pretrain MSM, probe scored on Area 5."""
    src, _ = s3dis_tree
    data = tmp_path / "s3dis_prepared"
    small = ["encoder=sparse_unet", "encoder.channels=[8,16,16,16,16]", "encoder.dec_channels=[16,16,16,8]",
             "encoder.blocks=[1,1,1,1,1]", "encoder.dec_blocks=[1,1,1,1]", "encoder.voxel_size=0.2",
             "encoder.stem_kernel=3", "encoder.window_size=32", "encoder.head_dim=8", "device=cpu"]
    assert cli_main(["prep", "s3dis", f"src={src}", f"dst={data}"]) == 0
    run = tmp_path / "msm"
    assert cli_main(["pretrain", "method=msm", "data=s3dis", f"data.root={data}", "data.crop_points=2000", *small,
                     "trainer.batch_size=1", "trainer.max_steps=2", f"out_dir={run}"]) == 0, capsys.readouterr().err
    assert cli_main(["probe", "probe=scene_linear", f"checkpoint={run}", "data=s3dis", f"data.root={data}",
                     "probe.steps=5", "device=cpu", f"out_dir={run / 'probe'}"]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "probe" / "metrics.json").read_text())
    assert metrics["train_scans"] == ["Area_1_office_1"] and metrics["val_scans"] == ["Area_5_hallway_1"]
    assert 0.0 <= metrics["miou"] <= 1.0
