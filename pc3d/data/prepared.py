"""The prepared object cache: one directory per dataset, written atomically.

Layout (see DEVELOPERS.md, "Data contract")::

    <root>/points.npy     (S, N, 3) float32, every shape unit-sphere normalised
    <root>/labels.npy     (S,) int64 in [0, len(classes))
    <root>/splits.npy     (S,) str   'train' / 'test' (also 'val' if a source has one)
    <root>/names.npy      (S,) str   shape names (e.g. source path relative to the tree)
    <root>/manifest.json  format, version, classes, counts, num_points, num_shapes,
                          content_hash, source, ... (producer-specific keys)

Arrays are plain ``.npy`` without pickles. The whole directory is replaced in one
rename (:func:`pc3d.utils.atomic.atomic_replace_dir`), so a reader sees the old
cache or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pc3d.data.folders import check_replaceable
from pc3d.data.io import read_json
from pc3d.errors import DataFormatError
from pc3d.utils.atomic import atomic_replace_dir, atomic_write, atomic_write_json

__all__ = ["CACHE_FORMAT", "CACHE_VERSION", "VALID_SPLITS", "ObjectCache", "write_object_cache",
           "load_object_cache", "read_manifest"]

CACHE_FORMAT = "pc3d-object-cache"
CACHE_VERSION = 1
VALID_SPLITS = ("train", "val", "test")
_FILES = ("points.npy", "labels.npy", "splits.npy", "names.npy", "manifest.json")


@dataclass
class ObjectCache:
    """A loaded object cache.

    Attributes:
        points: ``(S, N, 3)`` float32.
        labels: ``(S,)`` int64.
        splits: ``(S,)`` str.
        names: ``(S,)`` str.
        class_names: ``list[str]`` (label ``i`` is ``class_names[i]``).
        manifest: the parsed ``manifest.json``.
        root: the directory it was loaded from.
    """

    points: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    names: np.ndarray
    class_names: list[str]
    manifest: dict[str, Any]
    root: Path | None = field(default=None)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def split_indices(self, split: str) -> np.ndarray:
        """Sorted indices ``(K,)`` int64 of the shapes in ``split``."""
        return np.flatnonzero(self.splits == split).astype(np.int64)


def _counts(labels: np.ndarray, splits: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    split_names = sorted(set(splits.tolist()))
    out: dict[str, dict[str, int]] = {}
    for ci, cname in enumerate(class_names):
        sel = labels == ci
        out[cname] = {s: int(np.count_nonzero(sel & (splits == s))) for s in split_names}
    return out


def _arrays_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_object_cache(dst: str | os.PathLike, points: np.ndarray, labels: np.ndarray,
                       splits: Sequence[str] | np.ndarray, names: Sequence[str] | np.ndarray,
                       class_names: Sequence[str], manifest_extra: dict[str, Any] | None = None,
                       force: bool = False) -> dict[str, Any]:
    """Validate and write a cache directory atomically (replacing a previous cache; anything else at ``dst``
    only with ``force``, :func:`pc3d.data.folders.check_replaceable`).

    Args:
        dst: the cache directory.
        points: ``(S, N, 3)`` finite floats (stored as float32).
        labels: ``(S,)`` ints in ``[0, len(class_names))``.
        splits: ``(S,)`` split names from :data:`VALID_SPLITS`.
        names: ``(S,)`` shape names.
        class_names: the class of each label id.
        manifest_extra: more manifest keys (``source``, ``content_hash``, parameters...);
            ``content_hash`` defaults to a sha256 of the arrays, ``source`` to ``None``.

    Returns:
        The manifest that was written.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    splits_a = np.asarray([str(s) for s in splits], dtype=str)
    names_a = np.asarray([str(s) for s in names], dtype=str)
    class_names = [str(c) for c in class_names]
    where = str(dst)
    _validate(where, points, labels, splits_a, names_a, class_names)
    check_replaceable(dst, (CACHE_FORMAT,), force)
    manifest: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "classes": class_names,
        "counts": _counts(labels, splits_a, class_names),
        "num_points": int(points.shape[1]),
        "num_shapes": int(points.shape[0]),
        "source": None,
    }
    extra = dict(manifest_extra or {})
    for key in ("format", "version", "classes", "counts", "num_points", "num_shapes"):
        extra.pop(key, None)
    manifest.update(extra)
    manifest.setdefault("content_hash", None)
    if manifest["content_hash"] is None:
        manifest["content_hash"] = _arrays_hash(points, labels, splits_a, names_a)
    with atomic_replace_dir(dst) as tmp:
        for fname, arr in (("points.npy", points), ("labels.npy", labels),
                           ("splits.npy", splits_a), ("names.npy", names_a)):
            with atomic_write(tmp / fname, "wb") as handle:
                np.save(handle, arr, allow_pickle=False)
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def _validate(where: str, points: np.ndarray, labels: np.ndarray, splits: np.ndarray,
              names: np.ndarray, class_names: list[str]) -> None:
    """Raise DataFormatError naming the offending file of ``where`` (a cache dir)."""
    def fail(fname: str, problem: str) -> DataFormatError:
        return DataFormatError(f"{Path(where) / fname}: {problem}")

    if points.ndim != 3 or points.shape[2] != 3:
        raise fail("points.npy", f"expected shape (S, N, 3), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise fail("points.npy", "empty dataset (expected at least one shape)")
    if points.shape[1] == 0:
        raise fail("points.npy", "shapes have 0 points (expected N >= 1)")
    if points.dtype != np.float32:
        raise fail("points.npy", f"expected float32 points, got {points.dtype}")
    s = points.shape[0]
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points).all(axis=(1, 2))).sum())
        raise fail("points.npy", f"{bad} shapes contain NaN/inf coordinates")
    if labels.ndim != 1 or labels.shape[0] != s:
        raise fail("labels.npy", f"expected shape ({s},) to match points.npy, got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise fail("labels.npy", f"expected integer labels, got {labels.dtype}")
    if not class_names:
        raise fail("manifest.json", "no classes (expected a non-empty 'classes' list)")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise fail("labels.npy", f"label out of range [{int(labels.min())}, {int(labels.max())}] "
                                 f"for {len(class_names)} classes")
    for fname, arr in (("splits.npy", splits), ("names.npy", names)):
        if arr.ndim != 1 or arr.shape[0] != s:
            raise fail(fname, f"expected shape ({s},) to match points.npy, got {tuple(arr.shape)}")
        if arr.dtype.kind != "U":
            raise fail(fname, f"expected a string array, got {arr.dtype}")
    unknown = sorted(set(splits.tolist()) - set(VALID_SPLITS))
    if unknown:
        raise fail("splits.npy", f"unknown split names {unknown} (expected {list(VALID_SPLITS)})")


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Parse ``<root>/manifest.json`` (DataFormatError if missing or not a cache manifest)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DataFormatError(f"{path}: missing (not a prepared object cache; run `pc3d prep` first)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataFormatError(f"{path}: not a {CACHE_FORMAT} manifest (format="
                              f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != CACHE_VERSION:
        raise DataFormatError(f"{path}: cache version {manifest.get('version')!r}, this pc3d reads "
                              f"version {CACHE_VERSION}; re-run the prep with force=true")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataFormatError(f"{path}: 'classes' must be a list of class names")
    return manifest


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(f"{path}: missing from the prepared cache")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(f"{path}: unreadable .npy ({exc})") from exc


def load_object_cache(root: str | os.PathLike, *, mmap: bool = False) -> ObjectCache:
    """Load and validate a cache written by :func:`write_object_cache`.

    Args:
        root: the cache directory.
        mmap: memory-map ``points.npy`` read-only instead of loading it (validation
            still reads it once).

    Raises:
        DataFormatError: naming the file that is missing, unreadable, of the wrong shape
            or dtype, with labels out of range, NaN points or inconsistent lengths, or
            an empty dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: prepared cache directory not found")
    manifest = read_manifest(root)
    points = _load_array(root / "points.npy", mmap)
    labels = _load_array(root / "labels.npy", False)
    splits = _load_array(root / "splits.npy", False)
    names = _load_array(root / "names.npy", False)
    class_names = list(manifest["classes"])
    _validate(str(root), points, labels, splits, names, class_names)
    if manifest.get("num_points") != points.shape[1]:
        raise DataFormatError(f"{root / 'manifest.json'}: num_points {manifest.get('num_points')!r} "
                              f"does not match points.npy ({points.shape[1]})")
    return ObjectCache(points=points, labels=labels.astype(np.int64, copy=False), splits=splits,
                       names=names, class_names=class_names, manifest=manifest, root=root)
