"""Rotated rescans: scans and detection scenes turned about z, wall alignment, and a scene probe that
keeps its mIoU on a scan in another orientation than its train scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_shared
from pc3d.data.detection_data import rotated_detection_scene, scannet_data, synthetic_rooms_data
from pc3d.data.detection_scenes import DetectionScene
from pc3d.data.scenes import Scene, load_scenes, posed_scene, rotated_scene, wall_aligned_scene, wall_yaw
from pc3d.data.transforms import random_pose, rotate_scene_quarter_turns, yaw_rotation
from pc3d.errors import ConfigError
from pc3d.ops.boxes import points_in_boxes


def _scan(seed: int = 0, n: int = 500) -> Scene:
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return Scene("s", rng.uniform(0, 4, (n, 3)).astype(np.float32), rng.uniform(0, 1, (n, 3)).astype(np.float32),
                 normals.astype(np.float32), rng.integers(-1, 5, n), rng.integers(-1, 9, n))


def test_quarter_turns_are_exact_and_keep_every_point_in_its_axis_aligned_box():
    rng = np.random.default_rng(0)
    boxes = np.array([[1.0, 2.0, 0.5, 0.8, 2.0, 1.0, 0.0], [-2.0, 0.5, 0.4, 3.0, 0.6, 0.8, 0.0]], dtype=np.float32)
    points = np.concatenate([box[:3] + rng.uniform(-0.5, 0.5, (50, 3)) * box[3:6] for box in boxes]).astype(np.float32)
    inside = points_in_boxes(torch.from_numpy(points), torch.from_numpy(boxes))
    for turns in range(5):
        turned_points, turned_boxes = rotate_scene_quarter_turns(points, boxes, turns)
        assert (turned_boxes[:, 6] == 0).all()
        assert torch.equal(points_in_boxes(torch.from_numpy(turned_points), torch.from_numpy(turned_boxes)), inside)
        expected = points @ yaw_rotation(90 * turns).T.astype(np.float32)
        np.testing.assert_allclose(turned_points, expected, atol=1e-5)
    odd_points, odd_boxes = rotate_scene_quarter_turns(points, boxes, 1)
    np.testing.assert_array_equal(odd_boxes[:, 3:5], boxes[:, [4, 3]])  # dx and dy swap
    np.testing.assert_array_equal(rotate_scene_quarter_turns(points, boxes, 4)[0], points)  # exact, no trigonometry
    np.testing.assert_array_equal(points, rotate_scene_quarter_turns(points, boxes, 1)[0][:, :3] @ np.array(
        [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=np.float32).T)


def test_posed_scene_moves_points_and_normals_about_the_box_centre_and_refuses_a_shear():
    scan = _scan()
    rotation, scale = random_pose(np.random.default_rng(3))
    posed = posed_scene(scan, rotation, scale, name="posed")
    centre = (scan.points.min(0) + scan.points.max(0)) / 2
    np.testing.assert_allclose(posed.points, (scan.points - centre) @ rotation.T * scale + centre, atol=1e-5)
    np.testing.assert_allclose(posed.normals, scan.normals @ rotation.T, atol=1e-6)
    assert posed.name == "posed" and posed.segment is scan.segment and posed.colors is scan.colors
    # the inverse pose about the (moved) centre brings the scan back
    back = posed_scene(posed, rotation.T, 1 / scale)
    np.testing.assert_allclose(back.points - back.points.mean(0), scan.points - scan.points.mean(0), atol=1e-4)
    mirror = posed_scene(scan, np.diag([-1.0, 1.0, 1.0]))
    np.testing.assert_allclose(mirror.normals[:, 0], -scan.normals[:, 0])
    with pytest.raises(ValueError, match="orthogonal"):
        posed_scene(scan, np.diag([2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="scale"):
        posed_scene(scan, np.eye(3), 0.0)


def test_rotated_scene_names_the_turn_and_a_full_turn_is_the_scan_itself():
    scan = _scan()
    assert rotated_scene(scan, 0) is scan and rotated_scene(scan, 720) is scan
    turned = rotated_scene(scan, 90)
    assert turned.name == "s@rot90" and len(turned) == len(scan)
    centre = (scan.points.min(0) + scan.points.max(0)) / 2
    np.testing.assert_allclose(turned.points[:, 0] - centre[0], -(scan.points[:, 1] - centre[1]), atol=1e-5)
    np.testing.assert_allclose(turned.points[:, 2], scan.points[:, 2], atol=1e-6)


def test_wall_yaw_follows_a_turn_of_a_real_scan_modulo_a_quarter_turn():
    scan = load_scenes(require_shared("scannet"), "val")[0]
    yaw = wall_yaw(scan)
    assert -45 < yaw <= 45
    for degrees in (37.0, 90.0, -20.0, 200.0):
        difference = (wall_yaw(rotated_scene(scan, degrees)) - yaw - degrees) % 90
        assert min(difference, 90 - difference) < 1e-3, degrees
        assert abs(wall_yaw(wall_aligned_scene(rotated_scene(scan, degrees)))) < 1e-3
    floor = Scene("floor", scan.points[:10], scan.colors[:10], np.tile(np.float32([0, 0, 1]), (10, 1)),
                  scan.segment[:10], scan.instance[:10])
    assert wall_yaw(floor) == 0.0 and wall_aligned_scene(floor) is floor  # no wall to align by


def test_rotated_val_turns_detection_scenes_with_their_boxes():
    rooms = synthetic_rooms_data(train_scenes=1, val_scenes=2, num_points=2048)
    assert rooms.val_rotation == 0.0 and rooms.rotated_val(0) is rooms
    turned = rooms.rotated_val(45)
    for before, after in zip(rooms.val, turned.val):
        assert after.name == f"{before.name}@rot45"
        np.testing.assert_allclose(after.boxes[:, 6], before.boxes[:, 6] + np.pi / 4, atol=1e-5)
        counts = points_in_boxes(torch.from_numpy(before.points), torch.from_numpy(before.boxes)).sum(0)
        moved = points_in_boxes(torch.from_numpy(after.points), torch.from_numpy(after.boxes)).sum(0)
        assert (counts - moved).abs().max() <= 2  # boundary points only
    assert turned.train is rooms.train
    scannet = scannet_data(require_shared("scannet"), ["scene0000_00"], ["scene0000_01"], num_points=5000)
    assert scannet.val_rotation == 90.0 and scannet.quarter_turns
    quarter = scannet.rotated_val(90).val[0]
    assert (quarter.boxes[:, 6] == 0).all()
    np.testing.assert_array_equal(quarter.boxes[:, 3:5], scannet.val[0].boxes[:, [4, 3]])
    with pytest.raises(ConfigError, match="multiples of 90"):
        scannet.rotated_val(45)


def test_rotated_detection_scene_keeps_box_membership_on_a_real_scan():
    scene = scannet_data(require_shared("scannet"), ["scene0000_00"], num_points=5000).val[0]
    before = points_in_boxes(torch.from_numpy(scene.points), torch.from_numpy(scene.boxes))
    for degrees in (90, 180, 270):
        turned = rotated_detection_scene(scene, degrees, quarter_turns=True)
        after = points_in_boxes(torch.from_numpy(turned.points), torch.from_numpy(turned.boxes))
        # float rounding on box faces only
        assert int((after != before).sum()) <= 1e-3 * int(before.sum()) and int(before.sum()) > 1000
    assert isinstance(turned, DetectionScene) and turned.points.dtype == np.float32


@pytest.fixture(scope="module")
def probe_case():
    """A random-init sparse UNet at 8 cm and the ScanNet sample's two labelled scans."""
    from pc3d.encoders import SparseUNet

    root = require_shared("scannet")
    torch.manual_seed(0)
    encoder = SparseUNet(channels=(16, 32, 32, 32), blocks=(1, 1, 1, 1), dec_channels=(32, 32, 32),
                         dec_blocks=(1, 1, 1), voxel_size=0.08, stem_kernel=3, attention_stages=())
    return encoder, load_scenes(root, "train")[:1], load_scenes(root, "val")[:1]


