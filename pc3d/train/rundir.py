"""A run directory: one writer at a time, never another run's files mixed in, a config that says what ran.

Rules (every command that writes an ``out_dir`` follows them, through :mod:`pc3d.train.run`):

* **One writer.** A run holds an OS lock (``fcntl.flock`` on ``out_dir/.pc3d.lock``) for as long as
  its process lives; the kernel drops it when the process ends, SIGKILL included, so a lock is
  never stale. A second process on the same ``out_dir`` fails at once with one line.
* **Another run's directory is refused.** ``out_dir`` holding a run (``config.yaml``) is only
  continued by ``resume=auto`` (or a checkpoint path) with the same settings. Settings that change
  the result (seed, learning rate, data, architecture, ...) differing from the stored
  ``config.yaml`` — a key added or removed (``+key=…`` / ``~key``) included — are an error naming
  each difference; a ``config.yaml`` pc3d did not write (not a mapping with ``out_dir``) is refused
  as such, never overwritten; extending the run (more
  ``trainer.max_steps`` / ``trainer.epochs``) is allowed, printed and recorded in
  ``run_history.jsonl``. ``resume=never`` with the same settings restarts the run from scratch,
  and ``overwrite=true`` replaces a run of any settings: both first remove the previous run's files
  (only the files pc3d writes, :func:`run_files`), so two runs are never mixed.
* **Nothing before validation.** :func:`check_run_dir` only reads; :func:`open_run_dir` — called
  once every input is validated — is the first write.
* Temporary files left by a kill mid-write (``.<name>.<random>.tmp``) are removed when a run next
  takes the lock (only the lock's holder can have written them).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pc3d.errors import ConfigError
from pc3d.train.distributed import current_context
from pc3d.utils.atomic import _umask, make_dirs, storage_error
from pc3d.utils.progress import get_logger

log = get_logger(__name__)

LOCK_FILE = ".pc3d.lock"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "run_history.jsonl"
#: what pc3d writes into a run directory (an overwrite removes these, nothing else)
RUN_FILES = (CONFIG_FILE, "metrics.json", "losses.jsonl", HISTORY_FILE, "checkpoints", "tb", "artifacts")
#: ... and these names: few-shot settings' fold folders, detection bird's-eye views
RUN_PATTERNS = (re.compile(r"^\d+w\d+s$"), re.compile(r"^bev_.+\.png$"))
#: settings that do not change what a run computes (a resume may change them freely)
NON_RESULT_KEYS = ("out_dir", "resume", "overwrite", "device", "trainer.num_workers", "trainer.log_every",
                   "trainer.checkpoint_every", "trainer.keep_last", "trainer.artifact_every", "trainer.compile",
                   "detect.bev_scenes", "detect.bev_score")
#: settings a resume may raise to extend a run
EXTENSION_KEYS = ("trainer.max_steps", "trainer.epochs")
_HELD: dict[Path, int] = {}  # out_dir → lock fd, for the life of the process


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@dataclass
class RunDirState:
    """What :func:`check_run_dir` found: whether ``out_dir`` holds a run, and the allowed changes."""

    out_dir: Path
    existing: bool = False
    overwrite: bool = False
    restart: bool = False
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _stored_config(out: Path) -> dict[str, Any] | None:
    """The run config stored in ``out`` (None: there is no ``config.yaml``). A ``config.yaml`` that is not a
    pc3d run's (unreadable, not a mapping, no ``out_dir``: someone else's file) is refused, never replaced."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        loaded = None
    if not isinstance(loaded, dict) or "out_dir" not in loaded:
        raise ConfigError(f"out_dir={out} holds a {CONFIG_FILE} that is not a pc3d run config; choose another "
                          "out_dir, or pass overwrite=true to replace it")
    return loaded


def run_files(out: Path) -> list[Path]:
    """The files and folders of ``out`` that a pc3d run wrote (what a restart or an overwrite removes)."""
    if not out.is_dir():
        return []
    return [p for p in sorted(out.iterdir())
            if p.name in RUN_FILES or any(pattern.match(p.name) for pattern in RUN_PATTERNS)]


