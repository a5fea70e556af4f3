"""Few-shot classification: the N-way K-shot protocol of Point-BERT / Point-MAE.

For each setting ``[N, K]`` of ``fewshot.settings`` and each of ``fewshot.folds`` folds: N classes
are drawn (all of them when N is the number of classes), K support shapes per class from the
official ``train`` split and ``queries_per_class`` query shapes per class from the ``test`` split —
or, when the data has no test split, from its ``fit`` and ``val`` parts, so supports and queries
are always disjoint. A fold is a pure function of ``(seed, N, K, fold)``. Every class of the data
must have K support and ``queries_per_class`` query candidates (checked for all classes, so whether
a setting runs never depends on which classes a seed draws).

With ``fewshot.folds_file=FILE`` the episodes are read from a JSON fold file instead (Point-MAE's
published ModelNet40 folds, converted once by ``pc3d prep fewshot_folds``; :mod:`pc3d.data.fewshot_folds`):
fold ``i`` of ``[N, K]`` is the file's fold ``i`` of ``<N>w<K>s``, its shapes found in the data by name,
supports in the train split and queries in the test split (``fewshot.queries_per_class`` is then the
file's, not the config's).

Each fold fine-tunes a fresh :class:`~pc3d.eval.classifier.ObjectClassifier` with an N-way head
from the same initial encoder (see :func:`pc3d.eval.finetune.initial_encoder`) on the N·K support
shapes with scale-and-translate augmentation, by the one :class:`~pc3d.train.Trainer` (Point-MAE
``cfgs/fewshot.yaml``: AdamW 5e-4, weight decay 0.05, cosine over 150 epochs with 10 warm-up
epochs, batch min(32, N·K), clip 10; ``trainer.max_steps`` caps the steps of every fold), and
scores it in eval mode on the unaugmented queries. Head weights, batch order and augmentation of
a fold depend only on ``(seed, N, K, fold)``, never on the folds run before it.

Resume: fold ``i`` of ``[N, K]`` trains in ``out_dir/<N>w<K>s/fold<i>/``. With ``resume=auto`` a
finished fold — marked by its ``result.json``, written atomically — is not retrained and an
unfinished one resumes from its newest checkpoint; ``resume=never`` retrains every fold. Unless
``fewshot.keep_checkpoints``, a finished fold's checkpoints are deleted.

Reported: the final model of every fold (Point-MAE's logs keep the best epoch on the queries;
pc3d selects nothing on the evaluation data).

Metric keys (stable) of :func:`run_fewshot`, accuracies as fractions:
    <N>w<K>s_mean, <N>w<K>s_std   mean and population standard deviation (ddof=0) over the folds
    <N>w<K>s_fold<i>              query accuracy of fold i
    init                          "pretrained" or "random"
    query_split                   "test" or "val"
    wall_s                        seconds for the whole run
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from pc3d.data.object_data import ObjectData
from pc3d.data.object_dataset import ObjectDataset
from pc3d.errors import ConfigError, DataFormatError
from pc3d.eval.finetune import (HEAD_SETTINGS, build_classifier, check_protocol, classifier_dataset, initial_encoder,
                                predict_logits)
from pc3d.train.checkpoint import checkpoint_dir
from pc3d.utils.atomic import atomic_write_json
from pc3d.utils.config import Setting, seed_everything, to_plain
from pc3d.utils.progress import get_logger

log = get_logger(__name__)
RESULT_FILE = "result.json"
FEWSHOT_SETTINGS = {**HEAD_SETTINGS, "settings": Setting(Any), "folds": Setting(int, 1),
                    "queries_per_class": Setting(int, 1), "keep_checkpoints": Setting(bool),
                    "folds_file": Setting(str, optional=True)}

__all__ = ["FewShotFold", "RESULT_FILE", "fewshot_pools", "fold_dir", "fold_seed", "folds_from_file", "parse_settings",
           "run_fewshot", "sample_fold", "train_fold"]


@dataclass
class FewShotFold:
    """One N-way K-shot episode; indices are into the data's cache, class-major.

    ``classes (N,)``: the drawn class ids, ascending; ``support (N·K,)`` and ``query (N·Q,)``:
    shape indices; ``support_labels``/``query_labels``: their labels in ``0..N-1`` (position in
    ``classes``).
    """

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def setting_name(way: int, shot: int) -> str:
    return f"{way}w{shot}s"


def parse_settings(settings: Sequence[Sequence[int]], num_classes: int) -> list[tuple[int, int]]:
    """``fewshot.settings`` as ``[(N, K), ...]``; ConfigError for malformed pairs or ``N`` above ``num_classes``."""
    parsed: list[tuple[int, int]] = []
    for item in settings:
        if isinstance(item, (str, bytes)) or len(item) != 2:
            raise ConfigError(f"fewshot.settings: expected [N, K] pairs, got {item!r}")
        way, shot = (int(x) for x in item)
        if way < 2 or shot < 1:
            raise ConfigError(f"fewshot.settings: {setting_name(way, shot)} needs N >= 2 ways and K >= 1 shots")
        if way > num_classes:
            raise ConfigError(f"fewshot.settings: {setting_name(way, shot)} needs {way} classes but the data has "
                              f"{num_classes}")
        if (way, shot) in parsed:
            raise ConfigError(f"fewshot.settings: {setting_name(way, shot)} is listed twice")
        parsed.append((way, shot))
    if not parsed:
        raise ConfigError("fewshot.settings is empty")
    return parsed


def fewshot_pools(data: ObjectData) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Support and query candidates (cache indices) and their split names: train/test, else fit/val."""
    if len(data.test):
        return data.train, data.test, "train", "test"
    return data.fit, data.val, "fit", "val"


