"""Downstream evaluators. They read only the encoder output interface."""

from pc3d.eval.classifier import ObjectClassifier, pooled_feature
from pc3d.eval.object_probe import ProbeSplits, class_accuracies, extract_global_features, svm_probe

__all__ = ["ObjectClassifier", "ProbeSplits", "class_accuracies", "extract_global_features", "pooled_feature",
           "svm_probe"]
