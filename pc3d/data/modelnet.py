"""Convert a ModelNet-style folder tree into the prepared object cache.

Accepted layouts (class = folder name, classes sorted → label ids)::

    SRC/<class>/<split>/<shape>.<ext>     split in train / val / test
    SRC/<class>/<shape>.<ext>             no split folder → split 'train'

with ``<ext>`` one of ``.off .pcd .ply .txt .npy .npz`` (any mix; see
:mod:`pc3d.data.io`). Hidden files/folders and files with other suffixes are ignored
(their number is recorded as ``ignored_files``); a non-hidden sub-folder of a class
other than a split name is an error, since it usually means SRC is one level off.

Each shape is read (meshes: ``num_surface_points`` sampled on the surface), brought to
exactly ``num_points`` points and normalised to the unit sphere:

* more points than ``num_points``: a seeded random subset without replacement, in
  random order, so that any prefix ``points[:, :k]`` of the cache is itself a uniform
  random subset (not farthest point sampling, which is the encoder's job); meshes are
  sampled i.i.d. on the surface, so their points are in random order too;
* exactly ``num_points``: the file's points in file order;
* fewer: every point is kept and the missing ones are seeded duplicates drawn with
  replacement; such files are listed in the manifest (``upsampled_files``) and
  a warning is logged;
* then centring + scaling so that the farthest point has norm exactly 1 (after the
  reduction, so the cache holds unit-sphere clouds as the data contract says).

All randomness of a file derives from ``(seed, its relative path)``, so the result
for one file does not depend on which other files are in the tree.

Re-running with an unchanged tree (same relative paths, sizes and ``mtime_ns``), the
same source path and the same parameters returns the existing manifest without
writing anything; ``force=True`` rebuilds. The cache directory is replaced
atomically only after every file was read, so a corrupt file leaves the previous
cache intact.

Command line: ``pc3d prep modelnet src=SRC dst=DST`` or ``python -m data_prep.modelnet SRC DST``
(:mod:`data_prep.modelnet`).
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pc3d.data.io import read_points
from pc3d.data.folders import check_replaceable
from pc3d.data.prepared import (CACHE_FILES, CACHE_FORMAT, VALID_SPLITS, load_object_cache, read_manifest,
                                write_object_cache)
from pc3d.data.transforms import normalize_unit_sphere
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger, progress

__all__ = ["PREP_VERSION", "RECOGNISED_SUFFIXES", "file_seed", "fit_to_count", "prepare_modelnet", "prepare_modelnet_tree",
           "scan_tree"]

#: bump when the conversion changes in a way that should invalidate existing caches
PREP_VERSION = 1
#: file suffixes taken from the tree (``.xyz``/``.pts`` are readable but not collected)
RECOGNISED_SUFFIXES = (".npy", ".npz", ".off", ".pcd", ".ply", ".txt")

_log = get_logger("pc3d.data")


def scan_tree(src: str | os.PathLike) -> tuple[list[str], list[tuple[str, int, str]], int]:
    """List the shapes of a ModelNet-style tree.

    Returns:
        ``(class_names, entries, ignored)`` where ``entries`` are
        ``(relative posix path, label, split)`` sorted by path and ``ignored`` counts
        skipped files.

    Raises:
        DataFormatError: missing SRC, no class folders, an unexpected sub-folder, or no
            recognised files at all.
    """
    src = Path(src)
    if not src.exists():
        raise DataFormatError(f"{src}: source folder not found")
    if not src.is_dir():
        raise DataFormatError(f"{src}: not a folder (expected SRC/<class>/<split>/<shape files>)")
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataFormatError(f"{src}: no class folders (expected SRC/<class>/<split>/*.off|pcd|ply|"
                              "txt|npy|npz or SRC/<class>/*.*)")
    class_names = [p.name for p in class_dirs]
    entries: list[tuple[str, int, str]] = []
    ignored = 0

    def collect(folder: Path, label: int, split: str) -> None:
        nonlocal ignored
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                continue
            if f.is_file():
                if f.suffix.lower() in RECOGNISED_SUFFIXES:
                    entries.append((f.relative_to(src).as_posix(), label, split))
                else:
                    ignored += 1
            elif f.is_dir():
                if split == "train" and folder.parent == src and f.name in VALID_SPLITS:
                    collect(f, label, f.name)
                elif folder.parent == src:
                    raise DataFormatError(
                        f"{f}: unexpected folder (expected SRC/<class>/<split>/ with split in "
                        f"{'/'.join(VALID_SPLITS)}, or shape files directly in SRC/<class>/)")
                else:
                    ignored += 1

    for label, cdir in enumerate(class_dirs):
        collect(cdir, label, "train")
    if not entries:
        raise DataFormatError(f"{src}: no recognised shape files (expected "
                              f"{' '.join(RECOGNISED_SUFFIXES)} under SRC/<class>/[<split>/])")
    entries.sort(key=lambda e: e[0])
    empty = [c for i, c in enumerate(class_names) if not any(e[1] == i for e in entries)]
    if empty:
        _log.warning("class folders without shape files (kept as labels with 0 shapes): %s",
                     ", ".join(empty))
    return class_names, entries, ignored


def _stat_listing(src: Path, entries: list[tuple[str, int, str]]) -> list[list[Any]]:
    listing = []
    for rel, _, _ in entries:
        st = (src / rel).stat()
        listing.append([rel, int(st.st_size), int(st.st_mtime_ns)])
    return listing


def file_seed(seed: int, rel: str) -> list[int]:
    """The seed entropy of one source file: ``[seed, crc32(rel)]`` (independent of the other files)."""
    return [int(seed), zlib.crc32(os.fsencode(rel))]


def fit_to_count(xyz: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``(N,3)`` → ``(n,3)``: random subset in random order if N > n, all + duplicates if N < n."""
    count = xyz.shape[0]
    if count == n:
        return xyz, False
    if count > n:
        return xyz[rng.choice(count, size=n, replace=False)], False
    extra = rng.choice(count, size=n - count, replace=True)
    return np.concatenate([xyz, xyz[extra]], axis=0), True


