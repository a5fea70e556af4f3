"""Scenes with views (the embedded rooms rendered from their Gaussians) and Gaussian2Scene's two stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pc3d.cli import main
from pc3d.data.gaussians import GaussianCloud, read_gaussian_ply
from pc3d.data.scene_views import (ViewedSceneDataset, gaussians_from_points, look_at, moved_cameras,
                                   render_views, room_views)
from pc3d.data.synthetic_rooms import generate_room
from pc3d.encoders import PointViT, SparseUNet
from pc3d.encoders.inputs import EncoderInputDataset
from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub import load_encoder_weights
from pc3d.methods import Gaussian2Scene, PointImageMAE
from pc3d.methods.gaussian2scene import GaussianHead, gaussian2scene, mask_colors, view_patches
from pc3d.train.checkpoint import save_checkpoint
from pc3d.ops.rasterize import SH_C0, rasterize_gaussians
from pc3d.ops.sparse_conv import SparseVoxels

SMALL_UNET = dict(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 16), blocks=(1, 1, 1, 1, 1),
                  dec_blocks=(1, 1, 1, 1), voxel_size=0.1, stem_kernel=3, window_size=32, head_dim=8)


@pytest.fixture(scope="module")
def rooms():
    return [room_views(i, views=4, width=40, height=30, density=150.0) for i in range(2)]


def test_colored_room_has_the_geometry_of_the_plain_room():
    plain, colored = generate_room(3), generate_room(3, colored=True)
    np.testing.assert_array_equal(plain.points, colored.points)
    np.testing.assert_array_equal(plain.boxes, colored.boxes)
    assert plain.colors is None and colored.colors.shape == plain.points.shape
    assert colored.colors.dtype == np.float32 and 0.0 <= colored.colors.min() and colored.colors.max() <= 1.0
    # the floor (lowest points) and the objects differ in colour
    floor = colored.points[:, 2] < 0.02
    box = colored.boxes[0]
    inside = (np.abs(colored.points[:, :2] - box[:2]).max(1) < 0.2) & (colored.points[:, 2] > 0.1)
    assert np.abs(colored.colors[floor].mean(0) - colored.colors[inside].mean(0)).max() > 0.05


def test_look_at_puts_the_target_at_the_image_centre():
    eye, target = np.array([1.0, 2.0, 1.5]), np.array([4.0, 3.0, 0.5])
    viewmat = look_at(eye, target)
    assert np.allclose(viewmat[:3, :3] @ viewmat[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(viewmat[:3, :3]), 1.0)
    camera = viewmat[:3, :3] @ target + viewmat[:3, 3]
    assert np.allclose(camera[:2], 0.0, atol=1e-12) and np.isclose(camera[2], np.linalg.norm(target - eye))
    above = viewmat[:3, :3] @ (target + [0, 0, 1.0]) + viewmat[:3, 3]
    assert above[1] < 0  # world up is image up (OpenCV y points down)


def test_gaussians_from_points_follow_the_point_spacing_and_colours():
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10), indexing="ij"), -1).reshape(-1, 2) * 0.1
    points = np.column_stack([grid, np.zeros(len(grid))]).astype(np.float32)
    colors = np.random.default_rng(0).random((len(points), 3)).astype(np.float32)
    cloud = gaussians_from_points(points, colors, scale_factor=0.5)
    inner = (grid > 0.05).all(1) & (grid < 0.85).all(1)  # 4 neighbours at 0.1: the 3 nearest are at 0.1
    np.testing.assert_allclose(np.exp(cloud.log_scales[inner]), 0.05, rtol=1e-5)
    np.testing.assert_allclose(cloud.sh[:, 0] * SH_C0 + 0.5, colors, atol=1e-6)
    assert np.allclose(1 / (1 + np.exp(-cloud.opacity_logits)), 0.95)
    with pytest.raises(ConfigError):
        gaussians_from_points(points, colors, scale_factor=0.0)
    fixed = gaussians_from_points(points, colors, scale=0.3)  # one width for every point, whatever the spacing
    np.testing.assert_allclose(np.exp(fixed.log_scales), 0.3, rtol=1e-6)
    with pytest.raises(ConfigError):
        gaussians_from_points(points, colors, scale=0.0)


def test_room_views_see_the_room(rooms):
    views = rooms[0].views
    assert views.images.shape == (4, 30, 40, 3) and views.depth.shape == (4, 30, 40)
    seen = views.depth > 0
    assert seen.mean() > 0.6  # walls and floor fill most of every view (the sky is the missing ceiling)
    assert 0.5 < views.depth[seen].mean() < 10.0
    assert views.images.std() > 0.05  # not a flat colour
    # every camera is inside the room's footprint, looking down a little
    lo, hi = rooms[0].points[:, :2].min(0), rooms[0].points[:, :2].max(0)
    for viewmat in views.viewmats.astype(np.float64):
        centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
        assert (lo < centre[:2]).all() and (centre[:2] < hi).all() and 1.2 <= centre[2] <= 1.8
        assert viewmat[2, 2] < 0  # the camera's forward axis points down


def test_a_scene_moved_with_its_cameras_renders_the_same_images(rooms):
    """The dataset's augmentation moves points and cameras by one similarity (mirror included): the stored
    images must still be the renders of the moved scene."""
    room = rooms[1]
    yaw, scale = 0.7, 1.08
    c, s = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.0, 1.0, 1.0])
    g = room.gaussians
    moved = GaussianCloud(means=(scale * g.means @ rotation.T).astype(np.float32), quats=g.quats,
                          log_scales=(g.log_scales + np.log(scale)).astype(np.float32),
                          opacity_logits=g.opacity_logits, sh=g.sh)
    again = render_views(moved, moved_cameras(room.views.viewmats, rotation, scale), room.views.Ks, 40, 30)
    np.testing.assert_allclose(again.images, room.views.images, atol=2e-4)
    np.testing.assert_allclose(again.depth, room.views.depth * scale, rtol=1e-3, atol=1e-2)


def test_dataset_samples_are_seeded_and_move_cameras_with_points(rooms):
    dataset = ViewedSceneDataset(rooms, num_points=512, num_centers=256, views_per_sample=2, augment=True, seed=3)
    a, b = dataset[1], dataset[1]
    assert {k: tuple(v.shape) for k, v in a.items()} == {
        "points": (512, 3), "colors": (512, 3), "gaussian_means": (256, 3), "images": (2, 30, 40, 3),
        "depth": (2, 30, 40), "viewmats": (2, 4, 4), "Ks": (2, 3, 3)}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["points"], a["points"])
    # the sampled points project into the sample's views where those views saw something
    points = a["points"].double()
    camera = points @ a["viewmats"][0, :3, :3].double().T + a["viewmats"][0, :3, 3].double()
    front = camera[:, 2] > 0.1
    pixels = camera[front] @ a["Ks"][0].double().T
    u, v = pixels[:, 0] / pixels[:, 2], pixels[:, 1] / pixels[:, 2]
    on = (u >= 0) & (u < 40) & (v >= 0) & (v < 30)
    assert on.sum() > 20
    with pytest.raises(ConfigError, match="views_per_sample"):
        ViewedSceneDataset(rooms, 512, 256, views_per_sample=5, augment=False, seed=0)


def test_gaussian_head_starts_grey_half_opaque_at_its_tokens():
    head = GaussianHead(16, gaussians_per_token=2, max_offset=0.1, min_scale=0.01, max_scale=0.1)
    positions = torch.randn(5, 3)
    with torch.no_grad():
        out = head(0.1 * torch.randn(5, 16), positions)  # unit-scale token features
    np.testing.assert_allclose(out["means"], positions.repeat_interleave(2, 0), atol=1e-2)
    np.testing.assert_allclose(out["colors"], 0.5, atol=1e-2)
    np.testing.assert_allclose(out["opacity_logits"], 0.0, atol=1e-2)
    np.testing.assert_allclose(out["log_scales"], np.log(np.sqrt(0.01 * 0.1)), atol=1e-2)
    np.testing.assert_allclose(out["quats"], torch.tensor([1.0, 0, 0, 0]).expand(10, 4), atol=1e-2)


def test_mask_colors_blanks_only_colour_channels_of_masked_voxels():
    features = torch.arange(28, dtype=torch.float32).reshape(4, 7)  # color 3, normal 3, alpha 1
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [0, 3, 0, 0]], dtype=torch.int32)
    masked = torch.tensor([True, False, True, False])
    out = mask_colors(SparseVoxels(features, coords, 1), ("color", "normal", "alpha"), masked).features
    assert torch.equal(out[masked, :3], torch.zeros(2, 3)) and torch.equal(out[:, 3:], features[:, 3:])
    assert torch.equal(out[~masked], features[~masked])


def _batch(dataset, indices):
    return dataset.collate([dataset[i] for i in indices])


def _fit(model, batch, steps, lr):
    """``steps`` Adam steps on one batch; the loss terms of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


