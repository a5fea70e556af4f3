"""Differentiable volume rendering of dense radiance grids (packed rays, occupancy skipping).

One path renders every radiance grid in pc3d: the grid fitter trains through it and the grid
pictures are drawn with it. Rays are marched through the grid's box at a fixed step; samples are
*packed* (one flat list of ``S`` samples over all rays, ``ray_index`` saying whose each is), so empty
space removed by an occupancy grid costs nothing downstream.

Conventions
-----------
* A grid ``values (C, X, Y, Z)`` holds one value per cell *centre*; cell ``(i, j, k)`` covers
  ``box_min + [i, i + 1) * cell`` along x (likewise y, z), with ``cell = (box_max - box_min) /
  (X, Y, Z)``. Between centres values are trilinear, outside the outermost centres they are held
  (``grid_sample`` with ``align_corners=False``, ``padding_mode="border"``).
* Compositing is the quadrature of NeRF: sample ``i`` of a ray with opacity ``alpha_i`` gets weight
  ``w_i = alpha_i * prod_{j<i} (1 - alpha_j)``; ``rgb = sum_i w_i c_i + (1 - sum_i w_i) * background``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class RaySamples:
    """Packed samples along rays.

    Attributes:
        ray_index: ``(S,)`` int64, the ray of each sample, non-decreasing.
        t: ``(S,)`` distance of each sample along its (unit) ray direction.
        points: ``(S, 3)`` world positions.
        num_rays: ``R``, the number of rays (rays may have no sample).
    """

    ray_index: Tensor
    t: Tensor
    points: Tensor
    num_rays: int

    def select(self, keep: Tensor) -> "RaySamples":
        """The samples where ``keep (S,)`` bool is True (order kept, so still packed)."""
        return RaySamples(self.ray_index[keep], self.t[keep], self.points[keep], self.num_rays)


def ray_box_intersection(origins: Tensor, directions: Tensor, box: Tensor,
                         near: float = 0.0) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through an axis-aligned box (slab method).

    Args:
        origins, directions: ``(R, 3)``; directions need not be unit.
        box: ``(2, 3)`` ``(min, max)``.
        near: entry distances are at least this.
    Returns:
        ``t_near, t_far`` ``(R,)``; a ray that misses the box has ``t_far <= t_near``.
    """
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (box[0] - origins) / safe
    t1 = (box[1] - origins) / safe
    t_near = torch.minimum(t0, t1).amax(dim=1).clamp(min=near)
    t_far = torch.maximum(t0, t1).amin(dim=1)
    return t_near, t_far


