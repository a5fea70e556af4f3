"""Posed-image readers: real captures checked geometrically, synthetic files for every format, bad input.

The real-data tests project known 3D points (SfM points, scan vertices, depth points) through the
cameras the readers build and compare against the images: a wrong axis convention, pose
inversion or intrinsics scaling sends the points out of the frame or onto the wrong colours.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from conftest import require_shared
from pc3d.data.cameras import (
    POSED_IMAGE_FORMATS,
    Camera,
    PosedImages,
    camera_rays,
    detect_posed_format,
    read_blender,
    read_colmap,
    read_instant_ngp,
    read_llff,
    read_posed_images,
    read_scannet_frames,
    read_scannet_infos,
    read_sunrgbd,
)
from pc3d.data.io import read_numpy_pickle
from pc3d.errors import ConfigError, DataFormatError

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def fails(match: str, call, *args, **kwargs) -> str:
    """Assert ``call`` raises a one-line DataFormatError containing ``match``; return the message."""
    with pytest.raises(DataFormatError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    return message


def look_at(center, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV camera-to-world looking from ``center`` at ``target`` (image up = world ``up``)."""
    center, target, up = (np.asarray(v, dtype=np.float64) for v in (center, target, up))
    forward = (target - center) / np.linalg.norm(target - center)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = center
    return pose


def write_png(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------------------
# Camera, rays, distortion
# --------------------------------------------------------------------------------------


def test_camera_inverse_center_and_scaled_intrinsics():
    pose = look_at([1.0, -2.0, 0.5], target=[0.2, 0.1, 0.0])
    k = np.array([[100.0, 0.0, 32.0], [0.0, 110.0, 24.0], [0.0, 0.0, 1.0]])
    camera = Camera(k, pose, 64, 48, name="c")
    assert np.allclose(camera.world_to_camera() @ pose, np.eye(4), atol=1e-12)
    assert camera.center.tolist() == [1.0, -2.0, 0.5]
    half = camera.scaled(0.5)
    # corner-origin pixels: every coordinate halves, so cx = 32 -> 16 (the centre of a 32-pixel row)
    assert half.intrinsics.tolist() == [[50.0, 0.0, 16.0], [0.0, 55.0, 12.0], [0.0, 0.0, 1.0]]
    assert (half.width, half.height) == (32, 24)
    odd = Camera(k, pose, 65, 49).scaled(0.5)
    assert (odd.width, odd.height) == (32, 24)  # the remainder is cropped; cx stays 16
    assert odd.intrinsics[0, 2] == 16.0
    assert np.array_equal(half.camera_to_world, pose)
    with pytest.raises(ValueError):
        camera.scaled(0)


def test_camera_rays_pass_through_pixel_centres():
    pose = look_at([0.5, -3.0, 1.0])
    k = np.array([[80.0, 0.0, 20.0], [0.0, 90.0, 15.0], [0.0, 0.0, 1.0]])
    camera = Camera(k, pose, 40, 30)
    origins, directions = camera_rays(camera)
    assert origins.shape == directions.shape == (1200, 3) and directions.dtype == np.float32
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-6)
    assert np.allclose(origins, pose[:3, 3], atol=1e-6)
    # ray 0 is pixel (0, 0): its centre (0.5, 0.5) -> camera direction ((0.5 - cx) / fx, (0.5 - cy) / fy, 1)
    local = np.array([(0.5 - 20.0) / 80.0, (0.5 - 15.0) / 90.0, 1.0])
    expected = pose[:3, :3] @ local / np.linalg.norm(local)
    assert np.allclose(directions[0], expected, atol=1e-6)
    # rows outermost: ray v * W + u projects back onto (u + 0.5, v + 0.5)
    uv, depth = camera.project(origins.astype(np.float64) + 2.0 * directions.astype(np.float64))
    grid = np.stack(np.meshgrid(np.arange(40) + 0.5, np.arange(30) + 0.5), axis=-1).reshape(-1, 2)
    assert np.allclose(uv, grid, atol=1e-4) and (depth > 0).all()
    small_o, small_d = camera_rays(camera, downscale=2)
    ref_o, ref_d = camera_rays(camera.scaled(0.5))
    assert small_d.shape == (300, 3) and np.array_equal(small_d, ref_d) and np.array_equal(small_o, ref_o)


def test_distortion_model_and_undistorted_rays():
    dist = np.array([-0.12, 0.03, 0.002, -0.001])
    camera = Camera([[200.0, 0.0, 50.0], [0.0, 210.0, 40.0], [0.0, 0.0, 1.0]], np.eye(4), 100, 80, distortion=dist)
    # OpenCV's model by hand at one point: x = 0.2, y = -0.1 (camera frame point (0.2, -0.1, 1))
    x, y = 0.2, -0.1
    r2 = x * x + y * y
    radial = 1 - 0.12 * r2 + 0.03 * r2 * r2
    xd = x * radial + 2 * 0.002 * x * y + (-0.001) * (r2 + 2 * x * x)
    yd = y * radial + 0.002 * (r2 + 2 * y * y) + 2 * (-0.001) * x * y
    uv, _ = camera.project(np.array([[0.2, -0.1, 1.0]]))
    assert np.allclose(uv[0], [200 * xd + 50, 210 * yd + 40], atol=1e-12)
    plain, _ = camera.project(np.array([[0.2, -0.1, 1.0]]), distort=False)
    assert np.allclose(plain[0], [200 * 0.2 + 50, 210 * -0.1 + 40])
    # undistorted rays land back on their pixel centres through the distorting projection
    origins, directions = camera_rays(camera)
    uv, _ = camera.project(origins.astype(np.float64) + directions.astype(np.float64))
    grid = np.stack(np.meshgrid(np.arange(100) + 0.5, np.arange(80) + 0.5), axis=-1).reshape(-1, 2)
    assert np.abs(uv - grid).max() < 1e-3  # float32 rays
    _, pinhole = camera_rays(camera, undistort=False)
    corner = 0  # pixel (0, 0) is where distortion matters most
    assert np.linalg.norm(pinhole[corner] - directions[corner]) > 1e-3


