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

Modules: ``base`` (the records, :func:`camera_rays`, the image and pose helpers the readers share),
``nerf_formats`` (Blender, instant-ngp, LLFF), ``colmap`` (COLMAP models), ``scans`` (ScanNet,
SUN RGB-D); this package adds format detection and :func:`read_posed_images`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pc3d.data.cameras.base import Camera, PathLike, PosedImages, camera_rays
from pc3d.data.cameras.colmap import _colmap_model_dir, read_colmap
from pc3d.data.cameras.nerf_formats import read_blender, read_instant_ngp, read_llff
from pc3d.data.cameras.scans import (
    read_scannet_frames,
    read_scannet_infos,
    read_sunrgbd,
)
from pc3d.errors import ConfigError, DataFormatError

__all__ = [
    "POSED_IMAGE_FORMATS",
    "Camera",
    "PosedImages",
    "camera_rays",
    "capture_files",
    "detect_posed_format",
    "is_posed_capture",
    "read_blender",
    "read_colmap",
    "read_instant_ngp",
    "read_llff",
    "read_posed_images",
    "read_scannet_frames",
    "read_scannet_infos",
    "read_sunrgbd",
]


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


def is_posed_capture(path: PathLike) -> bool:
    """Whether ``path`` holds posed images in a format pc3d reads (:func:`detect_posed_format` succeeds)."""
    try:
        detect_posed_format(path)
    except (DataFormatError, ConfigError):
        return False
    return True


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


def capture_files(src: PathLike, posed: PosedImages) -> list[Path]:
    """The files a result made from the capture at ``src`` depends on: the camera files directly under
    ``src`` (and a COLMAP ``sparse/0``), then every colour and depth image (what a prepared folder
    lists as an item's inputs, so a changed pose or image re-makes the item)."""
    src = Path(src)
    images = [p for c in posed.cameras for p in (c.image_path, c.depth_path) if p is not None]
    metadata = sorted(p for p in src.iterdir() if p.is_file() and p.suffix in (".json", ".npy", ".bin", ".txt", ".pkl"))
    sparse = src / "sparse" / "0"
    if sparse.is_dir():
        metadata += sorted(p for p in sparse.iterdir() if p.is_file())
    return [*metadata, *images]