def march_rays(origins: Tensor, directions: Tensor, box: Tensor, step: float, near: float = 0.0,
               offsets: Tensor | None = None, max_samples: int = 4096) -> RaySamples:
    """Samples every ``step`` along each ray inside ``box``.

    Sample ``k`` of a ray is at ``t = t_near + (k + offset) * step`` for every ``t < t_far``;
    ``offsets (R,)`` in ``[0, 1)`` (default 0.5: mid-step) jitter the samples of each ray (a training
    fitter draws them at random so no two steps see the same depths). ``directions`` must be unit
    for ``step`` to be a distance. At most ``max_samples`` per ray.
    """
    t_near, t_far = ray_box_intersection(origins, directions, box, near)
    if offsets is None:
        offsets = torch.full_like(t_near, 0.5)
    counts = torch.ceil((t_far - t_near) / step - offsets).clamp(min=0, max=max_samples).long()
    ray_index = torch.repeat_interleave(torch.arange(len(origins), device=origins.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    k = torch.arange(len(ray_index), device=origins.device) - starts[ray_index]
    t = t_near[ray_index] + (k.to(t_near.dtype) + offsets[ray_index]) * step
    points = origins[ray_index] + t[:, None] * directions[ray_index]
    return RaySamples(ray_index, t, points, len(origins))


def grid_coordinates(points: Tensor, box: Tensor) -> Tensor:
    """``(S, 3)`` world points → ``(S, 3)`` normalised grid coordinates, ``[-1, 1]`` across the box."""
    return (points - box[0]) / (box[1] - box[0]) * 2.0 - 1.0


def sample_grid(values: Tensor, points: Tensor, box: Tensor) -> Tensor:
    """Trilinear values of a cell-centred grid at world points.

    Args:
        values: ``(C, X, Y, Z)``.
        points: ``(S, 3)`` world positions.
        box: ``(2, 3)`` the grid's box.
    Returns:
        ``(S, C)``.
    """
    coords = grid_coordinates(points, box)
    # grid_sample reads its last axis as (x -> W, y -> H, z -> D) of a (D, H, W) volume: flip.
    out = F.grid_sample(values.unsqueeze(0), coords.flip(-1).view(1, 1, 1, -1, 3), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.view(values.shape[0], -1).T


def cell_index(points: Tensor, box: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """The cell of each point: ``(index (S, 3) int64, inside (S,) bool)``."""
    size = torch.tensor(shape, device=points.device)
    cells = torch.floor((points - box[0]) / (box[1] - box[0]) * size).long()
    inside = ((cells >= 0) & (cells < size)).all(dim=1)
    return cells.clamp(min=0).minimum(size - 1), inside


def occupied_samples(samples: RaySamples, occupancy: Tensor, box: Tensor) -> Tensor:
    """``(S,)`` bool: the samples that fall in an occupied cell of ``occupancy (X, Y, Z)`` bool."""
    cells, inside = cell_index(samples.points, box, tuple(occupancy.shape))  # type: ignore[arg-type]
    return inside & occupancy[cells[:, 0], cells[:, 1], cells[:, 2]]


def transmittance(ray_index: Tensor, alpha: Tensor, num_rays: int) -> Tensor:
    """``(S,)`` the light that reaches each packed sample: ``prod_{j<i} (1 - alpha_j)`` over its own ray.

    Args:
        ray_index: ``(S,)`` non-decreasing ray of each sample (samples of a ray in depth order).
        alpha: ``(S,)`` opacity of each sample, in ``[0, 1)``.
        num_rays: ``R``.
    """
    log_transmit = torch.log1p(-alpha.clamp(max=1.0 - 1e-6))
    # float64: the running sum over every ray of a batch reaches -1e5 and more, where float32
    # would lose the few units that one ray's transmittance depends on.
    inclusive = torch.cumsum(log_transmit.double(), 0)
    counts = torch.bincount(ray_index, minlength=num_rays)
    # The cumulative sum up to (not including) each ray's first sample, subtracted per sample, makes
    # the global cumulative sum a per-ray exclusive one.
    before_ray = torch.cumsum(counts, 0) - counts
    if len(alpha) == 0:
        base = inclusive.new_zeros(num_rays)
    else:
        base = torch.where(before_ray > 0, inclusive[(before_ray - 1).clamp(min=0)], inclusive.new_zeros(()))
    exclusive = inclusive - log_transmit.double() - base[ray_index]
    return torch.exp(exclusive).to(alpha.dtype)


def composite(ray_index: Tensor, alpha: Tensor, colors: Tensor, num_rays: int,
              background: Tensor | float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of packed samples.

    Args:
        ray_index: ``(S,)`` non-decreasing ray of each sample (samples of a ray in depth order).
        alpha: ``(S,)`` opacity of each sample, in ``[0, 1)``.
        colors: ``(S, C)``.
        num_rays: ``R``.
        background: ``(C,)``, ``(R, C)`` (one per ray) or a scalar, added with the remaining transmittance.
    Returns:
        ``rgb (R, C)``, ``opacity (R,)`` (``sum_i w_i``) and the sample weights ``w (S,)``.
    """
    weights = alpha * transmittance(ray_index, alpha, num_rays)
    rgb = colors.new_zeros(num_rays, colors.shape[1]).index_add(0, ray_index, weights[:, None] * colors)
    opacity = alpha.new_zeros(num_rays).index_add(0, ray_index, weights)
    background = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    return rgb + (1.0 - opacity)[:, None] * background, opacity, weights


@torch.no_grad()
def render_alpha_grid(values: Tensor, box: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                      step: float = 0.5, background: Tensor | float = 0.0, chunk_rays: int = 16384) -> Tensor:
    """Pictures of a stored grid of colour and per-cell opacity (what ``pc3d prep grid`` writes).

    Args:
        values: ``(4, X, Y, Z)`` R, G, B in [0, 1] and alpha, the opacity of one cell's length.
        box: ``(2, 3)`` the grid's box.
        viewmats: ``(V, 4, 4)`` world-to-camera (OpenCV axes); Ks: ``(V, 3, 3)`` pinhole intrinsics.
        step: sample spacing in cells (of the smallest cell edge); each sample's opacity is the cell's
            scaled to the step, ``1 - (1 - alpha)^step``, so the picture does not depend on it.
        background: ``(3,)`` or a scalar.
        chunk_rays: rays rendered at once (bounds the packed samples held in memory).
    Returns:
        ``(V, H, W, 3)`` in the dtype of ``values``.
    """
    values, box = values.float(), box.to(values.device).float()
    cell = float(((box[1] - box[0]) / torch.tensor(values.shape[1:], device=values.device)).min())
    v, u = torch.meshgrid(torch.arange(height, device=values.device), torch.arange(width, device=values.device),
                          indexing="ij")
    pixels = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u, dtype=torch.float32)], dim=-1).reshape(-1, 3).float()
    pictures = []
    for viewmat, K in zip(viewmats.to(values).float(), Ks.to(values).float()):
        rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
        directions = torch.nn.functional.normalize((pixels @ torch.linalg.inv(K).T) @ rotation, dim=-1)
        origin = -rotation.T @ translation
        rgb = []
        for start in range(0, len(directions), chunk_rays):
            rays = directions[start:start + chunk_rays]
            samples = march_rays(origin.expand_as(rays), rays, box, step * cell)
            sampled = sample_grid(values, samples.points, box)
            alpha = 1.0 - (1.0 - sampled[:, 3].clamp(0.0, 1.0 - 1e-6)) ** step
            rgb.append(composite(samples.ray_index, alpha, sampled[:, :3].clamp(0.0, 1.0), len(rays), background)[0])
        pictures.append(torch.cat(rgb).reshape(height, width, 3))
    return torch.stack(pictures)
