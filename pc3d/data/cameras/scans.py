"""RGB-D scan datasets: ScanNet (SensReader export, mmdetection3d infos) and SUN RGB-D frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pc3d.data.cameras.base import (
    Camera,
    PathLike,
    PosedImages,
    _checked_pose,
    _common_size,
    _image_size,
    _list_images,
)
from pc3d.data.io import read_numpy_pickle
from pc3d.errors import DataFormatError
from pc3d.utils.progress import get_logger

_LOG = get_logger("pc3d.data.cameras")


# --------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------

_SCANNET_DEPTH_SCALE = 0.001  # ScanNet depth PNGs are uint16 millimetres


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
