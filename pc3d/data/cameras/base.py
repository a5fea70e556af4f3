"""Posed-image records and the helpers every reader shares.

:class:`Camera` and :class:`PosedImages` follow the conventions of :mod:`pc3d.data.cameras` (OpenCV
camera axes, corner-origin pixel coordinates, OpenCV ``k1, k2, p1, p2`` distortion);
:func:`camera_rays` casts the rays of a camera's pixels. The private helpers (image headers and
pixels, rigid-pose validation, intrinsic matrices) are the ones the format readers share.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pc3d.errors import DataFormatError

PathLike = str | os.PathLike

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# a pose read from text with 6-9 significant digits is orthonormal to ~1e-6
_ROTATION_TOL = 1e-3


# --------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------


@dataclass
class Camera:
    """A posed pinhole camera in the OpenCV convention (see :mod:`pc3d.data.cameras`).

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
        width = max(1, math.floor(self.width * factor + 1e-6))
        height = max(1, math.floor(self.height * factor + 1e-6))
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
        source: the format name (a key of :data:`~pc3d.data.cameras.POSED_IMAGE_FORMATS`).
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

    def alpha(self, i: int, downscale: int = 1) -> np.ndarray | None:
        """The alpha channel of image ``i`` as ``(H, W)`` float32 in ``[0, 1]`` (downscaled as
        :meth:`image`), or ``None`` for an image without one.

        :meth:`image` is linear in the stored colour and alpha, so the image over another background
        ``b`` is ``image + (1 - alpha) * (b - background)``, at any ``downscale``.
        """
        camera = self.cameras[i]
        factor = _check_downscale(downscale)
        if camera.image_path is None:
            raise DataFormatError(f"camera {camera.name!r}: no image file (expected image_path)")
        rgb, alpha = _read_rgb(camera.image_path)
        if alpha is None:
            return None
        _check_size(camera.image_path, rgb.shape[1], rgb.shape[0], camera)
        if factor > 1:
            alpha = _box_downscale(alpha[..., None], factor)[..., 0]
        return np.ascontiguousarray(alpha, dtype=np.float32)

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


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."))


def _intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


# --------------------------------------------------------------------------------------
# poses
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
