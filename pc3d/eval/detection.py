"""3D detection mAP: the VOC-style evaluator of mmdetection3d's ``indoor_eval``.

:func:`evaluate_detections` gives the same AP, recall and mAP values as mmdetection3d's
``mmdet3d/evaluation/functional/indoor_eval.py`` (``indoor_eval`` → ``eval_map_recall`` →
``eval_det_cls`` → ``average_precision(mode="area")``; VoteNet's ``eval_det`` is the same
algorithm) when both get the same boxes and the same IoU function. Per IoU threshold ``t`` and
class ``c``:

* **Pooling and order.** The class-``c`` detections of all scenes are pooled (scene order, then
  the order within a scene) and sorted by descending score with ``np.argsort(-scores)``, the call
  mmdet3d makes (``sorted_ind = np.argsort(-confidence)``). Tied scores are therefore ordered by
  numpy's default sort, which is not stable (even ten tied values leave input order) and, being
  SIMD-dispatched, is not promised to order ties alike on another CPU or numpy build; tie order
  changes the PR curve. With the same pooled array pc3d orders ties exactly as mmdet3d does with
  the same numpy on the same machine.
* **Matching (VOC rule).** Each detection is compared with the ground-truth box of class ``c`` in
  its scene that it overlaps most — matched or not; the first such box when IoUs are equal. It is
  a true positive when that IoU is strictly greater than ``t`` (mmdet3d: ``if iou_max > thresh:``)
  and that box is not yet matched at ``t``; otherwise it is a false positive. So a duplicate is a
  false positive, and so is a detection whose best box is already taken even if it overlaps
  another, unmatched box by more than ``t`` (mmdet3d and VOC do not fall back to the second-best
  box). A detection in a scene with no class-``c`` box is a false positive. Each threshold keeps
  its own matched flags. Labels must agree: a detection never matches a box of another class.
* **AP.** ``recall = cumTP / num_gt``, ``precision = cumTP / max(cumTP + cumFP, eps)``, and
  :func:`average_precision` is the area under the interpolated curve (VOC2010+ "all points":
  precision made non-increasing from the right, summed over the recall steps, with the sentinels
  ``(0, 0)`` and ``(1, 0)``). mmdet3d stores each AP as float32; pc3d keeps float64 (they differ
  by < 1e-7).
* **Recall** of a class is the recall at its last detection: the fraction of its ground-truth
  boxes matched by any detection, with no score cut (mmdet3d ``rec[i][label][-1]``).
* **Which classes count.** Only classes with at least one ground-truth box in any scene are
  reported and averaged; ``mAP<t>`` and ``recall<t>`` are unweighted means over them. A class with
  ground truth and no detections has AP 0 and recall 0 and counts in the means (mmdet3d:
  ``np.zeros(1)``). A class that is predicted but has no ground truth anywhere is left out.
  *Here pc3d deliberately differs from mmdet3d*, which adds an empty ground-truth entry for every
  predicted label, divides recall by zero and reports that class, ``mAP`` and ``mAR`` as NaN.
* **No ignore flags.** mmdet3d has no ``difficult``/ignore handling (only a comment mentions
  it), so neither does pc3d: every ground-truth box counts.

Boxes are ``(N, 7)`` ``[cx, cy, cz, dx, dy, dz, yaw]`` (gravity centre, full sizes, yaw about
+z); the evaluator reads them only through ``iou_fn`` (``pc3d.ops.boxes.box_iou_3d_aligned`` for
ScanNet, ``box_iou_3d`` for SUN RGB-D), called once per (scene, class) on the detections and
ground truth of that class. mmdet3d's ``DepthInstance3DBoxes`` store the *bottom* centre
(``z = cz - dz / 2``) with the same sizes and yaw.

**IoU precision.** pc3d calls ``iou_fn`` on float64 copies of the boxes (exact for float32 input)
and compares its result in float64, so whether a detection clears ``t`` depends on the box values
only, not on their dtype. mmdet3d decides on float32 IoUs (float32 boxes, float32 arithmetic): an
IoU within float32 rounding (~3e-8) of a threshold can fall on the other side there. Example: a
pair whose IoU is ``0.25 + 1e-9`` is a match in pc3d and not in mmdet3d, where it rounds to
``0.25`` (``tests/test_reference_map.py`` pins both).

Metric keys (stable; a threshold ``t`` is written ``round(100 * t)``), values as fractions::

    mAP25, mAP50          mean AP over classes with ground truth
    recall25, recall50    mean recall over the same classes
    AP25/<class>, AP50/<class>, recall25/<class>, recall50/<class>
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from pc3d.errors import ConfigError, DataFormatError

IouFn = Callable[[Tensor, Tensor], Tensor]
"""``(N, 7), (M, 7) -> (N, M)`` IoU of every pair of boxes."""

__all__ = ["IouFn", "SceneBoxes", "SceneDetections", "average_precision", "evaluate_detections"]


@dataclass
class SceneDetections:
    """Detections of one scene: ``boxes (N, 7)`` float, ``scores (N,)`` float, ``labels (N,)`` long."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@dataclass
