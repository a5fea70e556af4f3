import numpy as np
import pytest
import torch

from pc3d.encoders import PointViT
from pc3d.errors import ConfigError
from pc3d.eval import ProbeSplits, class_accuracies, extract_global_features, svm_probe
from pc3d.eval.object_probe import calibrate_norm_statistics, labelled_subsets


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


def test_labelled_subsets_pick_k_per_class_seeded():
    labels = np.repeat([2, 0, 1], [7, 5, 9])
    picks = labelled_subsets(labels, 4, 3, seed=5)
    assert len(picks) == 3
    for pick in picks:
        assert np.array_equal(np.bincount(labels[pick]), [4, 4, 4]) and len(set(pick.tolist())) == 12
    assert not all(np.array_equal(picks[0], p) for p in picks[1:])
    again = labelled_subsets(labels, 4, 2, seed=5)  # draw d depends on (seed, d) only
    assert all(np.array_equal(a, b) for a, b in zip(again, picks))
    with pytest.raises(ConfigError, match="labels_per_class=6: class 0 has only 5"):
        labelled_subsets(labels, 6, 1, seed=0)
    with pytest.raises(ConfigError, match="class 'chair' \\(label 0\\) has only 5"):
        labelled_subsets(labels, 6, 1, seed=0, class_names=["chair", "desk", "bed"])
    with pytest.raises(ConfigError, match="label_draws=0"):
        labelled_subsets(labels, 2, 0, seed=0)


def test_svm_probe_few_labels_fits_only_the_draws_and_averages():
    from sklearn.svm import LinearSVC

    x, y = blobs(20, 3, 6, 2.5, 3)  # overlapping: few labels must score below many
    xt, yt = blobs(30, 3, 6, 2.5, 3)
    splits = ProbeSplits(x[::2], y[::2], x[1::2], y[1::2], xt, yt)
    few = svm_probe(splits, list("abc"), Cs=[0.1], labels_per_class=2, label_draws=4, seed=1)
    expected = []
    for pick in labelled_subsets(splits.fit_y, 2, 4, seed=1):
        model = LinearSVC(C=0.1, max_iter=5000, random_state=1).fit(splits.fit_x[pick], splits.fit_y[pick])
        expected.append(((model.predict(splits.val_x) == splits.val_y).mean(),
                         (model.predict(xt) == yt).mean()))
    assert few["val_accuracy"] == pytest.approx(np.mean([e[0] for e in expected]), abs=1e-12)
    assert few["test_accuracy"] == pytest.approx(np.mean([e[1] for e in expected]), abs=1e-12)
    full = svm_probe(splits, list("abc"), Cs=[0.1], seed=1)
    assert few["test_accuracy"] < full["test_accuracy"]


def test_calibrate_norm_statistics_sets_exact_statistics_of_the_data():
    torch.manual_seed(0)
    encoder = PointViT(embed_dim=24, depth=1, num_heads=2, num_groups=8, group_size=8)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms
    seen = []
    first = norms[0]
    hook = first.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    points = np.random.default_rng(0).normal(size=(10, 64, 3)).astype(np.float32)
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running" not in k}
    samples = [{"points": torch.as_tensor(c)} for c in points]
    assert calibrate_norm_statistics(encoder, samples, batch_size=4) == len(norms)
    hook.remove()
    x = torch.cat([t.transpose(1, -1).reshape(-1, t.shape[1]) for t in seen])  # (rows, C): every batch's inputs
    torch.testing.assert_close(first.running_mean, x.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first.running_var, x.var(0, unbiased=True), atol=1e-5, rtol=1e-3)
    assert not encoder.training and all(not m.training for m in encoder.modules())
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in weights.items())
    assert calibrate_norm_statistics(torch.nn.Sequential(torch.nn.Linear(3, 3)), samples) == 0


def test_calibrate_norm_statistics_of_a_sparse_unet():
    from pc3d.encoders import SparseUNet

    torch.manual_seed(0)
    encoder = SparseUNet(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), blocks=(1,) * 5,
                         dec_blocks=(1,) * 4, head_dim=8, backend="torch")
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    rng = np.random.default_rng(0)
    samples = [{key: torch.as_tensor(rng.uniform(0, 1, (300, 3)), dtype=torch.float32)
                for key in ("points", "colors", "normals")} for _ in range(3)]
    assert calibrate_norm_statistics(encoder, samples, batch_size=2) == len(norms) > 0
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in norms)


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
