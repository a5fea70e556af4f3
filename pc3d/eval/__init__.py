"""Downstream evaluators. They read only the encoder output interface."""

from pc3d.eval.object_probe import ProbeSplits, class_accuracies, extract_global_features, svm_probe

__all__ = ["ProbeSplits", "class_accuracies", "extract_global_features", "svm_probe"]
