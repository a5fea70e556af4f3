"""Posed images: one camera record and readers for the posed-image formats users bring.

Every reader returns :class:`PosedImages`, a list of :class:`Camera` (plus SfM points, scene box,
near/far bounds where the format has them), in one convention:

* **Camera axes (OpenCV):** +x right, +y down, +z forward (the camera looks along +z).
  ``camera_to_world (4, 4)`` maps camera coordinates to the format's world frame; Blender /
  instant-ngp (OpenGL: +y up, +z backward) and LLFF (``[down, right, backward]``) poses are
  converted on reading.
* **Pixel coordinates:** continuous, with ``(0, 0)`` at the top-left *corner* of the top-left
  pixel; pixel ``(column u, row v)`` covers ``[u, u + 1) x [v, v + 1)`` and its centre is
  ``(u + 0.5, v + 0.5)`` (the COLMAP and instant-ngp convention; Blender's ``cx = W / 2`` is the
  image centre in it). ``intrinsics`` are ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of
  the image as stored. Resizing an image by ``f`` maps every coordinate ``x -> f x`` in this
  convention, so :meth:`Camera.scaled` multiplies ``fx, fy, cx, cy`` (and the skew) by ``f``.
* **Distortion:** OpenCV ``(k1, k2, p1, p2)`` of the normalised image plane, or ``None``.
  :func:`camera_rays` and :meth:`Camera.project` apply it (rays are undistorted by Newton
  iterations) unless told not to.

========================  ==============================================  =================================
format (``source``)       files                                           world frame
========================  ==============================================  =================================
``blender``               ``transforms_<split>.json`` + RGBA PNGs         the JSON's
``instant_ngp``           ``transforms.json`` (+ depth PNGs)              the JSON's (``scene_box`` from aabb_scale)
``llff``                  ``poses_bounds.npy`` + ``images[_<factor>]/``   COLMAP's (SfM points from ``sparse/0``)
``colmap``                ``cameras`` + ``images`` (+ ``points3D``)       COLMAP's
                          ``.bin`` or ``.txt``
``scannet``               SensReader export ``color/ depth/ pose/         the scan's (raw, or axis-aligned
                          intrinsic/``                                    when given a matrix)
``scannet_infos``         mmdetection3d ``*_infos.pkl`` +                 axis-aligned scan (``align=True``)
                          ``posed_images/<scene>/*.jpg``
``sunrgbd``               ``calib/<id>.txt`` + ``image/<id>.jpg``         the frame's upright depth frame
                                                                          (``lidar/<id>.npz`` points)
========================  ==============================================  =================================

Every malformed input raises :class:`~pc3d.errors.DataFormatError` with one line naming the file
and what was expected. Image headers are checked when a set is read (sizes, readability of the
header); pixel data is decoded by :meth:`PosedImages.image`, so a truncated file fails there.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pc3d.data.io import read_array, read_json, read_numpy_pickle
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger

__all__ = [
    "Camera",
    "PosedImages",
    "POSED_IMAGE_FORMATS",
    "camera_rays",
    "detect_posed_format",
    "read_posed_images",
    "read_blender",
    "read_instant_ngp",
    "read_llff",
    "read_colmap",
    "read_scannet_frames",
    "read_scannet_infos",
    "read_sunrgbd",
]

PathLike = str | os.PathLike

_LOG = get_logger("pc3d.data.cameras")

#: OpenGL camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward): flip y and z.
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# a pose read from text with 6-9 significant digits is orthonormal to ~1e-6
_ROTATION_TOL = 1e-3


# --------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------


@dataclass
class Camera:
    """A posed pinhole camera in the OpenCV convention (see the module docstring).

    Attributes:
        intrinsics: ``(3, 3)`` float64 ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of the
            image as stored (corner-origin pixel coordinates).
        camera_to_world: ``(4, 4)`` float64 rigid transform, camera (x right, y down, z forward)
            to world.
        width, height: image size in pixels.
        distortion: ``(4,)`` float64 OpenCV ``k1, k2, p1, p2`` or ``None``.
        image_path: the colour image, or ``None``.
        depth_path: the depth image of an RGB-D frame, or ``None``.
        name: the frame's name in its format (file stem, COLMAP image name, ...).
    """

    intrinsics: np.ndarray
    camera_to_world: np.ndarray
    width: int
    height: int
    distortion: np.ndarray | None = None
    image_path: Path | None = None
    depth_path: Path | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.intrinsics = np.array(self.intrinsics, dtype=np.float64)
        self.camera_to_world = np.array(self.camera_to_world, dtype=np.float64)
        if self.intrinsics.shape != (3, 3) or self.camera_to_world.shape != (4, 4):
            raise ValueError(f"camera {self.name!r}: expected intrinsics (3, 3) and camera_to_world (4, 4), "
                             f"got {self.intrinsics.shape} and {self.camera_to_world.shape}")
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name!r}: image size must be positive, got {self.width}x{self.height}")
        if self.distortion is not None:
            self.distortion = np.array(self.distortion, dtype=np.float64).reshape(4)
        if self.image_path is not None:
            self.image_path = Path(self.image_path)
        if self.depth_path is not None:
            self.depth_path = Path(self.depth_path)

    @property
    def center(self) -> np.ndarray:
        """``(3,)`` the camera centre in world coordinates."""
        return self.camera_to_world[:3, 3].copy()

    def world_to_camera(self) -> np.ndarray:
        """``(4, 4)`` the inverse rigid transform, world to camera."""
        rotation, translation = self.camera_to_world[:3, :3], self.camera_to_world[:3, 3]
        inverse = np.eye(4)
        inverse[:3, :3] = rotation.T
        inverse[:3, 3] = -rotation.T @ translation
        return inverse

    def scaled(self, factor: float) -> Camera:
        """The camera of the image resized by ``factor`` (``0.5`` halves it).

        Corner-origin pixel coordinates scale exactly by ``factor``, so ``fx, fy, cx, cy`` and the
        skew are multiplied by it. The new size is ``floor(width * factor)`` x
        ``floor(height * factor)``: a remainder is cropped at the right/bottom edge, which leaves
        the principal point where it was (what :meth:`PosedImages.image` does for ``downscale``).
        """
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        intrinsics = self.intrinsics.copy()
        intrinsics[:2] *= factor
        width = max(1, int(math.floor(self.width * factor + 1e-6)))
        height = max(1, int(math.floor(self.height * factor + 1e-6)))
        return replace(self, intrinsics=intrinsics, width=width, height=height)

    def project(self, points: np.ndarray, distort: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Project world ``points (N, 3)`` → ``(uv (N, 2), depth (N,))`` float64.

        ``uv`` are corner-origin pixel coordinates (pixel ``(u, v)`` has its centre at
        ``(u + 0.5, v + 0.5)``), ``depth`` is the camera-frame z; ``uv`` of points with
        ``depth <= 0`` are meaningless. Distortion is applied when ``distort`` and the camera has it.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        local = (points - self.camera_to_world[:3, 3]) @ self.camera_to_world[:3, :3]
        depth = local[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y = local[:, 0] / depth, local[:, 1] / depth
        if distort and _has_distortion(self.distortion):
            x, y = _distort(x, y, self.distortion)
        k = self.intrinsics
        uv = np.stack([k[0, 0] * x + k[0, 1] * y + k[0, 2], k[1, 1] * y + k[1, 2]], axis=1)
        return uv, depth


@dataclass
class PosedImages:
    """A set of posed images from one capture.

    Attributes:
        cameras: one :class:`Camera` per image, in the format's order.
        points: ``(P, 3)`` float32 SfM points (COLMAP/LLFF ``points3D``) or ``None``.
        point_colors: ``(P, 3)`` float32 in ``[0, 1]`` or ``None``.
        scene_box: ``(2, 3)`` float64 ``(min, max)`` of the scene in world coordinates where the
            format defines one (instant-ngp), else ``None``.
        near_far: ``(C, 2)`` float64 per-camera depth bounds (LLFF), else ``None``.
        background: ``(3,)`` float32 colour RGBA images are composited over (Blender: white), or
            ``None`` to return the stored RGB of RGBA images unchanged.
        source: the format name (a key of :data:`POSED_IMAGE_FORMATS`).
        depth_scale: metres (world units) per unit of the depth PNGs, or ``None``.
        depth_intrinsics: ``(3, 3)`` intrinsics of depth images taken by a separate sensor with
            the same pose (ScanNet), or ``None`` when depth images share the colour camera's grid.
    """

    cameras: list[Camera]
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None
    scene_box: np.ndarray | None = None
    near_far: np.ndarray | None = None
    background: np.ndarray | None = None
    source: str = ""
    depth_scale: float | None = None
    depth_intrinsics: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.background is not None:
            self.background = np.asarray(self.background, dtype=np.float32).reshape(3)
        if self.points is not None:
            self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 3)
        if self.point_colors is not None:
            self.point_colors = np.ascontiguousarray(self.point_colors, dtype=np.float32).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.cameras)

    def image(self, i: int, downscale: int = 1) -> np.ndarray:
        """Image ``i`` as ``(H, W, 3)`` float32 in ``[0, 1]``; RGBA is composited over ``background``.

        ``downscale`` (an integer) averages ``downscale x downscale`` pixel blocks after cropping
        the remainder at the right/bottom edge; the result matches ``cameras[i].scaled(1 /
        downscale)``. The stored image must have the camera's width and height.
        """
        camera = self.cameras[i]
        factor = _check_downscale(downscale)
        if camera.image_path is None:
            raise DataFormatError(f"camera {camera.name!r}: no image file (expected image_path)")
        rgb, alpha = _read_rgb(camera.image_path)
        _check_size(camera.image_path, rgb.shape[1], rgb.shape[0], camera)
        if alpha is not None and self.background is not None:
            rgb = rgb * alpha[..., None] + self.background * (1.0 - alpha[..., None])
        if factor > 1:
            rgb = _box_downscale(rgb, factor)
        return np.ascontiguousarray(rgb, dtype=np.float32)

    def depth(self, i: int) -> np.ndarray:
        """Depth of image ``i`` as ``(H, W)`` float32 in metres (world units) on the camera's pixel grid.

        ``0`` marks pixels without a measurement. With ``depth_intrinsics`` (ScanNet: a depth sensor
        of another resolution and field of view, same pose) each colour pixel centre takes the depth
        pixel its ray falls in (nearest neighbour; exact for z-depth because the two cameras share
        their centre and axes); colour pixels outside the depth image get ``0``.
        """
        camera = self.cameras[i]
        if camera.depth_path is None:
            raise DataFormatError(f"camera {camera.name!r}: no depth image ({self.source or 'this'} set has none)")
        if self.depth_scale is None:
            raise DataFormatError(f"{camera.depth_path}: no depth scale (expected depth_scale, metres per unit)")
        raw = _read_depth_png(camera.depth_path)
        depth = raw.astype(np.float32) * np.float32(self.depth_scale)
        if self.depth_intrinsics is None:
            _check_size(camera.depth_path, depth.shape[1], depth.shape[0], camera)
            return depth
        return _resample_depth(depth, self.depth_intrinsics, camera)

    def holdout_split(self, every: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """``(train, held_out)`` int64 indices; index ``% every == 0`` is held out (NeRF's ``llffhold``)."""
        if int(every) < 1:
            raise ValueError(f"holdout every must be >= 1, got {every}")
        index = np.arange(len(self.cameras), dtype=np.int64)
        held = index % int(every) == 0
        return index[~held], index[held]


# --------------------------------------------------------------------------------------
# rays and distortion
# --------------------------------------------------------------------------------------


def _has_distortion(distortion: np.ndarray | None) -> bool:
    return distortion is not None and bool(np.any(distortion != 0))


def _distort(x: np.ndarray, y: np.ndarray, distortion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV radial-tangential model on normalised coordinates."""
    k1, k2, p1, p2 = distortion
    r2 = x * x + y * y
    radial = 1.0 + k1 * r2 + k2 * r2 * r2
    return (x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
            y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y)


def _undistort(xd: np.ndarray, yd: np.ndarray, distortion: np.ndarray,
               iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`_distort` by Newton's method, starting from the distorted point."""
    k1, k2, p1, p2 = distortion
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1.0 + k1 * r2 + k2 * r2 * r2
        d_radial = k1 + 2.0 * k2 * r2  # d(radial)/d(r2)
        fx, fy = _distort(x, y, distortion)
        fx, fy = fx - xd, fy - yd
        j00 = radial + 2.0 * x * x * d_radial + 2.0 * p1 * y + 6.0 * p2 * x
        j01 = 2.0 * x * y * d_radial + 2.0 * p1 * x + 2.0 * p2 * y
        j10 = 2.0 * x * y * d_radial + 2.0 * p1 * x + 2.0 * p2 * y
        j11 = radial + 2.0 * y * y * d_radial + 6.0 * p1 * y + 2.0 * p2 * x
        det = j00 * j11 - j01 * j10
        x = x - (j11 * fx - j01 * fy) / det
        y = y - (-j10 * fx + j00 * fy) / det
    return x, y


def camera_rays(camera: Camera, downscale: int = 1, undistort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """World-frame rays through the pixel centres: ``(origins (H*W, 3), directions (H*W, 3))`` float32.

    Pixel ``(column u, row v)`` of the (downscaled) image is sampled at its centre
    ``(u + 0.5, v + 0.5)`` in corner-origin coordinates, rows outermost (ray ``v * W + u``
    belongs to ``image[v, u]``). Directions have unit length. With ``undistort`` (default) and a
    camera with distortion, the pixel is first undistorted (Newton iterations on the OpenCV
    model), so each ray is the one the lens actually maps to that pixel; ``undistort=False`` is the
    plain pinhole ray.
    """
    factor = _check_downscale(downscale)
    cam = camera.scaled(1.0 / factor) if factor > 1 else camera
    k = cam.intrinsics
    u = np.arange(cam.width, dtype=np.float64) + 0.5
    v = np.arange(cam.height, dtype=np.float64) + 0.5
    uu, vv = np.meshgrid(u, v)
    y = (vv - k[1, 2]) / k[1, 1]
    x = (uu - k[0, 2] - k[0, 1] * y) / k[0, 0]
    if undistort and _has_distortion(cam.distortion):
        x, y = _undistort(x, y, cam.distortion)
    local = np.stack([x.ravel(), y.ravel(), np.ones(x.size)], axis=1)
    directions = local @ cam.camera_to_world[:3, :3].T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = np.broadcast_to(cam.camera_to_world[:3, 3], directions.shape)
    return origins.astype(np.float32), directions.astype(np.float32)


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------


def _check_downscale(downscale: int) -> int:
    if int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale}")
    return int(downscale)


def _check_size(path: Path, width: int, height: int, camera: Camera) -> None:
    if (width, height) != (camera.width, camera.height):
        raise DataFormatError(f"{path}: image is {width}x{height} but its camera {camera.name!r} is "
                              f"{camera.width}x{camera.height} (expected the size the camera declares)")


def _image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (pixel data is not decoded)."""
    from PIL import Image

    if not path.is_file():
        raise DataFormatError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            return int(image.size[0]), int(image.size[1])
    except _image_errors() as exc:
        raise DataFormatError(f"{path}: not a readable image ({exc})") from exc


def _read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rgb (H, W, 3) float32 in [0, 1], alpha (H, W) float32 or None)``."""
    from PIL import Image

    if not path.is_file():
        raise DataFormatError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
                return rgba[..., :3], rgba[..., 3]
            if mode.startswith("I;16") or mode == "I":
                grey = np.asarray(image, dtype=np.float32) / 65535.0
                return np.repeat(grey[..., None], 3, axis=2), None
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, None
    except _image_errors() as exc:
        raise DataFormatError(f"{path}: not a readable image ({exc})") from exc


def _read_depth_png(path: Path) -> np.ndarray:
    """A single-channel 16-bit depth image as ``(H, W)`` uint16 (raw units)."""
    from PIL import Image

    if not path.is_file():
        raise DataFormatError(f"{path}: depth image not found")
    try:
        with Image.open(path) as image:
            image.load()
            if not (image.mode.startswith("I;16") or image.mode == "I"):
                raise DataFormatError(f"{path}: depth image has mode {image.mode} (expected a 16-bit "
                                      "single-channel PNG)")
            raw = np.asarray(image)
    except DataFormatError:
        raise
    except _image_errors() as exc:
        raise DataFormatError(f"{path}: not a readable depth image ({exc})") from exc
    if raw.min() < 0 or raw.max() > 65535:
        raise DataFormatError(f"{path}: depth values outside 0..65535 (expected 16-bit depth)")
    return raw.astype(np.uint16)


def _box_downscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    height, width = rgb.shape[0] // factor, rgb.shape[1] // factor
    cropped = rgb[: height * factor, : width * factor]
    return cropped.reshape(height, factor, width, factor, rgb.shape[2]).mean(axis=(1, 3))


def _resample_depth(depth: np.ndarray, depth_intrinsics: np.ndarray, camera: Camera) -> np.ndarray:
    k, kd = camera.intrinsics, depth_intrinsics
    x = (np.arange(camera.width) + 0.5 - k[0, 2]) / k[0, 0]
    y = (np.arange(camera.height) + 0.5 - k[1, 2]) / k[1, 1]
    columns = np.floor(kd[0, 0] * x + kd[0, 2]).astype(np.int64)
    rows = np.floor(kd[1, 1] * y + kd[1, 2]).astype(np.int64)
    inside = ((rows >= 0) & (rows < depth.shape[0]))[:, None] & ((columns >= 0) & (columns < depth.shape[1]))[None]
    out = depth[np.clip(rows, 0, depth.shape[0] - 1)[:, None], np.clip(columns, 0, depth.shape[1] - 1)[None]]
    return np.where(inside, out, np.float32(0.0)).astype(np.float32)


def _common_size(paths: Sequence[Path], what: str) -> tuple[int, int]:
    """The one ``(width, height)`` of ``paths``; a differing image is named."""
    first = _image_size(paths[0])
    for path in paths[1:]:
        size = _image_size(path)
        if size != first:
            raise DataFormatError(f"{path}: image is {size[0]}x{size[1]} but {paths[0].name} is "
                                  f"{first[0]}x{first[1]} (expected one size for all {what})")
    return first


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


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."))


def _intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


# --------------------------------------------------------------------------------------
# poses and fields
# --------------------------------------------------------------------------------------


def _checked_pose(where: str, matrix: Any) -> np.ndarray:
    """A ``(4, 4)`` (or ``(3, 4)``) rigid camera-to-world matrix, validated; ``where`` names it."""
    try:
        pose = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{where}: pose is not a numeric matrix ({exc})") from exc
    if pose.shape == (3, 4):
        pose = np.vstack([pose, [0.0, 0.0, 0.0, 1.0]])
    if pose.shape != (4, 4):
        raise DataFormatError(f"{where}: expected a 4x4 camera-to-world matrix, got shape {pose.shape}")
    if not np.isfinite(pose).all():
        raise DataFormatError(f"{where}: pose has NaN/inf entries (expected a finite 4x4 camera-to-world matrix)")
    if np.abs(pose[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
        raise DataFormatError(f"{where}: last row of the pose is {pose[3].tolist()} (expected [0, 0, 0, 1])")
    rotation = pose[:3, :3]
    error = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
    det = float(np.linalg.det(rotation))
    if error > _ROTATION_TOL or det <= 0:
        raise DataFormatError(f"{where}: the 3x3 block of the pose is not a rotation (max |R^T R - I| = "
                              f"{error:.3g}, det = {det:.3g}; expected an orthonormal matrix with det +1)")
    return pose


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


def _read_matrix_txt(path: Path, rows: int | Sequence[int] = (3, 4)) -> np.ndarray:
    """A whitespace-separated numeric matrix; ``-inf``/``nan`` parse (the caller validates)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        matrix = np.array([[float(x) for x in ln] for ln in lines], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{path}: expected a numeric matrix ({exc})") from exc
    allowed = (rows,) if isinstance(rows, int) else tuple(rows)
    if matrix.ndim != 2 or matrix.shape[0] not in allowed or matrix.shape[1] != matrix.shape[0]:
        raise DataFormatError(f"{path}: expected a square matrix with {' or '.join(map(str, allowed))} rows, "
                              f"got shape {matrix.shape}")
    return matrix


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


# --------------------------------------------------------------------------------------
# COLMAP
# --------------------------------------------------------------------------------------

# model id -> (name, number of parameters); the pinhole family pc3d converts
_COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                  4: ("OPENCV", 8)}
_COLMAP_OTHER_MODELS = {5: "OPENCV_FISHEYE", 6: "FULL_OPENCV", 7: "FOV", 8: "SIMPLE_RADIAL_FISHEYE",
                        9: "RADIAL_FISHEYE", 10: "THIN_PRISM_FISHEYE", 11: "RAD_TAN_THIN_PRISM_FISHEYE",
                        12: "SIMPLE_DIVISION", 13: "DIVISION", 14: "SIMPLE_FISHEYE", 15: "FISHEYE", 16: "EUCM",
                        17: "EQUIRECTANGULAR"}
_COLMAP_BY_NAME = {name: (model_id, count) for model_id, (name, count) in _COLMAP_MODELS.items()}
_SUPPORTED_MODELS = ", ".join(name for name, _ in _COLMAP_MODELS.values())


@dataclass
class _ColmapCamera:
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class _ColmapImage:
    image_id: int
    qvec: np.ndarray  # (4,) w, x, y, z of the world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str


class _Bytes:
    """Little-endian reads from a COLMAP binary file; running short is a named error."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise DataFormatError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
        self.offset = 0

    def take(self, fmt: str, count: int = 1) -> np.ndarray:
        dtype = np.dtype(fmt).newbyteorder("<")
        size = dtype.itemsize * count
        if self.offset + size > len(self.data):
            raise DataFormatError(f"{self.path}: truncated at byte {self.offset} (expected {size} more bytes of the "
                                  "COLMAP binary format)")
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        return values

    def one(self, fmt: str) -> Any:
        return self.take(fmt)[0].item()

    def skip(self, size: int) -> None:
        if self.offset + size > len(self.data):
            raise DataFormatError(f"{self.path}: truncated at byte {self.offset} (expected {size} more bytes of the "
                                  "COLMAP binary format)")
        self.offset += size

    def string(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise DataFormatError(f"{self.path}: truncated image name at byte {self.offset} (expected a "
                                  "null-terminated string)")
        text = self.data[self.offset:end].decode("utf-8", errors="replace")
        self.offset = end + 1
        return text

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise DataFormatError(f"{self.path}: {len(self.data) - self.offset} trailing bytes (expected the file "
                                  "to end after the last record)")


def _colmap_unsupported(path: Path, model: str) -> DataFormatError:
    return DataFormatError(f"{path}: camera model {model} is not supported (expected one of {_SUPPORTED_MODELS})")


def _colmap_camera(path: Path, camera_id: int, model: str, width: int, height: int,
                   params: Sequence[float]) -> _ColmapCamera:
    if width <= 0 or height <= 0:
        raise DataFormatError(f"{path}: camera {camera_id} is {width}x{height} (expected a positive size)")
    if not all(math.isfinite(p) for p in params):
        raise DataFormatError(f"{path}: camera {camera_id} has NaN/inf parameters")
    return _ColmapCamera(model, int(width), int(height), tuple(float(p) for p in params))


def _read_colmap_cameras(path: Path) -> dict[int, _ColmapCamera]:
    cameras: dict[int, _ColmapCamera] = {}
    if path.suffix == ".bin":
        stream = _Bytes(path)
        for _ in range(stream.one("u8")):
            camera_id, model_id = stream.one("u4"), stream.one("i4")
            width, height = stream.one("u8"), stream.one("u8")
            if model_id not in _COLMAP_MODELS:
                raise _colmap_unsupported(path, _COLMAP_OTHER_MODELS.get(model_id, f"id {model_id}"))
            name, count = _COLMAP_MODELS[model_id]
            cameras[camera_id] = _colmap_camera(path, camera_id, name, width, height, stream.take("f8", count))
        stream.finish()
        return cameras
    for number, line in _text_records(path):
        fields = line.split()
        if len(fields) < 4:
            raise DataFormatError(f"{path}:{number}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        model = fields[1]
        if model not in _COLMAP_BY_NAME:
            raise _colmap_unsupported(path, model)
        count = _COLMAP_BY_NAME[model][1]
        if len(fields) != 4 + count:
            raise DataFormatError(f"{path}:{number}: {model} has {len(fields) - 4} parameters (expected {count})")
        try:
            camera_id, width, height = int(fields[0]), int(fields[2]), int(fields[3])
            params = [float(x) for x in fields[4:]]
        except ValueError as exc:
            raise DataFormatError(f"{path}:{number}: non-numeric field ({exc})") from exc
        cameras[camera_id] = _colmap_camera(path, camera_id, model, width, height, params)
    return cameras


def _text_records(path: Path) -> list[tuple[int, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read COLMAP text file ({exc})") from exc
    return [(n, ln.strip()) for n, ln in enumerate(lines, start=1) if ln.strip() and not ln.lstrip().startswith("#")]


def _read_colmap_images(path: Path) -> list[_ColmapImage]:
    images = []
    if path.suffix == ".bin":
        stream = _Bytes(path)
        for _ in range(stream.one("u8")):
            image_id = stream.one("u4")
            qvec, tvec = stream.take("f8", 4).copy(), stream.take("f8", 3).copy()
            camera_id = stream.one("u4")
            name = stream.string()
            stream.skip(24 * stream.one("u8"))  # points2D: x, y (f8), point3D_id (i8)
            images.append(_ColmapImage(image_id, qvec, tvec, camera_id, name))
        stream.finish()
        return images
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read COLMAP text file ({exc})") from exc
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line or line.startswith("#"):
            continue
        fields = line.split(maxsplit=9)
        if len(fields) != 10:
            raise DataFormatError(f"{path}:{number}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        try:
            values = [float(x) for x in fields[1:8]]
            image_id, camera_id = int(fields[0]), int(fields[8])
        except ValueError as exc:
            raise DataFormatError(f"{path}:{number}: non-numeric field ({exc})") from exc
        images.append(_ColmapImage(image_id, np.array(values[:4]), np.array(values[4:]), camera_id, fields[9]))
        number += 1  # the POINTS2D line that follows every image line (it may be empty)
    return images


def _read_colmap_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``points3D.bin|txt`` → ``(points (P, 3) float32, colors (P, 3) float32 in [0, 1])``."""
    xyz, rgb = [], []
    if path.suffix == ".bin":
        stream = _Bytes(path)
        for _ in range(stream.one("u8")):
            stream.skip(8)  # point3D_id
            xyz.append(stream.take("f8", 3))
            rgb.append(stream.take("u1", 3))
            stream.skip(8)  # reprojection error
            stream.skip(8 * stream.one("u8"))  # track: image_id (u4), point2D_idx (u4)
        stream.finish()
    else:
        for number, line in _text_records(path):
            fields = line.split()
            if len(fields) < 8 or (len(fields) - 8) % 2:
                raise DataFormatError(f"{path}:{number}: expected POINT3D_ID X Y Z R G B ERROR TRACK[] as "
                                      "(IMAGE_ID, POINT2D_IDX)")
            try:
                xyz.append([float(x) for x in fields[1:4]])
                rgb.append([int(x) for x in fields[4:7]])
            except ValueError as exc:
                raise DataFormatError(f"{path}:{number}: non-numeric field ({exc})") from exc
    points = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    colors = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(points).all():
        raise DataFormatError(f"{path}: {int((~np.isfinite(points)).any(1).sum())} points have NaN/inf coordinates")
    if colors.size and (colors.min() < 0 or colors.max() > 255):
        raise DataFormatError(f"{path}: colours outside 0..255")
    return points.astype(np.float32), (colors / 255.0).astype(np.float32)


def _colmap_file(model: Path, stem: str, required: bool = True) -> Path | None:
    """``<stem>.bin`` (preferred, as COLMAP does) or ``<stem>.txt`` in ``model``."""
    for suffix in (".bin", ".txt"):
        if (model / f"{stem}{suffix}").is_file():
            return model / f"{stem}{suffix}"
    if required:
        raise DataFormatError(f"{model / stem}.bin: file not found (expected {stem}.bin or {stem}.txt)")
    return None


def _colmap_model_dir(path: Path) -> Path | None:
    for candidate in (path, path / "sparse" / "0", path / "sparse"):
        if _colmap_file(candidate, "cameras", False) and _colmap_file(candidate, "images", False):
            return candidate
    return None


def _quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _colmap_intrinsics(camera: _ColmapCamera) -> tuple[np.ndarray, np.ndarray | None]:
    p = camera.params
    if camera.model == "SIMPLE_PINHOLE":
        k, dist = _intrinsics(p[0], p[0], p[1], p[2]), (0.0, 0.0, 0.0, 0.0)
    elif camera.model == "PINHOLE":
        k, dist = _intrinsics(p[0], p[1], p[2], p[3]), (0.0, 0.0, 0.0, 0.0)
    elif camera.model == "SIMPLE_RADIAL":
        k, dist = _intrinsics(p[0], p[0], p[1], p[2]), (p[3], 0.0, 0.0, 0.0)
    elif camera.model == "RADIAL":
        k, dist = _intrinsics(p[0], p[0], p[1], p[2]), (p[3], p[4], 0.0, 0.0)
    else:  # OPENCV
        k, dist = _intrinsics(p[0], p[1], p[2], p[3]), tuple(p[4:8])
    distortion = np.asarray(dist, dtype=np.float64)
    return k, distortion if np.any(distortion != 0) else None


def _colmap_images_dir(model: Path) -> Path:
    candidates = []
    if model.parent.name == "sparse":
        candidates.append(model.parent.parent / "images")
    candidates += [model.parent / "images", model / "images"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataFormatError(f"{candidates[0]}: image folder not found (expected the images next to the COLMAP model, "
                          "or pass images_dir)")


def read_colmap(path: PathLike, images_dir: PathLike | None = None) -> PosedImages:
    """A COLMAP sparse model, binary or text: ``cameras``, ``images`` and (optional) ``points3D``.

    ``path`` is the model folder or a workspace holding ``sparse/0`` or ``sparse``. Binary files are
    preferred when both exist (as COLMAP does). Camera models SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL,
    RADIAL and OPENCV are converted (radial terms become OpenCV ``k1, k2``); others raise. Image
    poses are world-to-camera quaternions (Hamilton, ``w`` first) + translations in OpenCV axes,
    inverted to camera-to-world. Images are ordered by name and found under ``images_dir``
    (default: ``<workspace>/images`` beside ``sparse/``); each must have its camera's size.
    """
    path = Path(path)
    model = _colmap_model_dir(path)
    if model is None:
        raise DataFormatError(f"{path}: no COLMAP model (expected cameras.bin|txt and images.bin|txt here or in "
                              "sparse/0)")
    cameras_path, images_path = _colmap_file(model, "cameras"), _colmap_file(model, "images")
    colmap_cameras = _read_colmap_cameras(cameras_path)
    records = sorted(_read_colmap_images(images_path), key=lambda record: record.name)
    if not records:
        raise DataFormatError(f"{images_path}: no registered images (expected at least one)")
    folder = Path(images_dir) if images_dir is not None else _colmap_images_dir(model)
    cameras = []
    for record in records:
        where = f"{images_path}: image {record.image_id} ({record.name})"
        if record.camera_id not in colmap_cameras:
            raise DataFormatError(f"{where}: camera {record.camera_id} is not in {cameras_path.name}")
        if not (np.isfinite(record.qvec).all() and np.isfinite(record.tvec).all()):
            raise DataFormatError(f"{where}: pose has NaN/inf (expected a finite quaternion and translation)")
        norm = float(np.linalg.norm(record.qvec))
        if abs(norm - 1.0) > _ROTATION_TOL:
            raise DataFormatError(f"{where}: quaternion has norm {norm:.6g} (expected a unit quaternion)")
        rotation = _quaternion_to_rotation(record.qvec / norm)
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = rotation.T, -rotation.T @ record.tvec
        c2w = _checked_pose(where, c2w)
        colmap_camera = colmap_cameras[record.camera_id]
        image = folder / record.name
        width, height = _image_size(image)
        if (width, height) != (colmap_camera.width, colmap_camera.height):
            raise DataFormatError(f"{image}: image is {width}x{height} but camera {record.camera_id} in "
                                  f"{cameras_path.name} is {colmap_camera.width}x{colmap_camera.height} "
                                  "(expected the size the camera declares)")
        intrinsics, distortion = _colmap_intrinsics(colmap_camera)
        cameras.append(Camera(intrinsics, c2w, width, height, distortion=distortion, image_path=image,
                              name=record.name))
    points = colors = None
    points_path = _colmap_file(model, "points3D", required=False)
    if points_path is not None:
        points, colors = _read_colmap_points(points_path)
    return PosedImages(cameras, points=points, point_colors=colors, source="colmap")


# --------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------

_SCANNET_DEPTH_SCALE = 0.001  # ScanNet depth PNGs are uint16 millimetres


def _frame_sort_key(stem: str) -> tuple[int, int | str]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def _log_skipped(skipped: list[str], where: Path) -> None:
    if skipped:
        _LOG.info("%s: skipped %d frame(s) with invalid (NaN/inf) poses: %s", where, len(skipped),
                  ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))


def _finite_pose_or_none(where: str, matrix: np.ndarray) -> np.ndarray | None:
    """ScanNet marks frames without tracking by -inf poses: those are skipped, anything else validated."""
    if not np.isfinite(matrix).all():
        return None
    return _checked_pose(where, matrix)


def read_scannet_frames(path: PathLike, axis_align_matrix: np.ndarray | None = None) -> PosedImages:
    """ScanNet frames as exported by its SensReader: ``color/<i>.jpg``, ``pose/<i>.txt``, ``intrinsic/``.

    ``pose/<i>.txt`` is a 4x4 camera-to-world (OpenCV axes) in the scan's raw frame;
    ``intrinsic/intrinsic_color.txt`` a 4x4 (or 3x3) colour intrinsic matrix. When ``depth/`` exists,
    each frame needs ``depth/<i>.png`` (uint16 millimetres, ``depth_scale = 0.001``) and
    ``intrinsic/intrinsic_depth.txt``: the depth sensor shares the pose but has its own resolution,
    so :meth:`PosedImages.depth` resamples onto the colour grid. Frames whose pose holds NaN/inf
    (ScanNet's lost-tracking frames) are skipped, with a logged count. ``axis_align_matrix``
    ``(4, 4)`` (from the scan's ``<scene>.txt``), when given, maps the poses into the axis-aligned
    frame of the prepared scans.
    """
    root = Path(path)
    for sub in ("color", "pose", "intrinsic"):
        if not (root / sub).is_dir():
            raise DataFormatError(f"{root / sub}: folder not found (expected the SensReader export color/, pose/, "
                                  "intrinsic/)")
    intrinsics = _read_matrix_txt(root / "intrinsic" / "intrinsic_color.txt", (3, 4))[:3, :3]
    if not np.isfinite(intrinsics).all() or intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        raise DataFormatError(f"{root / 'intrinsic' / 'intrinsic_color.txt'}: expected finite positive focal lengths")
    align = None if axis_align_matrix is None else _checked_pose("axis_align_matrix", axis_align_matrix)
    pose_files = sorted((p for p in (root / "pose").iterdir() if p.suffix == ".txt"),
                        key=lambda p: _frame_sort_key(p.stem))
    colors = {p.stem: p for p in _list_images(root / "color")}
    if len(colors) != len(pose_files):
        raise DataFormatError(f"{root / 'color'}: {len(colors)} colour images but {len(pose_files)} poses in "
                              f"{root / 'pose'} (expected one pose per image)")
    has_depth = (root / "depth").is_dir()
    depth_intrinsics = None
    if has_depth:
        depth_intrinsics = _read_matrix_txt(root / "intrinsic" / "intrinsic_depth.txt", (3, 4))[:3, :3]
    frames, skipped = [], []
    for pose_file in pose_files:
        stem = pose_file.stem
        if stem not in colors:
            raise DataFormatError(f"{root / 'color' / stem}.jpg: image file not found (for {pose_file})")
        pose = _finite_pose_or_none(str(pose_file), _read_matrix_txt(pose_file, 4))
        if pose is None:
            skipped.append(stem)
            continue
        depth = None
        if has_depth:
            depth = root / "depth" / f"{stem}.png"
            if not depth.is_file():
                raise DataFormatError(f"{depth}: depth image not found (expected one per colour frame)")
        frames.append((stem, colors[stem], depth, pose if align is None else align @ pose))
    _log_skipped(skipped, root / "pose")
    if not frames:
        raise DataFormatError(f"{root / 'pose'}: no frame with a valid pose")
    width, height = _common_size([f[1] for f in frames], "colour frames")
    if has_depth:
        _common_size([f[2] for f in frames], "depth frames")
    cameras = [Camera(intrinsics, pose, width, height, image_path=image, depth_path=depth, name=stem)
               for stem, image, depth, pose in frames]
    return PosedImages(cameras, source="scannet", depth_scale=_SCANNET_DEPTH_SCALE if has_depth else None,
                       depth_intrinsics=depth_intrinsics)


def _find_infos(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted({*path.glob("*infos*.pkl"), *path.glob("posed_images/*infos*.pkl")})
    if len(found) != 1:
        raise DataFormatError(f"{path}: found {len(found)} *infos*.pkl files {[p.name for p in found]} "
                              "(expected one; pass the file)")
    return found[0]


def read_scannet_infos(path: PathLike, scene: str | None = None, align: bool = True) -> PosedImages:
    """ScanNet posed frames of the mmdetection3d layout: ``*_infos.pkl`` + ``posed_images/<scene>/*.jpg``.

    The pickle is read with :func:`pc3d.data.io.read_numpy_pickle` (no code runs). It is a list
    with one dict per scene: ``point_cloud`` ``{num_features, lidar_idx: scene id}``,
    ``pts_path`` / ``pts_instance_mask_path`` / ``pts_semantic_mask_path`` (str),
    ``intrinsics`` ``(4, 4)`` float64 (the colour camera's K, padded), ``extrinsics`` a list of
    ``(4, 4)`` float64 camera-to-world poses (the SensReader ``pose/*.txt``, OpenCV axes, raw scan
    frame), ``img_paths`` a list of jpg paths relative to the data root, and ``annos`` (boxes:
    ``gt_num``, ``name``, ``location``, ``dimensions``, ``gt_boxes_upright_depth`` and their
    ``unaligned_*`` twins, ``index``, ``class``, and ``axis_align_matrix (4, 4)``). The scan points
    of this layout (``<scene>_vert_all.npy``) and the boxes are axis-aligned, so ``align=True``
    (default) returns ``axis_align_matrix @ pose``; ``align=False`` keeps the raw frame. ``scene``
    picks an entry by ``lidar_idx`` (optional when there is one). Frames with NaN/inf poses are
    skipped, with a logged count. ``path`` is the pickle or a folder holding it (or holding
    ``posed_images/`` with it); image paths are resolved against the pickle's folder and its parent.
    """
    pkl = _find_infos(Path(path))
    infos = read_numpy_pickle(pkl)
    if isinstance(infos, dict) and "data_list" in infos:
        raise DataFormatError(f"{pkl}: mmdetection3d v1.1 infos (data_list) are not supported (expected the list "
                              "of per-scene dicts with intrinsics, extrinsics, img_paths)")
    if not isinstance(infos, list) or not infos or not all(isinstance(info, dict) for info in infos):
        raise DataFormatError(f"{pkl}: expected a non-empty list of per-scene dicts")
    ids = [str(info.get("point_cloud", {}).get("lidar_idx", i)) for i, info in enumerate(infos)]
    if scene is None:
        if len(infos) != 1:
            raise DataFormatError(f"{pkl}: holds {len(infos)} scenes {ids[:10]} (expected scene=<lidar_idx>)")
        index = 0
    elif scene in ids:
        index = ids.index(scene)
    else:
        raise DataFormatError(f"{pkl}: no scene {scene!r} (found {ids[:10]})")
    info, scene_id = infos[index], ids[index]
    for key in ("intrinsics", "extrinsics", "img_paths"):
        if key not in info:
            raise DataFormatError(f"{pkl}: scene {scene_id} has no {key!r} (expected intrinsics, extrinsics, "
                                  "img_paths)")
    intrinsics = np.asarray(info["intrinsics"], dtype=np.float64)
    if intrinsics.shape not in ((3, 3), (4, 4)) or not np.isfinite(intrinsics).all() or intrinsics[0, 0] <= 0:
        raise DataFormatError(f"{pkl}: scene {scene_id} intrinsics {intrinsics.shape} (expected a finite 4x4 or 3x3 K)")
    extrinsics, img_paths = list(info["extrinsics"]), list(info["img_paths"])
    if len(extrinsics) != len(img_paths):
        raise DataFormatError(f"{pkl}: scene {scene_id} has {len(extrinsics)} extrinsics but {len(img_paths)} "
                              "img_paths (expected one pose per image)")
    align_matrix = None
    if align:
        annos = info.get("annos")
        if not isinstance(annos, dict) or "axis_align_matrix" not in annos:
            raise DataFormatError(f"{pkl}: scene {scene_id} has no annos.axis_align_matrix (expected it, or pass "
                                  "align=False for the raw scan frame)")
        align_matrix = _checked_pose(f"{pkl}: scene {scene_id} axis_align_matrix", annos["axis_align_matrix"])
    frames, skipped = [], []
    for j, (pose, relative) in enumerate(zip(extrinsics, img_paths)):
        where = f"{pkl}: scene {scene_id} extrinsics[{j}]"
        matrix = np.asarray(pose, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise DataFormatError(f"{where}: expected a 4x4 pose, got shape {matrix.shape}")
        checked = _finite_pose_or_none(where, matrix)
        if checked is None:
            skipped.append(Path(str(relative)).stem)
            continue
        candidates = [pkl.parent / str(relative), pkl.parent.parent / str(relative)]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DataFormatError(f"{candidates[0]}: image file not found (img_paths[{j}] of {pkl.name})")
        frames.append((image, checked if align_matrix is None else align_matrix @ checked))
    _log_skipped(skipped, pkl)
    if not frames:
        raise DataFormatError(f"{pkl}: scene {scene_id} has no frame with a valid pose")
    width, height = _common_size([image for image, _ in frames], f"frames of scene {scene_id}")
    cameras = [Camera(intrinsics[:3, :3], pose, width, height, image_path=image, name=f"{scene_id}/{image.stem}")
               for image, pose in frames]
    return PosedImages(cameras, source="scannet_infos")


# --------------------------------------------------------------------------------------
# SUN RGB-D
# --------------------------------------------------------------------------------------

# OpenCV camera axes -> SUN RGB-D depth axes (x right, y forward, z up): depth = (x, z, -y)
_CV_TO_SUN_DEPTH = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _read_sunrgbd_calib(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``calib/<id>.txt`` → ``(Rtilt (3, 3), K (3, 3))``; each line holds 9 numbers in column-major order."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        rows = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        values = [np.array([float(x) for x in row], dtype=np.float64) for row in rows]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{path}: expected two lines of 9 numbers (Rtilt, K) ({exc})") from exc
    if len(values) != 2 or any(v.size != 9 for v in values):
        raise DataFormatError(f"{path}: expected two lines of 9 numbers (Rtilt, K), got {[v.size for v in values]}")
    rtilt, k = (v.reshape(3, 3, order="F") for v in values)
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or np.abs(k[2] - [0, 0, 1]).max() > 1e-9:
        raise DataFormatError(f"{path}: K is {k.tolist()} (expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])")
    return rtilt, k


def read_sunrgbd(path: PathLike, frames: Sequence[str] | None = None) -> PosedImages:
    """SUN RGB-D frames (mmdetection3d / VoteNet layout): ``calib/<id>.txt`` + ``image/<id>.jpg``.

    Each camera sits at the origin of its frame's *upright depth* coordinates (x right, y forward,
    z up, gravity-aligned), the frame of ``lidar/<id>.npz`` points and of the 3D box labels: a
    point in OpenCV camera axes maps to the depth axes by ``(x, z, -y)`` and then by ``Rtilt`` to
    upright, so ``camera_to_world = [Rtilt @ M | 0]``. ``K`` follows the MATLAB toolbox, whose pixel
    centres are at integers starting at 1: in corner-origin coordinates the principal point is
    ``(cx - 0.5, cy - 0.5)`` (the lidar points project exactly onto pixel centres with it). Every
    frame has its own world (cameras of different frames are unrelated); sizes come from the
    images. ``frames`` defaults to every ``calib/*.txt``, in name order.
    """
    root = Path(path)
    if frames is None:
        if not (root / "calib").is_dir():
            raise DataFormatError(f"{root / 'calib'}: folder not found (expected SUN RGB-D calib/ and image/)")
        frames = sorted(p.stem for p in (root / "calib").glob("*.txt"))
        if not frames:
            raise DataFormatError(f"{root / 'calib'}: no calib/*.txt files")
    cameras = []
    for frame in frames:
        calib = root / "calib" / f"{frame}.txt"
        rtilt, k = _read_sunrgbd_calib(calib)
        c2w = np.eye(4)
        c2w[:3, :3] = rtilt @ _CV_TO_SUN_DEPTH
        c2w = _checked_pose(f"{calib}: Rtilt", c2w)
        image = root / "image" / f"{frame}.jpg"
        width, height = _image_size(image)
        intrinsics = k.copy()
        intrinsics[0, 2] -= 0.5
        intrinsics[1, 2] -= 0.5
        cameras.append(Camera(intrinsics, c2w, width, height, image_path=image, name=str(frame)))
    return PosedImages(cameras, source="sunrgbd")


# --------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------

#: format name → (reader, what it expects); :func:`read_posed_images` dispatches on it.
POSED_IMAGE_FORMATS: dict[str, tuple[Callable[..., PosedImages], str]] = {
    "blender": (read_blender, "transforms_<split>.json"),
    "instant_ngp": (read_instant_ngp, "transforms.json"),
    "llff": (read_llff, "poses_bounds.npy + images[_<factor>]/"),
    "colmap": (read_colmap, "cameras + images .bin/.txt (here or in sparse/0)"),
    "scannet": (read_scannet_frames, "color/ pose/ intrinsic/ (SensReader export)"),
    "scannet_infos": (read_scannet_infos, "*infos*.pkl + posed_images/"),
    "sunrgbd": (read_sunrgbd, "calib/ + image/"),
}


def _expected_formats() -> str:
    return "; ".join(f"{name}: {expects}" for name, (_, expects) in POSED_IMAGE_FORMATS.items())


def detect_posed_format(path: PathLike) -> str:
    """The format name of ``path`` (a folder or a format's main file), from the files present."""
    path = Path(path)
    if path.is_file():
        name = path.name
        if name == "poses_bounds.npy":
            return "llff"
        if re.fullmatch(r"transforms_.+\.json", name):
            return "blender"
        if path.suffix == ".json":
            return "instant_ngp"
        if path.suffix == ".pkl":
            return "scannet_infos"
        if path.stem in ("cameras", "images", "points3D") and path.suffix in (".bin", ".txt"):
            return "colmap"
    elif path.is_dir():
        if (path / "poses_bounds.npy").is_file():
            return "llff"
        if (path / "transforms.json").is_file():
            return "instant_ngp"
        if any(path.glob("transforms_*.json")):
            return "blender"
        if _colmap_model_dir(path) is not None:
            return "colmap"
        if all((path / sub).is_dir() for sub in ("color", "pose", "intrinsic")):
            return "scannet"
        if any(path.glob("*infos*.pkl")) or any(path.glob("posed_images/*infos*.pkl")):
            return "scannet_infos"
        if (path / "calib").is_dir() and (path / "image").is_dir():
            return "sunrgbd"
    else:
        raise DataFormatError(f"{path}: not found (expected a posed-image folder or file)")
    raise DataFormatError(f"{path}: no posed-image format recognised (expected one of {_expected_formats()})")


def read_posed_images(path: PathLike, format: str = "auto", **options: Any) -> PosedImages:
    """Read posed images of any supported format; ``format="auto"`` detects it from the files present.

    ``options`` go to the format's reader (``split`` for blender, ``factor`` for llff, ``images_dir``
    for colmap, ``scene`` / ``align`` for scannet_infos, ...). A file argument to a folder-based
    reader (``poses_bounds.npy``, ``cameras.bin``) stands for its folder.
    """
    name = detect_posed_format(path) if format == "auto" else format
    if name not in POSED_IMAGE_FORMATS:
        raise ConfigError(f"format={format!r} is not a posed-image format (expected auto or one of "
                          f"{', '.join(POSED_IMAGE_FORMATS)})")
    path = Path(path)
    if path.is_file() and name in ("llff", "colmap"):
        path = path.parent
    return POSED_IMAGE_FORMATS[name][0](path, **options)