def _holds_run(out: Path) -> bool:
    return any(p.name in RUN_FILES for p in run_files(out))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check_run_dir(config: Mapping[str, Any], *, resumable: bool = True) -> RunDirState:
    """Read-only check of ``config["out_dir"]`` against the run about to start (see the module docstring).

    Args:
        config: the run's resolved config (what ``config.yaml`` will say), with ``out_dir``,
            optional ``resume`` and ``overwrite``.
        resumable: the command continues a run from its checkpoints (training); otherwise an existing
            run of the same settings is simply redone.
    Raises:
        ConfigError: ``out_dir`` is a file, or holds another run (see the module docstring).
    """
    out = Path(str(config["out_dir"]))
    overwrite = bool(config.get("overwrite", False))
    state = RunDirState(out, overwrite=overwrite)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir={out} is a file, not a directory")
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:  # a name of bytes that are not UTF-8 (the file system allows it; TensorBoard does not)
        shown = os.fsencode(out).decode("utf-8", "backslashreplace")
        raise ConfigError(f"out_dir={shown}: the name is not valid UTF-8, and a run's logs (TensorBoard) need a "
                          "UTF-8 path; choose another out_dir") from None
    if (out / LOCK_FILE).is_file() and current_context().is_main:
        _lock(out)  # a running process holds it: fail before reading its checkpoints (takes the file as it is)
    if not _holds_run(out):
        return state
    state.existing = True
    if overwrite:
        return state
    stored = _stored_config(out)
    never = resumable and str(config.get("resume", "auto")) in ("never", "false", "False")
    if stored is None:
        raise ConfigError(f"out_dir={out} holds files of a run but no {CONFIG_FILE}; pass overwrite=true to "
                          "replace them, or choose another out_dir")
    old, new = flatten(stored), flatten(dict(config))
    differences, changes = [], {}
    for key in sorted(set(old) | set(new)):  # a key only one side has (``+key=…``, ``~key``) is a change too
        if old.get(key) == new.get(key) or key in NON_RESULT_KEYS:
            continue
        if key not in new:
            differences.append(f"{key} removed (the run has {_short(old[key])})")
            continue
        if key not in old:
            differences.append(f"{key}={_short(new[key])} (the run has no {key})")
            continue
        if resumable and not never and key in EXTENSION_KEYS and isinstance(old[key], int) \
                and isinstance(new[key], int) and new[key] > old[key]:
            changes[key] = (old[key], new[key])
            continue
        if resumable and not never and key in EXTENSION_KEYS and old[key] is None and isinstance(new[key], int):
            changes[key] = (old[key], new[key])
            continue
        differences.append(f"{key}={_short(new[key])} (the run has {_short(old[key])})")
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise ConfigError(f"out_dir={out} holds a run with other settings: {shown}; choose another out_dir, or "
                          "pass overwrite=true to replace it")
    state.changes = changes
    state.restart = never  # the same settings, started afresh: the old run's files go first
    return state


def _lock(out: Path) -> None:
    if out in _HELD:
        return
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise storage_error(exc, out / LOCK_FILE) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"out_dir={out} is in use by another running pc3d process; wait for it to finish or "
                          "choose another out_dir") from None
    _HELD[out] = fd


def release_run_dir(out: str | os.PathLike | None = None) -> None:
    """Drop this process's lock on ``out`` (None: on every directory it holds); the process ending does the same."""
    for path in ([Path(out)] if out is not None else list(_HELD)):
        fd = _HELD.pop(path, None)
        if fd is not None:
            os.close(fd)


def _remove_stale_temporaries(out: Path) -> None:
    for folder in (out, out / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    log.info("removed %s, left by a run killed while writing", path)


def open_run_dir(state: RunDirState, step: int | None = None) -> Path:
    """Take ``out_dir`` for this run (the first write): create it, lock it, remove an overwritten run's files
    and stale temporaries, record allowed changes. Returns the directory."""
    out = state.out_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir={out} is a file, not a directory")
    make_dirs(out)
    _lock(out)
    if state.existing and (state.overwrite or state.restart):
        for path in run_files(out):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        log.info("%s: removed the previous run's files from %s", "overwrite=true" if state.overwrite else
                 "resume=never", out)
    _remove_stale_temporaries(out)
    if state.changes:
        described = ", ".join(f"{k} {a} → {b}" for k, (a, b) in state.changes.items())
        log.info("continuing %s with changed settings: %s", out, described)
        from pc3d.utils.atomic import atomic_write

        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at_step": step,
                  "changes": {k: [a, b] for k, (a, b) in state.changes.items()}}
        previous = (out / HISTORY_FILE).read_text() if (out / HISTORY_FILE).is_file() else ""
        with atomic_write(out / HISTORY_FILE, "w") as handle:
            handle.write(previous + json.dumps(record) + "\n")
    return out
