"""Object probe: frozen encoder → global feature → linear SVM.

Protocol (Point-MAE / Point-M2AE frozen-feature SVM): the encoder runs on the
unaugmented clouds with no masking; each cloud's feature is the encoder's
``global_feature`` ([max ‖ mean] of the final tokens) or, with ``levels="all"``,
the [max ‖ mean] of every exposed level concatenated. A scikit-learn
``LinearSVC`` is fitted on the train part of the seeded stratified split, C is
chosen on the val part from ``Cs``; if the data has an official ``test`` split,
the SVM is refitted on the whole train split with that C and scored on test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from pc3d.encoders.base import Encoder, max_mean_pool
from pc3d.encoders.inputs import encoder_input
from pc3d.errors import ConfigError
from pc3d.utils.config import Setting, check_settings
from pc3d.utils.device import move_to
from pc3d.utils.progress import progress


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


def svm_probe(splits: ProbeSplits, class_names: Sequence[str], *, Cs: Sequence[float] = (0.01, 0.1, 1.0),
              standardize: bool = False, seed: int = 0) -> dict[str, Any]:
    """Choose C on val, report val (and test) accuracy, mean-class and per-class accuracy.

    Returns a flat dict: ``val_accuracy``, ``val_mean_class_accuracy``,
    ``val_accuracy/<class>``, ``svm_C``, and the same ``test_*`` keys when a test split exists.
    """
    if len(splits.fit_y) == 0 or len(splits.val_y) == 0:
        raise ValueError("the probe needs non-empty fit and val splits")
    best = None
    for c in Cs:
        model = _fit(_svm(c, standardize, seed), splits.fit_x, splits.fit_y)
        accuracy = float((model.predict(splits.val_x) == splits.val_y).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    accuracy, c, model = best
    val_pred = model.predict(splits.val_x)
    per_class = class_accuracies(splits.val_y, val_pred, class_names)
    metrics: dict[str, Any] = {
        "val_accuracy": accuracy,
        "val_mean_class_accuracy": float(np.mean(list(per_class.values()))),
        "svm_C": c,
        **{f"val_accuracy/{k}": v for k, v in per_class.items()},
    }
    if splits.test_x is not None and len(splits.test_y):
        full_x = np.concatenate([splits.fit_x, splits.val_x])
        full_y = np.concatenate([splits.fit_y, splits.val_y])
        model = _fit(_svm(c, standardize, seed), full_x, full_y)
        test_pred = model.predict(splits.test_x)
        per_class = class_accuracies(splits.test_y, test_pred, class_names)
        metrics["test_accuracy"] = float((test_pred == splits.test_y).mean())
        metrics["test_mean_class_accuracy"] = float(np.mean(list(per_class.values())))
        metrics.update({f"test_accuracy/{k}": v for k, v in per_class.items()})
    return metrics


PROBE_SETTINGS = {"run": Setting(str), "Cs": Setting("floats", 0.0, open_low=True), "standardize": Setting(bool),
                  "levels": Setting(str, choices=("last", "all")), "batch_size": Setting(int, 1),
                  "baseline": Setting(bool)}


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
    out = start_run(cfg, resumable=False)
    order = np.concatenate([data.fit, data.val, data.test])
    bounds = np.cumsum([0, len(data.fit), len(data.val), len(data.test)])
    labels = data.labels(order)
    results: dict[str, dict[str, Any]] = {}
    for name, encoder in encoders.items():
        features = extract_global_features(encoder, data.points(order), batch_size=cfg.probe.batch_size,
                                           device=device, levels=cfg.probe.levels)
        parts = [(features[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        splits = ProbeSplits(*parts[0], *parts[1], *(parts[2] if len(data.test) else (None, None)))
        results[name] = svm_probe(splits, data.class_names, Cs=list(cfg.probe.Cs),
                                  standardize=cfg.probe.standardize, seed=cfg.seed)
    main = results["pretrained"] if "pretrained" in results else results["random"]
    metrics = dict(main)
    if "random" in results:
        metrics.update({f"random_{k}": v for k, v in results["random"].items()})
    metrics["feature_dim"] = int(features.shape[1])
    metrics["wall_s"] = time.perf_counter() - started
    finish_run(out, metrics)
    source = str(data.cache.manifest.get("source", "data")).split(" ")[0]
    line = f"probe ({Path(source).name}, {len(data.val)} val shapes): "
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            line += f"{split} accuracy {'pretrained' if 'pretrained' in results else 'random'} " \
                    f"{metrics[f'{split}_accuracy']:.4f}"
            if "pretrained" in results and "random" in results:
                line += f" | random init {metrics[f'random_{split}_accuracy']:.4f}"
            line += "; "
    report(line.rstrip("; ") + f" → {out}")
    return metrics