@pytest.mark.parametrize("kind", ["voxels", "points"])
def test_gaussian2scene_gradients_reach_the_encoder(rooms, kind):
    torch.manual_seed(0)
    if kind == "voxels":
        encoder = SparseUNet(in_channels=6, **SMALL_UNET)
        model = Gaussian2Scene(encoder, color_mask_ratio=0.5, color_mask_unit=2)
    else:
        encoder = PointViT(embed_dim=32, depth=1, num_heads=2, num_groups=32, group_size=16, drop_path_rate=0.0)
        model = Gaussian2Scene(encoder, level=-1, gaussians_per_token=4, max_offset=0.3)
    data = EncoderInputDataset(ViewedSceneDataset(rooms, 1024, 512, 2, augment=True, seed=0), encoder.spec)
    batch = _batch(data, [0, 1])
    batch["sample_seed"] = torch.tensor([5, 6])
    out = model(batch)
    assert set(out) == {"loss", "image_l1", "image_ssim", "center_chamfer"}
    assert torch.isfinite(out["loss"]) and out["image_l1"] > 0.01 and out["center_chamfer"] > 0
    out["loss"].backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert float(model.head.mlp[-1].weight.grad.abs().sum()) > 0


def test_gaussian2scene_loss_falls_on_the_rooms(rooms):
    """40 Adam steps on two rooms: the rendering and centre terms both fall clearly."""
    torch.manual_seed(0)
    encoder = SparseUNet(in_channels=6, **SMALL_UNET)
    model = Gaussian2Scene(encoder)
    data = EncoderInputDataset(ViewedSceneDataset(rooms, 2048, 1024, 2, augment=False, seed=0), encoder.spec)
    batch = _batch(data, [0, 1])
    history = _fit(model, batch, steps=40, lr=3e-3)
    first, last = history[0], history[-1]
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    assert last["image_l1"] < 0.8 * first["image_l1"] and last["center_chamfer"] < first["center_chamfer"]


