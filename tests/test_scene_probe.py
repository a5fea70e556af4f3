"""Scene probe: level sampling, segmentation metrics, linear and kNN probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pc3d.encoders.base import FeatureLevel
from pc3d.errors import ConfigError
from pc3d.eval.scene_probe import (effective_rank, knn_probe, linear_probe, sample_level, scene_point_features,
                                   segmentation_metrics)


def _level(index: torch.Tensor, features: torch.Tensor, stride: float) -> FeatureLevel:
    centres = (index.float() + 0.5) * stride
    return FeatureLevel(features[None], centres[None], torch.ones(1, len(index), dtype=torch.bool), stride)


def test_trilinear_sampling_reproduces_a_linear_field_and_nearest_picks_the_voxel():
    stride = 0.5
    index = torch.stack(torch.meshgrid(*[torch.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (index.float() + 0.5) * stride
    field = centres @ torch.tensor([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]]) + 1.0  # linear, 2 channels
    level = _level(index, field, stride)
    positions = torch.rand(200, 3) * 2.0 + 0.3  # inside the centres' hull: all 8 corners occupied
    sampled = sample_level(level, positions, torch.zeros(200, dtype=torch.long))
    expected = positions @ torch.tensor([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]]) + 1.0
    torch.testing.assert_close(sampled, expected, atol=1e-5, rtol=1e-5)
    nearest = sample_level(level, positions, torch.zeros(200, dtype=torch.long), mode="nearest")
    own = torch.floor(positions / stride).long()
    torch.testing.assert_close(nearest, ((own.float() + 0.5) * stride) @ torch.tensor(
        [[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]]) + 1.0)


def test_trilinear_renormalises_over_occupied_voxels():
    index = torch.tensor([[0, 0, 0], [1, 0, 0]])
    level = _level(index, torch.tensor([[0.0], [10.0]]), 1.0)
    # x = 1.25 sits 3/4 of the way from centre 0.5 to centre 1.5; y, z off-centre with no neighbours
    sampled = sample_level(level, torch.tensor([[1.25, 0.2, 0.9]]), torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(sampled, torch.tensor([[7.5]]))


def test_sampling_refuses_point_tokens():
    level = FeatureLevel(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3), None, 0.0)
    with pytest.raises(ConfigError, match="voxel encoder"):
        sample_level(level, torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))


def test_segmentation_metrics_by_hand():
    truth = np.array([0, 0, 1, 1, 1, 2, -1])
    prediction = np.array([0, 1, 1, 1, 0, 2, 0])
    m = segmentation_metrics(prediction, truth, ["a", "b", "c", "d"])
    # class a: tp 1, fp 1, fn 1 → 1/3; b: tp 2, fp 1, fn 1 → 1/2; c: 1; d absent from truth
    assert m["iou/a"] == pytest.approx(1 / 3) and m["iou/b"] == pytest.approx(0.5) and m["iou/c"] == 1.0
    assert "iou/d" not in m and m["num_classes_present"] == 3
    assert m["miou"] == pytest.approx((1 / 3 + 0.5 + 1.0) / 3)
    assert m["overall_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)


def test_effective_rank_of_known_spectra():
    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(20000, 8, generator=generator)
    assert effective_rank(isotropic, max_rows=20000) == pytest.approx(8.0, rel=0.02)
    line = torch.randn(500, 1, generator=generator) * torch.randn(1, 8, generator=generator) + 5.0
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    # two equal-energy orthogonal directions: exactly 2 (exp of ln 2)
    two = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    assert effective_rank(two) == pytest.approx(2.0, abs=1e-9)
    assert effective_rank(torch.ones(10, 4)) == 0.0


def _clusters(seed: int, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    return centres[labels] + torch.randn(n, 16, generator=generator), labels


def test_linear_and_knn_probes_separate_clusters_and_ignore_unlabelled():
    x, y = _clusters(1)
    y[:100] = -1
    vx, vy = _clusters(2)
    for score in (linear_probe(x, y, 4, steps=200, seed=0), knn_probe(x, y, 4, k=10)):
        probabilities = score(vx)
        assert probabilities.shape == (len(vx), 4)
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(vx)))
        assert (probabilities.argmax(dim=1) == vy).float().mean() > 0.95
    torch.testing.assert_close(linear_probe(x, y, 4, steps=50, seed=3)(vx), linear_probe(x, y, 4, steps=50, seed=3)(vx))
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    # labels carry the signal
    assert (linear_probe(x, shuffled, 4, steps=200)(vx).argmax(dim=1) == vy).float().mean() < 0.6
    with pytest.raises(ConfigError, match="no labelled points"):
        knn_probe(x, torch.full_like(y, -1), 4)


def test_scene_point_features_cover_every_point(shared_data):
    from pc3d.data.scenes import load_scenes
    from pc3d.encoders import SparseUNet

    scene = load_scenes(shared_data / "scannet", "train")[0]
    encoder = SparseUNet(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), blocks=(1,) * 5,
                         dec_blocks=(1,) * 4, voxel_size=0.1, stem_kernel=3, window_size=32, head_dim=8)
    features = scene_point_features(encoder, scene)
    assert features.shape == (len(scene.points), encoder.out_channels)
    assert torch.isfinite(features).all()
    # points in one finest voxel share the stride-1 nearest feature
    nearest = scene_point_features(encoder, scene, interpolation="nearest")
    coord = torch.from_numpy(scene.points)
    voxel = torch.floor((coord - coord.amin(0)) / 0.1).long()
    _, inverse = torch.unique(voxel, dim=0, return_inverse=True)
    first = torch.zeros(int(inverse.max()) + 1, dtype=torch.long).scatter_(0, inverse, torch.arange(len(inverse)))
    torch.testing.assert_close(nearest[:, :8], nearest[first[inverse], :8])
