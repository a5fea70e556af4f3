"""Downstream evaluators. Probes, fine-tuning and few-shot read only the encoder output interface; the
detection evaluator reads boxes (see :mod:`pc3d.ops.boxes`)."""

from pc3d.eval.classifier import ObjectClassifier, pooled_feature
from pc3d.eval.detection import IouFn, SceneBoxes, SceneDetections, average_precision, evaluate_detections
from pc3d.eval.object_probe import (ProbeSplits, calibrate_norm_statistics, class_accuracies, extract_global_features,
                                    svm_probe)

__all__ = ["IouFn", "ObjectClassifier", "ProbeSplits", "SceneBoxes", "SceneDetections", "average_precision",
           "calibrate_norm_statistics", "class_accuracies", "evaluate_detections", "extract_global_features",
           "pooled_feature", "svm_probe"]