def prepare_modelnet_tree(src: str | os.PathLike, dst: str | os.PathLike, *, num_points: int,
                          num_surface_points: int, seed: int, force: bool) -> tuple[dict[str, Any], bool]:
    """:func:`prepare_modelnet`, also saying whether anything was (re)built."""
    if num_points < 1:
        raise ConfigError(f"num_points must be >= 1, got {num_points}")
    if num_surface_points < 1:
        raise ConfigError(f"num_surface_points must be >= 1, got {num_surface_points}")
    src_p = Path(src)
    dst_p = Path(dst)
    if src_p.exists():
        src_r, dst_r = src_p.resolve(), dst_p.resolve()
        if dst_r == src_r or src_r in dst_r.parents:
            raise ConfigError(f"dst {dst} must not be inside src {src} (it would be read as a class)")
    # before reading anything: dst may not hold the user's files
    check_replaceable(dst_p, (CACHE_FORMAT,), force, own_files=CACHE_FILES)
    class_names, entries, ignored = scan_tree(src_p)
    listing = _stat_listing(src_p, entries)
    params = {"num_points": int(num_points), "num_surface_points": int(num_surface_points),
              "seed": int(seed), "prep_version": PREP_VERSION}
    source = str(src_p.resolve())

    if not force and (dst_p / "manifest.json").is_file():
        try:
            old = read_manifest(dst_p)
        except DataFormatError:
            old = None
        if (old is not None and old.get("files") == listing and old.get("params") == params
                and old.get("source") == source and old.get("classes") == class_names):
            try:
                load_object_cache(dst_p, mmap=True)
            except DataFormatError as exc:
                _log.warning("existing cache is unusable, rebuilding (%s)", exc)
            else:
                return old, False

    start = time.perf_counter()
    n = len(entries)
    points = np.empty((n, num_points, 3), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    splits: list[str] = []
    names: list[str] = []
    upsampled: list[str] = []
    hasher = hashlib.sha256()
    for i, (rel, label, split) in enumerate(progress(entries, desc="prep modelnet")):
        path = src_p / rel
        seeds = file_seed(seed, rel)
        surface_seed = int(np.random.SeedSequence(seeds + [0]).generate_state(1)[0])
        cloud = read_points(path, num_surface_points=num_surface_points, seed=surface_seed)
        rng = np.random.default_rng(seeds + [1])
        xyz, up = fit_to_count(cloud.points, num_points, rng)
        if up:
            upsampled.append(rel)
        xyz = normalize_unit_sphere(xyz)
        if not np.any(xyz):
            raise DataFormatError(f"{path}: all {cloud.points.shape[0]} points coincide "
                                  "(expected a shape with extent)")
        points[i] = xyz
        labels[i] = label
        splits.append(split)
        names.append(rel)
        hasher.update(os.fsencode(rel) + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
        hasher.update(b"\0")
    if upsampled:
        _log.warning("%d of %d shapes had fewer than %d points and were padded with duplicates "
                     "(listed in manifest 'upsampled_files')", len(upsampled), n, num_points)
    manifest_extra = {
        "producer": "pc3d.data.modelnet",
        "source": source,
        "content_hash": hasher.hexdigest(),
        "params": params,
        "splits": sorted(set(splits)),
        "files": listing,
        "ignored_files": ignored,
        "num_upsampled": len(upsampled),
        "upsampled_files": upsampled,
        "prep_seconds": round(time.perf_counter() - start, 3),
    }
    manifest = write_object_cache(dst_p, points, labels, splits, names, class_names, manifest_extra, force=force)
    return manifest, True


def prepare_modelnet(src: str | os.PathLike, dst: str | os.PathLike, *, num_points: int = 1024,
                     num_surface_points: int = 8192, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Convert the tree ``src`` into the object cache ``dst`` (see the module docstring).

    Args:
        src: ModelNet-style tree.
        dst: cache directory (created or replaced atomically; must not be inside ``src``).
        num_points: points per shape ``N`` in ``points.npy (S, N, 3)``.
        num_surface_points: points sampled on meshes before the reduction to ``num_points``.
        seed: seed of surface sampling and subsetting.
        force: rebuild even if ``dst`` is up to date.

    Returns:
        The manifest (``format``, ``version``, ``classes``, ``counts[class][split]``,
        ``num_points``, ``num_shapes``, ``source``, ``content_hash``, ``files``,
        ``params``, ``num_upsampled``, ...).

    Raises:
        DataFormatError: missing/empty tree or an unreadable shape file (named).
        ConfigError: bad parameters or ``dst`` inside ``src``.
    """
    manifest, _ = prepare_modelnet_tree(src, dst, num_points=num_points, num_surface_points=num_surface_points,
                                        seed=seed, force=force)
    return manifest

