"""Scanned scenes with their real photographs (ScanNet scene0000_00, SUN RGB-D 000001-2) and Gaussian2Scene on them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import require_shared
from pc3d.cli import main
from pc3d.data.cameras import read_scannet_infos, read_sunrgbd
from pc3d.data.gaussians import write_gaussian_ply
from pc3d.data.scene_views import (ViewedSceneDataset, gaussians_from_points, posed_views, render_views,
                                   scan_views_data)
from pc3d.encoders import PointViT
from pc3d.encoders.inputs import EncoderInputDataset
from pc3d.errors import ConfigError, DataFormatError
from pc3d.methods import Gaussian2Scene, PointImageMAE
from test_gaussian2scene import _fit  # the one Adam-fit helper of the Gaussian2Scene tests

WIDTH, HEIGHT = 80, 60
SMALL_VIT = dict(embed_dim=32, depth=2, num_heads=2, num_groups=64, group_size=16, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def roots():
    return str(require_shared("scannet")), str(require_shared("sunrgbd"))


@pytest.fixture(scope="module")
def scans(roots):
    return scan_views_data(roots[0], sunrgbd_root=roots[1], width=WIDTH, height=HEIGHT, num_points=2048,
                           num_centers=1024)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_scan_views_keep_the_photographs_with_scaled_intrinsics(scans, roots):
    assert [s.name for s in scans.train] == ["scene0000_00", "000001", "000002"] and scans.val == []
    assert [len(s.views) for s in scans.train] == [3, 1, 1]
    posed = read_scannet_infos(roots[0], scene="scene0000_00")
    scene = scans.train[0]
    assert len(scene.points) == 81369 and scene.colors.max() <= 1.0
    for i, camera in enumerate(posed.cameras):
        K = scene.views.Ks[i]
        assert K[0, 0] == pytest.approx(camera.intrinsics[0, 0] * WIDTH / 1296, rel=1e-6)
        assert K[1, 2] == pytest.approx(camera.intrinsics[1, 2] * HEIGHT / 968, rel=1e-6)
        assert np.allclose(scene.views.viewmats[i] @ camera.camera_to_world, np.eye(4), atol=1e-5)
        # resizing keeps the photograph's mean colour
        assert np.abs(scene.views.images[i].mean((0, 1)) - posed.image(i).mean((0, 1))).max() < 0.01
    for s in scans.train:
        assert s.views.images.shape == (len(s.views), HEIGHT, WIDTH, 3)
        assert (s.views.depth > 0).mean() > 0.95  # the scan's Gaussians cover the photographs
    # the scan's Gaussians rendered in each camera look like that camera's photograph, not another's
    rendered = render_views(scene.gaussians, scene.views.viewmats, scene.views.Ks, WIDTH, HEIGHT).images
    agree = np.array([[correlation(scene.views.images[a], rendered[b]) for b in range(3)] for a in range(3)])
    assert agree.diagonal().min() > 0.6, agree
    assert (agree.diagonal()[:, None] - agree - np.eye(3) > 0.4).sum() == 6, agree
    for s in scans.train[1:]:
        assert correlation(s.views.images[0], render_views(s.gaussians, s.views.viewmats, s.views.Ks,
                                                           WIDTH, HEIGHT).images[0]) > 0.6


def test_sunrgbd_points_land_on_their_colours_in_the_resized_photograph(scans, roots):
    """The depth points were read from the photograph's pixels: with the scaled K they fall on their colours."""
    for s in scans.train[1:]:
        local = s.points @ s.views.viewmats[0, :3, :3].T + s.views.viewmats[0, :3, 3]
        uv = local[:, :2] / local[:, 2:] @ s.views.Ks[0, :2, :2].T + s.views.Ks[0, :2, 2]
        pixel = np.clip(np.floor(uv).astype(np.int64), 0, [WIDTH - 1, HEIGHT - 1])
        seen = s.views.images[0][pixel[:, 1], pixel[:, 0]]
        assert correlation(seen, s.colors) > 0.85
        shifted = s.views.images[0][pixel[:, 1], np.clip(pixel[:, 0] + 8, 0, WIDTH - 1)]
        assert correlation(shifted, s.colors) < correlation(seen, s.colors) - 0.1