# --------------------------------------------------------------------------------------
# Blender / nerf_synthetic (real lego)
# --------------------------------------------------------------------------------------


def test_lego_cameras_orbit_the_origin_and_images_composite_over_white():
    root = require_shared("nerf_synthetic/lego")
    lego = read_posed_images(root)
    meta = json.loads((root / "transforms_train.json").read_text())
    assert lego.source == "blender" and len(lego) == 100
    focal = 400.0 / math.tan(0.5 * meta["camera_angle_x"])
    for camera in lego.cameras:
        assert (camera.width, camera.height) == (800, 800)
        assert np.allclose(camera.intrinsics, [[focal, 0, 400], [0, focal, 400], [0, 0, 1]])
        assert camera.distortion is None
    assert focal == pytest.approx(1111.111, abs=1e-3)
    centers = np.stack([c.center for c in lego.cameras])
    assert np.allclose(np.linalg.norm(centers, axis=1), 4.031, atol=2e-3)
    for camera in lego.cameras:
        forward, down = camera.camera_to_world[:3, 2], camera.camera_to_world[:3, 1]
        # the optical axis (+z) passes the origin: distance from the origin to the axis line
        along = -camera.center @ forward
        assert along == pytest.approx(4.031, abs=2e-3)
        assert np.linalg.norm(camera.center + along * forward) < 1e-3
        assert down[2] < 0  # image down is world down (Blender z up): y was flipped from OpenGL
        uv, depth = camera.project(np.zeros((1, 3)))
        assert np.allclose(uv, 400.0, atol=0.05) and depth[0] > 0
    train, held = lego.holdout_split(8)
    assert held.tolist() == list(range(0, 100, 8)) and len(held) == 13 and len(train) == 87
    image = lego.image(3)
    raw = Image.open(root / (meta["frames"][3]["file_path"][2:] + ".png")).convert("RGBA")
    raw = np.asarray(raw, dtype=np.float32) / 255
    expected = raw[..., :3] * raw[..., 3:] + (1 - raw[..., 3:])
    assert image.shape == (800, 800, 3) and image.dtype == np.float32
    assert np.allclose(image, expected, atol=1e-6) and image[0, 0].tolist() == [1.0, 1.0, 1.0]
    small = lego.image(3, downscale=4)
    assert small.shape == (200, 200, 3)
    assert np.allclose(small, expected.reshape(200, 4, 200, 4, 3).mean(axis=(1, 3)), atol=1e-6)
    keep = read_blender(root, background=None)
    assert np.allclose(keep.image(3), raw[..., :3], atol=1e-6)


# --------------------------------------------------------------------------------------
# LLFF (real fern)
# --------------------------------------------------------------------------------------


def fraction_inside(camera: Camera, points: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(fraction of points in front, fraction of those inside the image, their depths)``."""
    uv, depth = camera.project(points)
    front = depth > 0
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    return front.mean(), inside.sum() / max(front.sum(), 1), depth[inside]


def test_fern_sfm_points_project_into_every_image_within_the_bounds():
    root = require_shared("llff/fern")
    fern = read_posed_images(root)
    table = np.load(root / "poses_bounds.npy")
    assert fern.source == "llff" and len(fern) == 20
    assert fern.points.shape == (10091, 3) and fern.point_colors.shape == (10091, 3)
    assert 0 <= fern.point_colors.min() and fern.point_colors.max() <= 1
    full_h, full_w, focal = table[0, :15].reshape(3, 5)[:, 4]
    for camera in fern.cameras:
        assert (camera.width, camera.height) == Image.open(camera.image_path).size == (504, 378)
        assert camera.intrinsics[0, 0] == pytest.approx(focal * 504 / full_w)
        assert camera.intrinsics[1, 1] == pytest.approx(focal * 378 / full_h)
        assert camera.intrinsics[:2, 2].tolist() == [252.0, 189.0]
    assert np.array_equal(fern.near_far, table[:, 15:17])
    points = fern.points.astype(np.float64)
    for camera, (near, far) in zip(fern.cameras, fern.near_far):
        front, inside, depths = fraction_inside(camera, points)
        assert front > 0.99 and inside > 0.9, (camera.name, front, inside)
        # LLFF's bounds are percentiles of the depths of the points each view sees
        assert ((depths >= near) & (depths <= far)).mean() > 0.97
        # the check can fail: LLFF's backward axis taken as forward, or the full-resolution focal
        # length kept for images_8, loses the points
        backward = Camera(camera.intrinsics, camera.camera_to_world @ np.diag([-1.0, 1.0, -1.0, 1.0]), 504, 378)
        assert fraction_inside(backward, points)[0] < 0.01
        unscaled = Camera(camera.intrinsics * [[8, 1, 1], [1, 8, 1], [1, 1, 1]], camera.camera_to_world, 504, 378)
        assert fraction_inside(unscaled, points)[1] < 0.2
    assert len(fern.holdout_split(8)[1]) == 3
    assert np.array_equal(read_llff(root, factor=8).cameras[5].camera_to_world, fern.cameras[5].camera_to_world)
    fails("images_4: image folder not found", read_llff, root, factor=4)


# --------------------------------------------------------------------------------------
# ScanNet (real mmdetection3d posed images)
# --------------------------------------------------------------------------------------


def sampled_colors(images: PosedImages, i: int, points: np.ndarray, colors: np.ndarray,
                   occlusion: float = 0.1, cell: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Image colours under the projected points that are visible (nearest in their cell + ``occlusion``)."""
    camera, image = images.cameras[i], images.image(i)
    uv, depth = camera.project(points)
    ok = (depth > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    pixel, depth = np.floor(uv[ok]).astype(np.int64), depth[ok]
    if not ok.any():
        return np.zeros((0, 3)), np.zeros((0, 3))
    key = (pixel[:, 1] // cell) * (camera.width // cell + 1) + pixel[:, 0] // cell
    nearest = np.full(key.max() + 1, np.inf)
    np.minimum.at(nearest, key, depth)
    visible = depth <= nearest[key] + occlusion
    return image[pixel[visible, 1], pixel[visible, 0]], colors[ok][visible]


def mean_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[:, k], b[:, k])[0, 1] for k in range(3)]))