class SceneBoxes:
    """Ground truth of one scene: ``boxes (M, 7)`` float, ``labels (M,)`` long."""

    boxes: Tensor
    labels: Tensor


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-points interpolated AP: area under the PR curve with non-increasing precision.

    Args:
        recall: ``(D,)`` non-decreasing recall after each detection, in ``[0, 1]``.
        precision: ``(D,)`` precision after each detection, in ``[0, 1]``.
    Returns:
        the AP; 0 for ``D = 0``.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall and precision: expected two (D,) arrays, got shapes {recall.shape} "
                         f"and {precision.shape}")
    for name, values in (("recall", recall), ("precision", precision)):
        if not np.all((values >= 0) & (values <= 1)):
            raise ValueError(f"{name}: expected values in [0, 1] (no NaN)")
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall: expected a non-decreasing sequence")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _threshold_tag(threshold: float) -> str:
    """How a threshold appears in metric keys: ``0.25 -> "25"``."""
    return str(round(threshold * 100))


def evaluate_detections(predictions: Sequence[SceneDetections], ground_truth: Sequence[SceneBoxes], *,
                        iou_thresholds: Sequence[float] = (0.25, 0.5), iou_fn: IouFn,
                        class_names: Sequence[str]) -> dict[str, float]:
    """Per-class AP and recall, and their means, over all scenes (see the module docstring).

    Args:
        predictions: one :class:`SceneDetections` per scene.
        ground_truth: one :class:`SceneBoxes` per scene, in the same order.
        iou_thresholds: a detection matches when its IoU is strictly greater than the threshold.
        iou_fn: ``(N, 7), (M, 7) -> (N, M)`` IoU, e.g. ``pc3d.ops.boxes.box_iou_3d``; called with
            float64 boxes, its result compared in float64.
        class_names: names of labels ``0 .. C-1``.
    Returns:
        the flat metrics ``mAP<t>``, ``recall<t>``, ``AP<t>/<class>``, ``recall<t>/<class>``.
    Raises:
        DataFormatError: a scene's field has the wrong type, shape or dtype, a label out of range,
            a NaN or infinite box, a negative size, NaN scores; ``iou_fn`` gave NaN; or no scene has
            any ground-truth box.
        ConfigError: bad thresholds or class names.
        ValueError: ``iou_fn`` returned the wrong shape or values outside ``[0, 1]``.
    """
    names = _check_class_names(class_names)
    thresholds = _check_thresholds(iou_thresholds)
    if len(predictions) != len(ground_truth):
        raise DataFormatError(f"predictions has {len(predictions)} scenes but ground_truth has "
                              f"{len(ground_truth)}")
    for i, scene in enumerate(predictions):
        _check_scene("predictions", i, scene, SceneDetections, len(names))
    for i, scene in enumerate(ground_truth):
        _check_scene("ground_truth", i, scene, SceneBoxes, len(names))

    matches = _match_scenes(predictions, ground_truth, names, iou_fn)
    per_class = {name: _score_class(m, thresholds) for name, m in zip(names, matches) if m.num_gt}
    if not per_class:
        raise DataFormatError("ground_truth: no scene has a ground-truth box; mAP is undefined")

    tags = [_threshold_tag(t) for t in thresholds]
    metrics: dict[str, float] = {}
    for k, tag in enumerate(tags):
        metrics[f"mAP{tag}"] = float(np.mean([result[k][0] for result in per_class.values()]))
    for k, tag in enumerate(tags):
        metrics[f"recall{tag}"] = float(np.mean([result[k][1] for result in per_class.values()]))
    for field, position in (("AP", 0), ("recall", 1)):
        for k, tag in enumerate(tags):
            metrics.update({f"{field}{tag}/{name}": result[k][position] for name, result in per_class.items()})
    return metrics


