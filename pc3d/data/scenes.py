"""Indoor scans with per-point labels: the :class:`Scene`, its prepared folder format and readers.

A prepared scene folder (written by ``pc3d prep scannet|s3dis`` through the one prepared-folder
writer, :mod:`pc3d.data.folders`; DEVELOPERS.md, "Data contract")::

    <root>/manifest.json        {"format": "pc3d-scenes-v2", "dataset": "scannet" | "s3dis",
                                 "class_names": [...], "scenes": {name: {"points": N, "inputs": [...],
                                 "content_hash": sha256, ...}}, "source": str, "params": {...}, ...}
    <root>/splits.json          {"train": [names], "val": [names]} — yours to edit; re-running the
                                prep keeps it unless force=true
    <root>/<scene>/points.npy   (N, 3) float32 metres, z up
                   colors.npy   (N, 3) float32 RGB in [0, 1]
                   normals.npy  (N, 3) float32 unit length
                   segment.npy  (N,) int64 class index into class_names, -1 = unlabelled / ignored
                   instance.npy (N,) int64 object id, -1 = none
                   bbox.npy     optional (K, 7) float32 [cx, cy, cz, dx, dy, dz, nyu40_id]: axis-aligned
                                boxes of the ScanNet detection classes, the ``<scene>_bbox.npy`` layout
                                (read with :func:`pc3d.data.detection_scenes.read_scannet_boxes`)

Folders of the earlier format ``pc3d-scenes-v1`` (``coord.npy``, ``color.npy`` in 0..255,
``normal.npy``) are still read (colours divided by 255), and a re-run of the prep upgrades them.
Each scene folder is replaced atomically; the manifest is written after the scenes.

:func:`load_scenes` also reads a folder in the preprocessed ScanNet numpy layout
(``<scene>_vert_all.npy`` (N, 6) xyz + rgb 0..255, ``<scene>_sem_label_all.npy`` NYU40 ids, 0 =
unannotated, ``<scene>_ins_label_all.npy`` instance ids, 0 = none, optional
``<scene>_bbox.npy``) directly, converting in memory (normals estimated, NYU40 → ScanNet-20,
instance ``id - 1``) with the default split of :func:`default_splits`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pc3d.data.detection_scenes import SCANNET_NYU40_IDS
from pc3d.data.folders import FolderItem, read_format_manifest, read_splits, write_prepared_folder
from pc3d.data.io import read_array, read_json
from pc3d.data.transforms import yaw_rotation
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.atomic import atomic_replace_dir, atomic_write

__all__ = ["SCANNET20_CLASSES", "SCANNET20_NYU40_IDS", "S3DIS_CLASSES", "SCENE_FORMAT", "SCENE_FORMAT_V1",
           "SCENE_FIELDS", "Scene",
           "SceneSource", "nyu40_to_scannet20", "check_scene", "posed_scene", "rotated_scene", "wall_yaw",
           "wall_aligned_scene", "default_splits", "write_scene", "read_scene",
           "read_scene_manifest", "read_scene_splits", "read_json", "scene_class_names", "load_scenes",
           "find_scannet_numpy_scenes", "read_scannet_numpy_scene", "write_scene_folder"]

SCANNET20_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                     "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
                     "bathtub", "otherfurniture")
#: NYU40 id of each ScanNet-20 class: wall, floor + the 18 detection classes, in :data:`SCANNET20_CLASSES` order
SCANNET20_NYU40_IDS = (1, 2, *SCANNET_NYU40_IDS)
S3DIS_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase",
                 "board", "clutter")
SCENE_FORMAT = "pc3d-scenes-v2"
SCENE_FORMAT_V1 = "pc3d-scenes-v1"
#: the per-point arrays of a scene (attribute = file stem): columns (None for (N,)) and dtype
SCENE_FIELDS: dict[str, tuple[int | None, type]] = {
    "points": (3, np.float32), "colors": (3, np.float32), "normals": (3, np.float32),
    "segment": (None, np.int64), "instance": (None, np.int64)}
#: v1 file stem of each field (colours were stored in 0..255)
_V1_FILES = {"points": "coord", "colors": "color", "normals": "normal", "segment": "segment", "instance": "instance"}

_NYU40_TO_20 = np.full(41, -1, dtype=np.int64)
_NYU40_TO_20[list(SCANNET20_NYU40_IDS)] = np.arange(len(SCANNET20_NYU40_IDS))



def nyu40_to_scannet20(ids: np.ndarray) -> np.ndarray:
    """NYU40 ids ``(...)`` (any integer dtype) → ScanNet-20 class indices ``(...)`` int64, -1 for all others."""
    ids = np.asarray(ids).astype(np.int64)
    inside = (ids >= 0) & (ids <= 40)
    return np.where(inside, _NYU40_TO_20[np.where(inside, ids, 0)], -1)


@dataclass
class Scene:
    """One scan. ``points (N, 3)`` float32 metres, ``colors (N, 3)`` float32 in [0, 1], ``normals (N, 3)``
    float32 unit, ``segment (N,)`` int64 (-1 = ignore), ``instance (N,)`` int64 (-1 = none)."""

    name: str
    points: np.ndarray
    colors: np.ndarray
    normals: np.ndarray
    segment: np.ndarray
    instance: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])


def posed_scene(scene: Scene, rotation: np.ndarray, scale: float = 1.0, name: str | None = None) -> Scene:
    """The scan moved in place: points turned by ``rotation (3, 3)`` and scaled by ``scale`` about the
    centre of their bounding box, normals turned (mirrored with the points when ``rotation`` is a
    reflection); colours and labels unchanged."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3) or not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-6):
        raise ValueError(f"rotation must be an orthogonal (3, 3) matrix, got shape {rotation.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    points = np.asarray(scene.points, dtype=np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    moved = (points - centre) @ rotation.T * scale + centre
    normals = np.asarray(scene.normals, dtype=np.float64) @ rotation.T
    return Scene(scene.name if name is None else name, moved.astype(np.float32), scene.colors,
                 normals.astype(np.float32), scene.segment, scene.instance)


def rotated_scene(scene: Scene, degrees: float) -> Scene:
    """The scan turned in place by ``degrees`` about the vertical (z) axis: a rescan of the same room in
    another orientation. Named ``<name>@rot<degrees>`` (the scan itself when ``degrees`` is 0)."""
    if float(degrees) % 360 == 0:
        return scene
    return posed_scene(scene, yaw_rotation(float(degrees)), name=f"{scene.name}@rot{float(degrees):g}")


def wall_yaw(scene: Scene, max_normal_z: float = 0.5) -> float:
    """The direction of the scan's walls about z, in degrees in (-45, 45]: the angle ``θ`` that makes
    the horizontal normals of its vertical surfaces (``|n_z| < max_normal_z``) line up with ±x / ±y.

    Rooms are mostly Manhattan-world, so the angle is defined up to quarter turns; it is the circular
    mean of ``4·φ`` over the normals' azimuths ``φ``, weighted by their squared horizontal length
    (normals may point either way: ``4·φ`` is the same for ``φ`` and ``φ + 180°``). Turning the scan by
    ``α`` adds ``α`` to it (mod 90°). 0 when the scan has no vertical surface (a floor-only crop):
    there is no wall to align it by.
    """
    normals = np.asarray(scene.normals, dtype=np.float64)
    vertical = np.abs(normals[:, 2]) < max_normal_z
    x, y = normals[vertical, 0], normals[vertical, 1]
    resultant = ((x * x + y * y) * np.exp(4j * np.arctan2(y, x))).sum()
    if abs(resultant) == 0.0:
        return 0.0
    angle = float(np.degrees(np.angle(resultant)) / 4)
    return 45.0 if angle <= -45.0 else angle


def wall_aligned_scene(scene: Scene) -> Scene:
    """The scan turned about z by ``-wall_yaw(scene)``, its walls along x and y: any turn of a scan
    about z becomes a quarter turn of this one (plus the noise of the scan)."""
    return rotated_scene(scene, -wall_yaw(scene))


def check_scene(scene: Scene, files: dict[str, Path | str], num_classes: int | None = None) -> None:
    """Validate shapes, dtypes and values; a problem raises DataFormatError naming ``files[field]``."""
    n = scene.points.shape[0] if scene.points.ndim == 2 else -1
    for field, (cols, dtype) in SCENE_FIELDS.items():
        arr, where = getattr(scene, field), files[field]
        shape = (n,) if cols is None else (n, cols)
        if field == "points" and (arr.ndim != 2 or arr.shape[1] != 3 or n == 0):
            raise DataFormatError(f"{where}: expected (N, 3) coordinates with N >= 1, got shape {arr.shape}")
        if arr.shape != shape:
            raise DataFormatError(f"{where}: expected {field} of shape {shape} (one per point of "
                                  f"{Path(files['points']).name}), got {arr.shape}")
        if arr.dtype != dtype:
            raise DataFormatError(f"{where}: expected {np.dtype(dtype)} {field}, got {arr.dtype}")
        if cols is not None and not np.isfinite(arr).all():
            raise DataFormatError(f"{where}: {int((~np.isfinite(arr)).any(axis=1).sum())} points have NaN/inf {field}")
    if scene.colors.min() < 0 or scene.colors.max() > 1:
        raise DataFormatError(f"{files['colors']}: colours outside [0, 1] (range {scene.colors.min():g}.."
                              f"{scene.colors.max():g})")
    if np.abs(np.linalg.norm(scene.normals, axis=1) - 1).max() > 1e-3:
        raise DataFormatError(f"{files['normals']}: normals are not unit length")
    for field, high in (("segment", num_classes), ("instance", None)):
        arr = getattr(scene, field)
        if arr.min() < -1 or (high is not None and arr.max() >= high):
            raise DataFormatError(f"{files[field]}: {field} out of range [{arr.min()}, {arr.max()}] (expected -1"
                                  f"{f' or 0..{high - 1}' if high is not None else ' or an id >= 0'})")


def check_prep_paths(src: str | os.PathLike, dst: str | os.PathLike, normals_k: int) -> tuple[Path, Path]:
    """The arguments every scene converter takes: an existing ``src``, a different ``dst``, ``normals_k >= 3``."""
    src_p, dst_p = Path(src), Path(dst)
    if normals_k < 3:
        raise ConfigError(f"normals_k must be >= 3, got {normals_k}")
    if not src_p.is_dir():
        raise DataFormatError(f"{src_p}: source folder not found")
    if src_p.resolve() == dst_p.resolve():
        raise ConfigError(f"dst {dst} must differ from src {src}")
    return src_p, dst_p


def default_splits(names: Sequence[str]) -> dict[str, list[str]]:
    """The default split of scene names: the last (sorted) is ``val`` if there are >= 2, else the one is both."""
    names = sorted(names)
    if len(names) < 2:
        return {"train": names, "val": names}
    return {"train": names[:-1], "val": names[-1:]}


def write_scene(path: str | os.PathLike, scene: Scene, bbox: np.ndarray | None = None) -> None:
    """Validate ``scene`` and write it (and ``bbox (K, 7)``) as the folder ``path``, replacing it atomically."""
    check_scene(scene, {field: Path(path) / f"{field}.npy" for field in SCENE_FIELDS})
    arrays = {field: getattr(scene, field) for field in SCENE_FIELDS}
    if bbox is not None:
        arrays["bbox"] = np.ascontiguousarray(bbox, dtype=np.float32).reshape(-1, 7)
    with atomic_replace_dir(path) as tmp:
        for field, arr in arrays.items():
            with atomic_write(tmp / f"{field}.npy") as handle:
                np.save(handle, np.ascontiguousarray(arr), allow_pickle=False)


def read_scene(path: str | os.PathLike, num_classes: int | None = None) -> Scene:
    """Read and validate one prepared scene folder (``points.npy``, ``colors.npy``, ... ; see the module doc).

    A folder of the v1 format (``coord.npy``, ``color.npy`` in 0..255, ``normal.npy``) is read too.
    """
    path = Path(path)
    if not path.is_dir():
        expected = ", ".join(f"{field}.npy" for field in SCENE_FIELDS)
        raise DataFormatError(f"{path}: scene folder not found (expected {expected})")
    v1 = not (path / "points.npy").is_file() and (path / "coord.npy").is_file()
    files = {field: path / f"{_V1_FILES[field] if v1 else field}.npy" for field in SCENE_FIELDS}
    for file in files.values():
        if not file.is_file():
            raise DataFormatError(f"{file}: missing from the prepared scene")
    arrays = {field: read_array(file) for field, file in files.items()}
    if v1 and arrays["colors"].dtype.kind == "f":
        arrays["colors"] = (arrays["colors"] / np.float32(255.0)).astype(arrays["colors"].dtype)
    scene = Scene(path.name, **arrays)
    check_scene(scene, files, num_classes)
    return scene


def read_scene_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``<root>/manifest.json`` of a prepared scene folder (v2, or v1)."""
    path = Path(root) / "manifest.json"
    manifest = read_format_manifest(root, (SCENE_FORMAT, SCENE_FORMAT_V1),
                                    hint="prepare scenes with `pc3d prep scannet|s3dis`")
    classes, scenes = manifest.get("class_names"), manifest.get("scenes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataFormatError(f"{path}: 'class_names' must be a non-empty list of names")
    if not isinstance(scenes, dict) or not all(isinstance(s, dict) and isinstance(s.get("points"), int)
                                               for s in scenes.values()):
        raise DataFormatError(f"{path}: 'scenes' must map scene names to {{\"points\": N, ...}}")
    return manifest


def read_scene_splits(root: str | os.PathLike) -> dict[str, list[str]]:
    """``<root>/splits.json`` → ``{split: [scene names]}``; every name must be a scene of the manifest."""
    return read_splits(root, list(read_scene_manifest(root)["scenes"]))


def find_scannet_numpy_scenes(folder: str | os.PathLike) -> list[Path]:
    """Sorted scene prefixes ``<folder>/<scene>`` of the ``<scene>_vert_all.npy`` files in ``folder``."""
    suffix = "_vert_all.npy"
    return sorted(Path(folder) / p.name[:-len(suffix)] for p in Path(folder).glob(f"*{suffix}"))


def read_point_labels(path: Path, n: int) -> np.ndarray:
    """``(n,)`` int64 per-point labels of a ``.npy`` (ScanNet's ``_sem_label_all`` / ``_ins_label_all``)."""
    labels = read_array(path)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DataFormatError(f"{path}: expected ({n},) integer labels (one per point of the _vert_all.npy), "
                              f"got {labels.shape} {labels.dtype}")
    return labels.astype(np.int64)


def read_scannet_numpy_scene(prefix: str | os.PathLike, normals_k: int = 16,
                             normals_backend: str = "auto") -> tuple[Scene, np.ndarray | None]:
    """``<prefix>_vert_all.npy`` + ``_sem_label_all.npy`` + ``_ins_label_all.npy`` (+ ``_bbox.npy``).

    Returns:
        The :class:`Scene` (ScanNet-20 segments, instance ``id - 1``, normals estimated with
        :func:`pc3d.ops.normals.estimate_normals`) and the boxes ``(K, 7)`` float32 of
        ``_bbox.npy`` (``None`` when that file is absent).
    """
    from pc3d.ops.normals import estimate_normals

    vert_file, sem_file, ins_file, bbox_file = (Path(f"{prefix}_{s}.npy")
                                                for s in ("vert_all", "sem_label_all", "ins_label_all", "bbox"))
    vert = read_array(vert_file)
    if vert.ndim != 2 or vert.shape[1] != 6 or vert.shape[0] == 0 or vert.dtype.kind != "f":
        raise DataFormatError(f"{vert_file}: expected (N, 6) float xyz + rgb, got {vert.shape} {vert.dtype}")
    if not np.isfinite(vert).all():
        raise DataFormatError(f"{vert_file}: {int((~np.isfinite(vert)).any(axis=1).sum())} points have NaN/inf values")
    segment = nyu40_to_scannet20(read_point_labels(sem_file, vert.shape[0]))
    instance = read_point_labels(ins_file, vert.shape[0]) - 1
    points = np.ascontiguousarray(vert[:, :3], dtype=np.float32)
    colors = np.ascontiguousarray(vert[:, 3:6] / 255.0, dtype=np.float32)
    if colors.min() < 0 or colors.max() > 1:
        raise DataFormatError(f"{vert_file}: colours outside 0..255 in columns 4-6")
    scene = Scene(Path(prefix).name, points, colors, estimate_normals(points, normals_k, normals_backend), segment,
                  instance)
    check_scene(scene, {"points": vert_file, "colors": vert_file, "normals": vert_file, "segment": sem_file,
                        "instance": ins_file}, len(SCANNET20_CLASSES))
    bbox = None
    if bbox_file.is_file():
        bbox = read_array(bbox_file)
        if bbox.ndim != 2 or bbox.shape[1] != 7 or not np.isfinite(bbox).all() or (bbox[:, 3:6] < 0).any():
            raise DataFormatError(f"{bbox_file}: expected finite (K, 7) [cx, cy, cz, dx, dy, dz, nyu40_id] boxes "
                                  f"with sizes >= 0, got {bbox.shape}")
        bbox = bbox.astype(np.float32)
    return scene, bbox


def _layout(root: Path) -> str:
    if (root / "manifest.json").is_file():
        return "prepared"
    if root.is_dir() and find_scannet_numpy_scenes(root):
        return "scannet_numpy"
    raise DataFormatError(f"{root}: neither a prepared scene folder (manifest.json, from `pc3d prep scannet|s3dis`) "
                          "nor ScanNet numpy files (<scene>_vert_all.npy + _sem_label_all.npy + _ins_label_all.npy)")


def scene_class_names(root: str | os.PathLike) -> list[str]:
    """The class of each segment id of the scenes under ``root`` (either layout of :func:`load_scenes`)."""
    root = Path(root)
    if _layout(root) == "prepared":
        return list(read_scene_manifest(root)["class_names"])
    return list(SCANNET20_CLASSES)


def load_scenes(root: str | os.PathLike, split: str) -> list[Scene]:
    """The scenes of ``split``, from a prepared scene folder or a ScanNet numpy-layout folder.

    Args:
        root: a prepared folder (has ``manifest.json``) or a folder of ``<scene>_vert_all.npy`` +
            ``_sem_label_all.npy`` + ``_ins_label_all.npy`` files (converted in memory; other files
            such as unlabelled ``.bin`` scans are ignored; split by :func:`default_splits`).
        split: a key of ``splits.json`` (``"train"``, ``"val"``, ...).

    Raises:
        DataFormatError: naming the file that is missing or malformed.
        ConfigError: ``split`` is not one of the folder's splits.
    """
    root = Path(root)
    if _layout(root) == "scannet_numpy":
        prefixes = {p.name: p for p in find_scannet_numpy_scenes(root)}
        names = _split_names(default_splits(list(prefixes)), split, root)
        return [read_scannet_numpy_scene(prefixes[name])[0] for name in names]
    names = _split_names(read_scene_splits(root), split, root / "splits.json")
    num_classes = len(read_scene_manifest(root)["class_names"])
    return [read_scene(root / name, num_classes) for name in names]


def _split_names(splits: dict[str, list[str]], split: str, where: Path) -> list[str]:
    if split not in splits:
        raise ConfigError(f"split {split!r} not in {where} (available: {', '.join(splits)})")
    return splits[split]


# ----------------------------------------------------------------------------- writing a prepared folder


@dataclass
class SceneSource:
    """One scene to prepare: its name, the files it is made from, and the conversion.

    ``convert()`` returns the :class:`Scene` and optional boxes ``(K, 7)``; it runs only when the
    scene is not up to date.
    """

    name: str
    inputs: list[Path]
    convert: Callable[[], tuple[Scene, np.ndarray | None]]


def _write_entry(dst: Path, name: str, payload: tuple[Scene, np.ndarray | None]) -> dict[str, Any]:
    scene, bbox = payload
    write_scene(dst / name, scene, bbox)
    entry: dict[str, Any] = {"points": len(scene)}
    if bbox is not None:
        entry["boxes"] = int(bbox.shape[0])
    return entry


def _entry_files(dst: Path, name: str, entry: dict[str, Any]) -> list[Path]:
    return [dst / name / f"{f}.npy" for f in (*SCENE_FIELDS, *(["bbox"] if "boxes" in entry else []))]


def write_scene_folder(dst: str | os.PathLike, sources: Sequence[SceneSource], *, dataset: str,
                       class_names: Sequence[str], source: str | os.PathLike, params: dict[str, Any],
                       splits: dict[str, list[str]], force: bool = False) -> dict[str, Any]:
    """Write (or bring up to date) the prepared scene folder ``dst`` (:func:`pc3d.data.folders.write_prepared_folder`).

    Returns:
        The manifest (written only when it changed).
    """
    setup = {"format": SCENE_FORMAT, "dataset": dataset, "class_names": list(class_names),
             "source": str(Path(os.path.abspath(source))), "params": params}
    items = [FolderItem(item.name, item.inputs, item.convert) for item in sources]
    return write_prepared_folder(dst, items, setup=setup, write=_write_entry, outputs=_entry_files,
                                 location=lambda root, name: root / name, read_manifest=read_scene_manifest,
                                 splits=splits, force=force, accepted_formats=(SCENE_FORMAT_V1,))