def test_scannet_posed_frames_see_the_scan_colours():
    root = require_shared("scannet")
    frames = read_posed_images(root)
    assert frames.source == "scannet_infos" and len(frames) == 3
    assert [c.name for c in frames.cameras] == ["scene0000_00/00000", "scene0000_00/00011", "scene0000_00/00102"]
    scan = np.load(root / "scene0000_00_vert_all.npy").astype(np.float64)
    points, colors = scan[:, :3], scan[:, 3:6] / 255.0
    for i, camera in enumerate(frames.cameras):
        assert (camera.width, camera.height) == (1296, 968)
        assert camera.intrinsics[0, 0] == pytest.approx(1169.621094, abs=1e-5)
        image_colors, point_colors = sampled_colors(frames, i, points, colors)
        assert len(image_colors) > 3000
        assert mean_correlation(image_colors, point_colors) > 0.4, camera.name
    # the scan is axis-aligned: raw poses put the cameras elsewhere and the colours stop agreeing
    raw = read_scannet_infos(root, align=False)
    for i in range(3):
        image_colors, point_colors = sampled_colors(raw, i, points, colors)
        assert len(image_colors) < 100 or mean_correlation(image_colors, point_colors) < 0.1
    aligned = read_numpy_pickle(root / "posed_images" / "scannet_infos.pkl")[0]["annos"]["axis_align_matrix"]
    assert np.allclose(frames.cameras[0].camera_to_world, aligned @ raw.cameras[0].camera_to_world)


# --------------------------------------------------------------------------------------
# SUN RGB-D (real frames)
# --------------------------------------------------------------------------------------


def test_sunrgbd_depth_points_land_on_their_own_pixels():
    root = require_shared("sunrgbd")
    frames = read_posed_images(root)
    assert frames.source == "sunrgbd" and [c.name for c in frames.cameras] == ["000001", "000002"]
    for i, camera in enumerate(frames.cameras):
        cloud = np.load(root / "lidar" / f"{camera.name}.npz")["pc"].astype(np.float64)
        uv, depth = camera.project(cloud[:, :3])
        assert (depth > 0).all() and np.allclose(camera.center, 0.0)
        # the points were back-projected from depth pixels: with the 1-based K shifted by -0.5 they
        # project exactly onto pixel centres (u + 0.5, v + 0.5)
        assert np.abs(uv - 0.5 - np.round(uv - 0.5)).max() < 0.01
        image_colors, point_colors = sampled_colors(frames, i, cloud[:, :3], cloud[:, 3:6], occlusion=np.inf)
        assert len(image_colors) == len(cloud)
        # their colours were read from those pixels of the jpg
        assert (np.abs(image_colors - point_colors).max(axis=1) <= 1.5 / 255).mean() > 0.99
        assert mean_correlation(image_colors, point_colors) > 0.99
        # upright depth frame: the camera's forward axis is nearly horizontal (world z up)
        assert abs(camera.camera_to_world[2, 2]) < 0.3 and camera.camera_to_world[2, 1] < -0.9


# --------------------------------------------------------------------------------------
# instant-ngp (synthetic)
# --------------------------------------------------------------------------------------