def sample_fold(labels: np.ndarray, support_pool: np.ndarray, query_pool: np.ndarray, *, way: int, shot: int,
                queries: int, seed: int, fold: int, class_names: Sequence[str],
                pool_names: tuple[str, str] = ("train", "test")) -> FewShotFold:
    """Draw fold ``fold`` of the ``way``-way ``shot``-shot setting; a pure function of its arguments.

    Args:
        labels: ``(S,)`` class ids of every shape of the cache.
        support_pool, query_pool: candidate shape indices; a shape in both can be a support or a
            query of a fold, never both.
        class_names: the C class names (C = number of classes).
        pool_names: the pools' split names, for messages.
    Raises:
        ConfigError: ``way`` > C, or a class with fewer than ``shot`` support or ``queries`` query
            candidates (every class is checked, drawn or not).
    """
    num_classes = len(class_names)
    name = setting_name(way, shot)
    if way > num_classes:
        raise ConfigError(f"fewshot.settings: {name} needs {way} classes but the data has {num_classes}")
    support_by_class = [support_pool[labels[support_pool] == c] for c in range(num_classes)]
    query_by_class = [query_pool[labels[query_pool] == c] for c in range(num_classes)]
    for c, class_name in enumerate(class_names):
        if len(support_by_class[c]) < shot:
            raise ConfigError(f"fewshot.settings: {name} needs {shot} support shapes per class but class "
                              f"{class_name!r} has {len(support_by_class[c])} in the {pool_names[0]} split")
        if len(query_by_class[c]) < queries:
            raise ConfigError(f"fewshot.queries_per_class={queries} but class {class_name!r} has "
                              f"{len(query_by_class[c])} shapes in the {pool_names[1]} split")
    rng = np.random.default_rng([seed, way, shot, fold])
    classes = np.sort(rng.choice(num_classes, size=way, replace=False))
    support, query = [], []
    for c in classes:
        chosen = rng.choice(support_by_class[c], size=shot, replace=False)
        candidates = np.setdiff1d(query_by_class[c], chosen)  # disjoint even when the pools overlap
        if len(candidates) < queries:
            raise ConfigError(f"fewshot.queries_per_class={queries} but class {class_names[c]!r} has only "
                              f"{len(candidates)} {pool_names[1]} shapes that are not supports of fold {fold}")
        support.append(np.sort(chosen))
        query.append(np.sort(rng.choice(candidates, size=queries, replace=False)))
    local = np.arange(way, dtype=np.int64)
    return FewShotFold(classes=classes.astype(np.int64), support=np.concatenate(support).astype(np.int64),
                       support_labels=np.repeat(local, shot), query=np.concatenate(query).astype(np.int64),
                       query_labels=np.repeat(local, queries))


