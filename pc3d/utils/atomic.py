"""Atomic writes: a reader sees either the old file or the complete new one, never a part.

Every file pc3d writes that a user may depend on (checkpoints, prepared data,
``metrics.json``, ``config.yaml``) goes through these functions. The pattern is
write to a temporary sibling, ``fsync``, then ``os.replace`` (atomic on POSIX
within one file system), then ``fsync`` the directory so the rename survives a
crash. Files get the permissions a plain ``open`` would give (``0666`` and folders ``0777``,
less the umask), not the private ``0600`` / ``0700`` of ``tempfile``. A failed write (no space
left, a read-only or unwritable location) removes its temporary and raises
:class:`~pc3d.errors.StorageError` naming the file; the previous file is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from pc3d.errors import StorageError

_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EEXIST: "a file stands where a folder is needed", errno.EISDIR: "the path is a folder"}


#: errno values of a failed write that pc3d reports as a StorageError
WRITE_ERRNOS = frozenset(_REASONS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def storage_error(exc: OSError, path: Path) -> StorageError:
    """One line for a failed write of ``path``."""
    reason = exc.strerror or _REASONS.get(exc.errno or 0, type(exc).__name__)
    return StorageError(f"cannot write {path}: {reason}")


def _write_failure(folder: Path) -> str:
    """Why a write that reported no errno failed: a full device, or say that we do not know."""
    try:
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < (16 << 20):
            return "No space left on device"
    except OSError:
        pass
    return "the write failed (torch could not write the file)"


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with a :class:`StorageError` naming the folder on failure."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise StorageError(f"cannot create folder {path}: a file stands in its place") from exc
    except OSError as exc:
        raise storage_error(exc, path) from exc
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    If the body raises, the temporary file is removed and ``path`` is untouched. Storage faults
    (no space, read-only, permissions) become a :class:`StorageError` naming ``path``.
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in _REASONS:
            raise storage_error(exc, path) from exc
        if isinstance(exc, RuntimeError) and ("file write failed" in str(exc).lower()
                                              or "inline_container" in str(exc)):
            # torch.save reports ENOSPC as "[enforce fail at inline_container.cc] ... file write failed"
            raise StorageError(f"cannot write {path}: {_write_failure(path.parent)}") from exc
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def atomic_write_png(path: str | os.PathLike, image: Any) -> None:
    """Write ``image`` (``(H, W, 3)`` uint8, or float in [0, 1], clipped; numpy or torch) as a PNG atomically."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_write(path) as handle:
        Image.fromarray(pixels).save(handle, format="PNG")


@contextlib.contextmanager
def atomic_replace_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` as a whole.

    Used for multi-file outputs (a prepared dataset): readers never see a mix of
    old and new files. The old directory, if any, is removed only after the new
    one is in place. Callers decide whether ``path`` may be replaced at all
    (:func:`pc3d.data.folders.check_replaceable`).
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise storage_error(exc, path) from exc
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in _REASONS:
            raise storage_error(exc, path) from exc
        raise
