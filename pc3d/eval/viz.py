"""Pictures of what an encoder learned (``pc3d viz``), headless: PNG files, and a coloured PLY for any
point-cloud viewer.

``pc3d viz features checkpoint=RUN|random scene=FILE``, the picture MSM's authors show:

* **Features at the points** (:func:`features_at_points`): every point of the scene gets the feature of
  one encoder level at its position: trilinear between the occupied cell centres of a voxel or grid
  level (the scene probe's :func:`~pc3d.eval.scene_probe.sample_level`), the nearest token of a
  point-token level (a point-ViT's patch centres).
* **PCA to RGB** (:func:`pca_colors`): the first three principal directions of the features, from a
  seeded sample of at most ``sample_rows`` points, each projection stretched between its 1st and 99th
  percentile to [0, 1] (robust: a few outlying points do not grey out the rest) with the sign fixed so
  the largest loading is positive (the same features give the same colours every run).
* **Pictures** (:func:`render_points`): the coloured points drawn with the one rasterizer, each point an
  isotropic Gaussian as wide as its spacing (:func:`~pc3d.data.scene_views.gaussians_from_points`),
  from ``views`` cameras around and above the scene (:func:`orbit_cameras`), on a black background.

Writes ``features_view<k>.png`` (the scene's own colours beside the feature colours), ``features.ply``
(the points in feature colours), ``config.yaml`` and ``metrics.json``.

``pc3d viz recon checkpoint=RUN scene=FILE`` (a Point-MAE run or original checkpoint): the cloud's patches
masked with the sample seed ``seed``, reconstructed by the model, and drawn as
:func:`~pc3d.methods.point_mae.reconstruction_picture` (``recon.png``: per view, the input, the visible
patches, the masked truth and the prediction); ``recon.ply`` holds the visible and the predicted points.
``viz.unit_sphere=true`` centres and scales the cloud as the object datasets do.

``pc3d viz grid scene=GRID.npz [checkpoint=RUN]``: a radiance grid (``pc3d prep grid``'s, or a NeRF-MAE
``.npz`` with ``viz.density``) volume-rendered from the orbit cameras
(:func:`~pc3d.ops.volume_render.render_alpha_grid`, black background); with a NeRF-MAE checkpoint each row
also shows the grid with the masked cells emptied (mask from ``seed``) and the model's reconstruction
(``grid.png``: one row per view; the PSNRs of that reconstruction in ``metrics.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pc3d.data.io import read_points, write_point_ply
from pc3d.data.radiance_grid import DENSITY_CONVENTIONS, read_radiance_grid
from pc3d.data.pictures import orbit_cameras, pca_colors, render_points
from pc3d.data.transforms import normalize_unit_sphere, random_subsample
from pc3d.encoders.base import Encoder, FeatureLevel
from pc3d.encoders.inputs import encoder_input
from pc3d.errors import ConfigError
from pc3d.eval.scene_probe import sample_level
from pc3d.methods.nerf_mae import NeRFMAE, grid_picture
from pc3d.methods.point_mae import PointMAE, reconstruction_loss, reconstruction_panels, reconstruction_picture
from pc3d.ops.neighbors import knn
from pc3d.utils.atomic import atomic_write_png
from pc3d.utils.config import Setting, check_settings
from pc3d.utils.device import move_to

VIZ_SETTINGS = {"level": Setting(int), "num_points": Setting(int, 1, optional=True), "views": Setting(int, 1, 16),
                "width": Setting(int, 16, 4096), "height": Setting(int, 16, 4096), "fov": Setting(float, 10.0, 150.0),
                "elevation": Setting(float, 0.0, 89.0), "point_size": Setting(float, 0.0, open_low=True),
                "sample_rows": Setting(int, 3), "unit_sphere": Setting(bool),
                "density": Setting(str, choices=tuple(DENSITY_CONVENTIONS), optional=True)}
VIZ_MODES = ("features", "recon", "grid")


def features_at_points(level: FeatureLevel, points: Tensor, voxel_size: float | None = None) -> Tensor:
    """``(N, C)`` features of one level of a single-sample output at ``points (N, 3)`` (input frame)."""
    if level.features.shape[0] != 1:
        raise ValueError(f"features_at_points: expected one sample, got a batch of {level.features.shape[0]}")
    if level.stride > 0:
        batch = torch.zeros(len(points), dtype=torch.int64, device=points.device)
        return sample_level(level, points, batch, "trilinear", voxel_size)
    features, coords, _ = level.flatten()
    _, nearest = knn(points[None].to(coords), coords[None], 1)
    return features[nearest[0, :, 0]]


@torch.no_grad()
def encoder_point_features(encoder: Encoder, sample: dict[str, Tensor], points: Tensor, level: int,
                           device: torch.device | str = "cpu") -> Tensor:
    """``(N, C)`` features of ``encoder`` level ``level`` (negative: from the end) at ``points (N, 3)``, the
    encoder run on ``sample`` (``points``, optional ``colors`` / ``normals``)."""
    count = len(encoder.spec.level_channels)
    if not -count <= level < count:
        raise ConfigError(f"level={level}: the encoder has {count} levels (0..{count - 1}, or -1 for the last)")
    output = encoder.to(device).eval()(move_to(encoder_input(encoder.spec, [sample]), device))
    return features_at_points(output.levels[level], points.to(device), encoder.spec.voxel_size or None).cpu()


def _scene_sample(cfg, settings: dict[str, Any]) -> dict[str, Tensor]:
    """``points`` (+ ``colors``, ``normals`` where the file has them) of ``cfg.scene``: a seeded subsample of
    ``viz.num_points``, centred and scaled into the unit sphere with ``viz.unit_sphere``."""
    cloud = read_points(Path(str(cfg.scene)))
    columns = [a for a in (cloud.points, cloud.colors, cloud.normals) if a is not None]
    table = np.concatenate(columns, axis=1)
    if settings["num_points"] is not None:
        table = random_subsample(table, settings["num_points"], np.random.default_rng(int(cfg.seed)))
    points = table[:, :3]
    if settings["unit_sphere"]:
        points = normalize_unit_sphere(points)
    sample = {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))}
    if cloud.colors is not None:
        sample["colors"] = torch.from_numpy(np.ascontiguousarray(table[:, 3:6], dtype=np.float32))
    if cloud.normals is not None:
        sample["normals"] = torch.from_numpy(np.ascontiguousarray(table[:, -3:], dtype=np.float32))
    return sample


def run_viz(mode: str, cfg) -> dict[str, Any]:
    """``pc3d viz features|recon|grid``: see the module docstring. Every value is checked before the first write."""
    from pc3d.train.run import check_run_settings

    if mode not in VIZ_MODES:
        raise ConfigError(f"usage: pc3d viz {'|'.join(VIZ_MODES)} key=value ... (got {mode!r})")
    check_run_settings(cfg)
    settings = check_settings("viz", cfg.viz, VIZ_SETTINGS)
    if mode == "grid":
        return _viz_grid(cfg, settings)
    sample = _scene_sample(cfg, settings)
    return (_viz_features if mode == "features" else _viz_recon)(cfg, settings, sample)


def _viz_features(cfg, settings: dict[str, Any], sample: dict[str, Tensor]) -> dict[str, Any]:
    from pc3d.train.run import (check_run, check_sample, downstream_encoder, finish_run, report, resolve_device,
                                start_run)

    encoder, _, init = downstream_encoder(cfg)
    check_sample(encoder, sample)
    device = resolve_device(str(cfg.device))
    state = check_run(cfg, resumable=False)
    features = encoder_point_features(encoder, sample, sample["points"], settings["level"], device)
    feature_rgb = pca_colors(features, settings["sample_rows"], int(cfg.seed))
    points, colors = sample["points"].numpy(), sample.get("colors")
    width, height, size = settings["width"], settings["height"], settings["point_size"]
    viewmats, Ks = orbit_cameras(points, settings["views"], width, height, settings["fov"], settings["elevation"])
    pictures = render_points(points, feature_rgb, viewmats, Ks, width, height, size)
    own = (render_points(points, colors.numpy(), viewmats, Ks, width, height, size) if colors is not None
           else np.zeros_like(pictures))
    out = start_run(cfg, state, resumable=False)
    for k in range(len(pictures)):
        atomic_write_png(out / f"features_view{k}.png", np.concatenate([own[k], pictures[k]], axis=1))
    write_point_ply(out / "features.ply", points, feature_rgb)
    metrics = {"init": init, "points": len(points), "level": settings["level"], "channels": int(features.shape[1]),
               "views": len(pictures)}
    finish_run(out, metrics)
    plural = "s" if len(pictures) != 1 else ""
    report(f"viz features ({init}, level {settings['level']}, {len(points)} points): {len(pictures)} picture{plural} "
           f"and features.ply → {out}")
    return metrics


@torch.no_grad()
def _viz_recon(cfg, settings: dict[str, Any], sample: dict[str, Tensor]) -> dict[str, Any]:
    from pc3d.hub import load_pretraining_model
    from pc3d.train.run import check_run, check_sample, finish_run, report, resolve_device, start_run

    if str(cfg.checkpoint) == "random":
        raise ConfigError("checkpoint=random: viz recon draws a trained Point-MAE model (a run or checkpoint)")
    model = load_pretraining_model(str(cfg.checkpoint))
    if not isinstance(model, PointMAE):
        raise ConfigError(f"checkpoint={cfg.checkpoint}: holds a {type(model).__name__} model; viz recon draws "
                          "Point-MAE's reconstructions")
    check_sample(model.encoder, sample)
    device = resolve_device(str(cfg.device))
    state = check_run(cfg, resumable=False)
    batch = {"points": sample["points"][None].to(device), "sample_seed": torch.tensor([int(cfg.seed)], device=device)}
    model = model.to(device).eval()
    full = model.reconstruct(batch)
    chamfer = float(reconstruction_loss(full))
    rec = full.first().to_cpu()
    points = sample["points"].numpy()
    picture = reconstruction_picture(rec, points, settings["views"], settings["width"], settings["height"],
                                     settings["point_size"], settings["fov"], settings["elevation"])
    visible, _, _, predicted = reconstruction_panels(rec, points)
    out = start_run(cfg, state, resumable=False)
    atomic_write_png(out / "recon.png", picture)
    write_point_ply(out / "recon.ply", *predicted)
    metrics = {"points": len(points), "patches": int(rec.mask.shape[1]), "masked_patches": int(rec.mask.sum()),
               "chamfer": chamfer, "views": settings["views"]}
    finish_run(out, metrics)
    report(f"viz recon ({metrics['masked_patches']} of {metrics['patches']} patches masked, Chamfer-L2 "
           f"{chamfer:.5f}): recon.png and recon.ply → {out}")
    return metrics


@torch.no_grad()
def _viz_grid(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    from pc3d.data.grid_data import radiance_grid_sample
    from pc3d.hub import load_pretraining_model
    from pc3d.train.run import check_run, finish_run, report, resolve_device, start_run

    grid = read_radiance_grid(Path(str(cfg.scene)), settings["density"])
    values = radiance_grid_sample(grid)["grid"]
    metrics: dict[str, Any] = {"shape": list(grid.shape)}
    model = None
    if str(cfg.checkpoint) == "random":
        raise ConfigError("checkpoint=random: viz grid draws a grid alone (checkpoint=null) or a trained NeRF-MAE "
                          "model's reconstruction of it")
    if str(cfg.checkpoint) not in ("null", "None"):
        model = load_pretraining_model(str(cfg.checkpoint))
        if not isinstance(model, NeRFMAE):
            raise ConfigError(f"checkpoint={cfg.checkpoint}: holds a {type(model).__name__} model; viz grid draws "
                              "NeRF-MAE's reconstructions")
    device = resolve_device(str(cfg.device))
    state = check_run(cfg, resumable=False)
    hidden = prediction = None
    if model is not None:
        model = model.to(device).eval()
        padded = model.pad_grid(model.batch_grid({"grid": values[None].to(device)}))
        mask = model.token_mask(torch.tensor([int(cfg.seed)]), padded.shape, device)
        output = model.predict(padded, mask)
        losses = model.losses(padded, output, mask)
        x, y, z = grid.shape
        hidden = model.masked_cells(padded, mask)[0, :x, :y, :z].cpu()
        prediction = output[0, :, :x, :y, :z].float().cpu()
        metrics.update(psnr=float(losses["psnr"]), psnr_masked=float(losses["psnr_masked"]),
                       masked_fraction=float(losses["masked_fraction"]))
    picture = grid_picture(values, torch.from_numpy(grid.box.astype(np.float32)), hidden, prediction,
                           settings["views"], settings["width"], settings["height"], settings["fov"],
                           settings["elevation"])
    out = start_run(cfg, state, resumable=False)
    atomic_write_png(out / "grid.png", picture)
    metrics["views"] = settings["views"]
    finish_run(out, metrics)
    shown = f"PSNR {metrics['psnr']:.2f} dB, masked {metrics['psnr_masked']:.2f} dB" if model else "the grid"
    report(f"viz grid ({'x'.join(map(str, grid.shape))} cells, {shown}): grid.png → {out}")
    return metrics
