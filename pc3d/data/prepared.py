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

At dataset scale (ShapeNet-55: 52,470 shapes of 8,192 points, 5 GB) neither side holds
``points.npy`` in memory: :func:`write_object_cache_streamed` writes it shape by shape, and
``load_object_cache(root, lazy=True)`` gives a :class:`LazyPoints` that reads each shape
when it is indexed (``os.pread``, no memory map, so a pass over the whole cache leaves the
process's resident memory flat; the page cache keeps what the disk gave).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pc3d.data.folders import check_replaceable
from pc3d.data.io import read_json
from pc3d.errors import DataFormatError
from pc3d.utils.atomic import atomic_replace_dir, atomic_write, atomic_write_json

__all__ = ["CACHE_FILES", "CACHE_FORMAT", "CACHE_VERSION", "VALID_SPLITS", "LazyPoints", "ObjectCache",
           "write_object_cache", "write_object_cache_streamed", "load_object_cache", "read_manifest"]

CACHE_FORMAT = "pc3d-object-cache"
CACHE_VERSION = 1
VALID_SPLITS = ("train", "val", "test")
#: the files of a cache (it is replaced as a whole: anything else in the folder is refused, not removed)
CACHE_FILES = ("points.npy", "labels.npy", "splits.npy", "names.npy", "manifest.json")


@dataclass
class ObjectCache:
    """A loaded object cache.

    Attributes:
        points: ``(S, N, 3)`` float32 (an array, a read-only memmap, or a :class:`LazyPoints`).
        labels: ``(S,)`` int64.
        splits: ``(S,)`` str.
        names: ``(S,)`` str.
        class_names: ``list[str]`` (label ``i`` is ``class_names[i]``).
        manifest: the parsed ``manifest.json``.
        root: the directory it was loaded from.
    """

    points: "np.ndarray | LazyPoints"
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
    _validate_points(str(dst), points)
    return write_object_cache_streamed(dst, points, num_shapes=points.shape[0], num_points=points.shape[1],
                                       labels=labels, splits=splits, names=names, class_names=class_names,
                                       manifest_extra=manifest_extra, force=force)


def write_object_cache_streamed(dst: str | os.PathLike, shapes: Iterable[np.ndarray], *, num_shapes: int,
                                num_points: int, labels: np.ndarray | Sequence[int],
                                splits: Sequence[str] | np.ndarray, names: Sequence[str] | np.ndarray,
                                class_names: Sequence[str], manifest_extra: dict[str, Any] | None = None,
                                force: bool = False) -> dict[str, Any]:
    """:func:`write_object_cache` for shapes that arrive one at a time (``shapes`` yields ``num_shapes``
    ``(num_points, 3)`` clouds): ``points.npy`` is written shape by shape into the cache's temporary
    folder, so memory holds one shape, and a source file that fails while it is read (the iterator
    raises) leaves ``dst`` as it was. Labels, splits, names and ``dst`` are checked before anything
    is written; each shape is checked (shape, finite) before it is.

    Returns:
        The manifest that was written (``content_hash`` defaults to the sha256 of the arrays, the same
        value :func:`write_object_cache` computes).
    """
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    splits_a = np.asarray([str(s) for s in splits], dtype=str)
    names_a = np.asarray([str(s) for s in names], dtype=str)
    class_names = [str(c) for c in class_names]
    where = Path(dst)
    shape = (int(num_shapes), int(num_points), 3)
    if shape[0] < 1 or shape[1] < 1:
        raise DataFormatError(f"{where / 'points.npy'}: {shape[0]} shapes of {shape[1]} points (expected at least "
                              "one shape of at least one point)")
    _validate_metadata(str(dst), shape[0], labels, splits_a, names_a, class_names)
    check_replaceable(dst, (CACHE_FORMAT,), force, own_files=CACHE_FILES)
    manifest: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "classes": class_names,
        "counts": _counts(labels, splits_a, class_names),
        "num_points": shape[1],
        "num_shapes": shape[0],
        "source": None,
    }
    extra = dict(manifest_extra or {})
    for key in ("format", "version", "classes", "counts", "num_points", "num_shapes"):
        extra.pop(key, None)
    manifest.update(extra)
    manifest.setdefault("content_hash", None)
    hasher = hashlib.sha256()
    hasher.update(str(np.dtype(np.float32)).encode() + str(shape).encode())
    with atomic_replace_dir(dst) as tmp:
        with atomic_write(tmp / "points.npy", "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(
                np.dtype(np.float32)), "fortran_order": False, "shape": shape})
            count = 0
            for cloud in shapes:
                if count == shape[0]:
                    raise DataFormatError(f"{where / 'points.npy'}: more than the {shape[0]} shapes announced")
                cloud = np.ascontiguousarray(cloud, dtype=np.float32)
                if cloud.shape != shape[1:]:
                    raise DataFormatError(f"{where / 'points.npy'}: shape {count} ({names_a[count]}) has "
                                          f"{tuple(cloud.shape)} points, expected {shape[1:]}")
                if not np.isfinite(cloud).all():
                    raise DataFormatError(f"{where / 'points.npy'}: shape {count} ({names_a[count]}) contains "
                                          "NaN/inf coordinates")
                data = cloud.tobytes()
                hasher.update(data)
                handle.write(data)
                count += 1
            if count != shape[0]:
                raise DataFormatError(f"{where / 'points.npy'}: {count} shapes arrived, {shape[0]} were announced")
        for array in (labels, splits_a, names_a):
            hasher.update(str(array.dtype).encode() + str(array.shape).encode())
            hasher.update(np.ascontiguousarray(array).tobytes())
        if manifest["content_hash"] is None:
            manifest["content_hash"] = hasher.hexdigest()
        for fname, arr in (("labels.npy", labels), ("splits.npy", splits_a), ("names.npy", names_a)):
            with atomic_write(tmp / fname, "wb") as handle:
                np.save(handle, arr, allow_pickle=False)
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def _fail(where: str, fname: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{Path(where) / fname}: {problem}")


def _validate_points(where: str, points: "np.ndarray | LazyPoints", finite: bool = True) -> None:
    """Shape, dtype and (``finite``) values of ``points.npy``; DataFormatError naming the file of ``where``."""
    if points.ndim != 3 or points.shape[2] != 3:
        raise _fail(where, "points.npy", f"expected shape (S, N, 3), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise _fail(where, "points.npy", "empty dataset (expected at least one shape)")
    if points.shape[1] == 0:
        raise _fail(where, "points.npy", "shapes have 0 points (expected N >= 1)")
    if points.dtype != np.float32:
        raise _fail(where, "points.npy", f"expected float32 points, got {points.dtype}")
    if finite and not np.isfinite(points).all():
        bad = int((~np.isfinite(points).all(axis=(1, 2))).sum())
        raise _fail(where, "points.npy", f"{bad} shapes contain NaN/inf coordinates")


def _validate_metadata(where: str, s: int, labels: np.ndarray, splits: np.ndarray, names: np.ndarray,
                       class_names: list[str]) -> None:
    """Labels, splits and names of a cache of ``s`` shapes; DataFormatError naming the offending file."""
    if labels.ndim != 1 or labels.shape[0] != s:
        raise _fail(where, "labels.npy", f"expected shape ({s},) to match points.npy, got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise _fail(where, "labels.npy", f"expected integer labels, got {labels.dtype}")
    if not class_names:
        raise _fail(where, "manifest.json", "no classes (expected a non-empty 'classes' list)")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise _fail(where, "labels.npy", f"label out of range [{int(labels.min())}, {int(labels.max())}] "
                                         f"for {len(class_names)} classes")
    for fname, arr in (("splits.npy", splits), ("names.npy", names)):
        if arr.ndim != 1 or arr.shape[0] != s:
            raise _fail(where, fname, f"expected shape ({s},) to match points.npy, got {tuple(arr.shape)}")
        if arr.dtype.kind != "U":
            raise _fail(where, fname, f"expected a string array, got {arr.dtype}")
    unknown = sorted(set(splits.tolist()) - set(VALID_SPLITS))
    if unknown:
        raise _fail(where, "splits.npy", f"unknown split names {unknown} (expected {list(VALID_SPLITS)})")


def _validate(where: str, points: "np.ndarray | LazyPoints", labels: np.ndarray, splits: np.ndarray,
              names: np.ndarray, class_names: list[str], finite: bool = True) -> None:
    """Raise DataFormatError naming the offending file of ``where`` (a cache dir)."""
    _validate_points(where, points, finite)
    _validate_metadata(where, points.shape[0], labels, splits, names, class_names)


class LazyPoints:
    """``points.npy (S, N, 3)`` float32 of a prepared cache, read when indexed.

    ``lazy[i]`` is the ``(N, 3)`` cloud of shape ``i``; ``lazy[indices]`` (ints, an int array or a slice)
    and ``lazy[indices, ...]`` (any further numpy index, e.g. ``:k`` points) stack ``(K, ...)`` clouds.
    Every read is one ``os.pread`` per shape into a fresh array: nothing is memory-mapped, so reading all
    ``S`` shapes leaves the resident memory as it was (unlike a memmap, whose touched pages stay in it).
    Each shape read is checked finite (a DataFormatError names the file and the shape). The file is
    opened anew in every process that reads (DataLoader workers, fork or spawn).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(handle)
                self.offset = handle.tell()
        except (ValueError, OSError, EOFError) as exc:
            raise DataFormatError(f"{self.path}: unreadable .npy ({exc})") from exc
        shape, fortran, dtype = header
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if fortran or self.dtype.hasobject:
            raise DataFormatError(f"{self.path}: expected a C-ordered numeric array")
        if self.dtype != np.dtype("<f4"):
            raise DataFormatError(f"{self.path}: expected float32 points, got {self.dtype}")
        expected = self.offset + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if self.path.stat().st_size < expected:
            raise DataFormatError(f"{self.path}: truncated ({self.path.stat().st_size} bytes, the header "
                                  f"announces {expected})")
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, index: int) -> np.ndarray:
        """The ``(N, 3)`` float32 cloud of shape ``index`` (a new, writable array)."""
        if not -self.shape[0] <= index < self.shape[0]:
            raise IndexError(f"shape {index} out of range for {self.shape[0]} shapes")
        index = int(index) % self.shape[0]
        out = np.empty(self.shape[1:], dtype=np.float32)
        nbytes = out.nbytes
        position = self.offset + index * nbytes
        if hasattr(os, "preadv"):  # straight into the array
            got = os.preadv(self._handle(), [out], position)
        else:
            data = os.pread(self._handle(), nbytes, position)
            got = len(data)
            out.reshape(-1)[: got // 4] = np.frombuffer(data[: got - got % 4], dtype="<f4")
        if got != nbytes:
            raise DataFormatError(f"{self.path}: shape {index} is truncated ({got} of {nbytes} bytes)")
        if not np.isfinite(out).all():
            raise DataFormatError(f"{self.path}: shape {index} contains NaN/inf coordinates")
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            return self.read(int(key))[rest] if rest else self.read(int(key))
        if isinstance(key, slice):
            rows = np.arange(self.shape[0])[key]
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if rows.dtype.kind not in "iu" or rows.ndim != 1:
                raise IndexError(f"LazyPoints takes ints, 1-D int arrays or slices, got {key!r}")
        clouds = [self.read(int(i)) for i in rows]
        stacked = np.stack(clouds) if clouds else np.empty((0, *self.shape[1:]), np.float32)
        return stacked[(slice(None), *rest)] if rest else stacked

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


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


def load_object_cache(root: str | os.PathLike, *, mmap: bool = False, lazy: bool = False) -> ObjectCache:
    """Load and validate a cache written by :func:`write_object_cache`.

    Args:
        root: the cache directory.
        mmap: memory-map ``points.npy`` read-only instead of loading it (validation
            still reads it once).
        lazy: ``points`` is a :class:`LazyPoints`: only the header of ``points.npy`` is read here
            (shape, dtype, size against the manifest); each shape is checked finite when it is read.
            What datasets at scale use (:mod:`pc3d.data.object_data`).

    Raises:
        DataFormatError: naming the file that is missing, unreadable, of the wrong shape
            or dtype, with labels out of range, NaN points or inconsistent lengths, or
            an empty dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: prepared cache directory not found")
    manifest = read_manifest(root)
    if lazy:
        if not (root / "points.npy").is_file():
            raise DataFormatError(f"{root / 'points.npy'}: missing from the prepared cache")
        points: np.ndarray | LazyPoints = LazyPoints(root / "points.npy")
    else:
        points = _load_array(root / "points.npy", mmap)
    labels = _load_array(root / "labels.npy", False)
    splits = _load_array(root / "splits.npy", False)
    names = _load_array(root / "names.npy", False)
    class_names = list(manifest["classes"])
    _validate(str(root), points, labels, splits, names, class_names, finite=not lazy)
    if manifest.get("num_points") != points.shape[1]:
        raise DataFormatError(f"{root / 'manifest.json'}: num_points {manifest.get('num_points')!r} "
                              f"does not match points.npy ({points.shape[1]})")
    return ObjectCache(points=points, labels=labels.astype(np.int64, copy=False), splits=splits,
                       names=names, class_names=class_names, manifest=manifest, root=root)
