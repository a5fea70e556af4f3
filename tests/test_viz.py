"""``pc3d viz features``: features at points, PCA colours, orbit cameras, point pictures, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import require_shared
from pc3d.cli import main
from pc3d.data.io import read_ply, write_point_ply
from pc3d.encoders import PointViT
from pc3d.encoders.base import FeatureLevel
from pc3d.data.pictures import orbit_cameras, pca_colors, render_points
from pc3d.eval.viz import encoder_point_features, features_at_points
from pc3d.hub import encoder_or_random
from pc3d.methods.point_mae import (INPUT_COLOR, MASKED_COLOR, VISIBLE_COLOR, PointMAE, Reconstruction,
                                    reconstruction_picture)

SMALL_VIT = ["encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "encoder.num_groups=32",
             "encoder.group_size=16"]


def test_pca_colors_put_the_main_direction_of_the_features_in_red():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1], 500)
    features = rng.normal(0.0, 0.05, (1000, 8))
    features[:, 3] += np.where(groups == 1, 2.0, -2.0)  # the largest variance: group A vs group B
    features[:, 5] += rng.normal(0.0, 0.5, 1000)        # second
    rgb = pca_colors(torch.from_numpy(features))
    assert rgb.shape == (1000, 3) and rgb.dtype == np.float32 and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[groups == 1, 0].mean() > 0.9 and rgb[groups == 0, 0].mean() < 0.1  # loading +1 on feature 3
    assert abs(np.corrcoef(rgb[:, 1], features[:, 5])[0, 1]) > 0.9
    # the same features in another order: the same colours (rows all sampled, sign fixed)
    order = rng.permutation(1000)
    np.testing.assert_allclose(pca_colors(torch.from_numpy(features[order])), rgb[order], atol=1e-6)
    # directions the features do not vary along are grey
    flat = pca_colors(torch.from_numpy(np.tile([[1.0, 2.0]], (50, 1))))
    np.testing.assert_array_equal(flat, np.full((50, 3), 0.5, np.float32))


def test_features_at_points_take_the_nearest_token_or_the_cell():
    tokens = FeatureLevel(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]))
    points = torch.tensor([[0.1, 0.0, 0.0], [0.9, 0.1, 0.0], [0.4, -0.2, 0.0]])
    assert torch.equal(features_at_points(tokens, points), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    # a strided level: one occupied cell of 0.5 m holds every point → its feature
    cells = FeatureLevel(torch.tensor([[[3.0, -1.0]]]), torch.tensor([[[0.25, 0.25, 0.25]]]), stride=0.5)
    inside = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.4, 0.1]])
    torch.testing.assert_close(features_at_points(cells, inside), torch.tensor([[3.0, -1.0], [3.0, -1.0]]))
    with pytest.raises(ValueError, match="one sample"):
        features_at_points(FeatureLevel(torch.zeros(2, 1, 2), torch.zeros(2, 1, 3)), points)


def test_orbit_cameras_see_every_point_with_the_centre_in_the_middle():
    points = np.random.default_rng(1).uniform([-3, -2, 0], [5, 4, 2.5], (2000, 3)).astype(np.float32)
    viewmats, Ks = orbit_cameras(points, 4, 160, 90, fov=60.0, elevation=30.0)
    center = (points.min(0) + points.max(0)) / 2
    for viewmat, K in zip(viewmats, Ks):
        local = points @ viewmat[:3, :3].T + viewmat[:3, 3]
        uv = local[:, :2] / local[:, 2:] @ K[:2, :2].T + K[:2, 2]
        assert (local[:, 2] > 0).all()
        assert (uv >= 0).all() and (uv[:, 0] <= 160).all() and (uv[:, 1] <= 90).all()
        middle = viewmat[:3, :3] @ center + viewmat[:3, 3]
        np.testing.assert_allclose(middle[:2] / middle[2], 0.0, atol=1e-5)
        eye = -viewmat[:3, :3].T @ viewmat[:3, 3]
        assert np.degrees(np.arcsin((eye[2] - center[2]) / np.linalg.norm(eye - center))) == pytest.approx(30, abs=1e-3)
    azimuths = [np.degrees(np.arctan2(*(-(v[:3, :3].T @ v[:3, 3]) - center)[[1, 0]])) % 360 for v in viewmats]
    np.testing.assert_allclose(azimuths, [45, 135, 225, 315], atol=1e-3)


def test_render_points_draws_each_point_in_its_colour_where_it_projects():
    rng = np.random.default_rng(2)
    red = rng.normal([-1.0, 0.0, 0.0], 0.05, (400, 3))
    blue = rng.normal([1.0, 0.0, 0.0], 0.05, (400, 3))
    points = np.concatenate([red, blue]).astype(np.float32)
    colors = np.repeat(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32), 400, axis=0)
    viewmats, Ks = orbit_cameras(points, 2, 64, 48)
    pictures = render_points(points, colors, viewmats, Ks, 64, 48)
    assert pictures.shape == (2, 48, 64, 3)
    for picture, viewmat, K in zip(pictures, viewmats, Ks):
        for cluster, colour in ((red, [1, 0, 0]), (blue, [0, 0, 1])):
            local = viewmat[:3, :3] @ cluster.mean(0) + viewmat[:3, 3]
            u, v = (K[:2, :2] @ (local[:2] / local[2]) + K[:2, 2]).astype(int)
            np.testing.assert_allclose(picture[v, u], colour, atol=0.05)
        assert (picture.max(axis=-1) < 0.01).mean() > 0.5  # the rest is the black background


def test_write_point_ply_is_read_back(tmp_path):
    points = np.random.default_rng(3).normal(size=(100, 3)).astype(np.float32)
    colors = np.random.default_rng(4).uniform(size=(100, 3))
    write_point_ply(tmp_path / "c.ply", points, colors)
    cloud = read_ply(tmp_path / "c.ply")
    np.testing.assert_array_equal(cloud.points, points)
    np.testing.assert_allclose(cloud.colors, np.round(colors * 255) / 255, atol=1e-6)
    with pytest.raises(ValueError):
        write_point_ply(tmp_path / "d.ply", points, colors[:5])
    assert not (tmp_path / "d.ply").exists()


def test_viz_features_on_a_real_scan(tmp_path, capsys):
    scan = require_shared("scannet") / "scene0000_00_vert_all.npy"
    out = tmp_path / "viz"
    args = ["viz", "features", "checkpoint=random", f"scene={scan}", *SMALL_VIT, "viz.num_points=4096",
            "viz.width=64", "viz.height=48", "viz.views=2", f"out_dir={out}"]
    assert main(args) == 0
    assert "viz features (random, level 0, 4096 points): 2 pictures" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"init": "random", "points": 4096, "level": 0, "channels": 32, "views": 2}
    from PIL import Image

    for k in range(2):
        with Image.open(out / f"features_view{k}.png") as picture:
            assert picture.size == (128, 48)
            pixels = np.asarray(picture, dtype=np.float32) / 255
        drawn = pixels.max(axis=-1) > 0.02
        assert 0.1 < drawn[:, :64].mean() < 0.9 and abs(drawn[:, :64].mean() - drawn[:, 64:].mean()) < 0.05
        assert pixels[:, 64:][drawn[:, 64:]].std(axis=0).min() > 0.05  # the features are not one colour
    # the PLY holds the points in the PCA colours of the features, recomputed here from the same encoder
    cloud = read_ply(out / "features.ply")
    assert len(cloud.points) == 4096
    encoder, _, _ = encoder_or_random("random", {"_target_": "pc3d.encoders.PointViT", "embed_dim": 32, "depth": 1,
                                                 "num_heads": 2, "num_groups": 32, "group_size": 16,
                                                 "drop_path_rate": 0.0}, seed=0)
    assert isinstance(encoder, PointViT)
    points = torch.from_numpy(cloud.points)
    expected = pca_colors(encoder_point_features(encoder, {"points": points}, points, 0))
    assert np.abs(cloud.colors - expected).max() <= 0.5 / 255 + 1e-6


def test_viz_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    scan = tmp_path / "scan.npy"
    np.save(scan, np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32))
    common = ["viz", "features", "checkpoint=random", *SMALL_VIT]
    for extra, message in ((["scene=" + str(tmp_path / "absent.npy")], "absent.npy"),
                           ([f"scene={scan}", "viz.level=3"], "level=3"),
                           ([f"scene={scan}", "viz.views=0"], "viz.views=0"),
                           ([f"scene={scan}", "viz.colour=1"], "viz.colour")):
        out = tmp_path / "out"
        capsys.readouterr()
        assert main([*common, *extra, f"out_dir={out}"]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()
    assert main(["viz", "look", "checkpoint=random"]) == 2
    assert "usage: pc3d viz features|recon" in capsys.readouterr().err


def _four_clusters(count=64):
    rng = np.random.default_rng(5)
    corners = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    return np.concatenate([rng.normal(c, 0.04, (count, 3)) for c in corners]).astype(np.float32), corners


def test_reconstruction_picture_draws_masked_patches_where_they_are():
    """Four far-apart clusters, one patch each, two masked: each panel shows each patch in its colour at its
    place, and a perfect prediction draws the masked-truth panel pixel for pixel."""
    points, corners = _four_clusters()
    torch.manual_seed(0)
    encoder = PointViT(embed_dim=32, depth=1, num_heads=2, num_groups=4, group_size=32, drop_path_rate=0.0)
    model = PointMAE(encoder, mask_ratio=0.5, decoder_depth=1, decoder_num_heads=2).eval()
    with torch.no_grad():
        rec = model.reconstruct({"points": torch.from_numpy(points)[None], "sample_seed": torch.tensor([3])})
    rec = rec.first().to_cpu()
    assert rec.mask.shape == (1, 4) and int(rec.mask.sum()) == 2 and rec.predicted.shape == (1, 2, 32, 3)
    size = 96
    picture = reconstruction_picture(rec, points, views=1, width=size, height=size, fov=60.0, elevation=60.0)
    assert picture.shape == (size, 4 * size, 3)
    perfect = Reconstruction(rec.neighborhoods, rec.centers, rec.mask, rec.neighborhoods[rec.mask][None])
    exact = reconstruction_picture(perfect, points, views=1, width=size, height=size, fov=60.0, elevation=60.0)
    np.testing.assert_allclose(exact[:, 3 * size:], exact[:, 2 * size:3 * size], atol=1e-6)
    viewmats, Ks = orbit_cameras(points, 1, size, size, fov=60.0, elevation=60.0)
    for center, masked in zip(rec.centers[0].numpy(), rec.mask[0].numpy()):
        local = viewmats[0, :3, :3] @ center + viewmats[0, :3, 3]
        u, v = (Ks[0, :2, :2] @ (local[:2] / local[2]) + Ks[0, :2, 2]).astype(int)
        panels = [exact[v, u + k * size] for k in range(4)]
        np.testing.assert_allclose(panels[0], INPUT_COLOR, atol=0.05)
        expected = MASKED_COLOR if masked else VISIBLE_COLOR
        np.testing.assert_allclose(panels[2], expected, atol=0.05)
        if masked:
            assert panels[1].max() < 0.05  # a masked patch is not among the visible ones
        else:
            np.testing.assert_allclose(panels[1], VISIBLE_COLOR, atol=0.05)
    # the model's own (untrained) prediction is drawn, not the truth
    assert np.abs(picture[:, 3 * size:] - exact[:, 3 * size:]).max() > 0.5


def test_viz_recon_draws_a_point_mae_run_and_refuses_other_models(tmp_path, capsys):
    run = tmp_path / "pre"
    tiny = ["encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3", "encoder.num_groups=16",
            "encoder.group_size=16", "method.decoder_depth=1", "method.decoder_num_heads=3", "trainer.batch_size=8",
            f"data.root={tmp_path / 'synth'}", "data.train_per_class=2", "data.test_per_class=1",
            "data.num_points=256"]
    assert main(["pretrain", *tiny, "trainer.max_steps=2", "trainer.artifact_every=2", f"out_dir={run}"]) == 0
    from PIL import Image

    with Image.open(run / "artifacts" / "recon_00000002.png") as artifact:  # the hook, two views
        assert artifact.size == (4 * 240, 2 * 240)
    shape = require_shared("modelnet10") / "chair" / "train" / "chair_0001.pcd"
    out = tmp_path / "recon"
    capsys.readouterr()
    assert main(["viz", "recon", f"checkpoint={run}", f"scene={shape}", "viz.unit_sphere=true", "viz.num_points=512",
                 "viz.views=2", "viz.width=80", "viz.height=64", f"out_dir={out}"]) == 0
    assert "viz recon (9 of 16 patches masked" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["points"] == 512 and metrics["masked_patches"] == 9 and metrics["chamfer"] > 0
    with Image.open(out / "recon.png") as picture:
        assert picture.size == (320, 128)
    cloud = read_ply(out / "recon.ply")  # the 7 visible and 9 predicted patches of 16 points
    assert len(cloud.points) == 16 * 16 and (np.abs(np.linalg.norm(cloud.points, axis=1)) < 3).all()
    orange = np.abs(cloud.colors - np.round(np.array(MASKED_COLOR) * 255) / 255).max(axis=1) < 1e-6
    assert orange.sum() == 9 * 16
    for bad, message in ((["checkpoint=random"], "checkpoint=random"),
                         ([f"checkpoint={tmp_path / 'absent'}"], "absent")):
        capsys.readouterr()
        assert main(["viz", "recon", *bad, f"scene={shape}", f"out_dir={tmp_path / 'bad'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not (tmp_path / "bad").exists(), err


def test_render_alpha_grid_composites_the_cells_a_ray_crosses():
    from pc3d.data.scene_views import look_at
    from pc3d.ops.volume_render import render_alpha_grid

    alpha, cells = 0.2, 10
    values = torch.zeros(4, cells, cells, cells)
    values[0], values[3] = 1.0, alpha  # a uniform red fog
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    viewmat = torch.tensor(look_at(np.array([5.0, 0.0, 0.0]), np.zeros(3)), dtype=torch.float32)[None]
    K = torch.tensor([[20.0, 0.0, 16.0], [0.0, 20.0, 16.0], [0.0, 0.0, 1.0]])[None]
    blue = torch.tensor([0.0, 0.0, 1.0])
    covered = 1 - (1 - alpha) ** cells  # the central ray crosses 10 cells of the box
    for step in (0.5, 0.25):  # each sample's opacity is scaled to the step: the picture does not depend on it
        picture = render_alpha_grid(values, box, viewmat, K, 32, 32, step=step, background=blue)[0]
        torch.testing.assert_close(picture[16, 16], torch.tensor([covered, 0.0, 1 - covered]), atol=1e-4, rtol=0)
    torch.testing.assert_close(picture[0, 0], blue)  # a ray that misses the box
    empty = values.clone()
    empty[3] = 0.0
    assert torch.equal(render_alpha_grid(empty, box, viewmat, K, 8, 8, background=blue)[0], blue.expand(8, 8, 3))


def test_viz_grid_draws_a_grid_and_a_nerf_mae_reconstruction(tmp_path, capsys):
    from pc3d.data.radiance_grid import RadianceGrid, write_radiance_grid

    axis = (np.arange(16) + 0.5) / 16 * 2 - 1
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    ball = np.sqrt(x ** 2 + y ** 2 + z ** 2) < 0.6
    rgb = np.stack([(x + 1) / 2, (y + 1) / 2, np.full_like(x, 0.5)], axis=-1) * ball[..., None]
    (tmp_path / "src").mkdir()
    write_radiance_grid(tmp_path / "src" / "ball.npz", RadianceGrid(rgb, ball * 0.9, np.array([[-1.0] * 3, [1.0] * 3])))
    grids, run = tmp_path / "grids", tmp_path / "run"
    assert main(["prep", "grid", f"src={tmp_path / 'src'}", f"dst={grids}", "density=alpha"]) == 0
    assert main(["pretrain", "method=nerf_mae", "encoder=swin3d_cpu", "data=grids", f"data.root={grids}",
                 "trainer=nerf_mae", "trainer.max_steps=2", "trainer.batch_size=1", "method.grid_size=null",
                 "trainer.artifact_every=2", f"out_dir={run}"]) == 0
    common = ["viz", "grid", f"scene={tmp_path / 'src' / 'ball.npz'}", "viz.views=2", "viz.width=48",
              "viz.height=40"]
    from PIL import Image

    assert main([*common, "checkpoint=null", f"out_dir={tmp_path / 'alone'}"]) == 0
    with Image.open(tmp_path / "alone" / "grid.png") as picture:
        alone = np.asarray(picture, dtype=np.float32) / 255
    assert alone.shape == (80, 48, 3)
    assert alone[20, 24].max() > 0.3 and alone[0, 0].max() < 0.02  # the ball in the middle, black around it
    capsys.readouterr()
    assert main([*common, f"checkpoint={run}", f"out_dir={tmp_path / 'recon'}"]) == 0
    assert "viz grid (16x16x16 cells, PSNR" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "recon" / "metrics.json").read_text())
    assert metrics["shape"] == [16, 16, 16] and 0 < metrics["masked_fraction"] < 1 and np.isfinite(metrics["psnr"])
    with Image.open(tmp_path / "recon" / "grid.png") as picture:
        panels = np.asarray(picture, dtype=np.float32) / 255
    assert panels.shape == (80, 144, 3)
    np.testing.assert_allclose(panels[:, :48], alone, atol=1 / 255)  # first panel: the grid itself
    assert np.abs(panels[:, 48:96] - alone).max() > 0.1  # masked cells are emptied
    # the pretraining's artifact: the same three panels of its training grid (augmented), two cameras
    with Image.open(run / "artifacts" / "grid_00000002.png") as artifact:
        drawn = np.asarray(artifact, dtype=np.float32) / 255
    assert drawn.shape == (400, 600, 3) and drawn[:, :200].max() > 0.3 and drawn[0, 0].max() < 0.02
    for bad, message in ((["checkpoint=random"], "checkpoint=random"), ([f"checkpoint={tmp_path / 'alone'}"],
                                                                        "alone")):
        capsys.readouterr()
        assert main([*common, *bad, f"out_dir={tmp_path / 'bad'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not (tmp_path / "bad").exists(), err
