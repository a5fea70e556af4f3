"""Pictures of point clouds, headless: cameras around a cloud, points drawn through the one rasterizer, and
features as colours. What ``pc3d viz`` and the methods' ``log_artifacts`` pictures are made of.

* :func:`orbit_cameras`: cameras around and above a cloud (z up), far enough that it fits the frame;
* :func:`render_points`: each point an isotropic Gaussian (as wide as its spacing, or of one radius) drawn
  with :func:`~pc3d.ops.rasterize.rasterize_gaussians` on a black background;
* :func:`tile_panels`: pictures of several panels from the same cameras, one row per camera;
* :func:`pca_colors`: the first three principal components of per-point features as RGB, robustly stretched
  (directions from a seeded row sample, each component between its 1st and 99th percentile, the sign
  fixed so the largest loading is positive: the same features give the same colours every run).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pc3d.data.scene_views import gaussians_from_points, look_at, render_views

__all__ = ["orbit_cameras", "pca_colors", "render_points", "tile_panels"]


def orbit_cameras(points: np.ndarray, count: int, width: int, height: int, fov: float = 60.0,
                  elevation: float = 45.0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` cameras around ``points (N, 3)``, ``elevation`` degrees above the horizon (z up), at azimuths
    ``45 + 360 k / count`` degrees, far enough that the sphere around the box centre holding every point fits
    the frame: ``viewmats (V, 4, 4)``
    world-to-camera, ``Ks (V, 3, 3)`` (horizontal field of view ``fov`` degrees)."""
    center = (points.min(axis=0) + points.max(axis=0)) / 2
    radius = max(float(np.linalg.norm(points - center, axis=1).max()), 1e-6)
    half = math.radians(fov) / 2
    narrowest = min(half, math.atan(math.tan(half) * height / width))
    distance = radius / math.sin(narrowest)
    focal = 0.5 * width / math.tan(half)
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    up = math.radians(elevation)
    viewmats = []
    for k in range(count):
        azimuth = math.radians(45.0 + 360.0 * k / count)
        direction = np.array([math.cos(up) * math.cos(azimuth), math.cos(up) * math.sin(azimuth), math.sin(up)])
        viewmats.append(look_at(center + distance * direction, center))
    return np.stack(viewmats).astype(np.float32), np.tile(K, (count, 1, 1)).astype(np.float32)


def render_points(points: np.ndarray, colors: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, width: int,
                  height: int, point_size: float = 1.0, radius: float | None = None) -> np.ndarray:
    """``(V, H, W, 3)`` float32 pictures of ``points (N, 3)`` in ``colors (N, 3)``: each point a Gaussian of
    ``point_size`` times its mean distance to 3 neighbours (or of standard deviation ``radius`` for every
    point, so that clouds of other densities are drawn alike), through the rasterizer, black background."""
    cloud = gaussians_from_points(points, colors, scale_factor=point_size, opacity=0.99, scale=radius)
    return render_views(cloud, viewmats, Ks, width, height).images


def pca_colors(features: Tensor, sample_rows: int = 20000, seed: int = 0) -> np.ndarray:
    """``(N, 3)`` float32 RGB in [0, 1] from ``features (N, C)`` (see the module docstring); a component
    the features do not vary along is 0.5."""
    x = features.detach().to(torch.float64).cpu()
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(x), generator=generator)[:sample_rows]
    mean = x[rows].mean(dim=0)
    _, _, vh = torch.linalg.svd(x[rows] - mean, full_matrices=False)
    directions = vh[:3]
    flip = torch.sign(directions.gather(1, directions.abs().argmax(dim=1, keepdim=True)))
    projected = (x - mean) @ (directions * flip).T
    low = torch.quantile(projected[rows], 0.01, dim=0)
    high = torch.quantile(projected[rows], 0.99, dim=0)
    span = high - low
    rgb = torch.full((len(x), 3), 0.5, dtype=torch.float64)
    varies = span > 1e-12 * max(1.0, float(projected.abs().max()))
    width = directions.shape[0]
    rgb[:, :width][:, varies] = ((projected[:, varies] - low[varies]) / span[varies]).clamp(0.0, 1.0)
    return rgb.numpy().astype(np.float32)




def tile_panels(panels: list[np.ndarray]) -> np.ndarray:
    """``P`` panels of ``(V, H, W, 3)`` pictures → ``(V·H, P·W, 3)``: row ``v`` holds every panel from camera ``v``."""
    return np.concatenate([np.concatenate([panel[v] for panel in panels], axis=1) for v in range(len(panels[0]))],
                          axis=0)
