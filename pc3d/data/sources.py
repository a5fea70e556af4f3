"""Shared pieces of the converters of the papers' object downloads (ShapeNet-55/34, ModelNet40, ScanObjectNN).

Every such converter (:mod:`pc3d.data.shapenet`, :mod:`pc3d.data.modelnet40`, :mod:`pc3d.data.scanobjectnn`)
works in the same order, so that a wrong or incomplete download fails with one line and nothing written:

1. check the parameters and that ``dst`` may be (re)written (:func:`check_destination`);
2. read the download's list files and check that every file they name is there (headers included,
   where that is cheap), naming the first missing file or malformed line;
3. if ``dst`` already holds the cache of these very inputs and parameters (:func:`current_cache`),
   return it without writing;
4. stream the shapes into the cache (:func:`pc3d.data.prepared.write_object_cache_streamed`): a shape
   that fails while it is read leaves ``dst`` as it was.

Each shape is reduced by :func:`reduce_shape`, the rule of :mod:`pc3d.data.modelnet`: more points than
``num_points`` give a seeded random subset in random order (any prefix is a uniform random subset),
exactly ``num_points`` are kept in file order; then centring and scaling to the unit sphere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pc3d.data.folders import check_replaceable
from pc3d.data.modelnet import file_seed, fit_to_count
from pc3d.data.prepared import CACHE_FILES, CACHE_FORMAT, load_object_cache, read_manifest
from pc3d.data.transforms import normalize_unit_sphere
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger

__all__ = ["check_destination", "current_cache", "inputs_digest", "read_list_file", "reduce_shape"]

_log = get_logger("pc3d.data")


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, num_points: int, force: bool) -> tuple[Path, Path]:
    """``num_points >= 1``, an existing folder ``src``, ``dst`` outside it and free for a cache (before reading)."""
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ConfigError(f"num_points={num_points!r}: expected an integer >= 1")
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_dir():
        raise DataFormatError(f"{src_p}: source folder not found")
    src_r, dst_r = src_p.resolve(), dst_p.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise ConfigError(f"dst={dst} must not be inside src={src}")
    check_replaceable(dst_p, (CACHE_FORMAT,), force, own_files=CACHE_FILES)
    return src_p, dst_p


def read_list_file(path: Path, what: str) -> list[tuple[int, str]]:
    """The non-empty, stripped lines of a list file as ``(line number, text)``; DataFormatError if it is missing.

    ``what`` says in the message what the file is (``"ShapeNet-55 train list"``).
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: missing ({what})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: unreadable {what} ({exc})") from exc
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DataFormatError(f"{path}: empty ({what})")
    return lines


def inputs_digest(files: Sequence[Path], base: Path) -> str:
    """sha256 of the ``(path relative to base, size, mtime_ns)`` of ``files``: changes when any input changes."""
    hasher = hashlib.sha256()
    for f in files:
        st = f.stat()
        rel = os.path.relpath(f, base)
        hasher.update(json.dumps([rel, int(st.st_size), int(st.st_mtime_ns)]).encode() + b"\n")
    return hasher.hexdigest()


def current_cache(dst: Path, expected: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The manifest of the cache at ``dst`` when it holds exactly ``expected`` (manifest keys such as
    ``source``, ``params``, ``inputs_digest``, ``classes``) and is readable; ``None`` when it must be
    (re)built."""
    if force or not (dst / "manifest.json").is_file():
        return None
    try:
        old = read_manifest(dst)
    except DataFormatError:
        return None
    if any(old.get(key) != value for key, value in expected.items()):
        return None
    try:
        load_object_cache(dst, lazy=True)
    except DataFormatError as exc:
        _log.warning("existing cache is unusable, rebuilding (%s)", exc)
        return None
    return old


def reduce_shape(points: np.ndarray, num_points: int, seed: int, name: str, where: Path) -> tuple[np.ndarray, bool]:
    """A source cloud ``(M, 3)`` → ``(num_points, 3)`` float32 on the unit sphere, and whether it was padded.

    The subset (``M > num_points``) or the padding duplicates (``M < num_points``) are drawn from
    ``(seed, name)``; a cloud whose points all coincide is a DataFormatError naming ``where``.
    """
    rng = np.random.default_rng(file_seed(seed, name) + [1])
    reduced, padded = fit_to_count(np.asarray(points, dtype=np.float32), num_points, rng)
    reduced = normalize_unit_sphere(reduced)
    if not np.any(reduced):
        raise DataFormatError(f"{where}: all {points.shape[0]} points coincide (expected a shape with extent)")
    return reduced, padded
