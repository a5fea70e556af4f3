"""Convert ScanNet v2 scans into a prepared scene folder (see :mod:`pc3d.data.scenes`).

Accepted source layouts (the first that matches):

(a) the ScanNet v2 release: ``SRC/scans/<scene>/`` or ``SRC/<scene>/`` with

    * ``<scene>_vh_clean_2.ply``: mesh, vertices ``x y z red green blue`` + faces;
    * ``<scene>_vh_clean_2.0.010000.segs.json``: ``segIndices``, one segment id per vertex;
    * ``<scene>.aggregation.json``: ``segGroups`` of ``{objectId, label, segments}``;
    * ``<scene>.txt`` (optional): ``axisAlignment = <16 numbers>``, a row-major 4x4 applied to the
      vertices when ``axis_align`` (as the VoteNet/mmdetection3d preprocessing does);

    plus ``scannetv2-labels.combined.tsv`` (columns ``raw_category``, ``nyu40id`` and, for ScanNet200,
    ``id``), found in SRC or given as ``labels_tsv``. Per vertex: colour (0..255 in the file, [0, 1]
    prepared), the area-weighted mesh normal (faces' winding; vertices on no face get an estimated
    normal), segment = the class of its object's raw label in the chosen ``benchmark`` — ``scannet20``:
    its NYU40 id mapped to ScanNet-20; ``scannet200``: its ``id`` mapped to ScanNet200
    (:mod:`pc3d.data.scannet200`) — unannotated vertices -1, instance = ``objectId`` (-1 = none), and
    ``bbox.npy``: the min/max box of every object whose NYU40 id is a ScanNet detection class, in
    ``objectId`` order, ``[cx, cy, cz, dx, dy, dz, nyu40_id]``.

(b) the preprocessed numpy layout (``SRC/<scene>_vert_all.npy``, ``_sem_label_all.npy``,
    ``_ins_label_all.npy``, optional ``_bbox.npy``; :func:`pc3d.data.scenes.read_scannet_numpy_scene`).
    Other files (e.g. unlabelled ``*.bin`` scans) are ignored. Its labels are NYU40 ids, so it gives
    ScanNet-20 only.

Splits (``splits.json``, written on the first run and kept across re-runs unless ``force``): with
``splits=auto`` (default) the official lists ``scannetv2_train.txt`` and ``scannetv2_val.txt`` (one
scene name per line, as the ScanNet repository's ``Tasks/Benchmark/`` ships them) are used when they
are in ``split_dir`` (default SRC): every listed scene must be in SRC, and scenes in neither list
(e.g. test scans) are in no split. ``splits=official`` requires the lists; ``splits=default`` (or
no lists) makes the last scene in sorted order ``val`` when there are two or more, else the one
scene is in both. Re-running with unchanged inputs and parameters rewrites nothing.

Pointcept (whose preprocessing MSM uses) does not apply ``axisAlignment`` to segmentation scans;
pass ``axis_align=false`` to match it.

Command line::

    python -m data_prep.scannet SRC DST [--labels-tsv PATH] [--benchmark scannet20|scannet200]
        [--splits auto|official|default] [--split-dir DIR] [--normals-k 16] [--no-axis-align] [--force]
"""

from __future__ import annotations

import argparse
import csv
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import run_converter, scene_summary
from pc3d.data.detection_scenes import SCANNET_NYU40_IDS
from pc3d.data.io import _triangulate
from pc3d.data.scannet200 import BENCHMARKS, SCANNET200_CLASSES, raw_id_to_scannet200
from pc3d.data.scenes import (SCANNET20_CLASSES, Scene, SceneSource, check_prep_paths, check_scene, default_splits,
                              find_scannet_numpy_scenes, nyu40_to_scannet20, read_json, read_scannet_numpy_scene,
                              write_scene_folder)
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger

__all__ = ["PREP_VERSION", "LABELS_TSV", "SPLIT_LISTS", "prepare_scannet", "find_raw_scenes", "official_splits",
           "read_label_map", "read_mesh_ply", "read_raw_scene", "main"]

#: bump when the conversion changes in a way that should invalidate prepared folders
PREP_VERSION = 1
LABELS_TSV = "scannetv2-labels.combined.tsv"
#: the official split lists, as the ScanNet repository ships them (Tasks/Benchmark/)
SPLIT_LISTS = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}
SPLIT_MODES = ("auto", "official", "default")
_log = get_logger("pc3d.data")