def test_predicted_gaussians_render_like_the_images_they_learned(rooms):
    """After fitting one room, rendering the predicted Gaussians beats the untrained head's grey blobs."""
    torch.manual_seed(0)
    encoder = SparseUNet(in_channels=6, **SMALL_UNET)
    model = Gaussian2Scene(encoder)
    data = EncoderInputDataset(ViewedSceneDataset(rooms[:1], 2048, 1024, 4, augment=False, seed=0), encoder.spec)
    batch = _batch(data, [0])

    def error() -> float:
        with torch.no_grad():
            gaussians, _ = model.predict_gaussians(batch)
            rendered = rasterize_gaussians(**gaussians, viewmats=batch["viewmats"][0], Ks=batch["Ks"][0],
                                           width=40, height=30)
        return float((rendered.rgb - batch["images"][0]).abs().mean())

    before = error()
    _fit(model, batch, steps=40, lr=3e-3)
    assert error() < 0.75 * before


def test_gaussian2scene_refuses_bad_settings():
    encoder = SparseUNet(in_channels=6, **SMALL_UNET)
    for bad in (dict(level=7), dict(ssim_weight=1.5), dict(color_mask_ratio=1.0), dict(min_scale=0.3),
                dict(image_weight=0.0, center_weight=0.0), dict(background=(0, 0))):
        with pytest.raises(ConfigError):
            Gaussian2Scene(encoder, **bad)


