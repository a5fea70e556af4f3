"""Object probe: frozen encoder → global feature → linear SVM.

Protocol (Point-MAE / Point-M2AE frozen-feature SVM): the encoder runs on the
unaugmented clouds with no masking; each cloud's feature is the encoder's
``global_feature`` ([max ‖ mean] of the final tokens) or, with ``levels="all"``,
the [max ‖ mean] of every exposed level concatenated. A scikit-learn
``LinearSVC`` is fitted on the train part of the seeded stratified split, C is
chosen on the val part from ``Cs``; if the data has an official ``test`` split,
the SVM is refitted on the whole train split with that C and scored on test.

Both encoders' batch-norm statistics are first set to those of the fit shapes
(:func:`calibrate_norm_statistics`, ``norm_stats="data"``, label-free), so that the two differ
only in their weights; ``"stored"`` keeps the checkpoint's statistics and the baseline's init
values (pc3d before 2026-12: it credited pretraining with what batch-norm statistics did).

Label-efficient variant (``labels_per_class=K``): the SVM sees only K seeded shapes per
class of the fit part, the question self-supervised pretraining is meant to answer. It is
repeated for ``label_draws`` seeded draws; C is the one with the best val accuracy averaged
over the draws, and every reported accuracy is the mean over draws of the K-shot SVM (no
refit on the whole train split, which would hand it the labels it is meant not to have).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from pc3d.encoders.base import Encoder, max_mean_pool
from pc3d.encoders.inputs import encoder_input
from pc3d.errors import ConfigError
from pc3d.ops.sparse_conv import SparseVoxels
from pc3d.utils.config import Setting, check_settings
from pc3d.utils.device import move_to
from pc3d.utils.progress import progress


@torch.no_grad()
def calibrate_norm_statistics(encoder: Encoder, samples: Sequence[dict[str, Any]], *, batch_size: int = 64,
                              device: torch.device | str = "cpu") -> int:
    """Set every batch-norm layer's running mean / variance to those of its inputs over all of ``samples``
    (sample dicts as datasets give them, e.g. ``{"points": (N, 3)}``; upstream batch norms normalising by batch
    statistics, as in training).

    Why: with frozen weights, batch-norm statistics alone move a probe more than pretraining does at CPU
    scale. Measured on the embedded shapes (26 labels per class, standardised SVM): one random-init point-ViT
    scored 0.80 test accuracy with its init statistics (mean 0, variance 1) or the shapes' exact statistics, and
    0.91 with the running average one pretraining step at learning rate 1e-12 left, its weights unchanged.
    The probe calibrates every encoder it compares on the same shapes (label-free), so the comparison
    measures the weights: a pretraining run that learned nothing scores exactly its random-init baseline.
    Only the batch-norm layers run in train mode (dropout and drop-path stay off); weights and the other buffers
    are unchanged.

    Returns:
        How many batch-norm layers were calibrated (0: the encoder has none and is untouched).
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    encoder = encoder.to(device).eval()
    moments: dict[nn.Module, list] = {m: [0, 0.0, 0.0] for m in norms}  # rows, mean, sum of squared deviations

    def accumulate(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        x = (x.features if isinstance(x, SparseVoxels) else x).detach()  # the sparse UNet's norms take voxels
        dims = [d for d in range(x.dim()) if d != 1]  # channels are dim 1 for every batch norm
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        rows = x.numel() // x.shape[1]
        total = moments[module]
        count, old_mean, squares = total
        mean, var = mean.double(), var.double()
        delta = mean - old_mean  # Chan et al.'s pairwise update: exact moments over all rows, batch by batch
        total[0] = count + rows
        total[1] = old_mean + delta * rows / total[0]
        total[2] = squares + var * rows + delta * delta * count * rows / total[0]

    tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in norms]
    hooks = [m.register_forward_pre_hook(accumulate) for m in norms]
    for m in norms:
        m.train()  # normalise by batch statistics, as in training, so downstream layers see normalised inputs
    try:
        for start in range(0, len(samples), batch_size):
            encoder(move_to(encoder_input(encoder.spec, list(samples[start:start + batch_size])), device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, count in zip(norms, tracked):
            m.eval()
            if count is not None:
                m.num_batches_tracked.copy_(count)
    for m, (count, mean, squares) in moments.items():
        if count > 1:
            m.running_mean.copy_(mean)
            m.running_var.copy_(squares / (count - 1))
    return len(norms)


@torch.no_grad()
def extract_global_features(encoder: Encoder, points: np.ndarray, *, batch_size: int = 64,
                            device: torch.device | str = "cpu", levels: str = "last") -> np.ndarray:
    """Frozen features of every cloud.

    Args:
        encoder: any pc3d encoder; each cloud becomes its declared input (:mod:`pc3d.encoders.inputs`).
        points: ``(S, N, 3)`` clouds.
        levels: ``"last"`` → ``global_feature``; ``"all"`` → [max ‖ mean] of every level.
    Returns:
        ``(S, C)`` float32 features.
    """
    if levels not in ("last", "all"):
        raise ValueError(f"levels must be 'last' or 'all', got {levels!r}")
    encoder = encoder.to(device).eval()
    spec = encoder.spec
    chunks = []
    for start in progress(range(0, len(points), batch_size), desc="features"):
        samples = [{"points": torch.as_tensor(cloud, dtype=torch.float32)} for cloud in points[start:start + batch_size]]
        out = encoder(move_to(encoder_input(spec, samples), device))
        if levels == "last":
            feature = out.global_feature
        else:
            feature = torch.cat([max_mean_pool(level.features, level.valid) for level in out.levels], dim=-1)
        chunks.append(feature.float().cpu().numpy())
    return np.concatenate(chunks, axis=0)


def class_accuracies(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Accuracy per class present in ``y_true``."""
    return {name: float((y_pred[y_true == c] == c).mean())
            for c, name in enumerate(class_names) if (y_true == c).any()}


def _svm(c: float, standardize: bool, seed: int):
    svm = LinearSVC(C=c, max_iter=5000, random_state=seed)
    return make_pipeline(StandardScaler(), svm) if standardize else svm


def _fit(model, x: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


@dataclass
class ProbeSplits:
    """Features and labels for the probe; ``test`` may be absent."""

    fit_x: np.ndarray
    fit_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None


def labelled_subsets(labels: np.ndarray, per_class: int, draws: int, seed: int,
                     class_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """``draws`` seeded picks of ``per_class`` indices of every class in ``labels`` ``(S,)``.

    ``class_names`` (indexed by label) only name the short class in the error.

    Returns:
        ``draws`` sorted int64 index arrays into ``labels``; draw ``d`` depends only on ``(seed, d)``.
    Raises:
        ConfigError: when a class has fewer than ``per_class`` samples.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if per_class < 1 or draws < 1:
        raise ConfigError(f"probe.labels_per_class={per_class} and probe.label_draws={draws}: expected both >= 1")
    if counts.min() < per_class:
        short = int(classes[counts.argmin()])
        name = f"'{class_names[short]}' (label {short})" if class_names is not None else str(short)
        raise ConfigError(f"probe.labels_per_class={per_class}: class {name} has only "
                          f"{int(counts.min())} shapes in the probe's fit split")
    picks = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        picks.append(np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                             for c in classes])))
    return picks


