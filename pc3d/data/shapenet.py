"""ShapeNet-55 / ShapeNet-34 as Point-BERT and Point-MAE distribute them → the prepared object cache.

Source layout (``ShapeNet55-34/``, the folder Point-MAE's ``DATA_PATH`` / ``PC_PATH`` point into)::

    SRC/shapenet_pc/<synset>-<model>.npy     (8192, 3) float points, one file per ShapeNetCore model
    SRC/ShapeNet-55/train.txt, test.txt      benchmark=shapenet55 (Point-MAE's pretraining set: train.txt)
    SRC/ShapeNet-34/train.txt, test.txt      benchmark=shapenet34

Each line of a list is a file name of ``shapenet_pc/``, ``<synset>-<model>.npy``; the synset (the
ShapeNetCore taxonomy id, e.g. ``02691156``) is the class. Classes are the sorted synsets of both
lists; label ``i`` is ``classes[i]``. Shape names are the file stems, splits ``train`` / ``test``.

Points (:func:`pc3d.data.sources.reduce_shape`): with the default ``num_points=8192`` every point of
the file is kept in file order; fewer gives a seeded random subset in random order. Each stored cloud
is centred and scaled to the unit sphere. Point-MAE instead draws a fresh random 1,024 of the 8,192
every time it reads a shape and normalises *that subset* (``pc_norm`` after ``random_sample``); pc3d
normalises the stored cloud once and the pretraining dataset draws a fresh random ``data.num_points``
subset of it every epoch (:class:`pc3d.data.object_dataset.ObjectDataset`, ``augment=True``), so
the subsets agree in distribution and differ only by the centre/scale of a 1,024-point subset
against that of all 8,192 points (a few thousandths of the radius).

Re-running with unchanged lists, files (sizes, ``mtime_ns``) and parameters writes nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from pc3d.data.prepared import write_object_cache_streamed
from pc3d.data.sources import check_destination, current_cache, inputs_digest, read_list_file, reduce_shape
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import progress

__all__ = ["BENCHMARKS", "PREP_VERSION", "POINTS_FOLDER", "ShapeNetEntry", "list_shapenet", "prepare_shapenet"]

PREP_VERSION = 1
POINTS_FOLDER = "shapenet_pc"
#: benchmark → the folder of its train.txt / test.txt
BENCHMARKS = {"shapenet55": "ShapeNet-55", "shapenet34": "ShapeNet-34"}
_LINE = re.compile(r"^([^-/\\\s]+)-([^/\\\s]+)\.npy$")


class ShapeNetEntry(NamedTuple):
    """One listed shape."""

    name: str
    synset: str
    split: str
    path: Path


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype in a ``.npy`` header (DataFormatError naming ``path`` if it is none)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(handle)
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(f"{path}: not a .npy array ({exc})") from exc
    return tuple(shape), np.dtype(dtype)


def list_shapenet(src: str | os.PathLike, benchmark: str = "shapenet55",
                  num_points: int | None = None) -> list[ShapeNetEntry]:
    """Every shape of ``benchmark``'s lists, checked: lines of the form ``<synset>-<model>.npy``, no shape listed
    twice, each file present in ``shapenet_pc/`` with an ``(N >= num_points, 3)`` float array in its header.

    Raises:
        ConfigError: an unknown ``benchmark``.
        DataFormatError: naming the missing folder, list file, listed ``.npy`` (with the list line), or the
            malformed line or file header.
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark={benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    src = Path(src)
    folder = src / POINTS_FOLDER
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: missing (expected SRC/{POINTS_FOLDER}/<synset>-<model>.npy, the "
                              "ShapeNet55-34 download)")
    entries: list[ShapeNetEntry] = []
    seen: dict[str, str] = {}
    for split in ("train", "test"):
        list_path = src / BENCHMARKS[benchmark] / f"{split}.txt"
        for number, line in read_list_file(list_path, f"{BENCHMARKS[benchmark]} {split} list"):
            match = _LINE.match(line)
            if match is None:
                raise DataFormatError(f"{list_path}:{number}: expected <synset>-<model>.npy, got {line[:80]!r}")
            name = line[:-len(".npy")]
            if name in seen:
                raise DataFormatError(f"{list_path}:{number}: {line} is listed twice (also in {seen[name]})")
            seen[name] = f"{list_path.name}"
            path = folder / line
            if not path.is_file():
                raise DataFormatError(f"{path}: missing (listed in {list_path}:{number})")
            if num_points is not None:
                shape, dtype = _npy_shape(path)
                if len(shape) != 2 or shape[1] != 3 or dtype.kind != "f":
                    raise DataFormatError(f"{path}: expected (N, 3) float points, got {shape} {dtype}")
                if shape[0] < num_points:
                    raise DataFormatError(f"{path}: {shape[0]} points, fewer than num_points={num_points}")
            entries.append(ShapeNetEntry(name, match.group(1), split, path))
    return entries


def prepare_shapenet(src: str | os.PathLike, dst: str | os.PathLike, *, benchmark: str = "shapenet55",
                     num_points: int = 8192, seed: int = 0, force: bool = False) -> tuple[dict[str, Any], bool]:
    """Convert the ShapeNet55-34 download ``src`` into the object cache ``dst`` (module docstring).

    Returns:
        ``(manifest, rebuilt)``: the manifest (``dataset`` = ``benchmark``) and whether anything was written.
    """
    src_p, dst_p = check_destination(src, dst, num_points, force)
    entries = list_shapenet(src_p, benchmark, num_points)
    classes = sorted({e.synset for e in entries})
    lists = [src_p / BENCHMARKS[benchmark] / f"{split}.txt" for split in ("train", "test")]
    params = {"benchmark": benchmark, "num_points": int(num_points), "seed": int(seed), "prep_version": PREP_VERSION}
    expected = {"dataset": benchmark, "source": str(src_p.resolve()), "params": params, "classes": classes,
                "inputs_digest": inputs_digest(lists + [e.path for e in entries], src_p)}
    old = current_cache(dst_p, expected, force)
    if old is not None:
        return old, False
    label_of = {synset: i for i, synset in enumerate(classes)}

    def shapes() -> Iterator[np.ndarray]:
        from pc3d.data.io import read_array

        for entry in progress(entries, desc=f"prep {benchmark}"):
            points = read_array(entry.path)
            if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
                raise DataFormatError(f"{entry.path}: expected finite (N, 3) points, got {points.shape}")
            yield reduce_shape(points, num_points, seed, entry.name, entry.path)[0]

    manifest = write_object_cache_streamed(
        dst_p, shapes(), num_shapes=len(entries), num_points=num_points,
        labels=[label_of[e.synset] for e in entries], splits=[e.split for e in entries],
        names=[e.name for e in entries], class_names=classes, force=force,
        manifest_extra={**expected, "producer": "pc3d.data.shapenet", "splits": ["train", "test"]})
    return manifest, True
