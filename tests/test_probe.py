import numpy as np
import pytest
import torch

from pc3d.encoders import PointViT
from pc3d.eval import ProbeSplits, class_accuracies, extract_global_features, svm_probe


def blobs(n_per_class, classes, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + rng.normal(scale=spread, size=(len(y), dim)), y


def test_svm_probe_separable_blobs_and_test_split():
    x, y = blobs(30, 4, 16, 0.3, 0)
    xt, yt = blobs(10, 4, 16, 0.3, 0)
    splits = ProbeSplits(x[::2], y[::2], x[1::2], y[1::2], xt, yt)
    metrics = svm_probe(splits, ["a", "b", "c", "d"])
    assert metrics["val_accuracy"] == 1.0 and metrics["test_accuracy"] == 1.0
    assert metrics["val_accuracy/c"] == 1.0 and metrics["svm_C"] in (0.01, 0.1, 1.0)


def test_svm_probe_random_labels_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8))
    y = rng.integers(0, 4, size=400)
    metrics = svm_probe(ProbeSplits(x[:300], y[:300], x[300:], y[300:]), list("abcd"))
    assert metrics["val_accuracy"] < 0.45
    assert "test_accuracy" not in metrics


def test_class_accuracies():
    acc = class_accuracies(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["x", "y", "z"])
    assert acc == {"x": 0.5, "y": 1.0}


def test_extract_global_features_shapes_and_levels():
    encoder = PointViT(embed_dim=24, depth=2, num_heads=2, num_groups=8, group_size=8, feature_layers=[0])
    points = np.random.default_rng(0).normal(size=(5, 64, 3)).astype(np.float32)
    last = extract_global_features(encoder, points, batch_size=2)
    both = extract_global_features(encoder, points, batch_size=3, levels="all")
    assert last.shape == (5, 48) and both.shape == (5, 96)
    np.testing.assert_allclose(both[:, 48:], last, atol=1e-5)
    with pytest.raises(ValueError, match="levels"):
        extract_global_features(encoder, points, levels="middle")


def test_random_init_point_vit_probe_beats_chance_on_real_modelnet10(modelnet10_root):
    from pc3d.data.io import read_points
    from pc3d.data.object_dataset import stratified_split
    from pc3d.data.transforms import normalize_unit_sphere

    clouds, labels = [], []
    classes = sorted(p.name for p in modelnet10_root.iterdir() if p.is_dir())
    for c, name in enumerate(classes):
        for f in sorted((modelnet10_root / name / "train").glob("*.pcd"))[:20]:
            clouds.append(normalize_unit_sphere(read_points(f).points))
            labels.append(c)
    points, labels = np.stack(clouds), np.array(labels)
    torch.manual_seed(0)
    encoder = PointViT(embed_dim=96, depth=2, num_heads=3, num_groups=32, group_size=16)
    features = extract_global_features(encoder, points)
    fit, val = stratified_split(labels, 0.3, 0)
    metrics = svm_probe(ProbeSplits(features[fit], labels[fit], features[val], labels[val]), classes)
    assert metrics["val_accuracy"] > 0.4  # chance is 0.1