def ngp_set(tmp_path: Path, **top) -> Path:
    root = tmp_path / "ngp"
    write_png(root / "images" / "a.png", 32, 24)
    write_png(root / "images" / "b.png", 32, 24, seed=1)
    depth = (np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 7)
    Image.fromarray(depth).save(root / "images" / "a_depth.png")
    pose_a = look_at([2.0, 0.0, 0.5]) @ GL_TO_CV  # stored as OpenGL camera-to-world
    pose_b = look_at([0.0, 2.0, 0.5]) @ GL_TO_CV
    meta = {"fl_x": 30.0, "fl_y": 31.0, "cx": 15.0, "cy": 12.5, "w": 32, "h": 24, "k1": 0.01, "p2": -0.002,
            "aabb_scale": 4, "integer_depth_scale": 0.001,
            "frames": [{"file_path": "images/a.png", "transform_matrix": pose_a.tolist(),
                        "depth_path": "images/a_depth.png"},
                       {"file_path": "images/b", "transform_matrix": pose_b.tolist(), "camera_angle_x": 1.2}]}
    meta.update(top)
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_instant_ngp_intrinsics_poses_scene_box_and_depth(tmp_path):
    root = ngp_set(tmp_path)
    images = read_posed_images(root)
    assert images.source == "instant_ngp" and len(images) == 2
    a, b = images.cameras
    assert a.intrinsics.tolist() == [[30.0, 0.0, 15.0], [0.0, 31.0, 12.5], [0.0, 0.0, 1.0]]
    assert a.distortion.tolist() == [0.01, 0.0, 0.0, -0.002]
    # the frame's camera_angle_x replaces the shared focal lengths on both axes
    assert b.intrinsics[0, 0] == pytest.approx(16.0 / math.tan(0.6)) and b.intrinsics[1, 1] == b.intrinsics[0, 0]
    assert b.image_path.name == "b.png"
    assert np.allclose(a.camera_to_world, look_at([2.0, 0.0, 0.5]))
    assert np.allclose(a.camera_to_world[:3, 2] @ (-a.center), np.linalg.norm(a.center))  # looks at the origin
    # aabb_scale 4 with the default scale 0.33 and offset 0.5: (0.5 -+ 2 - 0.5) / 0.33
    assert np.allclose(images.scene_box, [[-2 / 0.33] * 3, [2 / 0.33] * 3])
    depth = images.depth(0)
    assert depth.shape == (24, 32) and depth.dtype == np.float32
    assert depth[3, 5] == pytest.approx((3 * 32 + 5) * 7 * 0.001)
    fails("no depth image", images.depth, 1)
    moved = read_instant_ngp(ngp_set(tmp_path / "2", aabb_scale=2, scale=0.5, offset=[0.5, 0.4, 0.5]))
    assert np.allclose(moved.scene_box, [[-2.0, -1.8, -2.0], [2.0, 2.2, 2.0]])
    boxed = read_instant_ngp(ngp_set(tmp_path / "3", aabb_scale=1, aabb=[[-1, -2, -3], [1, 2, 3]]) / "transforms.json")
    assert np.allclose(boxed.scene_box, [[-3.0] * 3, [3.0] * 3])  # the longest side's cube around the aabb
    meta = json.loads((root / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "k1", "p2"):
        meta.pop(key)
    meta["camera_angle_y"] = 0.9
    (root / "transforms.json").write_text(json.dumps(meta))
    only_y = read_instant_ngp(root).cameras[0]
    assert only_y.intrinsics[0, 0] == only_y.intrinsics[1, 1] == pytest.approx(12.0 / math.tan(0.45))
    assert only_y.intrinsics[:2, 2].tolist() == [16.0, 12.0] and only_y.distortion is None


def test_instant_ngp_bad_input(tmp_path):
    fails("declares w=40", read_instant_ngp, ngp_set(tmp_path / "w", w=40))
    fails("aabb_scale is 3", read_instant_ngp, ngp_set(tmp_path / "s", aabb_scale=3))
    fails("fisheye / k3 / k4", read_instant_ngp, ngp_set(tmp_path / "f", k3=0.1))
    root = ngp_set(tmp_path / "n")
    meta = json.loads((root / "transforms.json").read_text())
    for key in ("fl_x", "fl_y"):
        meta.pop(key)
    meta["frames"] = meta["frames"][:1]
    (root / "transforms.json").write_text(json.dumps(meta))
    fails("no focal length", read_instant_ngp, root)


# --------------------------------------------------------------------------------------
# COLMAP (test writers follow the documented binary and text formats)
# --------------------------------------------------------------------------------------

COLMAP_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
              "OPENCV_FISHEYE": 5, "FOV": 7}


def synthetic_model(rng: np.random.Generator):
    cameras = {1: ("PINHOLE", 40, 30, [45.0, 47.0, 20.5, 14.5]),
               2: ("SIMPLE_RADIAL", 36, 28, [40.0, 18.0, 14.0, -0.05]),
               3: ("OPENCV", 40, 30, [44.0, 46.0, 20.0, 15.0, -0.1, 0.02, 0.001, -0.002]),
               4: ("SIMPLE_PINHOLE", 32, 32, [30.0, 16.0, 16.0]),
               5: ("RADIAL", 36, 28, [41.0, 18.0, 14.0, 0.03, -0.01])}
    images = []
    for image_id, (camera_id, center) in enumerate([(1, [3, 0, 1]), (2, [0, 3, 1]), (3, [-3, 0.5, 1]),
                                                    (4, [0, -3, 2]), (5, [2, 2, 0.5])], start=7):
        c2w = look_at(np.asarray(center, dtype=np.float64), target=rng.normal(scale=0.1, size=3))
        w2c = np.linalg.inv(c2w)
        x, y, z, w = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        images.append((image_id, np.array([w, x, y, z]), w2c[:3, 3], camera_id, f"img_{image_id:02d}.png", c2w))
    points = rng.normal(scale=0.5, size=(25, 3))
    colors = rng.integers(0, 256, size=(25, 3))
    return cameras, images, points, colors


