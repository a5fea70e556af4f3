"""Masked Scene Modeling: masks, level correspondence, EMA teacher, gradients, loss on real scans."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pc3d.data.scene_dataset import SceneViewDataset
from pc3d.data.scenes import load_scenes
from pc3d.encoders import SparseUNet
from pc3d.errors import ConfigError
from pc3d.methods import MaskedSceneModeling
from pc3d.methods.msm import instance_standardize, point_level_index, unit_mask, variance_covariance
from pc3d.ops.sparse_conv import SparseVoxels
from conftest import require_shared

SMALL = dict(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), blocks=(1, 1, 1, 1, 1),
             dec_blocks=(1, 1, 1, 1), voxel_size=0.05, stem_kernel=3, window_size=32, head_dim=8)


@pytest.fixture(scope="module")
def scans():
    root = require_shared("scannet")
    return load_scenes(root, "train") + load_scenes(root, "val")


@pytest.fixture(scope="module")
def views(scans):
    dataset = SceneViewDataset(scans, voxel_size=0.05, crop_points=6000, repeats=2, seed=3)
    batch = SceneViewDataset.collate([dataset[0], dataset[1]])
    batch["sample_seed"] = torch.tensor([11, 12])
    return dataset, batch


def test_unit_mask_masks_whole_cubes_at_the_ratio_per_sample():
    grid = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.cat([torch.full((len(grid), 1), b), grid], 1) for b in range(2)])
    mask = unit_mask(coords, unit=4, ratio=0.6, sample_seeds=torch.tensor([5, 6]))
    cube = coords[:, 0] * 64 + (coords[:, 1] // 4) * 16 + (coords[:, 2] // 4) * 4 + coords[:, 3] // 4
    for c in cube.unique():  # every cube is all masked or all visible
        assert mask[cube == c].all() or not mask[cube == c].any()
    for b in range(2):  # int(0.6 · 64) = 38 of the 64 cubes of each sample
        assert int(mask[coords[:, 0] == b].sum()) == 38 * 64
    again = unit_mask(coords, unit=4, ratio=0.6, sample_seeds=torch.tensor([5, 7]))
    assert torch.equal(again[coords[:, 0] == 0], mask[coords[:, 0] == 0])  # sample 0 depends on its seed only
    assert not torch.equal(again[coords[:, 0] == 1], mask[coords[:, 0] == 1])


def test_point_level_index_finds_each_voxels_ancestor():
    encoder = SparseUNet(**SMALL).eval()
    coords = torch.cat([torch.randint(0, 2, (300, 1)), torch.randint(0, 40, (300, 3))], 1).unique(dim=0)
    out = encoder(SparseVoxels(torch.randn(len(coords), 6), coords, 2))
    for i, level in enumerate(out.levels):
        _, centres, batch = level.flatten()
        rows = point_level_index(level, coords, i)
        assert torch.equal(batch[rows], coords[:, 0].long())
        expected = (coords[:, 1:] // 2 ** i).float()
        torch.testing.assert_close(torch.floor(centres[rows] / level.stride), expected)


def test_variance_covariance_matches_the_formula_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)) * np.array([2.0, 0.5, 1.5, 0.1])
    x[:, 3] += 0.3 * x[:, 1]  # correlated pair
    variance, covariance = variance_covariance(torch.from_numpy(x).float())
    std = np.sqrt(x.var(axis=0, ddof=1) + 1e-4)
    cov = np.cov(x, rowvar=False)
    off = cov - np.diag(np.diag(cov))
    assert float(variance) == pytest.approx(np.maximum(1 - std, 0).mean(), rel=1e-4)
    assert float(covariance) == pytest.approx((off ** 2).sum() / 4, rel=1e-4)
    # collapsed (rank-1) features are penalised, decorrelated unit-variance ones are not
    collapsed = torch.randn(500, 1).repeat(1, 4)
    assert float(variance_covariance(collapsed)[1]) > 10 * float(variance_covariance(torch.randn(500, 4))[1])
    assert float(variance_covariance(torch.randn(500, 4) * 3)[0]) == 0.0


def test_instance_standardize_is_per_sample_and_per_channel():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(30, 5) * 4 + 2, torch.randn(50, 5) * 0.1 - 7])
    batch = torch.cat([torch.zeros(30), torch.ones(50)]).long()
    y = instance_standardize(x, batch, 2)
    for b in range(2):
        part = y[batch == b]
        torch.testing.assert_close(part.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
        torch.testing.assert_close(part.var(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)
    x2 = x.clone()
    x2[30:] *= 100.0  # another sample's rows do not change sample 0's output
    torch.testing.assert_close(instance_standardize(x2, batch, 2)[:30], y[:30])


def test_msm_loss_gradients_and_ema(views):
    _, batch = views
    torch.manual_seed(0)
    model = MaskedSceneModeling(SparseUNet(**SMALL), mask_ratio=0.6, mask_unit=4)
    out = model(batch)
    assert 0.0 < float(out["loss"]) < 2.0
    assert 0.4 < float(out["masked_fraction"]) < 0.8
    out["loss"].backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in model.teacher.parameters())
    # EMA: teacher moves towards the student by (1 - m)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    m = model.momentum(0, 100)
    assert m == pytest.approx(0.996)
    assert model.momentum(100, 100) == pytest.approx(1.0)
    model.on_optimizer_step(0, 100)
    for old, new, student in zip(before, model.teacher.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * student)


def test_msm_pretrains_the_msm_style_encoder(views):
    """The released encoder's style (configs/encoder/msm_large.yaml, small widths) trains under the method."""
    _, batch = views
    torch.manual_seed(0)
    encoder = SparseUNet(style="msm", channels=(8, 8, 16, 16, 16), dec_channels=(16, 16, 16, 8, 8),
                         blocks=(1,) * 5, dec_blocks=(1,) * 5, voxel_size=0.05, attention_stages=(3, 4),
                         attention_depth=2, decoder_attention_stages=(3, 4), decoder_attention_depth=2,
                         window_size=32, head_dim=8, shuffle_orders=True, attention_dropout=0.1)
    model = MaskedSceneModeling(encoder, mask_ratio=0.6, mask_unit=4)
    out = model(batch)
    assert torch.isfinite(out["loss"]) and float(out["loss"]) > 0
    out["loss"].backward()
    assert model.mask_token.shape == (8,) and float(model.mask_token.grad.abs().sum()) > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())


