"""The NeRF dataset formats: Blender (nerf_synthetic) and instant-ngp ``transforms*.json``, LLFF
``poses_bounds.npy``."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pc3d.data.cameras.base import (
    _IMAGE_SUFFIXES,
    Camera,
    PathLike,
    PosedImages,
    _checked_pose,
    _common_size,
    _image_size,
    _intrinsics,
    _list_images,
)
from pc3d.data.cameras.colmap import _colmap_file, _read_colmap_points
from pc3d.data.io import read_array, read_json
from pc3d.errors import DataFormatError

#: OpenGL camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward): flip y and z.
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------
# transforms.json frames
# --------------------------------------------------------------------------------------


def _resolve_image(root: Path, relative: str) -> Path | None:
    """``root / relative``, or with an image suffix appended (NeRF paths often have none)."""
    path = Path(relative)
    path = path if path.is_absolute() else root / path
    if path.is_file():
        return path
    for suffix in _IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _number(where: str, obj: dict, key: str, default: float | None = None) -> float | None:
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(f"{where}: {key} is {value!r} (expected a finite number)")
    return float(value)


def _frames(path: Path, meta: Any) -> list[dict]:
    if not isinstance(meta, dict):
        raise DataFormatError(f"{path}: expected a JSON object with 'frames', got {type(meta).__name__}")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataFormatError(f"{path}: expected a non-empty 'frames' list")
    for j, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DataFormatError(f"{path}: frames[{j}] is {type(frame).__name__} (expected an object)")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise DataFormatError(f"{path}: frames[{j}] has no {key!r}")
        if not isinstance(frame["file_path"], str):
            raise DataFormatError(f"{path}: frames[{j}].file_path is {frame['file_path']!r} (expected a string)")
    return frames


def _frame_image(json_path: Path, j: int, frame: dict) -> Path:
    path = _resolve_image(json_path.parent, frame["file_path"].replace("\\", "/"))
    if path is None:
        raise DataFormatError(f"{json_path.parent / frame['file_path']}: image file not found "
                              f"(frames[{j}].file_path of {json_path.name})")
    return path


# --------------------------------------------------------------------------------------
# Blender / nerf_synthetic
# --------------------------------------------------------------------------------------


def read_blender(path: PathLike, split: str = "train",
                 background: Sequence[float] | None = (1.0, 1.0, 1.0)) -> PosedImages:
    """NeRF synthetic (Blender) ``transforms_<split>.json``: folder (with ``split``) or the JSON itself.

    ``camera_angle_x`` is the horizontal field of view in radians, so ``fx = fy = W / (2 tan(angle
    / 2))`` and the principal point is the image centre; ``W, H`` come from the images, which must
    share one size. ``file_path`` has no suffix (``.png`` is tried, as NeRF does);
    ``transform_matrix`` is an OpenGL camera-to-world and is converted. RGBA images are
    composited over ``background`` (white, NeRF's ``white_bkgd``; ``None`` keeps the stored RGB).
    """
    path = Path(path)
    json_path = path / f"transforms_{split}.json" if path.is_dir() else path
    if path.is_dir() and not json_path.is_file():
        found = sorted(p.name for p in path.glob("transforms_*.json"))
        raise DataFormatError(f"{json_path}: file not found (found {found or 'no transforms_<split>.json'})")
    meta = read_json(json_path)
    frames = _frames(json_path, meta)
    angle = _number(str(json_path), meta, "camera_angle_x")
    if angle is None or not 0.0 < angle < math.pi:
        raise DataFormatError(f"{json_path}: camera_angle_x is {meta.get('camera_angle_x')!r} "
                              "(expected the horizontal field of view in radians, 0 < angle < pi)")
    images = [_frame_image(json_path, j, frame) for j, frame in enumerate(frames)]
    poses = [_checked_pose(f"{json_path}: frames[{j}].transform_matrix", frame["transform_matrix"]) @ _GL_TO_CV
             for j, frame in enumerate(frames)]
    width, height = _common_size(images, f"frames of {json_path.name}")
    focal = 0.5 * width / math.tan(0.5 * angle)
    intrinsics = _intrinsics(focal, focal, 0.5 * width, 0.5 * height)
    cameras = [Camera(intrinsics, pose, width, height, image_path=image, name=image.stem)
               for image, pose in zip(images, poses)]
    return PosedImages(cameras, background=None if background is None else np.asarray(background),
                       source="blender")


# --------------------------------------------------------------------------------------
# instant-ngp
# --------------------------------------------------------------------------------------

_NGP_DEFAULT_SCALE = 0.33  # instant-ngp's NERF_SCALE
_NGP_MAX_AABB_SCALE = 128  # 1 << (NERF_CASCADES - 1)


def _ngp_focal(where: str, obj: dict, width: int, height: int) -> tuple[float | None, float | None]:
    """instant-ngp's precedence per axis: ``<axis>_fov`` (degrees), ``fl_<axis>``, ``camera_angle_<axis>`` (radians)."""

    def axis(name: str, resolution: int) -> float | None:
        fov_deg = _number(where, obj, f"{name}_fov")
        if fov_deg is not None:
            return 0.5 * resolution / math.tan(0.5 * math.radians(fov_deg))
        focal = _number(where, obj, f"fl_{name}")
        if focal is not None:
            return focal
        angle = _number(where, obj, f"camera_angle_{name}")
        if angle is not None:
            return 0.5 * resolution / math.tan(0.5 * angle)
        return None

    return axis("x", width), axis("y", height)


def _ngp_scene_box(json_path: Path, meta: dict) -> np.ndarray:
    """The ray-marching box instant-ngp builds, mapped back to the JSON's world frame.

    instant-ngp maps a world position ``p`` to ``cycle(p * scale + offset)`` (``scale`` 0.33,
    ``offset`` 0.5 unless the JSON sets them, or both derived from an explicit ``aabb`` so that it
    fits the unit cube) and marches inside the cube of side ``aabb_scale`` centred at
    ``(0.5, 0.5, 0.5)``. The cube is the same on every axis, so the axis cycle drops out and the
    box is ``(0.5 -+ aabb_scale / 2 - offset) / scale`` per world axis.
    """
    where = str(json_path)
    aabb_scale = meta.get("aabb_scale", 1)
    if (isinstance(aabb_scale, bool) or not isinstance(aabb_scale, (int, float)) or aabb_scale != int(aabb_scale)
            or int(aabb_scale) < 1 or int(aabb_scale) & (int(aabb_scale) - 1)
            or int(aabb_scale) > _NGP_MAX_AABB_SCALE):
        raise DataFormatError(f"{json_path}: aabb_scale is {aabb_scale!r} (expected a power of two "
                              f"1..{_NGP_MAX_AABB_SCALE}, as instant-ngp requires)")
    scale = _number(where, meta, "scale", _NGP_DEFAULT_SCALE)
    offset_value = meta.get("offset", 0.5)
    try:
        offset = np.broadcast_to(np.asarray(offset_value, dtype=np.float64), (3,)).copy()
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{json_path}: offset is {offset_value!r} (expected a number or 3 numbers)") from exc
    if "aabb" in meta:
        try:
            aabb = np.asarray(meta["aabb"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"{json_path}: aabb is not numeric ({exc})") from exc
        if aabb.shape != (2, 3) or not np.isfinite(aabb).all():
            raise DataFormatError(f"{json_path}: aabb has shape {aabb.shape} (expected [[minx, miny, minz], "
                                  "[maxx, maxy, maxz]] finite)")
        scale = 1.0 / max(1e-6, float(np.abs(aabb[1] - aabb[0]).max()))
        offset = 0.5 - 0.5 * (aabb[0] + aabb[1]) * scale
    if not np.isfinite(offset).all() or not scale > 0:
        raise DataFormatError(f"{json_path}: scale {scale!r} / offset {offset_value!r} (expected scale > 0 and a "
                              "finite offset)")
    half = 0.5 * int(aabb_scale)
    return np.stack([(0.5 - half - offset) / scale, (0.5 + half - offset) / scale])


_NGP_LENS_KEYS = ("cx", "cy", "k1", "k2", "k3", "k4", "p1", "p2", "is_fisheye")


def read_instant_ngp(path: PathLike) -> PosedImages:
    """instant-ngp ``transforms.json`` (the folder or the file).

    Intrinsics are shared at the top level or per frame (a frame's keys override): focal length
    from ``x_fov``/``y_fov`` (degrees), ``fl_x``/``fl_y`` or ``camera_angle_x``/``camera_angle_y``
    (radians), in that order per axis, one axis filling in the other; principal point ``cx, cy``
    (default the image centre); OpenCV ``k1, k2, p1, p2``. ``w``/``h``, when given, must equal the
    image size. ``file_path`` may carry its suffix or not. ``transform_matrix`` is OpenGL
    camera-to-world (converted). ``scene_box`` is instant-ngp's box (see :func:`_ngp_scene_box`,
    ``aabb_scale`` defaults to 1). ``depth_path`` PNGs are used with ``integer_depth_scale``
    (world units per unit), and ignored without it, as instant-ngp does. Frames keep the file's
    order (instant-ngp sorts them by name).
    """
    path = Path(path)
    json_path = path / "transforms.json" if path.is_dir() else path
    meta = read_json(json_path)
    frames = _frames(json_path, meta)
    scene_box = _ngp_scene_box(json_path, meta)
    depth_scale = _number(str(json_path), meta, "integer_depth_scale")
    if depth_scale is not None and depth_scale <= 0:
        depth_scale = None  # instant-ngp: a non-positive scale disables depth
    cameras = []
    for j, frame in enumerate(frames):
        where = f"{json_path}: frames[{j}]"
        image = _frame_image(json_path, j, frame)
        width, height = _image_size(image)
        for key, actual in (("w", width), ("h", height)):
            declared = _number(where, frame, key, _number(str(json_path), meta, key))
            if declared is not None and int(declared) != actual:
                raise DataFormatError(f"{image}: image is {width}x{height} but {json_path.name} declares "
                                      f"{key}={declared:g} (expected the image size)")
        fx, fy = _ngp_focal(str(json_path), meta, width, height)
        frame_fx, frame_fy = _ngp_focal(where, frame, width, height)
        if frame_fx is not None or frame_fy is not None:
            fx, fy = frame_fx, frame_fy
        if fx is None and fy is None:
            raise DataFormatError(f"{where}: no focal length (expected fl_x/fl_y, camera_angle_x/y or x_fov/y_fov)")
        if fx is None:
            fx = fy
        elif fy is None:
            fy = fx
        lens = {key: meta[key] for key in _NGP_LENS_KEYS if key in meta}
        lens.update({key: frame[key] for key in _NGP_LENS_KEYS if key in frame})
        if lens.get("is_fisheye") or _number(where, lens, "k3", 0.0) or _number(where, lens, "k4", 0.0):
            raise DataFormatError(f"{where}: fisheye / k3 / k4 lens is not supported (expected the OpenCV "
                                  "k1, k2, p1, p2 model)")
        cx = _number(where, lens, "cx", 0.5 * width)
        cy = _number(where, lens, "cy", 0.5 * height)
        coefficients = np.array([_number(where, lens, key, 0.0) for key in ("k1", "k2", "p1", "p2")])
        pose = _checked_pose(f"{where}.transform_matrix", frame["transform_matrix"]) @ _GL_TO_CV
        depth = None
        if depth_scale is not None and "depth_path" in frame:
            depth = _resolve_image(json_path.parent, str(frame["depth_path"]).replace("\\", "/"))
            if depth is None:
                raise DataFormatError(f"{json_path.parent / str(frame['depth_path'])}: depth image not found "
                                      f"(frames[{j}].depth_path of {json_path.name})")
            if _image_size(depth) != (width, height):
                size = _image_size(depth)
                raise DataFormatError(f"{depth}: depth image is {size[0]}x{size[1]} but its colour image is "
                                      f"{width}x{height} (expected the same size)")
        cameras.append(Camera(_intrinsics(fx, fy, cx, cy), pose, width, height,
                              distortion=coefficients if np.any(coefficients != 0) else None,
                              image_path=image, depth_path=depth, name=image.stem))
    return PosedImages(cameras, scene_box=scene_box, source="instant_ngp",
                       depth_scale=depth_scale if any(c.depth_path for c in cameras) else None)


# --------------------------------------------------------------------------------------
# LLFF
# --------------------------------------------------------------------------------------


def _llff_image_folder(root: Path, factor: int | None) -> Path:
    if factor is not None:
        folder = root / ("images" if factor == 1 else f"images_{int(factor)}")
        if not folder.is_dir():
            raise DataFormatError(f"{folder}: image folder not found (expected images/ or images_<factor>/)")
        return folder
    if (root / "images").is_dir():
        return root / "images"
    reduced = sorted((int(m.group(1)), p) for p in root.iterdir()
                     if p.is_dir() and (m := re.fullmatch(r"images_(\d+)", p.name)))
    if not reduced:
        raise DataFormatError(f"{root}: no images/ or images_<factor>/ folder (expected LLFF's image folders)")
    return reduced[0][1]


def read_llff(path: PathLike, factor: int | None = None, load_points: bool = True) -> PosedImages:
    """LLFF ``poses_bounds.npy`` ``(N, 17)`` with images from ``images_<factor>/`` or ``images/``.

    Each row is a ``3 x 5`` matrix (row-major) and two bounds: columns 0-2 are the camera axes
    in LLFF's order ``[down, right, backward]`` in COLMAP's world frame, column 3 the camera
    centre, column 4 ``(height, width, focal)`` of the full-resolution images; then
    ``near, far``. The OpenCV axes are ``x = right = column 1``, ``y = down = column 0``, ``z =
    forward = -column 2``. Poses are not recentred or rescaled (NeRF's LLFF loader does both), so
    they stay in the frame of ``sparse/0/points3D``. ``factor=None`` picks ``images/`` if present,
    else the ``images_<k>/`` with the smallest ``k``. Intrinsics are rescaled to the size of the
    images found (which must share one size and the poses' aspect ratio); the principal point is
    the image centre. The lens distortion COLMAP estimated is not part of the format (``None``).
    """
    root = Path(path)
    if root.is_file():
        root = root.parent
    bounds_path = root / "poses_bounds.npy"
    table = read_array(bounds_path)
    if table.ndim != 2 or table.shape[1] != 17 or table.shape[0] == 0:
        raise DataFormatError(f"{bounds_path}: expected an (N, 17) array of 3x5 poses + near/far, got {table.shape}")
    table = table.astype(np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if bad_rows.size:
        raise DataFormatError(f"{bounds_path}: row {bad_rows[0]} has NaN/inf (expected finite poses and bounds)")
    folder = _llff_image_folder(root, factor)
    images = _list_images(folder)
    if len(images) != len(table):
        raise DataFormatError(f"{folder}: {len(images)} images but {bounds_path.name} has {len(table)} poses "
                              "(expected one image per pose)")
    width, height = _common_size(images, f"images of {folder.name}")
    poses = table[:, :15].reshape(-1, 3, 5)
    near_far = table[:, 15:17].copy()
    cameras = []
    for i, (image, pose) in enumerate(zip(images, poses)):
        where = f"{bounds_path}: row {i}"
        full_h, full_w, focal = pose[:, 4]
        if not (full_h > 0 and full_w > 0 and focal > 0):
            raise DataFormatError(f"{where}: height, width, focal = {pose[:, 4].tolist()} (expected positive)")
        sx, sy = width / full_w, height / full_h
        if abs(full_h * sx - height) > 1.0:
            raise DataFormatError(f"{image}: image is {width}x{height} but {bounds_path.name} row {i} is "
                                  f"{full_w:g}x{full_h:g} (expected the same aspect ratio)")
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = pose[:, 1], pose[:, 0], -pose[:, 2], pose[:, 3]
        c2w = _checked_pose(where, c2w)
        if not 0 < near_far[i, 0] < near_far[i, 1]:
            raise DataFormatError(f"{where}: near, far = {near_far[i].tolist()} (expected 0 < near < far)")
        cameras.append(Camera(_intrinsics(focal * sx, focal * sy, 0.5 * width, 0.5 * height), c2w, width, height,
                              image_path=image, name=image.stem))
    points = colors = None
    if load_points:
        model = _colmap_file(root / "sparse" / "0", "points3D", required=False)
        if model is not None:
            points, colors = _read_colmap_points(model)
    return PosedImages(cameras, points=points, point_colors=colors, near_far=near_far, source="llff")