def write_colmap_binary(folder: Path, cameras, images, points, colors) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    blob = struct.pack("<Q", len(cameras))
    for camera_id, (model, width, height, params) in cameras.items():
        blob += struct.pack("<IiQQ", camera_id, COLMAP_IDS[model], width, height)
        blob += struct.pack(f"<{len(params)}d", *params)
    (folder / "cameras.bin").write_bytes(blob)
    blob = struct.pack("<Q", len(images))
    for image_id, q, t, camera_id, name, _ in images:
        blob += struct.pack("<I4d3dI", image_id, *q, *t, camera_id) + name.encode() + b"\0"
        blob += struct.pack("<Q", 2) + struct.pack("<ddq", 1.5, 2.5, 0) + struct.pack("<ddq", 3.0, 4.0, -1)
    (folder / "images.bin").write_bytes(blob)
    blob = struct.pack("<Q", len(points))
    for index, (xyz, rgb) in enumerate(zip(points, colors)):
        blob += struct.pack("<Q3d3Bd", 100 + index, *xyz, *[int(c) for c in rgb], 0.7)
        blob += struct.pack("<Q", 2) + struct.pack("<II", 7, index) + struct.pack("<II", 8, index)
    (folder / "points3D.bin").write_bytes(blob)


def write_colmap_text(folder: Path, cameras, images, points, colors) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [" ".join([str(i), model, str(w), str(h), *map(repr, params)])
              for i, (model, w, h, params) in cameras.items()]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for n, (image_id, q, t, camera_id, name, _) in enumerate(images):
        pose = [repr(float(x)) for x in (*q, *t)]
        lines.append(" ".join([str(image_id), *pose, str(camera_id), name]))
        lines.append("" if n % 2 else "1.5 2.5 100 3.0 4.0 -1")  # COLMAP writes an empty line for no points
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:"]
    lines += [" ".join([str(100 + i), *map(repr, map(float, xyz)), *map(str, rgb), "0.7", "7", str(i), "8", str(i)])
              for i, (xyz, rgb) in enumerate(zip(points, colors))]
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


def colmap_workspace(tmp_path: Path, binary: bool = True, model=None) -> Path:
    cameras, images, points, colors = model or synthetic_model(np.random.default_rng(0))
    root = tmp_path / "workspace"
    for image_id, _, _, camera_id, name, _ in images:
        _, width, height, _ = cameras[camera_id]
        write_png(root / "images" / name, width, height, seed=image_id)
    (write_colmap_binary if binary else write_colmap_text)(root / "sparse" / "0", cameras, images, points, colors)
    return root


def test_colmap_binary_and_text_give_identical_records(tmp_path):
    model = synthetic_model(np.random.default_rng(0))
    cameras, images, points, colors = model
    binary = read_posed_images(colmap_workspace(tmp_path / "b", model=model))
    text = read_posed_images(colmap_workspace(tmp_path / "t", binary=False, model=model) / "sparse" / "0")
    assert binary.source == text.source == "colmap" and len(binary) == len(text) == 5
    for a, b in zip(binary.cameras, text.cameras):
        assert a.name == b.name and (a.width, a.height) == (b.width, b.height)
        assert np.array_equal(a.intrinsics, b.intrinsics) and np.array_equal(a.camera_to_world, b.camera_to_world)
        assert (a.distortion is None) == (b.distortion is None)
        assert a.distortion is None or np.array_equal(a.distortion, b.distortion)
        assert a.image_path.name == b.image_path.name == a.name
    assert np.array_equal(binary.points, text.points) and np.array_equal(binary.point_colors, text.point_colors)
    assert np.allclose(binary.points, points, atol=1e-6) and np.allclose(binary.point_colors * 255, colors, atol=1e-4)
    by_name = {c.name: c for c in binary.cameras}
    for image_id, q, t, camera_id, name, c2w in images:
        camera = by_name[name]
        assert np.allclose(camera.camera_to_world, c2w, atol=1e-12)
        model_name, width, height, p = cameras[camera_id]
        expected = {"PINHOLE": lambda: ([p[0], p[1], p[2], p[3]], None),
                    "SIMPLE_RADIAL": lambda: ([p[0], p[0], p[1], p[2]], [p[3], 0, 0, 0]),
                    "OPENCV": lambda: (p[:4], p[4:]),
                    "SIMPLE_PINHOLE": lambda: ([p[0], p[0], p[1], p[2]], None),
                    "RADIAL": lambda: ([p[0], p[0], p[1], p[2]], [p[3], p[4], 0, 0])}[model_name]()
        k = camera.intrinsics
        assert [k[0, 0], k[1, 1], k[0, 2], k[1, 2]] == expected[0]
        assert (camera.distortion is None) if expected[1] is None else camera.distortion.tolist() == expected[1]
        # COLMAP's world-to-camera: x_cam = R(q) x + t; the record projects like it (pinhole part)
        x_cam = Rotation.from_quat([q[1], q[2], q[3], q[0]]).apply(points) + t
        uv, depth = camera.project(points, distort=False)
        assert np.allclose(depth, x_cam[:, 2]) and np.allclose(uv[:, 0], k[0, 0] * x_cam[:, 0] / x_cam[:, 2] + k[0, 2])
    assert [c.name for c in binary.cameras] == sorted(by_name)


