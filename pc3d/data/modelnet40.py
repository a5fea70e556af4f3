"""ModelNet40 ``modelnet40_normal_resampled`` (the layout Point-MAE's ``ModelNet`` dataset reads) → the object cache.

Source layout (``SRC`` = ``modelnet40_normal_resampled/``; ``C`` = ``num_category``, 40 or 10)::

    SRC/modelnet<C>_shape_names.txt         one class per line; line i is label i
    SRC/modelnet<C>_train.txt, _test.txt    shape ids, e.g. ``night_stand_0001``; the class is the id
                                            without its last ``_NNNN``
    SRC/<class>/<shape id>.txt              10,000 rows ``x,y,z,nx,ny,nz`` (the normals are not kept)

or, instead of the class folders, the pickles Point-BERT ships beside the lists,
``SRC/modelnet<C>_<split>_8192pts_fps.dat`` (``[list of (8192, 6) float32 arrays, list of (1,) int32
labels]`` in list order): they are read only with ``allow_pickle=True``, through
:func:`pc3d.data.io.read_numpy_pickle`, which rebuilds numpy arrays and plain containers and runs no
other code.

Shape names are ``<class>/<shape id>.txt`` whichever source is read, so few-shot folds
(:mod:`pc3d.data.fewshot_folds`) refer to the same shapes in any cache of this dataset.

Points: pc3d keeps a seeded random ``num_points`` (default 8,192) of the file's rows in random order
(:func:`pc3d.data.sources.reduce_shape`), centred and scaled to the unit sphere; ``data.num_points=1024``
then reads the first 1,024 of them, a uniform random subset. Point-MAE (``uniform = True``) takes
8,192 rows by farthest point sampling from a random start (its ``.dat``), normalises them, and its
fine-tuning takes 1,024 of those by FPS again (1,200 by FPS then a random 1,024 while training). pc3d
leaves FPS to the encoder's tokenizer, where it picks the patch centres, and samples the input
uniformly, as its other object datasets do. From the ``.dat`` source, the stored points are those
FPS points in their FPS order (their first 1,024 are the FPS 1,024 Point-MAE evaluates on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from pc3d.data.prepared import write_object_cache_streamed
from pc3d.data.sources import check_destination, current_cache, inputs_digest, read_list_file, reduce_shape
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger, progress

__all__ = ["PREP_VERSION", "ModelNet40Entry", "dat_file", "list_modelnet40", "modelnet40_source", "prepare_modelnet40",
           "raw_shapes"]

PREP_VERSION = 1
SPLITS = ("train", "test")
_log = get_logger("pc3d.data")


class ModelNet40Entry(NamedTuple):
    """One listed shape: ``name`` = ``<class>/<shape id>.txt``, ``label`` = line of the class in the names file."""

    name: str
    shape_id: str
    label: int
    split: str
    path: Path


def _check_category(num_category: int) -> None:
    if num_category not in (10, 40):
        raise ConfigError(f"num_category={num_category!r}: expected 40 (ModelNet40) or 10 (ModelNet10)")


def dat_file(src: Path, split: str, num_category: int = 40) -> Path:
    """``SRC/modelnet<C>_<split>_8192pts_fps.dat``, Point-BERT's pickled FPS points."""
    return src / f"modelnet{num_category}_{split}_8192pts_fps.dat"


def list_modelnet40(src: str | os.PathLike, num_category: int = 40) -> tuple[list[str], list[ModelNet40Entry]]:
    """The classes (names-file order) and every listed shape, train list then test list, checked.

    Raises:
        DataFormatError: naming the missing names or list file, or a list line whose class is not in the names
            file, or a shape listed twice.
    """
    _check_category(num_category)
    src = Path(src)
    names_file = src / f"modelnet{num_category}_shape_names.txt"
    classes = [line for _, line in read_list_file(names_file, f"ModelNet{num_category} class names")]
    if len(set(classes)) != len(classes):
        raise DataFormatError(f"{names_file}: a class is named twice")
    label_of = {c: i for i, c in enumerate(classes)}
    entries: list[ModelNet40Entry] = []
    seen: set[str] = set()
    for split in SPLITS:
        list_path = src / f"modelnet{num_category}_{split}.txt"
        for number, shape_id in read_list_file(list_path, f"ModelNet{num_category} {split} list"):
            cls = "_".join(shape_id.split("_")[:-1])
            if cls not in label_of:
                raise DataFormatError(f"{list_path}:{number}: {shape_id!r} is not <class>_<NNNN> with a class of "
                                      f"{names_file.name}")
            if shape_id in seen:
                raise DataFormatError(f"{list_path}:{number}: {shape_id} is listed twice")
            seen.add(shape_id)
            entries.append(ModelNet40Entry(f"{cls}/{shape_id}.txt", shape_id, label_of[cls], split,
                                           src / cls / f"{shape_id}.txt"))
    return classes, entries


