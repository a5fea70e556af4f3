"""ScanObjectNN h5 files (the official release, as Point-MAE reads them) → the prepared object cache.

Source layout (``SRC`` = the release's ``h5_files`` folder)::

    SRC/main_split/training_objectdataset.h5, test_objectdataset.h5              OBJ_BG
    SRC/main_split_nobg/training_objectdataset.h5, test_objectdataset.h5         OBJ_ONLY
    SRC/main_split/training_objectdataset_augmentedrot_scale75.h5, test_...h5    PB_T50_RS (the "hardest")

Each file holds the datasets ``data`` ``(S, 2048, 3)`` float and ``label`` ``(S,)`` integer class ids in
``0..14`` (:data:`SCANOBJECTNN_CLASSES` order); other datasets (``mask``) are not read. Shape names are
``<file stem>/<index>``; splits ``train`` / ``test``.

Points: every point, in file order (``num_points`` = 2048, Point-MAE's ``npoints``; fewer gives a seeded
random subset), centred and scaled to the unit sphere as every pc3d object cache is. Point-MAE feeds the
stored coordinates unchanged (the release already centres the objects; the PB_T50_RS copies keep their
random scaling), so pc3d's inputs differ from its by that per-object scale.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pc3d.data.prepared import write_object_cache_streamed
from pc3d.data.sources import check_destination, current_cache, inputs_digest, reduce_shape
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import progress

__all__ = ["PREP_VERSION", "SCANOBJECTNN_CLASSES", "VARIANTS", "prepare_scanobjectnn", "read_h5_objects",
           "variant_files"]

PREP_VERSION = 1
SCANOBJECTNN_CLASSES = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet")
#: variant → (folder, file suffix) of its ``training_objectdataset<suffix>.h5`` / ``test_objectdataset<suffix>.h5``
VARIANTS = {"OBJ_BG": ("main_split", ""), "OBJ_ONLY": ("main_split_nobg", ""),
            "PB_T50_RS": ("main_split", "_augmentedrot_scale75")}


def variant_files(src: str | os.PathLike, variant: str) -> dict[str, Path]:
    """``{"train": path, "test": path}`` of ``variant``; ConfigError for an unknown variant, DataFormatError
    naming the first missing file."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    src = Path(src)
    folder, suffix = VARIANTS[variant]
    files = {"train": src / folder / f"training_objectdataset{suffix}.h5",
             "test": src / folder / f"test_objectdataset{suffix}.h5"}
    for path in files.values():
        if not path.is_file():
            hint = (" (src is a split folder: pass the folder that holds main_split/ and main_split_nobg/)"
                    if src.name in ("main_split", "main_split_nobg") else "")
            raise DataFormatError(f"{path}: missing ({variant}){hint}")
    return files


def read_h5_objects(path: Path) -> tuple[Any, np.ndarray, Any]:
    """Open ``path`` and check it: ``(h5 file, labels (S,) int64, data dataset (S, P, 3))``; close the file after."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataFormatError(f"{path}: not an HDF5 file ({exc})") from exc
    try:
        for key in ("data", "label"):
            if key not in handle or not isinstance(handle[key], h5py.Dataset):
                raise DataFormatError(f"{path}: no dataset {key!r} (expected 'data' (S, 2048, 3) and 'label' (S,))")
        data, label = handle["data"], handle["label"]
        if data.ndim != 3 or data.shape[2] != 3 or data.shape[0] == 0 or data.shape[1] == 0 or data.dtype.kind != "f":
            raise DataFormatError(f"{path}: 'data' is {data.shape} {data.dtype}, expected (S, P, 3) float")
        labels = np.asarray(label[()])
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
            raise DataFormatError(f"{path}: 'label' is {labels.shape} {labels.dtype}, expected ({data.shape[0]},) "
                                  "integers (one per object of 'data')")
        if labels.min() < 0 or labels.max() >= len(SCANOBJECTNN_CLASSES):
            raise DataFormatError(f"{path}: 'label' out of range [{labels.min()}, {labels.max()}] (expected "
                                  f"0..{len(SCANOBJECTNN_CLASSES) - 1})")
    except BaseException:
        handle.close()
        raise
    return handle, labels.astype(np.int64), data


def prepare_scanobjectnn(src: str | os.PathLike, dst: str | os.PathLike, *, variant: str = "PB_T50_RS",
                         num_points: int = 2048, seed: int = 0, force: bool = False) -> tuple[dict[str, Any], bool]:
    """Convert ``variant`` of the ScanObjectNN release at ``src`` into the object cache ``dst`` (module docstring).

    Returns:
        ``(manifest, rebuilt)``; the manifest's ``dataset`` is ``scanobjectnn`` and ``variant`` the variant.
    """
    src_p, dst_p = check_destination(src, dst, num_points, force)
    files = variant_files(src_p, variant)
    labels, counts = [], {}
    for split, path in files.items():  # check both files before anything is written
        handle, split_labels, data = read_h5_objects(path)
        counts[split] = (int(data.shape[0]), int(data.shape[1]))
        handle.close()
        labels.append(split_labels)
    params = {"variant": variant, "num_points": int(num_points), "seed": int(seed), "prep_version": PREP_VERSION}
    expected = {"dataset": "scanobjectnn", "variant": variant, "source": str(src_p.resolve()), "params": params,
                "classes": list(SCANOBJECTNN_CLASSES), "inputs_digest": inputs_digest(list(files.values()), src_p)}
    old = current_cache(dst_p, expected, force)
    if old is not None:
        return old, False
    names = [f"{files[split].stem}/{i:05d}" for split in files for i in range(counts[split][0])]

    def shapes() -> Iterator[np.ndarray]:
        done = 0
        for split, path in files.items():
            handle, _, data = read_h5_objects(path)
            try:
                for start in range(0, data.shape[0], 1024):  # chunks: one h5 read per 1,024 objects
                    block = np.asarray(data[start:start + 1024], dtype=np.float32)
                    for cloud in block:
                        if not np.isfinite(cloud).all():
                            raise DataFormatError(f"{path}: object {start} .. {start + len(block) - 1} has NaN/inf "
                                                  "coordinates")
                        yield reduce_shape(cloud, num_points, seed, names[done], path)[0]
                        done += 1
            finally:
                handle.close()

    manifest = write_object_cache_streamed(
        dst_p, progress(shapes(), total=len(names), desc=f"prep scanobjectnn {variant}"), num_shapes=len(names),
        num_points=num_points, labels=np.concatenate(labels),
        splits=[split for split in files for _ in range(counts[split][0])], names=names,
        class_names=SCANOBJECTNN_CLASSES, force=force,
        manifest_extra={**expected, "producer": "pc3d.data.scanobjectnn", "splits": ["train", "test"]})
    return manifest, True