def test_colmap_bad_input(tmp_path):
    cameras, images, points, colors = synthetic_model(np.random.default_rng(0))
    fisheye = dict(cameras)
    fisheye[1] = ("OPENCV_FISHEYE", 40, 30, [45.0, 47.0, 20.5, 14.5, 0, 0, 0, 0])
    fails("camera model OPENCV_FISHEYE is not supported", read_colmap,
          colmap_workspace(tmp_path / "fb", model=(fisheye, images, points, colors)))
    fov = dict(cameras)
    fov[1] = ("FOV", 40, 30, [45.0, 47.0, 20.5, 14.5, 0.1])
    message = fails("camera model FOV is not supported", read_colmap,
                    colmap_workspace(tmp_path / "ft", binary=False, model=(fov, images, points, colors)))
    assert "cameras.txt" in message and "SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV" in message
    wrong = dict(cameras)
    wrong[4] = ("SIMPLE_PINHOLE", 30, 32, [30.0, 16.0, 16.0])  # declared 30 wide, the image is 32
    root = tmp_path / "size"
    workspace = colmap_workspace(root, model=(cameras, images, points, colors))
    write_colmap_binary(workspace / "sparse" / "0", wrong, images, points, colors)
    fails("img_10.png: image is 32x32 but camera 4 in cameras.bin is 30x32", read_colmap, workspace)
    nan = [list(entry) for entry in images]
    nan[2][1] = np.array([np.nan, 0, 0, 1.0])
    write_colmap_binary(workspace / "sparse" / "0", cameras, nan, points, colors)
    fails("pose has NaN/inf", read_colmap, workspace)
    scaled = [list(entry) for entry in images]
    scaled[0][1] = scaled[0][1] * 1.5
    write_colmap_binary(workspace / "sparse" / "0", cameras, scaled, points, colors)
    fails("quaternion has norm 1.5", read_colmap, workspace)
    write_colmap_binary(workspace / "sparse" / "0", cameras, images, points, colors)
    (workspace / "images" / "img_08.png").unlink()
    fails("img_08.png: image file not found", read_colmap, workspace)
    truncate(workspace / "sparse" / "0" / "cameras.bin", 0.7)
    fails("cameras.bin: truncated at byte", read_colmap, workspace)


# --------------------------------------------------------------------------------------
# ScanNet SensReader export (synthetic)
# --------------------------------------------------------------------------------------


