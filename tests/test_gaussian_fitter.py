"""The 3DGS fitter and `pc3d prep gaussians`, on the real lego capture at a small size."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared
from pc3d.cli import main
from pc3d.data.cameras import Camera, PosedImages, read_posed_images
from pc3d.data.gaussian_fitter import (
    GaussianFitConfig,
    _carved_points,
    _Cloud,
    _Densifier,
    _depth_points,
    _Views,
    fit_gaussians,
    heldout_psnr,
    render_cloud,
    scene_scale_from_cameras,
)
from pc3d.data.gaussians import (
    GaussianCloud,
    read_gaussian_folder,
    read_gaussian_manifest,
    read_gaussian_ply,
    write_gaussian_ply,
)
from pc3d.errors import ConfigError
from pc3d.ops.rasterize import quat_to_rotmat

#: lego at 50 x 50 pixels, 3,000 carved random Gaussians, densified from step 60: seconds on a CPU
SMALL = dict(downscale=16, init_count=3000, steps=240, sh_degree=1, sh_degree_every=120, refine_start=60,
             refine_every=60, refine_stop=200, holdout_every=8)
SMALL_OVERRIDES = [f"fit.{k}={v}" for k, v in SMALL.items()]


@pytest.fixture(scope="module")
def lego():
    return read_posed_images(require_shared("nerf_synthetic/lego"))


@pytest.fixture(scope="module")
def fitted(lego):
    return fit_gaussians(lego, GaussianFitConfig(**SMALL, eval_every=60))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_fit_on_real_views_gains_psnr_and_densifies(lego, fitted):
    # Held-out PSNR of the 13 views lego never trained on, against an empty scene over white
    held = _Views.load(lego, lego.holdout_split(8)[1], 16)
    empty = np.mean([-10 * math.log10(float(((image - 1.0) ** 2).mean())) for image in held.images])
    first, last = fitted.history[0][2], fitted.heldout_psnr
    assert fitted.init == "random" and fitted.init_gaussians == 3000
    assert last > empty + 8 and last > first + 1, (empty, fitted.history)
    assert last > 20
    # densification ran: the cloud is no longer its initial size, and SH degree 1 was reached
    assert len(fitted.cloud) != 3000 and fitted.cloud.sh_degree == 1
    assert np.isfinite(fitted.cloud.means).all() and fitted.scene_scale == pytest.approx(
        scene_scale_from_cameras(lego, lego.holdout_split(8)[0]))


def test_the_written_ply_renders_what_the_fit_rendered(lego, fitted, tmp_path):
    write_gaussian_ply(tmp_path / "lego.ply", fitted.cloud)
    again = read_gaussian_ply(tmp_path / "lego.ply")
    held = _Views.load(lego, lego.holdout_split(8)[1], 16)
    white = torch.ones(3)
    a = render_cloud(fitted.cloud, held, 2, 1, white).rgb
    b = render_cloud(again, held, 2, 1, white).rgb
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert heldout_psnr(again, held, 1, white) == pytest.approx(fitted.heldout_psnr, abs=1e-4)


def test_carving_keeps_points_inside_every_silhouette():
    camera = Camera(intrinsics=[[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]], camera_to_world=np.eye(4), width=10, height=10)
    alpha = np.zeros((10, 10), np.float32)
    alpha[:, :5] = 1.0  # the left half of the image is the object
    box = np.array([[-1.0, -1.0, 1.0], [1.0, 1.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    points = _carved_points(box, [(camera, alpha)], 500, generator)
    assert points.shape == (500, 3)
    ratio = points[:, 0] / points[:, 2]  # column = 10 ratio + 5
    on_image = np.abs(points[:, 1] / points[:, 2]) < 0.5
    assert not ((ratio >= 0) & (ratio < 0.5) & on_image).any()  # nothing on the transparent right half
    assert (ratio < 0).mean() > 0.5  # most on the left half; the rest off the image, which that view cannot judge
    plain = _carved_points(box, [], 500, generator)
    assert ((plain >= box[0]) & (plain <= box[1])).all() and (plain[:, 0] > 0).mean() > 0.4
    in_view = np.array([[-0.4, -0.4, 1.0], [0.4, 0.4, 1.2]])  # every point of it is on the image
    with pytest.raises(ConfigError, match="fewer than 4"):
        _carved_points(in_view, [(camera, np.zeros_like(alpha))], 100, generator, rounds=2)


def test_depth_initialisation_unprojects_each_pixel_to_its_depth(tmp_path):
    # one RGB-D frame in the instant-ngp layout: depth 2 m on the left half, 3 m on the right
    width, height = 8, 6
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(tmp_path / "c.png")
    depth = np.full((height, width), 2000, np.uint16)
    depth[:, 4:] = 3000
    Image.fromarray(depth).save(tmp_path / "d.png")
    pose = np.eye(4)
    pose[:3, 3] = [0.5, -0.2, 0.1]
    rotation = torch.tensor([[0.9, 0.1, 0.3, -0.2]])
    pose[:3, :3] = quat_to_rotmat(rotation).double().numpy()[0]
    camera = Camera(intrinsics=[[7.0, 0, 4.2], [0, 6.0, 2.9], [0, 0, 1]], camera_to_world=pose, width=width,
                    height=height, image_path=tmp_path / "c.png", depth_path=tmp_path / "d.png")
    posed = PosedImages([camera], depth_scale=1e-3, source="instant_ngp")
    points, colors = _depth_points(posed, [0], 48, torch.Generator().manual_seed(0))
    assert points.shape == (48, 3) and np.allclose(colors, 128 / 255, atol=1e-6)
    uv, z = camera.project(points)
    expected = np.where(uv[:, 0] < 4, 2.0, 3.0)
    np.testing.assert_allclose(z, expected, rtol=1e-5)
    assert ((uv >= 0) & (uv <= [width, height])).all()


def test_quat_to_rotmat_is_a_rotation_of_any_norm():
    quats = torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 3.0], [0.3, -0.2, 0.9, 0.1]])
    rot = quat_to_rotmat(quats)
    torch.testing.assert_close(rot[0], torch.eye(3))
    torch.testing.assert_close(rot[1], torch.diag(torch.tensor([-1.0, -1.0, 1.0])))  # 180 degrees about z
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3))


def _cloud(num: int, log_scale: float, opacity_logit: float = 0.0) -> _Cloud:
    values = {"means": torch.arange(num * 3, dtype=torch.float32).view(num, 3), "quats": torch.tensor(
        [[1.0, 0, 0, 0]]).repeat(num, 1), "log_scales": torch.full((num, 3), log_scale),
        "opacity_logits": torch.full((num,), opacity_logit), "sh0": torch.zeros(num, 1, 3),
        "sh_rest": torch.zeros(num, 3, 3)}
    return _Cloud(values, {name: 0.1 for name in values})


def test_densification_clones_small_splits_large_and_prunes_transparent_gaussians():
    config = GaussianFitConfig(grow_grad2d=1.0, grow_scale3d=0.01, prune_opacity=0.005, reset_every=0)
    cloud = _cloud(4, math.log(0.005))  # scene scale 1: all four are "small"
    cloud.params["log_scales"].data[2:] = math.log(0.5)  # ... but 2 and 3 are large
    cloud.params["opacity_logits"].data[3] = -8.0  # 3 is nearly transparent
    # a step of Adam, so every row has moments to carry over
    cloud.zero_grad()
    sum(p.sum() for p in cloud.params.values()).backward()
    cloud.step()
    moments = cloud.optimizers["means"].state[cloud.params["means"]]["exp_avg"].clone()
    densifier = _Densifier(config, scene_scale=1.0)
    means2d = torch.zeros(1, 4, 2, requires_grad=True)
    ((means2d * torch.tensor([[[3.0], [0.0], [3.0], [0.0]]]) * 2 / 200).sum()).backward()  # 0 and 2 have |g| 3 (NDC)
    densifier.accumulate(means2d, torch.tensor([[5, 5, 5, 0]]), 200, 200)
    means_before = cloud.params["means"].detach().clone()
    log_scales_before = cloud.params["log_scales"].detach().clone()
    cloned, split, pruned = densifier.refine(cloud, step=600, generator=torch.Generator().manual_seed(0))
    assert (cloned, split, pruned) == (1, 1, 1)
    means = cloud.params["means"].detach()
    # kept: 0, 1 (2 was split, 3 pruned), then the clone of 0, then 2's two children
    assert len(cloud) == 5
    torch.testing.assert_close(means[:2], means_before[:2])
    torch.testing.assert_close(means[2], means_before[0])
    torch.testing.assert_close(cloud.params["log_scales"].detach()[3:],
                               (log_scales_before[2] - math.log(1.6)).expand(2, 3))
    assert ((means[3:] - means_before[2]).norm(dim=-1) < 5 * 0.5).all() and not torch.equal(means[3], means[4])
    state = cloud.optimizers["means"].state[cloud.params["means"]]["exp_avg"]
    torch.testing.assert_close(state[:2], moments[:2])
    assert not state[2:].any()  # new rows start with zero moments
    assert densifier.grad2d is None  # statistics restart after a refinement


def test_fit_config_rejects_bad_values_with_the_field_name():
    for field, value in (("steps", 0), ("init", "sfm"), ("sh_degree", 4), ("lr_means", -1.0), ("ssim_weight", 1.0),
                         ("background", [1, 1]), ("box", [[0, 0, 0], [0, 1, 1]]), ("init_opacity", 1.0)):
        with pytest.raises(ConfigError, match=field):
            GaussianFitConfig(**{field: value}).validate()


def test_prep_gaussians_fits_a_capture_and_a_rerun_rewrites_nothing(tmp_path, capsys):
    src = require_shared("nerf_synthetic/lego")
    dst = tmp_path / "gaussians"
    overrides = [o.replace("steps=240", "steps=80") for o in SMALL_OVERRIDES]
    assert main(["prep", "gaussians", f"src={src}", f"dst={dst}", *overrides]) == 0
    out = capsys.readouterr().out
    assert "prepared lego:" in out and "held-out PSNR" in out
    manifest = read_gaussian_manifest(dst)
    entry = manifest["scenes"]["lego"]
    assert entry["views"] == 100 and entry["init"] == "random" and entry["heldout_psnr"] > 15
    assert manifest["params"]["fit"]["steps"] == 80
    cloud = read_gaussian_folder(dst)["lego"]
    assert len(cloud) == entry["gaussians"] and cloud.sh_degree == entry["sh_degree"] == 0  # degree 1 from step 120
    before = _digest(dst)
    assert main(["prep", "gaussians", f"src={src}", f"dst={dst}", *overrides]) == 0
    assert _digest(dst) == before
    assert json.loads((dst / "splits.json").read_text())["train"] == ["lego"]


def _random_cloud(num: int = 20, degree: int = 2) -> GaussianCloud:
    rng = np.random.default_rng(0)
    return GaussianCloud(means=rng.normal(size=(num, 3)).astype(np.float32),
                         quats=rng.normal(size=(num, 4)).astype(np.float32),
                         log_scales=rng.normal(-3, 0.5, size=(num, 3)).astype(np.float32),
                         opacity_logits=rng.normal(size=num).astype(np.float32),
                         sh=rng.normal(size=(num, (degree + 1) ** 2, 3)).astype(np.float32))


def test_prep_gaussians_imports_3dgs_plys_made_elsewhere(tmp_path, capsys):
    release = tmp_path / "splats"
    release.mkdir()
    cloud = _random_cloud()
    write_gaussian_ply(release / "room.ply", cloud)
    dst = tmp_path / "gaussians"
    assert main(["prep", "gaussians", f"src={release}", f"dst={dst}"]) == 0
    assert "prepared room: 20 Gaussians (SH degree 2)" in capsys.readouterr().out
    again = read_gaussian_folder(dst)["room"]
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(again, name), getattr(cloud, name))


def _ply_without(tmp_path, prop: str):
    import plyfile

    write_gaussian_ply(tmp_path / "full.ply", _random_cloud())
    data = plyfile.PlyData.read(str(tmp_path / "full.ply"))["vertex"].data
    names = [n for n in data.dtype.names if n != prop]
    vertex = np.empty(len(data), dtype=[(n, "<f4") for n in names])
    for n in names:
        vertex[n] = data[n]
    path = tmp_path / "scene.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    (tmp_path / "full.ply").unlink()
    return path


@pytest.mark.parametrize("case", ["missing_field", "nan_means", "nan_scales", "bad_fit_key", "bad_fit_value",
                                  "unknown_format", "zero_views", "mixed_sizes", "missing_image", "foreign_dst"])
def test_prep_gaussians_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    src = require_shared("nerf_synthetic/lego")
    dst = tmp_path / "gaussians"
    args = ["prep", "gaussians", f"src={src}", f"dst={dst}", *SMALL_OVERRIDES]
    expected = None
    if case == "missing_field":
        args = ["prep", "gaussians", f"src={_ply_without(tmp_path, 'scale_1')}", f"dst={dst}"]
        expected = "scale_1"
    elif case in ("nan_means", "nan_scales"):
        cloud = _random_cloud()
        write_gaussian_ply(tmp_path / "scene.ply", cloud)
        import plyfile

        with open(tmp_path / "scene.ply", "rb") as handle:  # not memory-mapped: the file is rewritten below
            ply = plyfile.PlyData.read(handle, mmap=False)
        ply["vertex"].data["x" if case == "nan_means" else "scale_2"][3] = np.nan
        ply.write(str(tmp_path / "scene.ply"))
        args = ["prep", "gaussians", f"src={tmp_path / 'scene.ply'}", f"dst={dst}"]
        expected = "NaN"
    elif case == "bad_fit_key":
        args.append("+fit.learning_rate=0.1")
        expected = "fit.learning_rate"
    elif case == "bad_fit_value":
        args.append("fit.grow_grad2d=-5")
        expected = "grow_grad2d"
    elif case == "unknown_format":
        args.append("format=nerfstudio")
        expected = "format="
    elif case in ("zero_views", "mixed_sizes", "missing_image"):
        capture = tmp_path / "capture"
        capture.mkdir()
        frames = []
        for i in range(3):
            size = 16 if case != "mixed_sizes" or i < 2 else 20
            if case != "missing_image" or i != 1:
                Image.fromarray(np.full((size, size, 4), 200, np.uint8)).save(capture / f"r_{i}.png")
            pose = np.eye(4)
            pose[2, 3] = 4.0
            frames.append({"file_path": f"./r_{i}", "transform_matrix": pose.tolist()})
        meta = {"camera_angle_x": 0.7, "frames": frames if case != "zero_views" else []}
        (capture / "transforms_train.json").write_text(json.dumps(meta))
        args[2] = f"src={capture}"
    elif case == "foreign_dst":
        dst.mkdir()
        (dst / "notes.txt").write_text("mine")
        expected = str(dst)
    before = _digest(dst) if dst.exists() else None
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pc3d: ") and "\n" not in err, err
    if expected is not None:
        assert expected in err, err
    assert (_digest(dst) if dst.exists() else None) == before