def test_msm_total_loss_adds_the_anti_collapse_terms_per_level(views):
    _, batch = views
    torch.manual_seed(0)
    model = MaskedSceneModeling(SparseUNet(**SMALL), mask_unit=4, variance_weight=1.0, covariance_weight=0.04,
                                target_norm="instance", level_weights=[1, 2, 1, 1, 1])
    out = model(batch)
    weights = torch.tensor([1, 2, 1, 1, 1]) / 6
    expected = sum(w * (out[f"loss_level{i}"] + out[f"variance_level{i}"] + 0.04 * out[f"covariance_level{i}"])
                   for i, w in enumerate(weights))
    torch.testing.assert_close(out["loss"].detach(), expected.float())
    assert all(float(out[f"variance_level{i}"]) > 0 for i in range(5))  # fresh features: std below 1 somewhere
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())


def test_msm_rejects_bad_settings():
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedSceneModeling(SparseUNet(**SMALL), mask_ratio=1.0)
    with pytest.raises(ValueError, match="loss"):
        MaskedSceneModeling(SparseUNet(**SMALL), loss="l2")
    with pytest.raises(ValueError, match="target_norm"):
        MaskedSceneModeling(SparseUNet(**SMALL), target_norm="batch")
    with pytest.raises(ValueError, match="variance_weight"):
        MaskedSceneModeling(SparseUNet(**SMALL), variance_weight=-1.0)
    with pytest.raises(ValueError, match="SparseUNet"):
        MaskedSceneModeling(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="data=scannet"):
        MaskedSceneModeling(SparseUNet(**SMALL)).pretrain_dataset(object())


def test_view_dataset_is_seeded_and_links_the_same_points(views, scans):
    dataset, batch = views
    first, again = dataset[0], dataset[0]
    for key in first:
        assert torch.equal(first[key], again[key]), key
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["a_coords"], first["a_coords"])
    dataset.set_epoch(0)
    # both views hold the same crop: equal point counts, and each view's voxels cover all its points
    assert len(first["a_point_voxel"]) == len(first["b_point_voxel"]) == 6000
    assert int(first["a_point_voxel"].max()) == len(first["a_coords"]) - 1
    # collate: point maps index their own sample's voxels
    sizes = [len(dataset[i]["a_coords"]) for i in range(2)]
    owner = batch["a_coords"][batch["a_point_voxel"], 0]
    assert torch.equal(owner, torch.repeat_interleave(torch.tensor([0, 1], dtype=owner.dtype), 6000))
    assert len(batch["a_coords"]) == sum(sizes)
    # the views differ by a rigid-ish transform: mean colour per view stays close (jitter is small)
    assert abs(float(first["a_features"][:, :3].mean() - first["b_features"][:, :3].mean())) < 0.05


@pytest.mark.slow
def test_msm_loss_falls_on_real_scans(views):
    dataset, _ = views
    torch.manual_seed(0)
    model = MaskedSceneModeling(SparseUNet(**SMALL), mask_unit=4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    batch = SceneViewDataset.collate([dataset[0], dataset[1]])
    batch["sample_seed"] = torch.tensor([1, 2])
    for step in range(25):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.on_optimizer_step(step + 1, 25)
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.slow
def test_cli_msm_pretrain_then_scene_probe(shared_data, tmp_path):
    root = shared_data / "scannet"
    small = ["encoder=sparse_unet", "encoder.channels=[8,16,16,16,16]", "encoder.dec_channels=[16,16,16,8]",
             "encoder.blocks=[1,1,1,1,1]", "encoder.dec_blocks=[1,1,1,1]", "encoder.voxel_size=0.08",
             "encoder.stem_kernel=3", "encoder.window_size=32", "encoder.head_dim=8"]
    run = tmp_path / "msm"
    cmd = [sys.executable, "-m", "pc3d.cli"]
    subprocess.run([*cmd, "pretrain", "method=msm", "data=scannet", f"data.root={root}", "data.crop_points=4000",
                    "data.repeats=2", *small, "trainer.batch_size=2", "trainer.max_steps=3", f"out_dir={run}"],
                   check=True, capture_output=True, text=True)
    logged = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and all(np.isfinite(row["loss"]) for row in logged)
    # the model's other scalar outputs are logged beside the loss, every level's terms included
    assert {"masked_fraction", "loss_level0", "loss_level4", "variance_level4", "covariance_level0"} <= logged[0].keys()
    probe = subprocess.run([*cmd, "probe", "probe=scene_linear", f"checkpoint={run}", "data=scannet",
                            f"data.root={root}", "probe.steps=30", f"out_dir={run / 'probe'}"],
                           check=True, capture_output=True, text=True)
    metrics = json.loads((run / "probe" / "metrics.json").read_text())
    for key in ("miou", "overall_accuracy", "random_miou", "random_overall_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["train_scans"] == ["scene0000_00"] and metrics["val_scans"] == ["scene0000_01"]
    assert metrics["feature_dim"] == 16 + 16 + 16 + 8 + 16
    assert any(k.startswith("iou/") for k in metrics)
    assert "mIoU" in probe.stdout