def find_raw_scenes(src: str | os.PathLike) -> list[Path]:
    """Sorted ``<scene>/`` folders holding ``<scene>_vh_clean_2.ply``, in ``SRC/scans/`` if present, else ``SRC/``."""
    src = Path(src)
    folder = src / "scans" if (src / "scans").is_dir() else src
    return sorted(d for d in folder.iterdir() if d.is_dir() and (d / f"{d.name}_vh_clean_2.ply").is_file())


def read_label_map(path: str | os.PathLike, column: str = "nyu40id") -> dict[str, int]:
    """``scannetv2-labels.combined.tsv`` → ``{raw_category: <column>}`` (``nyu40id``, or ``id`` for ScanNet200)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: label map not found (expected ScanNet's {LABELS_TSV})")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: unreadable label map ({exc})") from exc
    header = rows[0] if rows else []
    if "raw_category" not in header or column not in header:
        raise DataFormatError(f"{path}: expected a tab-separated header with raw_category and {column} columns")
    raw, nyu = header.index("raw_category"), header.index(column)
    mapping = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            mapping[row[raw]] = int(row[nyu])
        except (IndexError, ValueError):
            raise DataFormatError(f"{path}:{line}: expected a raw_category and an integer {column}") from None
    return mapping


def read_mesh_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A PLY mesh → ``vertices (V, 3)`` float64, ``colors (V, 3)`` float32 0..255, ``faces (F, 3)`` int64.

    Polygons are fan-triangulated; a file without faces gives ``(0, 3)`` faces.
    """
    import plyfile

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    triangles = {"face": {"vertex_indices": 3, "vertex_index": 3}}
    try:
        try:  # fast path for (binary) triangle meshes; any other list length is re-read generically
            with open(path, "rb") as handle:
                ply = plyfile.PlyData.read(handle, mmap="c", known_list_len=triangles)
        except plyfile.PlyElementParseError:
            with open(path, "rb") as handle:
                ply = plyfile.PlyData.read(handle, mmap=False)
        names = {el.name for el in ply.elements}
        if "vertex" not in names:
            raise DataFormatError(f"{path}: PLY has no 'vertex' element")
        vdata = ply["vertex"].data
        missing = [p for p in ("x", "y", "z", "red", "green", "blue") if p not in (vdata.dtype.names or ())]
        if missing:
            raise DataFormatError(f"{path}: PLY vertices lack {', '.join(missing)} (expected x y z red green blue)")
        vertices = np.stack([vdata[p] for p in "xyz"], axis=1).astype(np.float64)
        colors = np.stack([vdata[p] for p in ("red", "green", "blue")], axis=1).astype(np.float32)
        faces = np.zeros((0, 3), dtype=np.int64)
        if "face" in names and ply["face"].count:
            fdata = ply["face"].data
            key = next((k for k in ("vertex_indices", "vertex_index") if k in (fdata.dtype.names or ())), None)
            if key is None:
                raise DataFormatError(f"{path}: PLY faces have no vertex_indices list")
            column = fdata[key]
            faces = (column.astype(np.int64) if column.dtype != object
                     else _triangulate(path, [np.asarray(f, dtype=np.int64) for f in column]))
    except (plyfile.PlyParseError, ValueError, EOFError, struct.error, IndexError, UnicodeDecodeError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path}: malformed PLY ({exc}); expected a binary or ascii PLY mesh") from exc
    if not np.isfinite(vertices).all():
        raise DataFormatError(f"{path}: vertices contain NaN/inf")
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise DataFormatError(f"{path}: face vertex index out of range for {vertices.shape[0]} vertices")
    return vertices, colors, faces


