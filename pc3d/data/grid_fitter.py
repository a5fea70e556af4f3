"""Fit a dense radiance grid (RGB + density per cell) to posed images, in pure torch.

The grid is what NeRF-MAE pretrains on: a NeRF sampled on a regular lattice. Instead of training
a NeRF and sampling it, pc3d optimises the lattice directly (the explicit-grid route of
Plenoxels and DVGO), which runs in minutes on a CPU:

1. **Scene box.** Given, or from the cameras: the cells of a lattice that at least
   ``visible_fraction`` of the cameras see, inside the camera centres' reach (360-degree captures)
   or between each camera's near and far bounds (LLFF).
2. **Coarse stage.** A cubic grid of ``coarse_resolution`` cells a side over that box.
3. **Shrink.** The box becomes the bounding box of the coarse grid's occupied cells (plus a margin)
   and the grid takes the scene's proportions: the longest side has ``resolution`` cells, the
   others ``extent / longest * resolution`` (rounded up to even), as NeRF-MAE's grids.
4. **Coarse to fine.** The longest side grows through ``resolution_schedule`` to ``resolution``;
   every change resamples the grid trilinearly.

Each step renders ``rays_per_step`` random training pixels (:mod:`pc3d.ops.volume_render`):
density is interpolated *before* its activation (``softplus(raw + shift)``, DVGO's
post-activation, which gives surfaces sharper than a cell), colours are ``sigmoid(raw)``
(view-independent, as the grid stores them); samples in empty cells of an occupancy grid
(refreshed every ``occupancy_every`` steps) and behind opaque ones (transmittance below
``min_transmittance``, found by a no-grad pass) are skipped. The loss is the mean squared colour
error plus total variation of density and colour. Adam, with a learning rate decayed
exponentially to ``lr_final_factor`` of its start.

Every choice is a field of :class:`GridFitConfig`; held-out views (every ``holdout_every``-th
image) measure PSNR, which goes into the grid's manifest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pc3d.data.cameras import PosedImages, camera_rays
from pc3d.errors import ConfigError
from pc3d.ops.volume_render import (
    RaySamples,
    cell_index,
    composite,
    march_rays,
    occupied_samples,
    sample_grid,
    transmittance,
)


@dataclass
class GridFitConfig:
    """The fitter's settings (``configs/prep/grid.yaml`` carries the same keys).

    Attributes:
        resolution: cells along the grid's longest side at the end (NeRF-MAE: 160).
        coarse_resolution: cells a side of the cubic coarse grid.
        coarse_steps: steps of the coarse stage, before the box shrinks.
        resolution_schedule: ``(step, longest side)`` pairs after the coarse stage; the grid is
            resampled to each side at its step (the last reaching ``resolution`` at the latest).
        steps: total optimisation steps.
        rays_per_step: training pixels per step.
        lr: Adam learning rate of the density and colour grids at the start.
        lr_final_factor: the learning rate decays exponentially to ``lr * lr_final_factor``.
        tv_density, tv_color: total-variation weights (mean squared difference of neighbours).
        tv_cells: random cells per step the total variation is estimated on.
        step_size: ray-marching step, in cells of the current grid.
        density_shift: ``softplus(raw + shift)``; with raw 0 at the start every cell is nearly empty.
        occupancy_threshold: a cell is occupied when its opacity over one density unit (a coarse cell)
            exceeds this; it must exceed the initial opacity, ``1 - exp(-softplus(density_shift))``.
        occupancy_every: steps between occupancy refreshes.
        min_transmittance: samples behind this much accumulated opacity are skipped.
        shrink_margin: cells of the coarse grid added around the box of visible cells.
        shrink_weight: samples of less rendering weight do not count for the shrink.
        shrink_mass: share of the training rays' rendering weight the shrunk box may leave out
            (half on either side of each axis).
        visible_fraction: share of cameras that must see a cell of the scene box.
        downscale: image downscale factor (4: lego's 800 x 800 becomes 200 x 200).
        holdout_every: image ``i`` with ``i % holdout_every == 0`` is held out (0: none).
        background: ``(3,)`` colour behind the grid, or ``None``: the images' own (white for
            Blender sets, black otherwise).
        random_background: train images that have an alpha channel over a random colour per ray
            (held-out views are still scored over ``background``).
        eval_every: steps between held-out PSNR measurements (0: only at the end).
        eval_full_resolution: also measure the final held-out PSNR on the images as stored
            (``downscale`` 1), recorded as ``heldout_psnr_full``.
        seed: rays, jitter and everything random.
    """

    resolution: int = 160
    coarse_resolution: int = 64
    coarse_steps: int = 300
    resolution_schedule: Sequence[Sequence[int]] = ((300, 96), (800, 128), (1400, 160))
    steps: int = 4000
    rays_per_step: int = 4096
    lr: float = 0.1
    lr_final_factor: float = 0.1
    tv_density: float = 0.0
    tv_color: float = 0.0
    tv_cells: int = 65536
    step_size: float = 0.5
    density_shift: float = -6.0
    occupancy_threshold: float = 1e-2
    occupancy_every: int = 100
    min_transmittance: float = 1e-3
    shrink_margin: int = 2
    shrink_weight: float = 0.02
    shrink_mass: float = 1e-2
    visible_fraction: float = 0.95
    downscale: int = 4
    holdout_every: int = 8
    background: Sequence[float] | None = None
    random_background: bool = True
    eval_every: int = 0
    eval_full_resolution: bool = False
    seed: int = 0
    box: Sequence[Sequence[float]] | None = field(default=None)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        positive_int = ("resolution", "coarse_resolution", "steps", "rays_per_step", "occupancy_every", "downscale",
                        "tv_cells")
        for name in positive_int:
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"grid fit: {name} must be a positive integer, got {value!r}")
        for name in ("coarse_steps", "holdout_every", "eval_every", "shrink_margin", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ConfigError(f"grid fit: {name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "step_size"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"grid fit: {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("tv_density", "tv_color"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"grid fit: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr_final_factor", "shrink_weight", "shrink_mass", "occupancy_threshold", "min_transmittance",
                     "visible_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"grid fit: {name} must be in (0, 1], got {value!r}")
        if self.coarse_resolution > self.resolution:
            raise ConfigError(f"grid fit: coarse_resolution ({self.coarse_resolution}) must be <= resolution "
                              f"({self.resolution})")
        last = 0
        for entry in self.resolution_schedule:
            if len(entry) != 2 or int(entry[0]) < last or not 1 <= int(entry[1]) <= self.resolution:
                raise ConfigError(f"grid fit: resolution_schedule must be (step, side) pairs with increasing steps "
                                  f"and sides <= resolution ({self.resolution}), got {list(self.resolution_schedule)}")
            last = int(entry[0])
        initial = 1.0 - math.exp(-math.log1p(math.exp(self.density_shift)))
        if initial >= self.occupancy_threshold:
            raise ConfigError(f"grid fit: occupancy_threshold ({self.occupancy_threshold}) must exceed the initial "
                              f"opacity {initial:.3g} of density_shift={self.density_shift}")
        check_background_and_box("grid fit", self.background, self.box)


@dataclass
class FittedGrid:
    """A fitted radiance grid.

    Attributes:
        rgb: ``(X, Y, Z, 3)`` float32 in ``[0, 1]``, the colour at each cell centre.
        alpha: ``(X, Y, Z)`` float32, the opacity of one cell length of each cell,
            ``1 - exp(-density * cell)``.
        box: ``(2, 3)`` float64, the grid's box in the cameras' world frame.
        heldout_psnr: mean PSNR (dB) over held-out views, or ``None`` without held-out views.
        heldout_psnr_full: the same on the images as stored, if asked (``eval_full_resolution``).
        train_psnr: PSNR of the last 100 steps' training rays.
        history: ``(step, seconds, held-out PSNR)`` of every evaluation.
        seconds: wall time of the optimisation (without loading images).
    """

    rgb: np.ndarray
    alpha: np.ndarray
    box: np.ndarray
    heldout_psnr: float | None
    heldout_psnr_full: float | None
    train_psnr: float
    history: list[tuple[int, float, float]]
    seconds: float


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio (dB) of a mean squared error of values in ``[0, 1]``."""
    return float(-10.0 * math.log10(max(mse, 1e-12)))


