"""The one checkpoint writer and reader.

Checkpoints are ``<run_dir>/checkpoints/step_<step:08d>.pt``, written atomically
(temporary file + rename), so a run killed while writing never leaves a corrupt
newest checkpoint; :func:`latest_checkpoint` also skips any file that fails to load.
They are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from pc3d.errors import CheckpointError
from pc3d.utils.atomic import atomic_write
from pc3d.utils.progress import get_logger

CHECKPOINT_FORMAT = "pc3d-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")
log = get_logger(__name__)
_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; keep the newest ``keep_last``."""
    path = checkpoint_dir(run_dir) / f"step_{step:08d}.pt"
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, **state}
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (torch/safetensors messages run over many lines)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_tensor_types(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any], source: str, what: str,
                       show: Callable[[str], str] | None = None) -> None:
    """Tensors of ``given`` must have the kind of dtype ``expected`` has (float widths may differ, integer and
    bool types must be equal) and hold finite values: a float stored as an integer type, or NaN weights,
    fail naming the tensor instead of loading as nonsense."""
    show = show or (lambda key: key)
    retyped = [f"{show(k)} is {given[k].dtype}, expected {v.dtype}" for k, v in expected.items()
               if isinstance(given.get(k), torch.Tensor)
               and (given[k].dtype.is_floating_point != v.dtype.is_floating_point
                    or (not v.dtype.is_floating_point and given[k].dtype != v.dtype))]
    if retyped:
        listed = f"{retyped[:3]}{'...' if len(retyped) > 3 else ''}"
        raise CheckpointError(f"{source}: {what} have the wrong type: {listed}")
    bad = next((k for k, v in given.items() if k in expected and isinstance(v, torch.Tensor)
                and v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{source}: {what} hold NaN/inf values (first: {show(bad)})")


class _StoredNamespace:
    """What an ``argparse.Namespace`` in a checkpoint is read as: an object holding its attributes, no
    code (research scripts often save ``{"args": args}``); :func:`read_torch_file` turns it into a dict."""


def _plain_namespaces(obj: Any) -> Any:
    if isinstance(obj, _StoredNamespace):
        return {k: _plain_namespaces(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: _plain_namespaces(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_namespaces(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain_namespaces(v) for v in obj)
    return obj


def read_torch_file(path: str | os.PathLike, namespaces: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure is a one-line :class:`CheckpointError`.

    ``weights_only=True`` unpickles only tensors and plain containers, so no code stored in the
    file runs; a file that needs more (pickled classes) is refused and the class is named. With
    ``namespaces``, an ``argparse.Namespace`` (research scripts save their training arguments
    so) is read as a plain dict of its values through a data-only stand-in: argparse itself is
    never called.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if not namespaces:
            return torch.load(path, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals([(_StoredNamespace, "argparse.Namespace")]):
            return _plain_namespaces(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(f"{path}: holds pickled Python objects ({found.group(1)}) that a weights-only "
                                  "load refuses; pc3d never runs pickle code from a checkpoint") from exc
        detail = _UNPICKLER_DETAIL.search(str(exc))
        reason = f"UnpicklingError: {detail.group(1)[:160]}" if detail else "its pickle data is not weights-only"
        raise CheckpointError(f"{path}: not a readable torch file ({reason})") from exc
    except Exception as exc:  # torch raises many types for truncated zip / corrupt pickle data
        reason = one_line(exc) if "weights_only" not in str(exc) else "its pickle data is not weights-only"
        raise CheckpointError(f"{path}: not a readable torch file, truncated or corrupt ({reason})") from exc


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a pc3d checkpoint; a missing, truncated or foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pc3d training checkpoint (expected format '{CHECKPOINT_FORMAT}')")
    return state


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest loadable checkpoint of a run and its state; unreadable newer files are skipped with a
    warning (none at all when no checkpoint loads: the caller's error then says so, in one line)."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            skipped.append(exc)
            continue
        for exc in skipped:
            log.warning("skipping unreadable checkpoint: %s", exc)
        return path, state
    return None


def resolve_checkpoint(path_or_run_dir: str | os.PathLike) -> Path:
    """A checkpoint file from a file path or a run directory (its newest loadable checkpoint)."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: run directory has no readable checkpoint in checkpoints/")
        return found[0]
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def rng_state() -> dict[str, Any]:
    """Snapshot of every random generator a training step uses."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                  "has_gauss": np_state[3], "gauss": np_state[4]},
        "python": repr(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["gauss"])))
    random.setstate(_literal_python_state(state["python"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _literal_python_state(text: str) -> tuple:
    import ast

    return ast.literal_eval(text)