def folds_from_file(path: str | Path, data: ObjectData, settings: Sequence[tuple[int, int]],
                    folds: int) -> dict[tuple[int, int, int], FewShotFold]:
    """The episodes ``{(N, K, i): fold}`` of a JSON fold file for ``settings`` and folds ``0..folds-1``.

    Raises:
        ConfigError: a setting the file does not hold, or more folds asked for than it has.
        DataFormatError: a class or shape the data does not have, a support outside the train split or a
            query outside the test split, or a fold whose counts are not N classes of K supports.
    """
    from pc3d.data.fewshot_folds import read_fold_file

    path = Path(path)
    content = read_fold_file(path)
    class_ids = {name: i for i, name in enumerate(data.class_names)}
    index = {str(name): i for i, name in enumerate(np.asarray(data.cache.names).tolist())}
    train, test = set(data.train.tolist()), set(data.test.tolist())
    episodes: dict[tuple[int, int, int], FewShotFold] = {}
    for way, shot in settings:
        name = setting_name(way, shot)
        records = content["settings"].get(name)
        if records is None:
            raise ConfigError(f"fewshot.settings: {name} is not in fewshot.folds_file={path} (it holds "
                              f"{', '.join(sorted(content['settings']))})")
        if folds > len(records):
            raise ConfigError(f"fewshot.folds={folds} but fewshot.folds_file={path} holds {len(records)} folds of {name}")
        for i, record in enumerate(records[:folds]):
            where = f"{path}: {name} fold {i}"
            unknown = [c for c in record["classes"] if c not in class_ids]
            if unknown:
                raise DataFormatError(f"{where}: class {unknown[0]!r} is not a class of the data")
            classes = np.array(sorted(class_ids[c] for c in record["classes"]), dtype=np.int64)
            if len(classes) != way or len(set(classes.tolist())) != way:
                raise DataFormatError(f"{where}: {len(record['classes'])} classes, {name} needs {way}")
            position = {int(c): j for j, c in enumerate(classes)}
            parts = {}
            for part, pool, split in (("support", train, "train"), ("query", test, "test")):
                missing = [n for n in record[part] if n not in index]
                if missing:
                    raise DataFormatError(f"{where}: shape {missing[0]!r} is not in the data ({data.cache.root})")
                shapes = np.array([index[n] for n in record[part]], dtype=np.int64)
                outside = [n for n, s in zip(record[part], shapes) if int(s) not in pool]
                if outside:
                    raise DataFormatError(f"{where}: {part} shape {outside[0]!r} is not in the data's {split} split")
                labels = data.cache.labels[shapes]
                stray = [n for n, c in zip(record[part], labels) if int(c) not in position]
                if stray:
                    raise DataFormatError(f"{where}: {part} shape {stray[0]!r} is of none of the fold's classes")
                local = np.array([position[int(c)] for c in labels], dtype=np.int64)
                order = np.lexsort((shapes, local))  # class-major, as sample_fold
                parts[part] = (shapes[order], local[order])
            counts = np.bincount(parts["support"][1], minlength=way)
            if not (counts == shot).all():
                raise DataFormatError(f"{where}: supports per class {counts.tolist()}, {name} needs {shot}")
            if np.intersect1d(parts["support"][0], parts["query"][0]).size:
                raise DataFormatError(f"{where}: a shape is both a support and a query")
            episodes[way, shot, i] = FewShotFold(classes=classes, support=parts["support"][0],
                                                 support_labels=parts["support"][1], query=parts["query"][0],
                                                 query_labels=parts["query"][1])
    return episodes