@dataclass
class _ClassMatches:
    """One class over all scenes: per detection its score, best IoU and best box; the number of boxes."""

    scores: list[np.ndarray]
    best_iou: list[np.ndarray]
    best_gt: list[np.ndarray]  # a global id per ground-truth box of the class; -1 in a scene without one
    num_gt: int = 0


def _match_scenes(predictions: Sequence[SceneDetections], ground_truth: Sequence[SceneBoxes],
                  names: list[str], iou_fn: IouFn) -> list[_ClassMatches]:
    """Group each scene by label once; one ``iou_fn`` call per (scene, class) with detections and boxes."""
    classes = [_ClassMatches([], [], []) for _ in names]
    for scene, (det, gt) in enumerate(zip(predictions, ground_truth)):
        det_labels, gt_labels = det.labels.cpu().numpy(), gt.labels.cpu().numpy()
        scores = det.scores.detach().cpu()
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.float()
        scores = scores.numpy()
        for label in np.union1d(det_labels, gt_labels).tolist():
            matches = classes[label]
            d, g = np.flatnonzero(det_labels == label), np.flatnonzero(gt_labels == label)
            if len(d):
                matches.scores.append(scores[d])
                if len(g):
                    iou = _class_iou(iou_fn, det.boxes[torch.from_numpy(d).to(det.boxes.device)],
                                     gt.boxes[torch.from_numpy(g).to(gt.boxes.device)], scene, names[label])
                    j = iou.argmax(axis=1)  # the first box on equal IoU, as mmdet3d's strict `iou > iou_max`
                    matches.best_iou.append(iou[np.arange(len(d)), j])
                    matches.best_gt.append(matches.num_gt + j)
                else:
                    matches.best_iou.append(np.full(len(d), -np.inf))
                    matches.best_gt.append(np.full(len(d), -1))
            matches.num_gt += len(g)
    return classes


def _score_class(matches: _ClassMatches, thresholds: list[float]) -> list[tuple[float, float]]:
    """``[(AP, recall)]`` per threshold for a class with ground truth."""
    if not matches.scores:
        return [(0.0, 0.0)] * len(thresholds)
    # The pooled scores are the array mmdet3d sorts (scene order, then detection order; same dtype), and
    # this is its call, so tied scores are ordered as there.
    order = np.argsort(-np.concatenate(matches.scores))
    best_iou = np.concatenate(matches.best_iou)[order]
    best_gt = np.concatenate(matches.best_gt)[order]
    results = []
    for threshold in thresholds:
        passed = np.flatnonzero(best_iou > threshold)
        # A detection above the threshold is a TP iff it is the first (by score) to claim its box.
        _, first = np.unique(best_gt[passed], return_index=True)
        tp = np.zeros(len(order), dtype=np.float64)
        tp[passed[first]] = 1.0
        cum_tp = np.cumsum(tp)
        cum_fp = np.cumsum(1.0 - tp)
        recall = cum_tp / float(matches.num_gt)
        precision = cum_tp / np.maximum(cum_tp + cum_fp, np.finfo(np.float64).eps)
        results.append((average_precision(recall, precision), float(recall[-1])))
    return results