def test_probe_on_a_scan_turned_90_degrees_keeps_80_percent_of_its_same_orientation_miou(probe_case):
    from pc3d.data.scenes import SCANNET20_CLASSES
    from pc3d.eval.scene_probe import run_scene_probe

    encoder, train, val = probe_case
    options = {"steps": 150, "seed": 0}
    robust = run_scene_probe(encoder, train, val, SCANNET20_CLASSES, "linear", align="walls", train_turns=4,
                             val_turns=4, val_rotation=90, **options)
    assert robust["same_orientation_miou"] > 0.15  # the probe learnt something (predicting the commonest class: < 0.05)
    assert robust["miou"] >= 0.8 * robust["same_orientation_miou"], robust
    assert robust["val_rotation"] == 90 and robust["align"] == "walls" and robust["train_turns"] == 4
    # an orientation no train scan has: aligned to its walls it is a quarter turn of them
    skew = run_scene_probe(encoder, train, val, SCANNET20_CLASSES, "linear", align="walls", train_turns=4,
                           val_turns=4, val_rotation=37, **options)
    assert skew["miou"] >= 0.8 * skew["same_orientation_miou"], skew
    # the failure this guards against: a probe of one scan in one pose does not survive the turn
    naive = run_scene_probe(encoder, train, val, SCANNET20_CLASSES, "linear", val_rotation=90, **options)
    assert naive["miou"] < 0.8 * naive["same_orientation_miou"], naive
    with pytest.raises(ConfigError, match="train_turns=3"):
        run_scene_probe(encoder, train, val, SCANNET20_CLASSES, "linear", train_turns=3)
