"""Convert Stanford S3DIS rooms into a prepared scene folder (see :mod:`pc3d.data.scenes`).

Source layout (the ``Stanford3dDataset_v1.2_Aligned_Version`` release)::

    SRC/Area_<n>/<room>/Annotations/<class>_<i>.txt     one line per point: x y z r g b

Each room becomes the scene ``Area_<n>_<room>``: the points of all its annotation files, with
segment = index of ``<class>`` in :data:`pc3d.data.scenes.S3DIS_CLASSES` (``stairs``, which is
not one of the 13 benchmark classes, becomes ``clutter`` as in the common PointNet/Pointcept
preprocessing; any other unknown class is an error), instance = index of the annotation file
in sorted file-name order, colours 0..255, coordinates as given (metres), and PCA normals
(:func:`pc3d.ops.normals.estimate_normals`; rooms have up to a few million points, so install
open3d: the pure-torch fallback is a brute-force kNN). The room-level ``<room>.txt`` is not read.
The release has one known defect (a stray byte in a line of ``Area_5/hallway_6/Annotations/ceiling_1.txt``):
fix that line by hand as the common pipelines do; the error names file and line.

Default split: rooms of ``Area_<val_area>`` (5) are ``val``, all others ``train``.
Re-running with unchanged inputs and parameters rewrites nothing; ``splits.json`` is kept
unless ``force``.

Command line::

    python -m data_prep.s3dis SRC DST [--val-area 5] [--normals-k 16] [--force]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import run_converter, scene_summary
from pc3d.data.scenes import S3DIS_CLASSES, Scene, SceneSource, check_prep_paths, check_scene, write_scene_folder
from pc3d.errors import DataFormatError

__all__ = ["PREP_VERSION", "CLASS_ALIASES", "find_rooms", "read_annotation", "read_room", "prepare_s3dis", "main"]

PREP_VERSION = 1
#: annotation classes outside the 13 that are folded into one of them
CLASS_ALIASES = {"stairs": "clutter"}
_AREA = re.compile(r"^Area_(\d+)$")
_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"


def find_rooms(src: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(area number, room folder)`` of every ``SRC/Area_<n>/<room>/Annotations/``, sorted."""
    rooms = []
    for area in Path(src).iterdir():
        match = _AREA.match(area.name)
        if match and area.is_dir():
            rooms += [(int(match.group(1)), room) for room in area.iterdir() if (room / "Annotations").is_dir()]
    return sorted(rooms)


