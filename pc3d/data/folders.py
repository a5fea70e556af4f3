"""Prepared dataset folders: one writer for every format pc3d prepares (scans, radiance grids, Gaussians).

A prepared folder holds one entry per item (a scene folder of ``.npy`` files, a grid ``.npz``, ...),
``manifest.json`` (the format, what the items were made from and how) and a user-editable
``splits.json``. :func:`write_prepared_folder` brings such a folder up to date:

* an item is (re)converted only if its input files (relative path, size, ``mtime_ns``) or the
  folder's setup (format, dataset, classes, source, parameters) changed, its outputs are missing,
  or ``force``; otherwise nothing of it is rewritten;
* each item is written atomically by the format's ``write`` function, the manifest after the items;
* items of the previous manifest that are no longer listed are removed — only entries this
  writer made (named in its own manifest), never anything else in the folder;
* ``splits.json`` is written only when it does not exist or ``force``: a user's edit survives.

:func:`read_format_manifest` is the one manifest checker (file, JSON, format, version).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pc3d.data.io import read_json
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.atomic import atomic_write_json
from pc3d.utils.progress import get_logger, progress

_log = get_logger("pc3d.data")
MANIFEST = "manifest.json"
SPLITS = "splits.json"

__all__ = ["FolderItem", "MANIFEST", "SPLITS", "check_replaceable", "read_format_manifest", "read_splits",
           "split_names", "write_prepared_folder"]


def check_replaceable(dst: str | os.PathLike, formats: Sequence[str], force: bool = False,
                      own_files: Sequence[str] = ()) -> None:
    """``dst`` may be (re)written by a prep of ``formats``: it does not exist, is an empty folder, or holds
    a manifest of one of ``formats`` (a folder pc3d prepared). Anything else — a file, a folder of other
    things — is refused with one line, unless ``force`` (then it is replaced).

    ``own_files``: the names a writer that replaces ``dst`` as a whole puts there (an object cache); a
    folder pc3d prepared that also holds anything else (a user's file) is then refused too, naming it."""
    dst = Path(dst)
    if force or not dst.exists() and not dst.is_symlink():
        return
    if not dst.is_dir():
        raise ConfigError(f"dst={dst} is an existing file; choose a folder name that is free, or pass force=true "
                          "to replace it")
    if not any(dst.iterdir()):
        return
    try:
        found = read_json(dst / MANIFEST).get("format") if (dst / MANIFEST).is_file() else None
    except (DataFormatError, AttributeError):
        found = None
    if found not in formats:
        what = (f"already holds a {MANIFEST} of another kind (format {found!r})" if found is not None
                else f"holds files that pc3d did not prepare (no {formats[0]} {MANIFEST})")
        raise ConfigError(f"dst={dst} {what}; choose an empty or new folder, or pass force=true to replace it")
    foreign = sorted(p.name for p in dst.iterdir() if p.name not in own_files) if own_files else []
    if foreign:
        raise ConfigError(f"dst={dst} holds {dst / foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1
                          else "") + ", which pc3d did not prepare and a new preparation would remove; move it out "
                          "of the folder, or pass force=true to replace the folder")


@dataclass
class FolderItem:
    """One item to prepare: its name, the files it is made from, and the conversion.

    ``convert()`` returns the item's payload (whatever the format's ``write`` takes); it runs only
    when the item is not up to date.
    """

    name: str
    inputs: list[Path]
    convert: Callable[[], Any]


def read_format_manifest(root: str | os.PathLike, formats: Sequence[str], hint: str = "") -> dict[str, Any]:
    """``<root>/manifest.json`` as a dict whose ``format`` is one of ``formats``, else a DataFormatError
    naming the file (``hint``: how such a folder is made, for the message)."""
    path = Path(root) / MANIFEST
    manifest = read_json(path)
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found not in formats:
        raise DataFormatError(f"{path}: not a {' / '.join(formats)} manifest (format={found!r}"
                              f"{'; ' + hint if hint else ''})")
    return manifest


def read_file_manifest(root: str | os.PathLike, format: str, hint: str, item: str, suffix: str) -> dict[str, Any]:
    """:func:`read_format_manifest` for folders of one file per item: its ``scenes`` must map each ``item``
    name to ``{"file": "<name><suffix>", ...}``, else a DataFormatError naming the file."""
    manifest = read_format_manifest(root, (format,), hint=hint)
    scenes = manifest.get("scenes")
    if not isinstance(scenes, dict) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                               for e in scenes.values()):
        raise DataFormatError(f"{Path(root) / MANIFEST}: 'scenes' must map {item} names to "
                              f'{{"file": "<name>{suffix}", ...}}')
    return manifest