def _axis_alignment(path: Path) -> np.ndarray | None:
    """The 4x4 ``axisAlignment`` of a ``<scene>.txt`` meta file, or ``None`` (file or key absent)."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "axisAlignment":
            try:
                matrix = np.array(value.split(), dtype=np.float64)
            except ValueError:
                matrix = np.zeros(0)
            if matrix.shape != (16,) or not np.isfinite(matrix).all():
                raise DataFormatError(f"{path}: axisAlignment must be 16 numbers (a row-major 4x4 matrix)")
            return matrix.reshape(4, 4)
    return None


def _raw_files(scene_dir: Path) -> dict[str, Path]:
    name = scene_dir.name
    return {"ply": scene_dir / f"{name}_vh_clean_2.ply", "segs": scene_dir / f"{name}_vh_clean_2.0.010000.segs.json",
            "aggregation": scene_dir / f"{name}.aggregation.json", "meta": scene_dir / f"{name}.txt"}


def read_raw_scene(scene_dir: str | os.PathLike, label_map: dict[str, int], *, normals_k: int = 16,
                   axis_align: bool = True, raw_ids: dict[str, int] | None = None) -> tuple[Scene, np.ndarray]:
    """One ScanNet release scan folder → ``(Scene, boxes (K, 7) float32)`` (see the module docstring).

    ``label_map``: raw category → NYU40 id (boxes, ScanNet-20 segments); ``raw_ids``: raw category → the tsv's
    ``id``: when given, segments are ScanNet200 classes.
    """
    from pc3d.ops.normals import estimate_normals, mesh_vertex_normals

    scene_dir = Path(scene_dir)
    files = _raw_files(scene_dir)
    vertices, colors, faces = read_mesh_ply(files["ply"])
    matrix = _axis_alignment(files["meta"]) if axis_align else None
    if matrix is not None:
        vertices = vertices @ matrix[:3, :3].T + matrix[:3, 3]
    segs = read_json(files["segs"])
    seg_ids = np.asarray(segs.get("segIndices") if isinstance(segs, dict) else None)
    if seg_ids.shape != (vertices.shape[0],) or seg_ids.dtype.kind not in "iu":
        raise DataFormatError(f"{files['segs']}: expected 'segIndices' with one integer per vertex of "
                              f"{files['ply'].name} ({vertices.shape[0]}), got {seg_ids.shape}")
    groups = read_json(files["aggregation"])
    groups = groups.get("segGroups") if isinstance(groups, dict) else None
    if not isinstance(groups, list):
        raise DataFormatError(f"{files['aggregation']}: expected a 'segGroups' list")
    nyu40 = np.zeros(vertices.shape[0], dtype=np.int64)
    raw_id = np.zeros(vertices.shape[0], dtype=np.int64)
    instance = np.full(vertices.shape[0], -1, dtype=np.int64)
    objects = []
    for group in groups:
        try:
            object_id, label, segments = int(group["objectId"]), str(group["label"]), list(group["segments"])
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(f"{files['aggregation']}: every segGroup needs objectId, label and "
                                  "segments") from None
        if label not in label_map:
            raise DataFormatError(f"{files['aggregation']}: label {label!r} (object {object_id}) is not a "
                                  f"raw_category of the label map {LABELS_TSV}")
        mask = np.isin(seg_ids, np.asarray(segments, dtype=np.int64))
        nyu40[mask], instance[mask] = label_map[label], object_id
        if raw_ids is not None:
            raw_id[mask] = raw_ids[label]
        objects.append((object_id, label_map[label]))
    points = vertices.astype(np.float32)
    normals = mesh_vertex_normals(vertices, faces)
    bare = np.linalg.norm(normals, axis=1) == 0
    if bare.any():  # vertices on no face: PCA normals of the whole scan
        normals[bare] = estimate_normals(points, normals_k)[bare]
    segment = nyu40_to_scannet20(nyu40) if raw_ids is None else raw_id_to_scannet200(raw_id)
    scene = Scene(scene_dir.name, points, colors / np.float32(255.0), normals, segment, instance)
    check_scene(scene, {"points": files["ply"], "colors": files["ply"], "normals": files["ply"],
                        "segment": files["aggregation"], "instance": files["aggregation"]},
                len(SCANNET20_CLASSES if raw_ids is None else SCANNET200_CLASSES))
    boxes = []
    for object_id, nyu in sorted(set(objects)):
        members = points[instance == object_id]
        if nyu in SCANNET_NYU40_IDS and len(members):
            lo, hi = members.min(axis=0), members.max(axis=0)
            boxes.append([*(lo + hi) / 2, *(hi - lo), nyu])
    return scene, np.asarray(boxes, dtype=np.float32).reshape(-1, 7)


def official_splits(folder: Path, names: list[str], mode: str = "auto") -> dict[str, list[str]] | None:
    """The official ``{"train": [...], "val": [...]}`` of ``scannetv2_train.txt`` / ``scannetv2_val.txt`` in
    ``folder`` (``None`` when ``mode`` is ``default``, or ``auto`` and neither list is there).

    Raises:
        DataFormatError: one list without the other, ``mode=official`` without the lists, a listed scene that is
            not among ``names`` (an incomplete download), or a scene in both lists.
    """
    if mode not in SPLIT_MODES:
        raise ConfigError(f"splits={mode!r}: expected one of {', '.join(SPLIT_MODES)}")
    if mode == "default":
        return None
    paths = {split: folder / file for split, file in SPLIT_LISTS.items()}
    present = {split: p.is_file() for split, p in paths.items()}
    if not any(present.values()) and mode == "auto":
        return None
    missing = next((p for split, p in paths.items() if not present[split]), None)
    if missing is not None:
        raise DataFormatError(f"{missing}: missing (the official ScanNet split lists {' and '.join(SPLIT_LISTS.values())} "
                              "go together; splits=default ignores them)")
    known, splits, seen = set(names), {}, {}
    for split, path in paths.items():
        listed = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            scene = line.strip()
            if not scene:
                continue
            if scene not in known:
                raise DataFormatError(f"{path}:{number}: scene {scene} is not in the source (an incomplete download? "
                                      "splits=default ignores the lists)")
            if scene in seen:
                raise DataFormatError(f"{path}:{number}: scene {scene} is also in {seen[scene]}")
            seen[scene] = path.name
            listed.append(scene)
        splits[split] = sorted(listed)
    unlisted = sorted(known - set(seen))
    if unlisted:
        _log.warning("%d scene(s) are in neither official list and so in no split (e.g. %s)", len(unlisted),
                     unlisted[0])
    return splits


def prepare_scannet(src: str | os.PathLike, dst: str | os.PathLike, force: bool = False, *,
                    labels_tsv: str | os.PathLike | None = None, normals_k: int = 16,
                    axis_align: bool = True, benchmark: str = "scannet20", splits: str = "auto",
                    split_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Convert the ScanNet scans under ``src`` into the prepared scene folder ``dst``.

    Args:
        src: release layout ``SRC/[scans/]<scene>/`` or the preprocessed numpy layout (module docstring).
        dst: the prepared folder (created or brought up to date; must differ from ``src``).
        force: reconvert every scene and reset ``splits.json`` to the default split.
        labels_tsv: ``scannetv2-labels.combined.tsv`` (release layout; default ``SRC/`` + that name).
        normals_k: neighbours of the PCA normals (numpy layout, and vertices on no face).
        axis_align: apply ``<scene>.txt``'s ``axisAlignment`` (release layout).
        benchmark: ``scannet20`` or ``scannet200`` (release layout only): the classes of ``segment.npy``.
        splits: ``auto``, ``official`` or ``default`` (module docstring).
        split_dir: where ``scannetv2_train.txt`` / ``scannetv2_val.txt`` are (default ``src``).

    Returns:
        The manifest (``format``, ``dataset``, ``class_names``, ``scenes``, ``source``, ``params``).

    Raises:
        DataFormatError: a missing or malformed input file (named).
        ConfigError: bad parameters, or ``dst`` equal to ``src``.
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark={benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    if splits not in SPLIT_MODES:
        raise ConfigError(f"splits={splits!r}: expected one of {', '.join(SPLIT_MODES)}")
    src_p, dst_p = check_prep_paths(src, dst, normals_k)
    params: dict[str, Any] = {"normals_k": int(normals_k), "prep_version": PREP_VERSION}
    if benchmark != "scannet20":  # folders prepared before the choice existed stay up to date
        params["benchmark"] = benchmark
    scene_dirs = find_raw_scenes(src_p)
    if scene_dirs:
        tsv = Path(labels_tsv) if labels_tsv is not None else src_p / LABELS_TSV
        if not tsv.is_file():
            raise DataFormatError(f"{tsv}: label map not found (pass labels_tsv=PATH to ScanNet's {LABELS_TSV})")
        params.update(layout="release", axis_align=bool(axis_align))
        sources = _release_sources(scene_dirs, tsv, normals_k, axis_align, benchmark)
    elif benchmark == "scannet200" and find_scannet_numpy_scenes(src_p):
        raise ConfigError(f"benchmark=scannet200 needs the ScanNet release layout (raw labels + {LABELS_TSV}); "
                          f"{src_p} holds the numpy layout, whose labels are NYU40 ids (ScanNet-20 only)")
    else:
        prefixes = find_scannet_numpy_scenes(src_p)
        if not prefixes:
            raise DataFormatError(f"{src_p}: no ScanNet scans (expected SRC/[scans/]<scene>/<scene>_vh_clean_2.ply "
                                  "+ segs/aggregation json, or SRC/<scene>_vert_all.npy + _sem_label_all.npy "
                                  "+ _ins_label_all.npy)")
        params.update(layout="numpy")
        sources = [_numpy_source(prefix, normals_k) for prefix in prefixes]
    names = [s.name for s in sources]
    split_lists = official_splits(Path(split_dir) if split_dir is not None else src_p, names, splits)
    class_names = SCANNET200_CLASSES if benchmark == "scannet200" else SCANNET20_CLASSES
    return write_scene_folder(dst_p, sources, dataset="scannet", class_names=class_names, source=src_p,
                              params=params, splits=split_lists or default_splits(names), force=force)


def _release_sources(scene_dirs: list[Path], tsv: Path, normals_k: int, axis_align: bool,
                     benchmark: str = "scannet20") -> list[SceneSource]:
    label_map = read_label_map(tsv)
    raw_ids = read_label_map(tsv, "id") if benchmark == "scannet200" else None

    def source(scene_dir: Path) -> SceneSource:
        files = _raw_files(scene_dir)
        inputs = [files[k] for k in ("ply", "segs", "aggregation", "meta") if files[k].is_file()] + [tsv]
        return SceneSource(scene_dir.name, inputs, lambda: read_raw_scene(scene_dir, label_map, normals_k=normals_k,
                                                                          axis_align=axis_align, raw_ids=raw_ids))

    return [source(d) for d in scene_dirs]


def _numpy_source(prefix: Path, normals_k: int) -> SceneSource:
    inputs = [Path(f"{prefix}_{kind}.npy") for kind in ("vert_all", "sem_label_all", "ins_label_all", "bbox")]
    return SceneSource(prefix.name, [p for p in inputs if p.is_file()],
                       lambda: read_scannet_numpy_scene(prefix, normals_k))


def prep_command(cfg) -> dict:
    """``pc3d prep scannet`` (``configs/prep/scannet.yaml``)."""
    manifest = prepare_scannet(cfg.src, cfg.dst, cfg.force, labels_tsv=cfg.labels_tsv, normals_k=cfg.normals_k,
                               axis_align=cfg.axis_align, benchmark=cfg.benchmark, splits=cfg.splits,
                               split_dir=cfg.split_dir)
    print(scene_summary(cfg.src, cfg.dst, manifest))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.scannet SRC DST [...]``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.scannet",
                                     description="Convert ScanNet scans into a pc3d prepared scene folder.")
    parser.add_argument("src", help="SRC/[scans/]<scene>/ (release) or SRC/<scene>_vert_all.npy ... (numpy)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--labels-tsv", default=None, help=f"path of {LABELS_TSV} (default: in SRC)")
    parser.add_argument("--normals-k", type=int, default=16)
    parser.add_argument("--no-axis-align", action="store_true", help="ignore <scene>.txt axisAlignment")
    parser.add_argument("--benchmark", default="scannet20", choices=BENCHMARKS)
    parser.add_argument("--splits", default="auto", choices=SPLIT_MODES,
                        help="official scannetv2_train/val.txt lists (auto: when present) or pc3d's default split")
    parser.add_argument("--split-dir", default=None, help="folder of the official split lists (default: SRC)")
    parser.add_argument("--force", action="store_true", help="reconvert everything and reset splits.json")
    args = parser.parse_args(argv)
    return run_converter(
        lambda: prepare_scannet(args.src, args.dst, args.force, labels_tsv=args.labels_tsv,
                                normals_k=args.normals_k, axis_align=not args.no_axis_align,
                                benchmark=args.benchmark, splits=args.splits, split_dir=args.split_dir),
        lambda manifest: f"prepared {len(manifest['scenes'])} scenes -> {args.dst}")


if __name__ == "__main__":
    sys.exit(main())