def read_annotation(path: str | os.PathLike) -> np.ndarray:
    """An annotation file → ``(N, 6)`` float64 ``x y z r g b`` (colours checked to lie in 0..255)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise DataFormatError(f"{path}: no points (expected lines of 'x y z r g b')")
    tokens = " ".join(lines).split()
    try:
        table = np.array(tokens, dtype=np.float64).reshape(len(lines), 6)
    except ValueError:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if len(fields) != 6 or not all(re.fullmatch(_NUMBER, f) for f in fields):
                raise DataFormatError(f"{path}:{number}: expected 6 numbers 'x y z r g b', got {line[:60]!r}") from None
        raise DataFormatError(f"{path}: expected lines of 6 numbers 'x y z r g b'") from None
    if not np.isfinite(table).all():
        raise DataFormatError(f"{path}: NaN/inf values")
    if table[:, 3:].min() < 0 or table[:, 3:].max() > 255:
        raise DataFormatError(f"{path}: colours outside 0..255 (expected x y z r g b with r, g, b in 0..255)")
    return table


def read_room(room: str | os.PathLike, *, normals_k: int = 16) -> Scene:
    """``<room>/Annotations/*.txt`` → the room's :class:`Scene` (named ``<area>_<room>``)."""
    from pc3d.ops.normals import estimate_normals

    room = Path(room)
    files = sorted((room / "Annotations").glob("*.txt"))
    if not files:
        raise DataFormatError(f"{room / 'Annotations'}: no <class>_<i>.txt annotation files")
    tables, segments, instances = [], [], []
    for index, path in enumerate(files):
        name = CLASS_ALIASES.get(path.stem.rsplit("_", 1)[0], path.stem.rsplit("_", 1)[0])
        if name not in S3DIS_CLASSES:
            raise DataFormatError(f"{path}: unknown S3DIS class {name!r} (expected <class>_<i>.txt with class in "
                                  f"{', '.join(S3DIS_CLASSES)} or {', '.join(CLASS_ALIASES)})")
        table = read_annotation(path)
        tables.append(table)
        segments.append(np.full(len(table), S3DIS_CLASSES.index(name), dtype=np.int64))
        instances.append(np.full(len(table), index, dtype=np.int64))
    table = np.concatenate(tables)
    points = table[:, :3].astype(np.float32)
    scene = Scene(f"{room.parent.name}_{room.name}", points, (table[:, 3:] / 255.0).astype(np.float32),
                  estimate_normals(points, normals_k), np.concatenate(segments), np.concatenate(instances))
    where = room / "Annotations"
    check_scene(scene, dict.fromkeys(("points", "colors", "normals", "segment", "instance"), where),
                len(S3DIS_CLASSES))
    return scene


def prepare_s3dis(src: str | os.PathLike, dst: str | os.PathLike, force: bool = False, *, val_area: int = 5,
                  normals_k: int = 16) -> dict[str, Any]:
    """Convert the S3DIS rooms under ``src`` into the prepared scene folder ``dst`` (module docstring).

    Args:
        src: ``SRC/Area_<n>/<room>/Annotations/`` tree.
        dst: the prepared folder (must differ from ``src``).
        force: reconvert every room and reset ``splits.json``.
        val_area: rooms of this area form the default ``val`` split.
        normals_k: neighbours of the PCA normals.

    Returns:
        The manifest.

    Raises:
        DataFormatError: no rooms, or a malformed annotation file (named, with the line).
        ConfigError: bad parameters, or ``dst`` equal to ``src``.
    """
    src_p, dst_p = check_prep_paths(src, dst, normals_k)
    rooms = find_rooms(src_p)
    if not rooms:
        raise DataFormatError(f"{src_p}: no S3DIS rooms (expected SRC/Area_<n>/<room>/Annotations/<class>_<i>.txt)")

    def source(room: Path) -> SceneSource:
        return SceneSource(f"{room.parent.name}_{room.name}", sorted((room / "Annotations").glob("*.txt")),
                           lambda: (read_room(room, normals_k=normals_k), None))

    sources = [source(room) for _, room in rooms]
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for (area, _), item in zip(rooms, sources):
        splits["val" if area == val_area else "train"].append(item.name)
    params = {"normals_k": int(normals_k), "class_aliases": CLASS_ALIASES, "prep_version": PREP_VERSION}
    return write_scene_folder(dst_p, sources, dataset="s3dis", class_names=S3DIS_CLASSES, source=src_p,
                              params=params, splits=splits, force=force)


def prep_command(cfg) -> dict:
    """``pc3d prep s3dis`` (``configs/prep/s3dis.yaml``)."""
    manifest = prepare_s3dis(cfg.src, cfg.dst, cfg.force, val_area=cfg.val_area, normals_k=cfg.normals_k)
    print(scene_summary(cfg.src, cfg.dst, manifest))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.s3dis SRC DST [...]``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.s3dis",
                                     description="Convert S3DIS rooms into a pc3d prepared scene folder.")
    parser.add_argument("src", help="SRC/Area_<n>/<room>/Annotations/<class>_<i>.txt")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--val-area", type=int, default=5)
    parser.add_argument("--normals-k", type=int, default=16)
    parser.add_argument("--force", action="store_true", help="reconvert everything and reset splits.json")
    args = parser.parse_args(argv)
    return run_converter(
        lambda: prepare_s3dis(args.src, args.dst, args.force, val_area=args.val_area, normals_k=args.normals_k),
        lambda manifest: f"prepared {len(manifest['scenes'])} rooms -> {args.dst}")


if __name__ == "__main__":
    sys.exit(main())