@torch.no_grad()
def _class_iou(iou_fn: IouFn, det_boxes: Tensor, gt_boxes: Tensor, scene: int, name: str) -> np.ndarray:
    """``(n, m)`` float64 IoU of one scene's detections and ground truth of one class."""
    # float64 whatever the input dtype: a float32 IoU can round across a threshold (module docstring)
    det_boxes = det_boxes.to(torch.float64)
    gt_boxes = gt_boxes.to(device=det_boxes.device, dtype=torch.float64)
    iou = iou_fn(det_boxes, gt_boxes)
    expected = (len(det_boxes), len(gt_boxes))
    if not isinstance(iou, Tensor) or tuple(iou.shape) != expected:
        got = tuple(iou.shape) if isinstance(iou, Tensor) else type(iou).__name__
        raise ValueError(f"iou_fn: expected a tensor of shape {expected} for scene {scene}, class {name!r}, "
                         f"got {got}")
    iou = iou.detach().cpu().double().numpy()
    if np.isnan(iou).any():
        raise DataFormatError(f"scene {scene}, class {name!r}: iou_fn returned NaN (degenerate boxes?)")
    if iou.min() < 0 or iou.max() > 1 + 1e-6:
        raise ValueError(f"iou_fn: values outside [0, 1] for scene {scene}, class {name!r} "
                         f"(range {iou.min():.4g}..{iou.max():.4g})")
    return iou


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise ConfigError("class_names: expected a list of strings")
    names = list(class_names)
    if not names:
        raise ConfigError("class_names: expected at least one class")
    if len(set(names)) != len(names):
        raise ConfigError(f"class_names: duplicate names in {names}")
    return names


def _check_thresholds(iou_thresholds: Sequence[float]) -> list[float]:
    if isinstance(iou_thresholds, (str, numbers.Number)):
        raise ConfigError(f"iou_thresholds: expected a list of numbers, got {iou_thresholds!r}")
    thresholds = list(iou_thresholds)
    if not thresholds:
        raise ConfigError("iou_thresholds: expected at least one threshold")
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t < 1:
            raise ConfigError(f"iou_thresholds: expected numbers in [0, 1), got {t!r}")
    tags = [_threshold_tag(t) for t in thresholds]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"iou_thresholds: {thresholds} give duplicate metric keys {tags}")
    return [float(t) for t in thresholds]


def _check_scene(what: str, index: int, scene: object, kind: type, num_classes: int) -> None:
    """Types, shapes, dtypes, finite boxes, non-negative sizes and labels in ``[0, num_classes)``."""
    where = f"{what}[{index}]"
    if not isinstance(scene, kind):
        raise DataFormatError(f"{where}: expected a {kind.__name__}, got {type(scene).__name__}")
    fields = ("boxes", "scores", "labels") if kind is SceneDetections else ("boxes", "labels")
    tensors = {field: getattr(scene, field) for field in fields}
    for field, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise DataFormatError(f"{where}.{field}: expected a torch.Tensor, got {type(tensor).__name__}")
    boxes, labels = tensors["boxes"], tensors["labels"]
    if boxes.dim() != 2 or boxes.shape[1] != 7:
        raise DataFormatError(f"{where}.boxes: expected shape (N, 7) [cx, cy, cz, dx, dy, dz, yaw], "
                              f"got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    for field, tensor in tensors.items():
        if field != "boxes" and tuple(tensor.shape) != (n,):
            raise DataFormatError(f"{where}.{field}: expected shape ({n},) to match boxes, got {tuple(tensor.shape)}")
        if tensor.device != boxes.device:
            raise DataFormatError(f"{where}.{field}: on {tensor.device} but boxes are on {boxes.device}")
    if not boxes.is_floating_point():
        raise DataFormatError(f"{where}.boxes: expected a floating-point tensor, got {boxes.dtype}")
    if not torch.isfinite(boxes).all():
        raise DataFormatError(f"{where}.boxes: NaN or infinite values")
    if (boxes[:, 3:6] < 0).any():
        raise DataFormatError(f"{where}.boxes: negative sizes (columns dx, dy, dz)")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise DataFormatError(f"{where}.labels: expected an integer (long) tensor, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise DataFormatError(f"{where}.labels: label {bad} out of range [0, {num_classes}) "
                              f"({num_classes} class names)")
    if "scores" in tensors:
        scores = tensors["scores"]
        if not scores.is_floating_point():
            raise DataFormatError(f"{where}.scores: expected a floating-point tensor, got {scores.dtype}")
        if torch.isnan(scores).any():
            raise DataFormatError(f"{where}.scores: NaN values")