def grid_shape(box: Tensor | np.ndarray, longest: int) -> tuple[int, int, int]:
    """Cells per axis for a box: ``longest`` on its longest side, ``extent / max_extent * longest``
    rounded up to even on the others (NeRF-MAE's rule), at least 2."""
    extent = np.asarray(box[1] - box[0], dtype=np.float64)
    sides = np.ceil(extent / extent.max() * longest / 2.0) * 2
    return tuple(int(max(2, s)) for s in sides)  # type: ignore[return-value]


def cell_centres(box: Tensor, shape: Sequence[int]) -> Tensor:
    """``(X * Y * Z, 3)`` world positions of a grid's cell centres, x outermost."""
    axes = [box[0, a] + (torch.arange(shape[a], dtype=box.dtype, device=box.device) + 0.5)
            * (box[1, a] - box[0, a]) / shape[a] for a in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def scene_box_from_cameras(posed: PosedImages, cameras: Sequence[int], visible_fraction: float,
                           lattice: int = 48) -> np.ndarray:
    """``(2, 3)`` the box of the lattice points that ``visible_fraction`` of ``cameras`` see.

    The lattice spans the camera centres' bounding box grown by its own size in every direction
    (a 360-degree capture looks inwards, so its scene lies within), or, where the format gives
    per-camera near/far bounds (LLFF), the points of every frustum between them.
    """
    cams = [posed.cameras[i] for i in cameras]
    centres = np.stack([c.center for c in cams])
    if posed.near_far is not None:
        corners = []
        for i, cam in zip(cameras, cams):
            near, far = posed.near_far[i]
            for u, v in ((0, 0), (cam.width, 0), (0, cam.height), (cam.width, cam.height),
                         (cam.width / 2, cam.height / 2)):
                ray = np.linalg.solve(cam.intrinsics, np.array([u, v, 1.0]))
                for depth in (near, far):
                    corners.append(cam.camera_to_world[:3, :3] @ (ray * depth) + cam.center)
        corners = np.stack(corners)
        low, high = corners.min(0), corners.max(0)
    else:
        extent = (centres.max(0) - centres.min(0)).max()
        low, high = centres.min(0) - extent, centres.max(0) + extent
    axes = [np.linspace(low[a], high[a], lattice) for a in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    seen = np.zeros(len(points), dtype=np.int64)
    for i, cam in zip(cameras, cams):
        uv, depth = cam.project(points, distort=False)
        inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam.height)
        if posed.near_far is not None:
            inside &= (depth >= posed.near_far[i, 0]) & (depth <= posed.near_far[i, 1])
        seen += inside
    kept = points[seen >= math.ceil(visible_fraction * len(cams))]
    if len(kept) == 0:
        raise ConfigError(f"grid fit: no point is seen by {visible_fraction:.0%} of the cameras; give box=... "
                          "or lower visible_fraction")
    cell = (high - low) / (lattice - 1)
    return np.stack([kept.min(0) - cell, kept.max(0) + cell])


class _Grid:
    """The optimised parameters: raw density ``(1, X, Y, Z)`` and raw colour ``(3, X, Y, Z)``.

    Density is ``softplus(raw + shift)`` per ``unit`` of length, ``unit`` the coarse grid's cell:
    fixed for the whole fit, so resampling the raw values to a finer grid keeps the world density.
    """

    def __init__(self, box: Tensor, shape: Sequence[int], unit: float, density: Tensor | None = None,
                 color: Tensor | None = None) -> None:
        self.box = box
        self.shape = tuple(int(s) for s in shape)
        self.unit = unit
        self.density = torch.zeros(1, *self.shape) if density is None else density
        self.color = torch.zeros(3, *self.shape) if color is None else color
        self.density.requires_grad_(True)
        self.color.requires_grad_(True)

    @property
    def cell(self) -> float:
        """Edge of one cell (the grid's cells are cubes up to the even rounding: their mean)."""
        return float(((self.box[1] - self.box[0]) / torch.tensor(self.shape, dtype=self.box.dtype)).mean())

    def resampled(self, box: Tensor, shape: Sequence[int]) -> "_Grid":
        with torch.no_grad():
            centres = cell_centres(box, shape).float()
            density = sample_grid(self.density.detach(), centres, self.box.float()).T.reshape(1, *shape)
            color = sample_grid(self.color.detach(), centres, self.box.float()).T.reshape(3, *shape)
        return _Grid(box, shape, self.unit, density.contiguous(), color.contiguous())


def _alpha(raw_density: Tensor, shift: float, interval: float) -> Tensor:
    return 1.0 - torch.exp(-F.softplus(raw_density + shift) * interval)


def _occupancy(grid: _Grid, config: GridFitConfig) -> Tensor:
    """``(X, Y, Z)`` bool: cells whose opacity over one density unit exceeds the threshold, dilated by one cell."""
    with torch.no_grad():
        alpha = _alpha(grid.density.detach(), config.density_shift, 1.0)
        dilated = F.max_pool3d(alpha.unsqueeze(0), kernel_size=3, stride=1, padding=1)[0, 0]
    return dilated > config.occupancy_threshold


def _total_variation(values: Tensor, cells: Tensor) -> Tensor:
    """Mean squared difference between the given cells of ``values (C, X, Y, Z)`` and their next
    neighbour along each axis, summed over the axes.

    ``cells (K, 3)`` int64 (each below the last index on every axis) are a random sample of the grid:
    the full sum costs as much as a whole step at 160^3, a sample of it is an unbiased estimate
    (Plenoxels regularises random voxel batches the same way).
    """
    x, y, z = cells.unbind(1)
    here = values[:, x, y, z]
    return sum(((values[:, x + dx, y + dy, z + dz] - here) ** 2).mean()  # type: ignore[return-value]
               for dx, dy, dz in ((1, 0, 0), (0, 1, 0), (0, 0, 1)))


def _tv_cells(shape: Sequence[int], count: int, generator: torch.Generator) -> Tensor:
    return torch.stack([torch.randint(int(s) - 1, (count,), generator=generator) for s in shape], dim=1)


def _render(grid: _Grid, origins: Tensor, directions: Tensor, config: GridFitConfig, occupancy: Tensor,
            background: Tensor, offsets: Tensor | None) -> Tensor:
    """``(R, 3)`` rendered colours of rays through the grid (differentiable in the grid)."""
    box = grid.box.float()
    step = config.step_size * grid.cell
    samples = march_rays(origins, directions, box, step, offsets=offsets)
    samples = samples.select(occupied_samples(samples, occupancy, box))
    interval = step / grid.unit
    with torch.no_grad():
        alpha = _alpha(sample_grid(grid.density.detach(), samples.points, box)[:, 0], config.density_shift, interval)
        reaching = transmittance(samples.ray_index, alpha, samples.num_rays)
        samples = samples.select((reaching > config.min_transmittance) & (alpha > 0))
    return _shade(grid, samples, config, background, interval)


def _shade(grid: _Grid, samples: RaySamples, config: GridFitConfig, background: Tensor, interval: float) -> Tensor:
    box = grid.box.float()
    alpha = _alpha(sample_grid(grid.density, samples.points, box)[:, 0], config.density_shift, interval)
    colors = torch.sigmoid(sample_grid(grid.color, samples.points, box))
    rgb, _, _ = composite(samples.ray_index, alpha, colors, samples.num_rays, background)
    return rgb


def _scene_cells(grid: _Grid, rays: "_Rays", config: GridFitConfig, generator: torch.Generator,
                 count: int = 65536) -> tuple[Tensor, Tensor]:
    """The cell range ``(low (3,), high (3,))`` int64 (inclusive) that holds the scene.

    Renders ``count`` training rays and sums, per cell, the rendering weights of at least
    ``shrink_weight``; along each axis the range leaves out ``shrink_mass / 2`` of that total on
    either side. Cells near the box's edge that few cameras see fill with faint fog of the
    background's colour: opaque enough to count as occupied, spread over many samples of small weight
    each, and here and there one stray cell; neither may keep the whole box.
    """
    index = torch.randint(len(rays), (count,), generator=generator)
    origins, directions, _ = rays.take(index)
    box = grid.box.float()
    step = config.step_size * grid.cell
    with torch.no_grad():
        samples = march_rays(origins, directions, box, step)
        alpha = _alpha(sample_grid(grid.density, samples.points, box)[:, 0], config.density_shift, step / grid.unit)
        weights = alpha * transmittance(samples.ray_index, alpha, samples.num_rays)
        cells, _ = cell_index(samples.points, box, grid.shape)
        weights = torch.where(weights >= config.shrink_weight, weights, torch.zeros_like(weights))
    low, high = [], []
    for axis in range(3):
        mass = torch.zeros(grid.shape[axis], dtype=torch.float64).index_add(0, cells[:, axis], weights.double())
        cumulative = torch.cumsum(mass, 0) / mass.sum().clamp(min=1e-12)
        low.append(int(torch.searchsorted(cumulative, torch.tensor(config.shrink_mass / 2, dtype=torch.float64))))
        high.append(int(torch.searchsorted(cumulative, torch.tensor(1 - config.shrink_mass / 2,
                                                                    dtype=torch.float64))))
    return torch.tensor(low), torch.tensor(high).clamp(max=torch.tensor(grid.shape) - 1)


class _Rays:
    """Every pixel of a set of views as rays: camera index, direction, colour and alpha per pixel.

    ``alpha`` is ``None`` unless every view has an alpha channel and the set composites over a
    background (then colours can be put over any other background, see :meth:`PosedImages.alpha`).
    """

    def __init__(self, posed: PosedImages, views: Sequence[int], downscale: int) -> None:
        origins, directions, colors, alphas = [], [], [], []
        for i in views:
            o, d = camera_rays(posed.cameras[i], downscale=downscale)
            origins.append(torch.from_numpy(o[:1]))
            directions.append(torch.from_numpy(d))
            colors.append(torch.from_numpy(posed.image(i, downscale=downscale).reshape(-1)).view(-1, 3))
            alpha = posed.alpha(i, downscale=downscale) if posed.background is not None else None
            alphas.append(None if alpha is None else torch.from_numpy(alpha.reshape(-1)))
        self.centres = torch.cat(origins)
        self.view = torch.cat([torch.full((len(d),), k, dtype=torch.int32) for k, d in enumerate(directions)])
        self.directions = torch.cat(directions)
        self.colors = torch.cat(colors)
        self.alpha = torch.cat(alphas) if alphas and all(a is not None for a in alphas) else None  # type: ignore
        self.pixels_per_view = [len(d) for d in directions]

    def __len__(self) -> int:
        return len(self.directions)

    def take(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.centres[self.view[index].long()], self.directions[index], self.colors[index]


def _evaluate(grid: _Grid, rays: _Rays, config: GridFitConfig, occupancy: Tensor, background: Tensor,
              chunk: int = 16384) -> float:
    """Mean PSNR over the views of ``rays`` (each view's own MSE, as NeRF papers report)."""
    total, start = [], 0
    with torch.no_grad():
        squared = []
        for begin in range(0, len(rays), chunk):
            index = torch.arange(begin, min(begin + chunk, len(rays)))
            origins, directions, target = rays.take(index)
            squared.append(((_render(grid, origins, directions, config, occupancy, background, None) - target) ** 2)
                           .mean(dim=1))
        squared = torch.cat(squared)
        for count in rays.pixels_per_view:
            total.append(psnr(float(squared[start:start + count].mean())))
            start += count
    return float(np.mean(total))


def check_background_and_box(what: str, background: Sequence[float] | None, box: Sequence[Any] | None) -> None:
    """A fit's ``background`` (3 values in [0, 1] or None) and ``box`` (``[[min xyz], [max xyz]]``, max > min,
    or None), else a ConfigError naming ``what`` (``"grid fit"``)."""
    if background is not None and (len(background) != 3 or not all(0 <= float(c) <= 1 for c in background)):
        raise ConfigError(f"{what}: background must be 3 values in [0, 1] or null, got {background!r}")
    if box is not None:
        corners = np.asarray(box, dtype=np.float64)
        if corners.shape != (2, 3) or not np.isfinite(corners).all() or not (corners[1] > corners[0]).all():
            raise ConfigError(f"{what}: box must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min, "
                              f"got {box!r}")


def fit_split(posed: PosedImages, holdout_every: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A fit's training and held-out view indices: every ``holdout_every``-th view held out (0: none), else a
    ConfigError naming ``what`` where no training view would be left."""
    train_views, held_views = posed.holdout_split(holdout_every) if holdout_every else (
        np.arange(len(posed)), np.arange(0))
    if len(train_views) == 0:
        raise ConfigError(f"{what}: holdout_every={holdout_every} leaves no training view of {len(posed)}")
    return train_views, held_views


def background_color(posed: PosedImages, background: Sequence[float] | None) -> Tensor:
    """``(3,)`` the colour a fit renders over: ``background`` if given, else the images' own (white
    for Blender sets), else black."""
    if background is not None:
        return torch.tensor([float(c) for c in background])
    if posed.background is not None:
        return torch.from_numpy(posed.background.astype(np.float32))
    return torch.zeros(3)


def _stage_sides(config: GridFitConfig) -> list[tuple[int, int]]:
    schedule = [(int(s), int(r)) for s, r in config.resolution_schedule]
    if not schedule or schedule[-1][1] != config.resolution:
        schedule.append((max(config.coarse_steps, schedule[-1][0] if schedule else 0), config.resolution))
    return schedule


def fit_radiance_grid(posed: PosedImages, config: GridFitConfig,
                      on_step: Callable[[int, float], None] | None = None) -> FittedGrid:
    """Fit a radiance grid to ``posed`` (see the module docstring).

    ``on_step(step, train_psnr)`` is called after every step (a progress bar). Deterministic for a
    given config on one machine and thread count.
    """
    config.validate()
    train_views, held_views = fit_split(posed, config.holdout_every, "grid fit")
    generator = torch.Generator().manual_seed(config.seed)
    background = background_color(posed, config.background)
    train = _Rays(posed, train_views, config.downscale)
    random_background = config.random_background and train.alpha is not None
    image_background = torch.from_numpy(posed.background) if posed.background is not None else background
    held = _Rays(posed, held_views, config.downscale) if len(held_views) else None
    if config.box is not None:
        box = torch.tensor(np.asarray(config.box, dtype=np.float64))
    else:
        box = torch.from_numpy(scene_box_from_cameras(posed, train_views, config.visible_fraction))
    grid = _Grid(box, (config.coarse_resolution,) * 3, unit=float((box[1] - box[0]).mean()) / config.coarse_resolution)
    occupancy = torch.ones(grid.shape, dtype=torch.bool)
    schedule = _stage_sides(config)
    started = time.perf_counter()
    history: list[tuple[int, float, float]] = []
    recent: list[float] = []
    optimizer = None
    decay = config.lr_final_factor ** (1.0 / config.steps)
    for step in range(config.steps):
        changed = optimizer is None
        if step == config.coarse_steps and config.coarse_steps > 0:
            first, last = _scene_cells(grid, train, config, generator)
            cell = (grid.box[1] - grid.box[0]) / torch.tensor(grid.shape, dtype=grid.box.dtype)
            low = grid.box[0] + (first - config.shrink_margin) * cell
            high = grid.box[0] + (last + 1 + config.shrink_margin) * cell
            new_box = torch.stack([torch.maximum(low, grid.box[0]), torch.minimum(high, grid.box[1])])
            side = max([r for s, r in schedule if s <= step] or [config.coarse_resolution])
            grid = grid.resampled(new_box, grid_shape(new_box, side))
            changed = True
        for at, side in schedule:
            if step == at and step >= config.coarse_steps and max(grid.shape) != side:
                grid = grid.resampled(grid.box, grid_shape(grid.box, side))
                changed = True
        if step < config.coarse_steps:
            # Cells the coarse stage has not reached yet still hold the initial density, below the
            # threshold: skipping them would stop them from ever growing.
            occupancy = torch.ones(grid.shape, dtype=torch.bool)
        elif changed or step % config.occupancy_every == 0:
            occupancy = _occupancy(grid, config)
        if changed:
            lr = config.lr * decay ** step
            optimizer = torch.optim.Adam([grid.density, grid.color], lr=lr, betas=(0.9, 0.99), eps=1e-15)
        index = torch.randint(len(train), (config.rays_per_step,), generator=generator)
        origins, directions, target = train.take(index)
        offsets = torch.rand(len(index), generator=generator)
        ray_background: Tensor = background
        if random_background:
            # Each ray's pixel over its own random colour: empty space can no longer pass for the
            # background with a faint fog of its colour (instant-ngp's trick for RGBA sets).
            ray_background = torch.rand(len(index), 3, generator=generator)
            target = target + (1.0 - train.alpha[index])[:, None] * (ray_background - image_background)
        rgb = _render(grid, origins, directions, config, occupancy, ray_background, offsets)
        mse = F.mse_loss(rgb, target)
        loss = mse
        if config.tv_density > 0 or config.tv_color > 0:
            cells = _tv_cells(grid.shape, config.tv_cells, generator)
            loss = loss + config.tv_density * _total_variation(grid.density, cells)
            loss = loss + config.tv_color * _total_variation(grid.color, cells)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] *= decay
        recent = (recent + [float(mse.detach())])[-100:]
        if on_step is not None:
            on_step(step, psnr(float(np.mean(recent))))
        if held is not None and config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            history.append((step + 1, time.perf_counter() - started,
                            _evaluate(grid, held, config, occupancy, background)))
    seconds = time.perf_counter() - started
    occupancy = _occupancy(grid, config)
    heldout = heldout_full = None
    if held is not None:
        heldout = _evaluate(grid, held, config, occupancy, background)
        history.append((config.steps, seconds, heldout))
        if config.eval_full_resolution:
            heldout_full = _evaluate(grid, _Rays(posed, held_views, 1), config, occupancy, background)
    with torch.no_grad():
        alpha = _alpha(grid.density, config.density_shift, grid.cell / grid.unit)[0]
        rgb = torch.sigmoid(grid.color).permute(1, 2, 3, 0)
    return FittedGrid(rgb=rgb.numpy().astype(np.float32), alpha=alpha.numpy().astype(np.float32),
                      box=grid.box.numpy(), heldout_psnr=heldout, heldout_psnr_full=heldout_full,
                      train_psnr=psnr(float(np.mean(recent))),
                      history=history, seconds=seconds)


def config_dict(config: GridFitConfig) -> dict:
    """The config as plain JSON values (for a manifest)."""
    out = asdict(config)
    out["resolution_schedule"] = [list(map(int, e)) for e in config.resolution_schedule]
    return out


__all__ = ["FittedGrid", "GridFitConfig", "background_color", "cell_centres", "config_dict", "fit_radiance_grid",
           "grid_shape", "psnr", "scene_box_from_cameras"]