def modelnet40_source(src: Path, entries: list[ModelNet40Entry], num_category: int = 40,
                      allow_pickle: bool = False) -> str:
    """``"txt"`` when every listed ``<class>/<id>.txt`` is there, else ``"dat"`` when both ``.dat`` pickles are
    (and ``allow_pickle``); otherwise one line naming the first missing file."""
    missing = next((e for e in entries if not e.path.is_file()), None)
    if missing is None:
        return "txt"
    dats = [dat_file(src, split, num_category) for split in SPLITS]
    if any(d.is_file() for d in dats):
        absent = next((d for d in dats if not d.is_file()), None)
        if absent is not None:
            raise DataFormatError(f"{absent}: missing (the class folders are incomplete, e.g. {missing.path}, and "
                                  "the pickled points need both splits)")
        if not allow_pickle:
            raise ConfigError(f"{dats[0].parent}: only the pickled points {dats[0].name} / {dats[1].name} are here "
                              f"(no {missing.path.relative_to(src)}); pass allow_pickle=true to read them with "
                              "pc3d's restricted unpickler (numpy arrays and plain containers only)")
        return "dat"
    raise DataFormatError(f"{missing.path}: missing (listed in modelnet{num_category}_{missing.split}.txt; expected "
                          "SRC/<class>/<shape id>.txt rows x,y,z,nx,ny,nz, or the .dat pickles)")


def _read_dat(path: Path, entries: list[ModelNet40Entry]) -> list[np.ndarray]:
    from pc3d.data.io import read_numpy_pickle

    content = read_numpy_pickle(path)
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise DataFormatError(f"{path}: expected [list of points, list of labels]")
    points, labels = content
    if not isinstance(points, (list, tuple)) or not isinstance(labels, (list, tuple)) or len(points) != len(entries) \
            or len(labels) != len(entries):
        raise DataFormatError(f"{path}: expected {len(entries)} point arrays and labels (one per line of the list)")
    for i, (entry, cloud, label) in enumerate(zip(entries, points, labels)):
        if not isinstance(cloud, np.ndarray) or cloud.ndim != 2 or cloud.shape[1] < 3 or cloud.dtype.kind != "f":
            raise DataFormatError(f"{path}: entry {i} ({entry.shape_id}) is not an (N, >=3) float array")
        if int(np.asarray(label).reshape(-1)[0]) != entry.label:
            raise DataFormatError(f"{path}: entry {i} ({entry.shape_id}) has label {np.asarray(label).ravel()[0]}, "
                                  f"its list line says class {entry.label}")
    return list(points)


def raw_shapes(src: Path, entries: list[ModelNet40Entry], source: str, num_category: int = 40
               ) -> Iterator[tuple[ModelNet40Entry, np.ndarray, Path]]:
    """``(entry, xyz (M, 3) float32 as stored, file it came from)`` of every entry, in order."""
    from pc3d.data.io import read_txt

    if source == "txt":
        for entry in entries:
            yield entry, read_txt(entry.path).points, entry.path
        return
    for split in SPLITS:
        chosen = [e for e in entries if e.split == split]
        path = dat_file(src, split, num_category)
        for entry, cloud in zip(chosen, _read_dat(path, chosen)):
            xyz = np.ascontiguousarray(cloud[:, :3], dtype=np.float32)
            if not np.isfinite(xyz).all():
                raise DataFormatError(f"{path}: {entry.shape_id} has NaN/inf coordinates")
            yield entry, xyz, path


def prepare_modelnet40(src: str | os.PathLike, dst: str | os.PathLike, *, num_points: int = 8192,
                       num_category: int = 40, seed: int = 0, allow_pickle: bool = False,
                       force: bool = False) -> tuple[dict[str, Any], bool]:
    """Convert ``modelnet40_normal_resampled`` at ``src`` into the object cache ``dst`` (module docstring).

    Returns:
        ``(manifest, rebuilt)``; the manifest's ``dataset`` is ``modelnet40`` (or ``modelnet10``), ``params.source``
        says which files were read (``txt`` or ``dat``).
    """
    _check_category(num_category)
    src_p, dst_p = check_destination(src, dst, num_points, force)
    classes, entries = list_modelnet40(src_p, num_category)
    source = modelnet40_source(src_p, entries, num_category, allow_pickle)
    lists = [src_p / f"modelnet{num_category}_{name}.txt" for name in ("shape_names", *SPLITS)]
    inputs = [e.path for e in entries] if source == "txt" else [dat_file(src_p, s, num_category) for s in SPLITS]
    params = {"num_points": int(num_points), "num_category": int(num_category), "seed": int(seed),
              "source": source, "prep_version": PREP_VERSION}
    dataset = f"modelnet{num_category}"
    expected = {"dataset": dataset, "source": str(src_p.resolve()), "params": params, "classes": classes,
                "inputs_digest": inputs_digest(lists + inputs, src_p)}
    old = current_cache(dst_p, expected, force)
    if old is not None:
        return old, False
    padded: list[str] = []

    def shapes() -> Iterator[np.ndarray]:
        for entry, xyz, where in progress(raw_shapes(src_p, entries, source, num_category), total=len(entries),
                                          desc=f"prep {dataset}"):
            reduced, pad = reduce_shape(xyz, num_points, seed, entry.name, where)
            if pad:
                padded.append(entry.name)
            yield reduced

    manifest = write_object_cache_streamed(
        dst_p, shapes(), num_shapes=len(entries), num_points=num_points, labels=[e.label for e in entries],
        splits=[e.split for e in entries], names=[e.name for e in entries], class_names=classes, force=force,
        manifest_extra={**expected, "producer": "pc3d.data.modelnet40", "splits": list(SPLITS)})
    if padded:
        _log.warning("%d of %d shapes had fewer than %d points and were padded with duplicates (e.g. %s)",
                     len(padded), len(entries), num_points, padded[0])
    return manifest, True