def fold_seed(seed: int, way: int, shot: int, fold: int) -> int:
    """The seed of a fold's head weights, batch order and augmentation (independent of other folds)."""
    return int(np.random.SeedSequence([seed, way, shot, fold]).generate_state(1)[0])


def fold_dir(out_dir: str | Path, way: int, shot: int, fold: int) -> Path:
    return Path(out_dir) / setting_name(way, shot) / f"fold{fold}"


def _fold_record(fold: FewShotFold, class_names: Sequence[str]) -> dict[str, Any]:
    return {"classes": [class_names[c] for c in fold.classes], "support": fold.support.tolist(),
            "query": fold.query.tolist()}


def _finished(folder: Path, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored result of a finished fold, None if unfinished; it must be the same episode."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        accuracy = float(result["accuracy"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{path}: unreadable fold result ({exc}); delete it to rerun the fold") from exc
    if any(result.get(key) != value for key, value in record.items()):
        raise ConfigError(f"{path}: holds a fold with other classes or shapes (another seed, data or "
                          "settings?); use another out_dir or delete it")
    return {**result, "accuracy": accuracy}


def train_fold(encoder: nn.Module, fold: FewShotFold, data: ObjectData, folder: str | Path, *,
               protocol: Mapping[str, Any], trainer_settings: Mapping[str, Any], seed: int, device: str,
               resume: str = "auto", run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` with a fresh head on the support shapes, score it on the queries.

    Args:
        encoder: the initial encoder (not modified).
        folder: the fold's run directory; with ``resume="auto"`` a ``result.json`` there means the
            fold is done and is returned as stored (its episode must match ``fold``).
        protocol: the ``fewshot`` config node (head and evaluation settings, ``keep_checkpoints``).
        trainer_settings: :class:`~pc3d.train.TrainerConfig` fields; ``batch_size`` is capped at N·K.
        seed: the fold's seed (:func:`fold_seed`).
        resume: ``"auto"`` or ``"never"`` (retrain, ignoring a stored result and checkpoints).
    Returns:
        ``{"accuracy", "classes", "support", "query", "steps", "train_final_loss"}``, as stored in
        ``result.json``.
    """
    from pc3d.train import Trainer, TrainerConfig, resolve_device

    folder = Path(folder)
    record = _fold_record(fold, data.class_names)
    done = _finished(folder, record) if resume == "auto" else None
    if done is not None:
        log.info("%s: fold already finished (accuracy %.4f), not retrained", folder, done["accuracy"])
        return done
    way = len(fold.classes)
    # Labels of this episode (0..N-1) at the cache positions of its shapes; other shapes are never read.
    episode_labels = np.full(len(data.cache.labels), -1, dtype=np.int64)
    episode_labels[fold.support] = fold.support_labels
    episode_labels[fold.query] = fold.query_labels
    seed_everything(seed)
    model = build_classifier(copy.deepcopy(encoder), way, protocol)
    support_set = ObjectDataset(data.cache.points, episode_labels, num_points=data.num_points, augment=True,
                                seed=seed, indices=fold.support)
    settings = {**trainer_settings, "batch_size": min(int(trainer_settings["batch_size"]), len(fold.support))}
    trainer_cfg = TrainerConfig.from_settings({**settings, "seed": seed, "device": device, "resume": resume})
    fit = Trainer(model, classifier_dataset(model, support_set), trainer_cfg, folder,
                  run_config=dict(run_config or {})).fit()
    query_set = ObjectDataset(data.cache.points, episode_labels, num_points=data.num_points, augment=False,
                              seed=seed, indices=fold.query)
    logits = predict_logits(model, query_set, batch_size=int(protocol["eval_batch_size"]),
                            device=resolve_device(device))
    result = {"accuracy": float((logits.argmax(axis=1) == fold.query_labels).mean()), **record,
              "steps": fit["steps"], "train_final_loss": fit["final_loss"]}
    atomic_write_json(folder / RESULT_FILE, result)  # from here on the fold counts as finished
    if not protocol["keep_checkpoints"]:
        shutil.rmtree(checkpoint_dir(folder), ignore_errors=True)
    return result


def run_fewshot(cfg) -> dict[str, Any]:
    """Run every setting and fold of ``configs/fewshot.yaml``; returns the flat metrics of the module docstring.

    Every fold is drawn (and so every setting and class count validated) before anything is
    written; ``config.yaml`` and ``metrics.json`` go to ``out_dir``.
    """
    from pc3d.train.run import check_run_settings, check_sample, finish_run, report, resolve_device, start_run
    from pc3d.utils.config import call_target

    started = time.perf_counter()
    protocol = to_plain(cfg.fewshot)
    check_protocol(protocol, "fewshot", FEWSHOT_SETTINGS)
    check_run_settings(cfg)
    folds, queries = int(protocol["folds"]), int(protocol["queries_per_class"])
    if folds < 1:
        raise ConfigError(f"fewshot.folds must be >= 1, got {folds}")
    if queries < 1:
        raise ConfigError(f"fewshot.queries_per_class must be >= 1, got {queries}")
    if str(cfg.resume) not in ("auto", "never"):
        raise ConfigError(f"resume={cfg.resume}: few-shot runs resume fold by fold; use auto or never")
    resolve_device(cfg.device)  # a bad device fails before anything is written
    data = call_target(cfg.data, "data")
    settings = parse_settings(protocol["settings"], len(data.class_names))
    support_pool, query_pool, support_split, query_split = fewshot_pools(data)
    if protocol.get("folds_file"):
        if not len(data.test):
            raise ConfigError("fewshot.folds_file: the published folds take queries from a test split, and the data "
                              "has none")
        episodes = folds_from_file(protocol["folds_file"], data, settings, folds)
        query_split = "test"
    else:
        episodes = {(way, shot, i): sample_fold(data.cache.labels, support_pool, query_pool, way=way, shot=shot,
                                                queries=queries, seed=cfg.seed, fold=i, class_names=data.class_names,
                                                pool_names=(support_split, query_split))
                    for way, shot in settings for i in range(folds)}
    encoder, encoder_config, init = initial_encoder(cfg.checkpoint, cfg.encoder, cls_token=protocol["cls_token"],
                                                    seed=cfg.seed)
    run_config = {**to_plain(cfg), "encoder": encoder_config}
    check_sample(encoder, {"points": data.points(data.train[:1])[0]})
    out = start_run(run_config)  # checks out_dir (a run of other settings is refused), then takes it

    metrics: dict[str, Any] = {"init": init, "query_split": query_split,
                               "folds_from": str(protocol.get("folds_file") or "seeded")}
    trainer_settings = to_plain(cfg.trainer)
    for way, shot in settings:
        name = setting_name(way, shot)
        accuracies = []
        for i in range(folds):
            result = train_fold(encoder, episodes[way, shot, i], data, fold_dir(out, way, shot, i),
                                protocol=protocol, trainer_settings=trainer_settings,
                                seed=fold_seed(cfg.seed, way, shot, i), device=str(cfg.device),
                                resume=str(cfg.resume), run_config=run_config)
            accuracies.append(result["accuracy"])
            metrics[f"{name}_fold{i}"] = result["accuracy"]
            log.info("%s fold %d/%d: accuracy %.4f", name, i + 1, folds, result["accuracy"])
        metrics[f"{name}_mean"] = float(np.mean(accuracies))
        metrics[f"{name}_std"] = float(np.std(accuracies))  # population (ddof=0), over the folds
    metrics["wall_s"] = time.perf_counter() - started
    finish_run(out, metrics)
    summary = "; ".join(f"{setting_name(w, s)} {metrics[f'{setting_name(w, s)}_mean']:.4f} ± "
                        f"{metrics[f'{setting_name(w, s)}_std']:.4f}" for w, s in settings)
    report(f"fewshot ({init}, {folds} folds, queries from {query_split}): {summary} → {out}")
    return metrics
