"""Few-shot folds as files: Point-MAE's published pickles converted once into pc3d's JSON fold format.

Point-MAE (and Point-BERT, whose folds it uses) ship the ModelNet40 few-shot episodes as pickles::

    SRC/<W>way_<K>shot/<i>.pkl     (DATASET.md draws the folder as <W>way<K>shot/; both are read)

each ``{"train": [(points, j, label), ...], "test": [...]}``: the ``W·K`` support and ``W·20`` query
shapes of fold ``i``, ``points`` a ``(8192, 6)`` float32 array (rows of the ModelNet40 file, by FPS),
``j`` the episode label in ``0..W-1`` and ``label`` the ModelNet40 class id. Unpickling can run code, so
pc3d never opens them unless asked (``allow_pickle=true``) and then only through
:func:`pc3d.data.io.read_numpy_pickle`, which rebuilds numpy arrays and plain containers and refuses
anything else. The pickles name no shapes; :func:`convert_point_mae_folds` finds each one in the
ModelNet40 download (``modelnet40_normal_resampled``, the ``.txt`` files or the ``.dat`` pickles): the
shape of that class and split whose rows hold every row of the fold's cloud. The result is a JSON file::

    {"format": "pc3d-fewshot-folds", "version": 1, "dataset": "modelnet40", "source": ..., "modelnet": ...,
     "settings": {"5w10s": [{"classes": [names], "support": [shape names], "query": [shape names]}, ...]}}

with shape names as in a ModelNet40 cache (``<class>/<shape id>.txt``), so ``pc3d fewshot
fewshot.folds_file=FILE data=modelnet40`` runs exactly the published episodes on any cache of that
dataset. (The episode labels are pc3d's: a fold's classes in ascending class id, as for its seeded
folds; Point-MAE numbers them in drawing order. A fresh head is trained per fold, so this only
permutes the head's outputs.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger, progress

__all__ = ["FOLDS_FORMAT", "FOLDS_VERSION", "convert_point_mae_folds", "find_point_mae_folds", "read_fold_file",
           "read_point_mae_fold"]

FOLDS_FORMAT = "pc3d-fewshot-folds"
FOLDS_VERSION = 1
_SETTING = re.compile(r"^(\d+)way_?(\d+)shot$")
_log = get_logger("pc3d.data")


def find_point_mae_folds(src: str | os.PathLike) -> dict[tuple[int, int], list[Path]]:
    """``{(W, K): [fold 0 .pkl, fold 1 .pkl, ...]}`` of ``SRC/<W>way_<K>shot/<i>.pkl``; the folds of a
    setting must be numbered ``0..n-1`` (DataFormatError naming the first gap)."""
    src = Path(src)
    if not src.is_dir():
        raise DataFormatError(f"{src}: folder of few-shot folds not found (expected SRC/<W>way_<K>shot/<i>.pkl)")
    found: dict[tuple[int, int], list[Path]] = {}
    for folder in sorted(src.iterdir()):
        match = _SETTING.match(folder.name)
        if not match or not folder.is_dir():
            continue
        numbered = {int(p.stem): p for p in folder.glob("*.pkl") if p.stem.isdigit()}
        if not numbered:
            raise DataFormatError(f"{folder}: no <i>.pkl fold files")
        gap = next((i for i in range(len(numbered)) if i not in numbered), None)
        if gap is not None:
            raise DataFormatError(f"{folder / f'{gap}.pkl'}: missing (folds must be numbered 0..{len(numbered) - 1})")
        setting = (int(match.group(1)), int(match.group(2)))
        if setting in found:
            raise DataFormatError(f"{folder}: a second folder for {setting[0]}-way {setting[1]}-shot")
        found[setting] = [numbered[i] for i in range(len(numbered))]
    if not found:
        raise DataFormatError(f"{src}: no <W>way_<K>shot/ folders of fold pickles")
    return found


def read_point_mae_fold(path: Path, way: int, shot: int) -> dict[str, list[tuple[np.ndarray, int, int]]]:
    """One fold pickle, checked: ``{"train": [(xyz (M, 3) float32, j, class id)], "test": [...]}`` with ``way``
    classes, ``shot`` supports per class and the same number of queries for every class."""
    from pc3d.data.io import read_numpy_pickle

    content = read_numpy_pickle(path)
    if not isinstance(content, dict) or set(content) != {"train", "test"}:
        raise DataFormatError(f"{path}: expected a dict with 'train' and 'test' lists")
    out: dict[str, list[tuple[np.ndarray, int, int]]] = {}
    episode: dict[int, int] = {}
    for part in ("train", "test"):
        items = content[part]
        if not isinstance(items, (list, tuple)) or not items:
            raise DataFormatError(f"{path}: '{part}' must be a non-empty list of (points, label, class) tuples")
        rows = []
        for n, item in enumerate(items):
            if not isinstance(item, (list, tuple)) or len(item) != 3 or not isinstance(item[0], np.ndarray):
                raise DataFormatError(f"{path}: {part}[{n}] is not a (points, label, class) tuple")
            points, local, label = item
            if points.ndim != 2 or points.shape[1] < 3 or points.shape[0] == 0 or points.dtype.kind != "f":
                raise DataFormatError(f"{path}: {part}[{n}] points are {points.shape} {points.dtype}, expected (M, >=3)")
            try:
                local, label = int(local), int(np.asarray(label).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise DataFormatError(f"{path}: {part}[{n}] labels are not integers") from None
            if episode.setdefault(local, label) != label:
                raise DataFormatError(f"{path}: episode label {local} stands for classes {episode[local]} and {label}")
            rows.append((np.ascontiguousarray(points[:, :3], dtype=np.float32), local, label))
        out[part] = rows
    per_class = {part: np.bincount([r[1] for r in rows], minlength=way) for part, rows in out.items()}
    if len(episode) != way or sorted(episode) != list(range(way)):
        raise DataFormatError(f"{path}: {len(episode)} episode classes, the folder says {way}-way")
    if not (per_class["train"] == shot).all():
        raise DataFormatError(f"{path}: supports per class {per_class['train'].tolist()}, the folder says {shot}-shot")
    if len(set(per_class["test"].tolist())) != 1:
        raise DataFormatError(f"{path}: queries per class differ ({per_class['test'].tolist()})")
    return out


def _row_keys(xyz: np.ndarray) -> np.ndarray:
    """``(M,)`` uint64 keys of the exact float32 rows of ``xyz (M, 3)`` (equal rows, equal keys)."""
    bits = np.ascontiguousarray(xyz, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (bits[:, 0] << np.uint64(32) | bits[:, 1]) ^ (bits[:, 2] * np.uint64(0x9E3779B97F4A7C15))


def _match(clouds: list[np.ndarray], candidates: list[tuple[str, np.ndarray]], what: str) -> list[str]:
    """The candidate holding every row of each cloud ``(M, 3)``; ``candidates``: ``(name, sorted unique row keys)``
    (DataFormatError naming ``what`` when not exactly one does)."""
    if not candidates:
        raise DataFormatError(f"{what}: the ModelNet40 download has no shape of this class and split")
    flat = np.concatenate([keys for _, keys in candidates])
    owner = np.repeat(np.arange(len(candidates)), [len(keys) for _, keys in candidates])
    order = np.argsort(flat, kind="stable")
    flat, owner = flat[order], owner[order]
    names = []
    for n, cloud in enumerate(clouds):
        query = _row_keys(cloud)
        lo, hi = np.searchsorted(flat, query[0], "left"), np.searchsorted(flat, query[0], "right")
        chosen = [int(c) for c in np.unique(owner[lo:hi]) if np.isin(query, candidates[int(c)][1]).all()]
        if len(chosen) != 1:
            raise DataFormatError(f"{what} entry {n}: {'no' if not chosen else 'more than one'} shape of the "
                                  "ModelNet40 download holds its points (another release of ModelNet40?)")
        names.append(candidates[chosen[0]][0])
    return names


def _check_dst(dst: Path, force: bool) -> None:
    from pc3d.data.io import read_json

    if force or not dst.exists():
        return
    found = None
    if dst.is_file():
        try:
            content = read_json(dst)
            found = content.get("format") if isinstance(content, dict) else None
        except DataFormatError:
            found = None
    if found != FOLDS_FORMAT:
        raise ConfigError(f"dst={dst} exists and is not a {FOLDS_FORMAT} file; choose a new file name, or pass "
                          "force=true to replace it")


def convert_point_mae_folds(src: str | os.PathLike, dst: str | os.PathLike, modelnet: str | os.PathLike, *,
                            allow_pickle: bool = False, num_category: int = 40, force: bool = False) -> dict[str, Any]:
    """Convert the fold pickles under ``src`` into the JSON fold file ``dst`` (module docstring).

    Args:
        src: ``ModelNetFewshot/`` (``<W>way_<K>shot/<i>.pkl``).
        dst: the ``.json`` file to write (atomically, after every fold was matched).
        modelnet: the ``modelnet40_normal_resampled`` folder the folds were drawn from.
        allow_pickle: must be True: the explicit consent to open the pickles (restricted unpickling).
        force: replace a ``dst`` that is not a fold file.
    Returns:
        The written content.
    """
    from pc3d.data.modelnet40 import list_modelnet40, modelnet40_source, raw_shapes
    from pc3d.utils.atomic import atomic_write_json

    src_p, dst_p, modelnet_p = Path(src), Path(dst), Path(modelnet)
    if not allow_pickle:
        raise ConfigError(f"src={src_p}: Point-MAE's few-shot folds are pickles, which pc3d opens only when asked; "
                          "pass allow_pickle=true (restricted unpickling: numpy arrays and plain containers only)")
    _check_dst(dst_p, force)
    settings = find_point_mae_folds(src_p)
    if not modelnet_p.is_dir():
        raise DataFormatError(f"{modelnet_p}: ModelNet40 folder not found (modelnet=modelnet40_normal_resampled)")
    classes, entries = list_modelnet40(modelnet_p, num_category)
    source = modelnet40_source(modelnet_p, entries, num_category, allow_pickle=True)
    folds = {(setting, i): read_point_mae_fold(path, *setting) for setting, paths in settings.items()
             for i, path in enumerate(paths)}
    for (setting, i), fold in folds.items():
        bad = [label for part in fold.values() for _, _, label in part if not 0 <= label < len(classes)]
        if bad:
            raise DataFormatError(f"{settings[setting][i]}: class id {bad[0]} is not one of the "
                                  f"{len(classes)} ModelNet{num_category} classes")
    wanted = {("train" if part == "train" else "test", label) for fold in folds.values() for part, rows in fold.items()
              for _, _, label in rows}
    by_group: dict[tuple[str, int], list[tuple[str, np.ndarray]]] = {group: [] for group in wanted}
    needed = [e for e in entries if (e.split, e.label) in wanted]
    for entry, xyz, _ in progress(raw_shapes(modelnet_p, needed, source, num_category), total=len(needed),
                                  desc="reading ModelNet40 to place the folds"):
        by_group[entry.split, entry.label].append((entry.name, np.unique(_row_keys(xyz))))
    names: dict[tuple[tuple[int, int], int, str], list[str]] = {}
    for (setting, i), fold in folds.items():
        for part, rows in fold.items():
            split = "train" if part == "train" else "test"
            matched = [""] * len(rows)
            for label in sorted({r[2] for r in rows}):
                positions = [n for n, r in enumerate(rows) if r[2] == label]
                found = _match([rows[n][0] for n in positions], by_group[split, label],
                               f"{settings[setting][i]}: {part} class {classes[label]}")
                for n, name in zip(positions, found):
                    matched[n] = name
            names[setting, i, part] = matched
    content: dict[str, Any] = {"format": FOLDS_FORMAT, "version": FOLDS_VERSION, "dataset": f"modelnet{num_category}",
                               "source": str(src_p.resolve()), "modelnet": str(modelnet_p.resolve()), "settings": {}}
    for (way, shot), paths in sorted(settings.items()):
        records = []
        for i in range(len(paths)):
            fold = folds[(way, shot), i]
            ids = sorted({label for _, _, label in fold["train"]})
            records.append({"classes": [classes[c] for c in ids],
                            "support": sorted(names[(way, shot), i, "train"]),
                            "query": sorted(names[(way, shot), i, "test"])})
        content["settings"][f"{way}w{shot}s"] = records
    atomic_write_json(dst_p, content)
    return content


def read_fold_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON fold file (:func:`convert_point_mae_folds`), checked: ``{"5w10s": [{"classes", "support", "query"}]}``
    under ``settings``."""
    from pc3d.data.io import read_json

    path = Path(path)
    content = read_json(path)
    if not isinstance(content, dict) or content.get("format") != FOLDS_FORMAT:
        raise DataFormatError(f"{path}: not a {FOLDS_FORMAT} file (make one with `pc3d prep fewshot_folds`)")
    if content.get("version") != FOLDS_VERSION:
        raise DataFormatError(f"{path}: fold file version {content.get('version')!r}, this pc3d reads {FOLDS_VERSION}")
    settings = content.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise DataFormatError(f"{path}: 'settings' must map '<N>w<K>s' to lists of folds")
    for name, records in settings.items():
        if not re.fullmatch(r"\d+w\d+s", str(name)) or not isinstance(records, list) or not records:
            raise DataFormatError(f"{path}: settings[{name!r}] must be a non-empty list of folds")
        for i, record in enumerate(records):
            if not isinstance(record, dict) or any(not isinstance(record.get(k), list) or not record.get(k) or
                                                   not all(isinstance(v, str) for v in record[k])
                                                   for k in ("classes", "support", "query")):
                raise DataFormatError(f"{path}: settings[{name!r}][{i}] needs lists of names 'classes', 'support', "
                                      "'query'")
    return content
