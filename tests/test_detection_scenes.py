"""ScanNet / SUN RGB-D detection scenes on the real samples: the boxes must sit on the points."""

import math

import numpy as np
import pytest

from conftest import require_shared
from pc3d.data.detection_scenes import (SCANNET_CLASSES, SUNRGBD_CLASSES, read_scannet_boxes, read_scannet_scene,
                                        read_sunrgbd_frame, read_sunrgbd_labels)
from pc3d.errors import DataFormatError


def points_inside(box, points):
    d = points[:, :3].astype(np.float64) - box[:3]
    c, s = math.cos(box[6]), math.sin(box[6])
    local_x, local_y = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    return int(((np.abs(local_x) <= box[3] / 2) & (np.abs(local_y) <= box[4] / 2)
                & (np.abs(d[:, 2]) <= box[5] / 2)).sum())


def test_scannet_scene_boxes_are_the_18_classes_and_enclose_their_objects():
    scene = read_scannet_scene(require_shared("scannet") / "scene0000_00")
    raw = np.load(require_shared("scannet") / "scene0000_00_bbox.npy")
    assert scene.points.shape[1] == 3 and scene.points.dtype == np.float32 and scene.colors.shape == scene.points.shape
    assert 0 <= scene.colors.min() and scene.colors.max() <= 1  # rgb 0..255 in the file, [0, 1] in pc3d
    assert scene.class_names == SCANNET_CLASSES and len(SCANNET_CLASSES) == 18
    assert 0 < len(scene.boxes) <= len(raw) and (scene.boxes[:, 6] == 0).all()
    assert set(scene.labels.tolist()) <= set(range(18))
    # ids 3 (cabinet), 5 (chair) ... map to their class; unlisted NYU40 ids are dropped
    assert SCANNET_CLASSES[scene.labels[np.argmin(np.abs(scene.boxes[:, 0] - raw[0, 0]))]] == "window"  # nyu 9
    # every box holds points of the mesh (a wrong centre/size convention leaves boxes empty)
    counts = [points_inside(box, scene.points) for box in scene.boxes]
    assert min(counts) >= 20, counts


def test_sunrgbd_boxes_use_full_sizes_along_the_heading():
    root = require_shared("sunrgbd")
    frame = read_sunrgbd_frame(root, "000001")
    assert frame.class_names == SUNRGBD_CLASSES
    names = [SUNRGBD_CLASSES[i] for i in frame.labels]
    assert names == ["bed", "night_stand", "dresser"]  # ottoman, dresser_mirror, lamp are not benchmark classes
    bed = frame.boxes[0]
    assert bed[3:6] == pytest.approx([2 * 1.151035, 2 * 0.943792, 2 * 0.984807], rel=1e-6)
    assert bed[6] == pytest.approx(math.atan2(-0.992216, -0.124529), rel=1e-6)
    # l along the heading: the swapped reading holds far fewer of the points
    for box in frame.boxes:
        swapped = box.copy()
        swapped[3], swapped[4] = box[4], box[3]
        assert points_inside(box, frame.points) > points_inside(swapped, frame.points) * 0.9
    assert sum(points_inside(b, frame.points) for b in frame.boxes) > 1.5 * sum(
        points_inside(np.r_[b[:3], b[4], b[3], b[5:]], frame.points) for b in frame.boxes)
    v1 = read_sunrgbd_frame(root, "000001", label_dir="label_v1")
    assert len(v1.boxes) == len(frame.boxes)


def test_bad_label_lines_and_files_are_named(tmp_path):
    bad = tmp_path / "000009.txt"
    bad.write_text("bed 1 2 3 4 0 0 0 1 1 1 1\n")
    with pytest.raises(DataFormatError, match=r"000009.txt:1: expected 13 fields"):
        read_sunrgbd_labels(bad)
    bad.write_text("bed 1 2 3 4 0 0 nan 1 1 1 1 0\n")
    with pytest.raises(DataFormatError, match=r"000009.txt:1: NaN"):
        read_sunrgbd_labels(bad)
    boxes = tmp_path / "scene_bbox.npy"
    np.save(boxes, np.zeros((3, 6)))
    with pytest.raises(DataFormatError, match=r"scene_bbox.npy: expected \(K, 7\)"):
        read_scannet_boxes(boxes)
    with pytest.raises(DataFormatError, match="file not found"):
        read_sunrgbd_frame(tmp_path, "000001")
    (tmp_path / "lidar").mkdir()
    (tmp_path / "lidar" / "000001.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataFormatError, match="000001.npz: not a readable .npz"):
        read_sunrgbd_frame(tmp_path, "000001")


def test_scene_augmentations_keep_every_point_in_its_boxes():
    from pc3d.data.transforms import augment_scene, flip_scene, rotate_scene_z, scale_scene

    frame = read_sunrgbd_frame(require_shared("sunrgbd"), "000001")
    points, boxes = frame.points[::5], frame.boxes

    def membership(p, b):
        out = []
        for box in b:
            d = p[:, :3].astype(np.float64) - box[:3]
            c, s = math.cos(box[6]), math.sin(box[6])
            lx, ly = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
            out.append((np.abs(lx) <= box[3] / 2 - 1e-4) & (np.abs(ly) <= box[4] / 2 - 1e-4)
                       & (np.abs(d[:, 2]) <= box[5] / 2 - 1e-4))
        return np.stack(out)

    before = membership(points, boxes)
    assert before.sum() > 500
    transforms = [lambda p, b: flip_scene(p, b, 0), lambda p, b: flip_scene(p, b, 1),
                  lambda p, b: rotate_scene_z(p, b, 0.7), lambda p, b: scale_scene(p, b, 1.3),
                  lambda p, b: augment_scene(p, b, np.random.default_rng(3), flip_axes=(0, 1))]
    for transform in transforms:
        p, b = transform(points, boxes)
        after = membership(p, b)
        # points on a face may move across by float rounding; nothing else may change
        assert (after != before).sum() <= 2, transform
        assert not np.shares_memory(p, points) and p[:, 3:].tolist() == points[:, 3:].tolist()
    flipped = flip_scene(points, boxes, 1)[1]
    assert not np.allclose(flipped[:, 6], boxes[:, 6])  # the heading really changed


def test_detection_datasets_pad_boxes_and_are_seeded():
    from pc3d.data.detection_data import scannet_data, sunrgbd_data, synthetic_rooms_data

    scannet = scannet_data(require_shared("scannet"), ["scene0000_00"], ["scene0000_01"], num_points=5000)
    assert not scannet.oriented and len(scannet.val) == 1 and scannet.val[0].name == "scene0000_01"
    dataset = scannet.dataset("train", augment=True, seed=1)
    a, b = dataset[0], dataset[0]
    assert torch_equal(a, b) and a["points"].shape == (5000, 3)
    assert (a["gt_labels"] >= 0).sum() == len(scannet.train[0].boxes)
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[0]["points"].numpy(), a["points"].numpy())
    sun = sunrgbd_data(require_shared("sunrgbd"), ["000001", "000002"])
    assert sun.oriented and sun.val == sun.train
    padded = sun.dataset("val", augment=False, seed=0)
    assert padded[0]["gt_boxes"].shape == padded[1]["gt_boxes"].shape
    rooms = synthetic_rooms_data(train_scenes=2, val_scenes=1, num_points=1024)
    assert rooms.class_names and len(rooms.train) == 2
    with pytest.raises(DataFormatError, match="data.root=.*directory not found"):
        scannet_data(require_shared("scannet") / "nope", ["scene0000_00"])


def torch_equal(a, b):
    return all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