def test_scan_views_take_the_prepared_gaussians(tmp_path, roots, capsys):
    points = np.random.default_rng(0).uniform([-1, 1, -0.5], [1, 4, 1], (500, 3)).astype(np.float32)
    cloud = gaussians_from_points(points, np.full((500, 3), 0.5, np.float32))
    (tmp_path / "src").mkdir()
    write_gaussian_ply(tmp_path / "src" / "000001.ply", cloud)
    assert main(["prep", "gaussians", f"src={tmp_path / 'src'}", f"dst={tmp_path / 'g'}", "format=ply"]) == 0
    data = scan_views_data(sunrgbd_root=roots[1], sunrgbd_frames=["000001"], gaussians=str(tmp_path / "g"),
                           width=32, height=24)
    scene = data.train[0]
    np.testing.assert_allclose(scene.gaussians.means, cloud.means)
    assert len(scene.points) == 50000  # the points stay the scan's
    # their depth is rendered from those Gaussians
    expected = render_views(cloud, scene.views.viewmats, scene.views.Ks, 32, 24).depth
    np.testing.assert_allclose(scene.views.depth, expected, atol=1e-6)
    with pytest.raises(DataFormatError, match=r"no scene \['000002'\]"):
        scan_views_data(sunrgbd_root=roots[1], gaussians=str(tmp_path / "g"))


def test_scan_views_refuse_bad_settings(tmp_path, roots):
    for bad in (dict(), dict(scannet_root=roots[0], views_per_sample=4), dict(sunrgbd_root=roots[1], width=4),
                dict(sunrgbd_root=roots[1], sunrgbd_frames=[]), dict(sunrgbd_root=roots[1],
                                                                     sunrgbd_frames=["000001", "000001"])):
        with pytest.raises(ConfigError):
            scan_views_data(**bad)
    with pytest.raises(DataFormatError, match="directory not found"):
        scan_views_data(scannet_root=str(tmp_path / "absent"))
    with pytest.raises(DataFormatError, match="000009"):
        scan_views_data(sunrgbd_root=roots[1], sunrgbd_frames=["000009"])
    posed = read_sunrgbd(roots[1], ["000001"])
    posed.cameras[0] = replace(posed.cameras[0], distortion=np.array([0.1, 0.0, 0.0, 0.0]))
    cloud = gaussians_from_points(np.random.default_rng(0).uniform(1, 2, (50, 3)), np.zeros((50, 3)))
    with pytest.raises(DataFormatError, match="lens distortion"):
        posed_views(posed, cloud, 32, 24)


def _batch(scans, encoder):
    dataset = EncoderInputDataset(ViewedSceneDataset(scans.train, 2048, 1024, 1, augment=False, seed=0), encoder.spec)
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    batch["sample_seed"] = torch.tensor([1, 2, 3])
    return batch


def test_both_stages_learn_on_the_real_samples(scans):
    torch.manual_seed(0)
    encoder = PointViT(**SMALL_VIT)
    stage1 = PointImageMAE(encoder, decoder_num_heads=2, patch_size=4)
    batch = _batch(scans, encoder)
    history = _fit(stage1, batch, steps=30, lr=1e-3)
    assert history[0]["seen"] > 0.3  # a third of the patch centres are in one photograph or more
    assert history[-1]["point_chamfer"] < 0.7 * history[0]["point_chamfer"], (history[0], history[-1])
    assert history[-1]["image_mse"] < 0.7 * history[0]["image_mse"], (history[0], history[-1])
    stage2 = Gaussian2Scene(encoder, level=-1, gaussians_per_token=4, max_offset=0.3)
    history = _fit(stage2, batch, steps=30, lr=1e-3)
    assert history[-1]["image_l1"] < 0.8 * history[0]["image_l1"], (history[0], history[-1])
    assert history[-1]["center_chamfer"] < history[0]["center_chamfer"], (history[0], history[-1])


def test_pretrain_both_stages_on_the_real_samples(tmp_path, roots, capsys):
    common = ["experiment=g2s_scans_cpu", f"data.scannet_root={roots[0]}", f"data.sunrgbd_root={roots[1]}",
              "data.width=32", "data.height=24", "data.num_points=2048", "data.num_centers=512",
              *[f"encoder.{k}={v}" for k, v in SMALL_VIT.items()], "method.decoder_num_heads=2",
              "method.patch_size=4", "trainer.max_steps=2", "trainer.log_every=1", "trainer.artifact_every=2"]
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["pretrain", *common, "method.stage=1", f"out_dir={first}"]) == 0
    lines = [json.loads(line) for line in (first / "losses.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all("image_mse" in line for line in lines)
    assert main(["pretrain", *common, f"init_encoder={first}", f"out_dir={second}"]) == 0
    lines = [json.loads(line) for line in (second / "losses.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(line["image_l1"]) for line in lines)
    from PIL import Image

    with Image.open(second / "artifacts" / "views_00000002.png") as picture:
        assert picture.size == (64, 24)
        assert (np.asarray(picture, dtype=np.float32)[:, :32] / 255).std() > 0.05  # a real photograph
    # a SUN RGB-D frame has one photograph: two per sample is one line, exit 2, nothing written
    bad = tmp_path / "bad"
    capsys.readouterr()
    assert main(["pretrain", *common, "data.views_per_sample=2", f"out_dir={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "views_per_sample" in err[0] and not bad.exists()
