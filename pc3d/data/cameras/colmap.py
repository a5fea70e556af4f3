"""COLMAP sparse models, binary or text: the ``cameras``, ``images`` and ``points3D`` readers and
:func:`read_colmap`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pc3d.data.cameras.base import (
    _ROTATION_TOL,
    Camera,
    PathLike,
    PosedImages,
    _checked_pose,
    _image_size,
    _intrinsics,
)
from pc3d.errors import DataFormatError

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