def sens_export(tmp_path: Path, frames: int = 3) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path / "scene"
    k_color = np.array([[60.0, 0, 32.0, 0], [0, 60.0, 24.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    # the depth sensor sees a wider field of view at lower resolution, like ScanNet's
    k_depth = np.array([[20.0, 0, 12.0, 0], [0, 20.0, 9.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    (root / "intrinsic").mkdir(parents=True)
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", k_color)
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", k_depth)
    poses = []
    for i in range(frames):
        pose = look_at([2.0 * math.cos(i), 2.0 * math.sin(i), 1.5], target=[0, 0, 0.5])
        poses.append(pose)
        (root / "pose").mkdir(exist_ok=True)
        np.savetxt(root / "pose" / f"{i}.txt", pose)
        (root / "color").mkdir(exist_ok=True)
        Image.fromarray(np.full((48, 64, 3), 40 * i, dtype=np.uint8)).save(root / "color" / f"{i}.jpg")
        (root / "depth").mkdir(exist_ok=True)
        depth = (1000 + 10 * np.arange(18)[:, None] + np.arange(24)[None, :]).astype(np.uint16)
        Image.fromarray(depth).save(root / "depth" / f"{i}.png")
    return root, poses


def test_scannet_sensreader_frames_depth_on_the_colour_grid(tmp_path, caplog):
    root, poses = sens_export(tmp_path)
    frames = read_posed_images(root)
    assert frames.source == "scannet" and len(frames) == 3 and frames.depth_scale == 0.001
    assert np.allclose(frames.cameras[1].camera_to_world, poses[1])
    assert frames.cameras[0].intrinsics.tolist() == [[60.0, 0, 32.0], [0, 60.0, 24.0], [0, 0, 1]]
    assert frames.image(2).shape == (48, 64, 3) and abs(frames.image(2).mean() - 80 / 255) < 0.02
    depth = frames.depth(0)
    assert depth.shape == (48, 64)
    # colour pixel (u, v) centre -> normalised ((u + 0.5 - 32) / 60) -> depth column floor(20 x + 12)
    for u, v in [(0, 0), (31, 23), (63, 47), (10, 40)]:
        column = math.floor(20 * (u + 0.5 - 32) / 60 + 12)
        row = math.floor(20 * (v + 0.5 - 24) / 60 + 9)
        assert depth[v, u] == pytest.approx((1000 + 10 * row + column) * 0.001, abs=1e-6)
    aligned = read_scannet_frames(root, axis_align_matrix=look_at([0, 0, 0], target=[1, 0, 0]))
    assert np.allclose(aligned.cameras[1].camera_to_world, look_at([0, 0, 0], target=[1, 0, 0]) @ poses[1])
    # lost-tracking frames (-inf poses) are skipped and counted
    np.savetxt(root / "pose" / "1.txt", np.full((4, 4), -np.inf))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("pc3d").addHandler(handler)
    try:
        kept = read_scannet_frames(root)
    finally:
        logging.getLogger("pc3d").removeHandler(handler)
    assert [c.name for c in kept.cameras] == ["0", "2"]
    assert any("skipped 1 frame(s)" in r.getMessage() for r in records)


def test_scannet_sensreader_bad_input(tmp_path):
    root, _ = sens_export(tmp_path / "count")
    (root / "pose" / "2.txt").unlink()
    fails("3 colour images but 2 poses", read_scannet_frames, root)
    root, _ = sens_export(tmp_path / "shear")
    shear = np.eye(4)
    shear[0, 1] = 0.3
    np.savetxt(root / "pose" / "1.txt", shear)
    fails("1.txt: the 3x3 block of the pose is not a rotation", read_scannet_frames, root)
    root, _ = sens_export(tmp_path / "jpg")
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "color" / "1.jpg")
    truncate(root / "color" / "1.jpg", 0.4)
    frames = read_scannet_frames(root)  # the header is intact: the set reads
    fails("1.jpg: not a readable image", frames.image, 1)
    root, _ = sens_export(tmp_path / "size")
    Image.fromarray(np.zeros((40, 64, 3), dtype=np.uint8)).save(root / "color" / "2.jpg")
    fails("2.jpg: image is 64x40 but 0.jpg is 64x48", read_scannet_frames, root)


# --------------------------------------------------------------------------------------
# the restricted unpickler and the mmdetection3d infos
# --------------------------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-pc3d-test",))


def test_numpy_pickle_rebuilds_arrays_and_refuses_everything_else(tmp_path):
    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.float64(2.5), (1, "x")],
             "c": np.array(["window", "door"]), "d": {3, 4}}
    for protocol in (2, 4, 5):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = read_numpy_pickle(tmp_path / "ok.pkl")
        assert np.array_equal(loaded["a"], value["a"]) and loaded["a"].dtype == np.float32
        assert loaded["b"] == [2.5, (1, "x")] and loaded["c"].tolist() == ["window", "door"] and loaded["d"] == {3, 4}
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([Payload()]))
    fails("evil.pkl: pickle refers to shutil.rmtree, which is refused", read_numpy_pickle, tmp_path / "evil.pkl")
    (tmp_path / "system.pkl").write_bytes(b"cos\nsystem\n(S'echo unsafe'\ntR.")
    fails("pickle refers to os.system", read_numpy_pickle, tmp_path / "system.pkl")
    (tmp_path / "matrix.pkl").write_bytes(pickle.dumps(np.matrix([[1.0, 2.0]]), protocol=2))
    fails("numpy.matrix", read_numpy_pickle, tmp_path / "matrix.pkl")
    (tmp_path / "torn.pkl").write_bytes(pickle.dumps(value)[:40])
    fails("torn.pkl: not a readable numpy pickle", read_numpy_pickle, tmp_path / "torn.pkl")


def test_scannet_infos_bad_input(tmp_path):
    root = require_shared("scannet")
    info = read_numpy_pickle(root / "posed_images" / "scannet_infos.pkl")
    work = tmp_path / "scannet"
    (work / "posed_images" / "scene0000_00").mkdir(parents=True)
    for image in (root / "posed_images" / "scene0000_00").glob("*.jpg"):
        shutil.copyfile(image, work / "posed_images" / "scene0000_00" / image.name)
    target = work / "posed_images" / "scannet_infos.pkl"
    info[0]["extrinsics"][1] = np.full((4, 4), -np.inf)
    target.write_bytes(pickle.dumps(info, protocol=2))
    assert [c.name for c in read_scannet_infos(work).cameras] == ["scene0000_00/00000", "scene0000_00/00102"]
    info[0]["img_paths"] = info[0]["img_paths"][:2]
    target.write_bytes(pickle.dumps(info, protocol=2))
    fails("3 extrinsics but 2 img_paths", read_scannet_infos, work)
    info[0]["img_paths"] = [Payload()]
    target.write_bytes(pickle.dumps(info, protocol=2))
    fails("scannet_infos.pkl: pickle refers to shutil.rmtree", read_scannet_infos, work)


# --------------------------------------------------------------------------------------
# Blender bad input, LLFF bad input, images, detection
# --------------------------------------------------------------------------------------


def blender_set(tmp_path: Path, frames: int = 3, size=(16, 12)) -> Path:
    root = tmp_path / "blender"
    entries = []
    for i in range(frames):
        write_png(root / "train" / f"r_{i}.png", *size, mode="RGBA", seed=i)
        pose = look_at([4 * math.cos(i), 4 * math.sin(i), 2.0]) @ GL_TO_CV
        entries.append({"file_path": f"./train/r_{i}", "transform_matrix": pose.tolist()})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": entries}))
    return root


def edit_frames(root: Path, edit) -> None:
    path = root / "transforms_train.json"
    meta = json.loads(path.read_text())
    edit(meta["frames"])
    path.write_text(json.dumps(meta))


def test_blender_bad_input(tmp_path):
    root = blender_set(tmp_path / "ok")
    images = read_blender(root)
    assert len(images) == 3 and images.background.tolist() == [1.0, 1.0, 1.0]
    truncate(root / "train" / "r_1.png", 0.5)
    fails("r_1.png: not a readable image", images.image, 1)
    root = blender_set(tmp_path / "json")
    (root / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    fails("transforms_train.json: not valid JSON", read_blender, root)
    root = blender_set(tmp_path / "missing")
    (root / "train" / "r_2.png").unlink()
    fails("r_2: image file not found (frames[2].file_path of transforms_train.json)", read_blender, root)
    root = blender_set(tmp_path / "sizes")
    write_png(root / "train" / "r_1.png", 16, 10, mode="RGBA")
    fails("r_1.png: image is 16x10 but r_0.png is 16x12 (expected one size", read_blender, root)
    root = blender_set(tmp_path / "nan")
    edit_frames(root, lambda frames: frames[1]["transform_matrix"][0].__setitem__(3, float("nan")))
    fails("frames[1].transform_matrix: pose has NaN/inf", read_blender, root)
    root = blender_set(tmp_path / "scale")
    edit_frames(root, lambda frames: frames[0].__setitem__(
        "transform_matrix", (np.diag([2.0, 2.0, 2.0, 1.0]) @ np.array(frames[0]["transform_matrix"])).tolist()))
    fails("frames[0].transform_matrix: the 3x3 block of the pose is not a rotation", read_blender, root)
    root = blender_set(tmp_path / "mirror")
    edit_frames(root, lambda frames: frames[2].__setitem__(
        "transform_matrix", (np.array(frames[2]["transform_matrix"]) @ np.diag([-1.0, 1.0, 1.0, 1.0])).tolist()))
    fails("det = -1", read_blender, root)
    fails("transforms_test.json: file not found (found ['transforms_train.json'])", read_blender, root, split="test")


def test_llff_bad_input(tmp_path):
    fern = require_shared("llff/fern")
    table = np.load(fern / "poses_bounds.npy")[:3].copy()
    root = tmp_path / "llff"
    for i in range(3):
        write_png(root / "images_8" / f"image{i:03d}.png", 504, 378, seed=i)
    np.save(root / "poses_bounds.npy", table)
    assert len(read_llff(root)) == 3 and read_llff(root).points is None
    (root / "images_8" / "image002.png").unlink()
    fails("images_8: 2 images but poses_bounds.npy has 3 poses", read_llff, root)
    write_png(root / "images_8" / "image002.png", 500, 378)
    fails("image002.png: image is 500x378 but image000.png is 504x378", read_llff, root)
    write_png(root / "images_8" / "image002.png", 504, 300)
    fails("image002.png: image is 504x300", read_llff, root)
    for path in (root / "images_8").iterdir():
        write_png(path, 504, 300)
    fails("(expected the same aspect ratio)", read_llff, root)
    for i in range(3):
        write_png(root / "images_8" / f"image{i:03d}.png", 504, 378, seed=i)
    bad = table.copy()
    bad[1, 3] = np.inf
    np.save(root / "poses_bounds.npy", bad)
    fails("poses_bounds.npy: row 1 has NaN/inf", read_llff, root)
    bad = table.copy()
    bad[2, 15:17] = [5.0, 2.0]
    np.save(root / "poses_bounds.npy", bad)
    fails("row 2: near, far = [5.0, 2.0]", read_llff, root)


def test_image_size_must_match_its_camera(tmp_path):
    write_png(tmp_path / "a.png", 20, 10)
    camera = Camera(np.eye(3), np.eye(4), 20, 12, image_path=tmp_path / "a.png", name="a")
    fails("a.png: image is 20x10 but its camera 'a' is 20x12", PosedImages([camera]).image, 0)
    camera = Camera(np.eye(3), np.eye(4), 20, 10, image_path=tmp_path / "a.png")
    assert PosedImages([camera]).image(0, downscale=3).shape == (3, 6, 3)


def test_formats_are_detected_and_unknown_layouts_list_the_formats(tmp_path):
    assert detect_posed_format(blender_set(tmp_path / "b")) == "blender"
    assert detect_posed_format(blender_set(tmp_path / "c") / "transforms_train.json") == "blender"
    assert detect_posed_format(ngp_set(tmp_path / "n")) == "instant_ngp"
    assert detect_posed_format(colmap_workspace(tmp_path / "w")) == "colmap"
    assert detect_posed_format(colmap_workspace(tmp_path / "x") / "sparse" / "0" / "cameras.bin") == "colmap"
    assert detect_posed_format(sens_export(tmp_path / "s")[0]) == "scannet"
    (tmp_path / "empty").mkdir()
    message = fails("empty: no posed-image format recognised", read_posed_images, tmp_path / "empty")
    for name in POSED_IMAGE_FORMATS:
        assert name in message
    fails("not found", read_posed_images, tmp_path / "absent")
    with pytest.raises(ConfigError, match="format='nerf'"):
        read_posed_images(tmp_path / "b" / "blender", format="nerf")
    assert len(read_posed_images(colmap_workspace(tmp_path / "y") / "sparse" / "0" / "images.bin")) == 5


def test_real_layouts_are_detected():
    assert detect_posed_format(require_shared("nerf_synthetic/lego")) == "blender"
    assert detect_posed_format(require_shared("llff/fern")) == "llff"
    assert detect_posed_format(require_shared("llff/fern") / "poses_bounds.npy") == "llff"
    assert detect_posed_format(require_shared("scannet")) == "scannet_infos"
    assert detect_posed_format(require_shared("sunrgbd")) == "sunrgbd"
    assert read_sunrgbd(require_shared("sunrgbd"), frames=["000002"]).cameras[0].name == "000002"