def _scores(prefix: str, y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    per_class = class_accuracies(y_true, y_pred, class_names)
    return {f"{prefix}_accuracy": float((y_pred == y_true).mean()),
            f"{prefix}_mean_class_accuracy": float(np.mean(list(per_class.values()))),
            **{f"{prefix}_accuracy/{k}": v for k, v in per_class.items()}}


def _mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def svm_probe(splits: ProbeSplits, class_names: Sequence[str], *, Cs: Sequence[float] = (0.01, 0.1, 1.0),
              standardize: bool = False, seed: int = 0, labels_per_class: int | None = None,
              label_draws: int = 1) -> dict[str, Any]:
    """Choose C on val, report val (and test) accuracy, mean-class and per-class accuracy.

    ``labels_per_class=K`` fits every SVM on K seeded shapes per class of ``fit`` only
    (``label_draws`` draws, scores averaged; see the module docstring).

    Returns a flat dict: ``val_accuracy``, ``val_mean_class_accuracy``,
    ``val_accuracy/<class>``, ``svm_C``, and the same ``test_*`` keys when a test split exists.
    """
    if len(splits.fit_y) == 0 or len(splits.val_y) == 0:
        raise ValueError("the probe needs non-empty fit and val splits")
    has_test = splits.test_x is not None and len(splits.test_y) > 0
    if labels_per_class is not None:
        subsets = labelled_subsets(splits.fit_y, labels_per_class, label_draws, seed, class_names)
        best = None
        for c in Cs:
            models = [_fit(_svm(c, standardize, seed), splits.fit_x[i], splits.fit_y[i]) for i in subsets]
            val = [_scores("val", splits.val_y, m.predict(splits.val_x), class_names) for m in models]
            accuracy = float(np.mean([v["val_accuracy"] for v in val]))
            if best is None or accuracy > best[0]:
                best = (accuracy, c, models, val)
        _, c, models, val = best
        metrics: dict[str, Any] = {**_mean_scores(val), "svm_C": c}
        if has_test:
            metrics.update(_mean_scores([_scores("test", splits.test_y, m.predict(splits.test_x), class_names)
                                         for m in models]))
        return metrics
    best = None
    for c in Cs:
        model = _fit(_svm(c, standardize, seed), splits.fit_x, splits.fit_y)
        accuracy = float((model.predict(splits.val_x) == splits.val_y).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    accuracy, c, model = best
    metrics = {**_scores("val", splits.val_y, model.predict(splits.val_x), class_names), "svm_C": c}
    if has_test:
        full_x = np.concatenate([splits.fit_x, splits.val_x])
        full_y = np.concatenate([splits.fit_y, splits.val_y])
        model = _fit(_svm(c, standardize, seed), full_x, full_y)
        metrics.update(_scores("test", splits.test_y, model.predict(splits.test_x), class_names))
    return metrics


PROBE_SETTINGS = {"run": Setting(str), "Cs": Setting("floats", 0.0, open_low=True), "standardize": Setting(bool),
                  "levels": Setting(str, choices=("last", "all")), "batch_size": Setting(int, 1),
                  "baseline": Setting(bool), "labels_per_class": Setting(int, 1, optional=True),
                  "label_draws": Setting(int, 1), "norm_stats": Setting(str, choices=("data", "stored")),
                  "norm_shapes": Setting(int, 2, optional=True)}


def probe_command(cfg) -> dict[str, Any]:
    """``pc3d probe`` (``probe=object_svm``): SVM on frozen global features, beside a random-init baseline."""
    import time
    from pathlib import Path

    from pc3d.train.run import (check_run_settings, check_sample, finish_run, probe_encoders, report, resolve_device,
                                start_run)
    from pc3d.utils.config import call_target

    started = time.perf_counter()
    if cfg.probe.get("levels") not in ("last", "all"):
        raise ConfigError(f"probe.levels={cfg.probe.get('levels')!r}: expected 'last' or 'all'")
    if not isinstance(cfg.probe.get("Cs"), Sequence) or not cfg.probe.Cs or any(
            isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 for c in cfg.probe.Cs):
        raise ConfigError(f"probe.Cs={cfg.probe.get('Cs')}: expected a non-empty list of positive values")
    check_settings("probe", cfg.probe, PROBE_SETTINGS)
    check_run_settings(cfg)
    device = resolve_device(cfg.device)
    data = call_target(cfg.data, "data")
    encoders = probe_encoders(cfg)
    for encoder in encoders.values():
        check_sample(encoder, {"points": data.points(data.fit[:1])[0]})
    if cfg.probe.labels_per_class is not None:  # a class short of labels is refused before anything is written
        labelled_subsets(data.labels(data.fit), cfg.probe.labels_per_class, cfg.probe.label_draws, cfg.seed,
                         data.class_names)
    norm_shapes = data.fit
    if cfg.probe.norm_shapes is not None and cfg.probe.norm_shapes < len(data.fit):
        pick = np.random.default_rng(cfg.seed).choice(len(data.fit), cfg.probe.norm_shapes, replace=False)
        norm_shapes = data.fit[np.sort(pick)]
    out = start_run(cfg, resumable=False)
    order = np.concatenate([data.fit, data.val, data.test])
    bounds = np.cumsum([0, len(data.fit), len(data.val), len(data.test)])
    labels = data.labels(order)
    results: dict[str, dict[str, Any]] = {}
    for name, encoder in encoders.items():
        if cfg.probe.norm_stats == "data":
            calibrate_norm_statistics(encoder, [{"points": torch.as_tensor(c)} for c in data.points(norm_shapes)],
                                      batch_size=cfg.probe.batch_size, device=device)
        features = extract_global_features(encoder, data.points(order), batch_size=cfg.probe.batch_size,
                                           device=device, levels=cfg.probe.levels)
        parts = [(features[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        splits = ProbeSplits(*parts[0], *parts[1], *(parts[2] if len(data.test) else (None, None)))
        results[name] = svm_probe(splits, data.class_names, Cs=list(cfg.probe.Cs),
                                  standardize=cfg.probe.standardize, seed=cfg.seed,
                                  labels_per_class=cfg.probe.labels_per_class, label_draws=cfg.probe.label_draws)
    main = results["pretrained"] if "pretrained" in results else results["random"]
    metrics = dict(main)
    if "random" in results:
        metrics.update({f"random_{k}": v for k, v in results["random"].items()})
    metrics["feature_dim"] = int(features.shape[1])
    metrics["wall_s"] = time.perf_counter() - started
    finish_run(out, metrics)
    source = str(data.cache.manifest.get("source", "data")).split(" ")[0]
    shown = f"{len(data.val)} val" + (f" / {len(data.test)} test" if len(data.test) else "")
    line = f"probe ({Path(source).name}, {shown} shapes"
    if cfg.probe.labels_per_class is not None:
        line += f", SVM on {cfg.probe.labels_per_class} labels per class x {cfg.probe.label_draws} draws"
    line += "): "
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            line += f"{split} accuracy {'pretrained' if 'pretrained' in results else 'random'} " \
                    f"{metrics[f'{split}_accuracy']:.4f}"
            if "pretrained" in results and "random" in results:
                line += f" | random init {metrics[f'random_{split}_accuracy']:.4f}"
            line += "; "
    report(line.rstrip("; ") + f" → {out}")
    return metrics