def read_splits(root: str | os.PathLike, names: Sequence[str]) -> dict[str, list[str]]:
    """``<root>/splits.json`` → ``{split: [item names]}``; every name must be one of ``names``."""
    path = Path(root) / SPLITS
    splits = read_json(path)
    if not isinstance(splits, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                               for v in splits.values()):
        raise DataFormatError(f"{path}: expected {{\"train\": [names], \"val\": [names]}}")
    known = set(names)
    for split, listed in splits.items():
        unknown = [n for n in listed if n not in known]
        if unknown:
            raise DataFormatError(f"{path}: split {split!r} names scenes that are not in {MANIFEST}: "
                                  f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return splits


def split_names(root: str | os.PathLike, names: Sequence[str], split: str | None) -> list[str]:
    """The item names of ``split`` in ``<root>/splits.json`` (all ``names`` for ``None``)."""
    if split is None:
        return list(names)
    splits = read_splits(root, names)
    if split not in splits:
        raise ConfigError(f"split {split!r} not in {Path(root) / SPLITS} (available: {', '.join(splits)})")
    return splits[split]


def _listing(files: Sequence[Path], base: Path) -> list[list[Any]]:
    """``[[path relative to base (else absolute), size, mtime_ns], ...]`` of ``files``."""
    out = []
    for f in files:
        f, st = Path(os.path.abspath(f)), f.stat()
        out.append([f.relative_to(base).as_posix() if f.is_relative_to(base) else str(f), int(st.st_size),
                    int(st.st_mtime_ns)])
    return out


def _hash_files(files: Sequence[Path]) -> str:
    hasher = hashlib.sha256()
    for f in files:
        hasher.update(os.fsencode(f.name) + b"\0")
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()


def _previous(dst: Path, formats: Sequence[str], read: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
    """The manifest of an earlier prep into ``dst`` (``None`` if none or unusable); a ``manifest.json`` of
    anything else is never overwritten."""
    if not (dst / MANIFEST).is_file():
        return None
    try:
        found = read_json(dst / MANIFEST)
    except DataFormatError:
        found = None
    if not isinstance(found, dict) or found.get("format") not in formats:
        raise ConfigError(f"dst {dst} already holds a {MANIFEST} that is not a {formats[0]} manifest; choose "
                          "another dst (or remove that folder)")
    try:
        return read(dst)
    except DataFormatError as exc:
        _log.warning("rebuilding: the previous manifest is unusable (%s)", exc)
        return None


def write_prepared_folder(dst: str | os.PathLike, items: Sequence[FolderItem], *, setup: Mapping[str, Any],
                          write: Callable[[Path, str, Any], dict[str, Any]],
                          outputs: Callable[[Path, str, dict[str, Any]], list[Path]],
                          location: Callable[[Path, str], Path],
                          read_manifest: Callable[[Path], dict[str, Any]],
                          splits: dict[str, list[str]], force: bool = False,
                          accepted_formats: Sequence[str] = ()) -> dict[str, Any]:
    """Write (or bring up to date) the prepared folder ``dst`` (see the module docstring).

    Args:
        items: what to prepare, one :class:`FolderItem` per entry.
        setup: the folder-wide manifest keys (``format``, ``dataset``, ``class_names``, ``source``,
            ``params``, ...); a change reconverts every item.
        write: ``write(dst, name, payload) -> entry`` writes one item atomically and returns its
            manifest entry (``inputs`` and ``content_hash`` are added here).
        outputs: ``outputs(dst, name, entry) -> paths`` an up-to-date item must have.
        location: ``location(dst, name)``: the file or folder directly under ``dst`` that holds an item
            (what is removed when the item is no longer listed).
        read_manifest: the format's manifest reader (validates an earlier manifest).
        splits: the default ``splits.json``.
        accepted_formats: earlier formats of the same kind this writer may upgrade (e.g. v1 → v2).
    Returns:
        The manifest (written only when it changed).
    """
    dst, base = Path(dst), Path(os.path.abspath(setup["source"]))
    formats = (setup["format"], *accepted_formats)
    check_replaceable(dst, formats, force)
    old = None if force and not (dst / MANIFEST).is_file() else _previous(dst, formats, read_manifest)
    setup = dict(setup)
    reusable = {} if force or old is None or any(old.get(k) != v for k, v in setup.items()) else old["scenes"]
    entries: dict[str, dict[str, Any]] = {}
    for item in progress(items, desc=f"prep {setup.get('dataset', '')}".strip()):
        listing = _listing(item.inputs, base)
        prev = reusable.get(item.name)
        if prev is not None and prev.get("inputs") == listing and all(p.exists() for p in outputs(dst, item.name,
                                                                                                   prev)):
            entries[item.name] = prev
            continue
        content_hash = _hash_files(item.inputs)
        entry = write(dst, item.name, item.convert())
        entries[item.name] = {**entry, "inputs": listing, "content_hash": content_hash}
    for stale in sorted(set(old["scenes"] if old else ()) - set(entries)):  # only entries this writer made
        path = location(dst, stale)
        if path.resolve().parent != dst.resolve():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    manifest = {**setup, "scenes": entries}
    if manifest != old:
        atomic_write_json(dst / MANIFEST, manifest)
    split_file = dst / SPLITS
    if force or not split_file.is_file():
        atomic_write_json(split_file, splits)
    else:
        try:
            listed = {name for names in read_splits(dst, list(entries)).values() for name in names}
        except DataFormatError as exc:
            _log.warning("kept your %s, but it does not fit the items: %s (fix it, or re-run the prep with "
                         "force=true to reset it)", SPLITS, exc)
        else:
            missing = sorted(set(entries) - listed)
            if missing:
                _log.warning("%s keeps your splits; %d item(s) are in no split: %s", split_file, len(missing),
                             ", ".join(missing[:5]))
    return manifest