CLI_ROOMS = ["method=gaussian2scene", "data=room_views", "data.train_scenes=2", "data.val_scenes=0",
             "data.views=2", "data.width=32", "data.height=24", "data.density=100", "data.num_points=1024",
             "data.num_centers=256", "encoder=sparse_unet", "encoder.channels=[8,16,16,16,16]",
             "encoder.dec_channels=[16,16,16,16]", "encoder.blocks=[1,1,1,1,1]", "encoder.dec_blocks=[1,1,1,1]",
             "encoder.voxel_size=0.1", "encoder.stem_kernel=3", "encoder.window_size=32", "encoder.head_dim=8",
             "trainer.batch_size=2", "trainer.log_every=1"]


def test_pretrain_gaussian2scene_on_embedded_rooms_then_detect(tmp_path):
    run = tmp_path / "g2s"
    assert main(["pretrain", *CLI_ROOMS, "method.color_mask_ratio=0.5", "trainer.max_steps=3",
                 "trainer.artifact_every=2", f"out_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and np.isfinite(metrics["final_loss"])
    lines = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all("center_chamfer" in line for line in lines)
    # artifacts at steps 2 and 3: the first view real | rendered, and the predicted Gaussians as a 3DGS .ply
    from PIL import Image

    for step in (2, 3):
        with Image.open(run / "artifacts" / f"views_{step:08d}.png") as picture:
            assert picture.size == (64, 24) and picture.mode == "RGB"
            pixels = np.asarray(picture, dtype=np.float32) / 255
        assert pixels[:, :32].std() > 0.05  # the real view is not blank
        cloud = read_gaussian_ply(run / "artifacts" / f"gaussians_{step:08d}.ply")
        assert len(cloud) > 100 and np.isfinite(cloud.means).all() and cloud.sh.shape[1:] == (1, 3)
    det = tmp_path / "det"
    assert main(["detect", "train", f"checkpoint={run}", "data.train_scenes=2", "data.val_scenes=1",
                 "data.num_points=2048", "detect.level=2", "trainer.batch_size=2", "trainer.max_steps=2",
                 f"out_dir={det}"]) == 0
    assert json.loads((det / "metrics.json").read_text())["init"] == "pretrained"


def test_pretrain_gaussian2scene_bad_value_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "bad"
    assert main(["pretrain", *CLI_ROOMS, "data.views_per_sample=5", f"out_dir={run}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.views_per_sample" in err[0]
    assert not run.exists()
    assert main(["pretrain", *CLI_ROOMS, "method.ssim_weight=2", f"out_dir={run}"]) == 2
    assert "method.ssim_weight" in capsys.readouterr().err and not run.exists()


# --- stage 1: the dual-branch point/image masked autoencoder ---------------------------------------------

def _one_camera(height=12, width=16, focal=10.0):
    viewmat = torch.eye(4)  # camera at the origin looking down +z (OpenCV)
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    image = torch.arange(height * width * 3, dtype=torch.float32).reshape(height, width, 3)
    return viewmat, K, image


def test_view_patches_takes_the_pixels_around_each_seen_point():
    viewmat, K, image = _one_camera()
    depth = torch.full((12, 16), 2.0)
    depth[0:2, 0:2] = 1.0  # something in front of the point that projects there
    centers = torch.tensor([[0.0, 0.0, 2.0],  # the image centre: pixel (8, 6)
                            [-1.6, -1.2, 2.0],  # pixel (0, 0), behind the occluder
                            [0.0, 0.0, -2.0],  # behind the camera
                            [9.0, 0.0, 2.0],  # outside the frame
                            [1.55, 1.15, 2.0]])  # pixel (15, 11): the patch moves inside the image
    patches, seen = view_patches(centers[None], image[None, None], depth[None, None], viewmat[None, None],
                                 K[None, None], patch_size=4, depth_tolerance=0.1)
    assert seen.tolist() == [[True, False, False, False, True]]
    assert torch.equal(patches[0, 0], image[4:8, 6:10])
    assert torch.equal(patches[0, 4], image[8:12, 12:16])
    assert torch.equal(patches[0, 1], torch.zeros(4, 4, 3))


def test_view_patches_picks_the_nearest_view_that_sees_the_point():
    near, K, image = _one_camera()
    far = near.clone()
    far[2, 3] = 3.0  # the same camera 3 m further back: the point is at z 5 there
    views, Ks = torch.stack([near, far])[None], torch.stack([K, K])[None]
    images = torch.stack([image, image + 1000.0])[None]  # (1, 2, H, W, 3): view 1 told apart by its values
    centers = torch.tensor([[[0.0, 0.0, 2.0]]])

    def patch_from(near_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
        depth = torch.stack([torch.full((12, 16), near_depth), torch.full((12, 16), 5.0)])[None]
        return view_patches(centers, images, depth, views, Ks, 2, 0.1)

    patches, seen = patch_from(2.0)  # both see it: the nearer wins
    assert seen.all() and patches.max() < 1000.0
    for near_depth in (0.0, 1.0):  # the near view drew nothing there / something hides it
        patches, seen = patch_from(near_depth)
        assert seen.all() and patches.min() >= 1000.0
    with pytest.raises(ConfigError, match="patch_size"):
        view_patches(centers, images, torch.ones(1, 2, 12, 16), views, Ks, 13, 0.1)


SMALL_VIT = dict(embed_dim=32, depth=2, num_heads=2, num_groups=32, group_size=16, drop_path_rate=0.0)


def _stage1(rooms, augment=True, **settings):
    torch.manual_seed(0)
    encoder = PointViT(**SMALL_VIT)
    model = PointImageMAE(encoder, decoder_num_heads=2, patch_size=4, **settings)
    data = EncoderInputDataset(ViewedSceneDataset(rooms, 1024, 256, 4, augment=augment, seed=0), encoder.spec)
    return model, _batch(data, [0, 1])


def test_stage1_gradients_reach_both_branches_and_the_encoder(rooms):
    model, batch = _stage1(rooms)
    batch["sample_seed"] = torch.tensor([1, 2])
    out = model(batch)
    assert set(out) == {"loss", "point_chamfer", "image_mse", "seen"}
    assert 0.3 < float(out["seen"]) <= 1.0  # most patch centres are seen by one of 4 views
    assert out["point_chamfer"] > 0 and out["image_mse"] > 0.005
    out["loss"].backward()
    for name in ("encoder.patch_embed.conv1a.weight", "encoder.blocks.blocks.0.attn.qkv.weight",
                 "image_embed.weight", "unseen_token", "point_head.weight", "image_head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    # the masks come from the sample seeds: the same seeds, the same loss
    assert torch.equal(model(batch)["loss"].detach(), out["loss"].detach())


def test_stage1_image_branch_carries_the_views(rooms):
    """What the encoder sees at point-masked positions is the images: other images, other features."""
    model, batch = _stage1(rooms, augment=False)
    model.eval()
    batch["sample_seed"] = torch.tensor([1, 2])
    with torch.no_grad():
        a = model(batch)
        batch["images"] = batch["images"].flip(-1)  # BGR
        b = model(batch)
    assert float(a["image_mse"]) != float(b["image_mse"]) and float(a["point_chamfer"]) != float(b["point_chamfer"])


def test_stage1_losses_fall_on_the_rooms(rooms):
    model, batch = _stage1(rooms, augment=False)
    batch["sample_seed"] = torch.tensor([1, 2])
    history = _fit(model, batch, steps=40, lr=1e-3)
    first, last = history[0], history[-1]
    assert last["point_chamfer"] < 0.7 * first["point_chamfer"], (first, last)
    assert last["image_mse"] < 0.7 * first["image_mse"], (first, last)


def test_stage1_refuses_bad_settings():
    encoder = PointViT(**SMALL_VIT)
    for bad in (dict(mask_ratio=0.0), dict(mask_ratio=0.99), dict(patch_size=0), dict(depth_tolerance=0.0),
                dict(decoder_num_heads=5), dict(point_weight=0.0, image_weight=0.0)):
        with pytest.raises(ConfigError):
            PointImageMAE(encoder, **bad)
    with pytest.raises(ConfigError, match="point_vit"):
        PointImageMAE(SparseUNet(in_channels=6, **SMALL_UNET))


def test_gaussian2scene_builds_the_stage_asked_for():
    encoder = PointViT(**SMALL_VIT)
    settings = dict(image_weight=2.0, mask_ratio=0.5, decoder_num_heads=2, center_weight=3.0, level=0)
    first = gaussian2scene(encoder, stage=1, **settings)
    assert isinstance(first, PointImageMAE) and first.image_weight == 2.0 and first.mask_ratio == 0.5
    second = gaussian2scene(encoder, stage=2, **settings)
    assert isinstance(second, Gaussian2Scene) and second.image_weight == 2.0 and second.center_weight == 3.0
    with pytest.raises(ConfigError, match="method.stage"):
        gaussian2scene(encoder, stage=3)
    with pytest.raises(ConfigError, match="mask_ration"):
        gaussian2scene(encoder, stage=1, mask_ration=0.5)


def test_load_encoder_weights_copies_a_checkpoints_encoder(tmp_path):
    torch.manual_seed(0)
    trained = PointViT(**SMALL_VIT)
    file = save_checkpoint(tmp_path / "run", 1, {
        "model": {f"encoder.{k}": v for k, v in trained.state_dict().items()},
        "config": {"encoder": {"_target_": "pc3d.encoders.PointViT", **SMALL_VIT}}})
    fresh = PointViT(**{**SMALL_VIT, "num_groups": 64})  # more patches: no weight depends on it
    load_encoder_weights(fresh, file)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="PointViT"):
        load_encoder_weights(SparseUNet(in_channels=6, **SMALL_UNET), file)


CLI_STAGE1 = [*CLI_ROOMS[:10], "encoder=point_vit", "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2",
              "encoder.num_groups=32", "encoder.group_size=16", "method.decoder_num_heads=2", "method.patch_size=4",
              "data.views_per_sample=2", "trainer.batch_size=2", "trainer.log_every=1"]


def test_pretrain_stage1_then_stage2_from_it(tmp_path, capsys):
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["pretrain", *CLI_STAGE1, "method.stage=1", "trainer.max_steps=3", f"out_dir={first}"]) == 0
    lines = [json.loads(line) for line in (first / "losses.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all("image_mse" in line and "point_chamfer" in line for line in lines)
    assert main(["pretrain", *CLI_STAGE1, "method.stage=2", f"init_encoder={first}", "trainer.max_steps=2",
                 f"out_dir={second}"]) == 0
    assert json.loads((second / "metrics.json").read_text())["steps"] == 2
    # the wrong encoder for the checkpoint: one line, exit 2, nothing written
    bad = tmp_path / "bad"
    capsys.readouterr()
    assert main(["pretrain", *CLI_ROOMS, "method.stage=2", f"init_encoder={first}", f"out_dir={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PointViT" in err[0] and not bad.exists()
    assert main(["pretrain", *CLI_ROOMS, "method.stage=1", f"out_dir={bad}"]) == 2  # a sparse UNet
    assert "point_vit" in capsys.readouterr().err and not bad.exists()
