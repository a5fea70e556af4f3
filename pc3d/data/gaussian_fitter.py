"""Fit 3D Gaussians to posed images (3D Gaussian Splatting, Kerbl et al. 2023), in pure torch.

What Gaussian2Scene pretrains on: a scene as a cloud of Gaussians whose renders match its photos.
Every step renders one training view with :func:`pc3d.ops.rasterize_gaussians` (pure torch on
CPU, gsplat on CUDA) and takes an Adam step on every Gaussian's mean, rotation, log-scale,
opacity logit and SH coefficients. The recipe is that of 3DGS as gsplat's ``simple_trainer`` and
``DefaultStrategy`` run it; every number is a field of :class:`GaussianFitConfig`:

* **Initialisation** (``init``): the capture's SfM points (COLMAP / LLFF ``points3D``), the RGB-D
  frames' depth unprojected, or ``init_count`` points uniform in the scene box (3DGS's choice for
  the Blender scenes), carved to the views' silhouettes where they have alpha (a visual hull,
  ``carve``); each Gaussian starts isotropic with the RMS distance to its 3 nearest neighbours as
  scale, a random rotation, opacity ``init_opacity`` and the point's colour as SH degree 0.
* **Loss**: ``(1 - ssim_weight) L1 + ssim_weight (1 - SSIM)`` over the rendered view.
* **Learning rates** per attribute (gsplat's defaults); the means' is scaled by the scene scale
  (1.1 x the largest distance of a camera centre from their mean) and decays exponentially to
  ``lr_means_final_factor`` of its start; the SH degree grows by one every ``sh_degree_every`` steps.
* **Densification** every ``refine_every`` steps in ``(refine_start, refine_stop)``: a Gaussian
  whose mean image-space gradient (in NDC units) exceeds ``grow_grad2d`` is cloned if its largest
  scale is at most ``grow_scale3d`` of the scene scale, else split in two samples of itself with
  scales divided by 1.6; Gaussians with opacity below ``prune_opacity`` are removed (after the
  first opacity reset, also those larger than ``prune_scale3d`` of the scene scale). Every
  ``reset_every`` steps all opacities are capped at ``2 * prune_opacity``. ``max_gaussians``
  bounds the cloud (on a CPU, cost grows with it): growth stops there.
* **Background**: RGBA training views (Blender) are composited over a random colour per step
  (``random_background``), so empty space cannot pass for the background; held-out views are
  scored over the images' own background.

Held-out views (every ``holdout_every``-th image) give the PSNR that goes into the manifest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from pc3d.data.cameras import PosedImages, camera_rays
from pc3d.data.gaussians import GaussianCloud
from pc3d.data.grid_fitter import (background_color, check_background_and_box, fit_split, psnr,
                                   scene_box_from_cameras)
from pc3d.errors import ConfigError
from pc3d.ops.neighbors import knn
from pc3d.ops.rasterize import quat_to_rotmat, rasterize_gaussians, rgb_to_sh
from pc3d.ops.ssim import ssim

INIT_KINDS = ("auto", "points", "depth", "random")
#: learning-rate fields and the attribute each one drives
_LR_FIELDS = {"means": "lr_means", "quats": "lr_quats", "log_scales": "lr_scales", "opacity_logits": "lr_opacities",
              "sh0": "lr_sh0", "sh_rest": "lr_sh_rest"}


@dataclass
class GaussianFitConfig:
    """The fitter's settings (``configs/prep/gaussians.yaml`` carries the same keys).

    Attributes:
        steps: optimisation steps (one training view each).
        downscale: image downscale factor (4: lego's 800 x 800 becomes 200 x 200).
        holdout_every: image ``i`` with ``i % holdout_every == 0`` is held out (0: none).
        background: ``(3,)`` colour behind the Gaussians, or ``None``: the images' own (white for
            Blender sets, black otherwise).
        random_background: train RGBA views over a random colour per step.
        init: ``auto`` (SfM points if the capture has them, else depth for RGB-D frames, else
            random), ``points``, ``depth`` or ``random``.
        init_count: Gaussians of a random initialisation; the most taken from SfM points or depth.
        init_opacity: starting opacity of every Gaussian.
        init_scale: factor on the nearest-neighbour distance that sets the starting scales.
        carve: a random initialisation keeps only points inside every RGBA view's silhouette
            (a visual hull; no effect for views without alpha).
        sh_degree: the largest SH degree (0-3).
        sh_degree_every: steps between SH degree increments (the fit starts at degree 0).
        lr_means: Adam learning rate of the means, per unit of scene scale.
        lr_means_final_factor: the means' rate decays exponentially to this fraction.
        lr_quats, lr_scales, lr_opacities, lr_sh0, lr_sh_rest: the other attributes' rates.
        ssim_weight: weight of ``1 - SSIM`` in the loss (the rest is L1).
        refine_start, refine_stop, refine_every: densification runs every ``refine_every`` steps
            strictly after ``refine_start`` and before ``refine_stop``.
        reset_every: steps between opacity resets (0: never).
        grow_grad2d: mean image-space gradient above which a Gaussian is cloned or split.
        grow_scale3d: clone (not split) when the largest scale is at most this share of the scene scale.
        prune_opacity: Gaussians below this opacity are removed.
        prune_scale3d: after the first reset, Gaussians larger than this share of the scene scale are removed.
        max_gaussians: growth stops at this many Gaussians.
        eval_every: steps between held-out PSNR measurements (0: only at the end).
        eval_full_resolution: also measure the final held-out PSNR on the images as stored
            (``downscale`` 1), recorded as ``heldout_psnr_full``.
        box: ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` for a random initialisation, or ``None``:
            the box most cameras see (:func:`~pc3d.data.grid_fitter.scene_box_from_cameras`).
        visible_fraction: share of cameras that must see a point of that box.
        seed: initialisation, view order and everything random.
    """

    steps: int = 30000
    downscale: int = 4
    holdout_every: int = 8
    background: Sequence[float] | None = None
    random_background: bool = True
    init: str = "auto"
    init_count: int = 100000
    init_opacity: float = 0.1
    init_scale: float = 1.0
    carve: bool = True
    sh_degree: int = 3
    sh_degree_every: int = 1000
    lr_means: float = 1.6e-4
    lr_means_final_factor: float = 0.01
    lr_quats: float = 1e-3
    lr_scales: float = 5e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20
    ssim_weight: float = 0.2
    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1
    max_gaussians: int = 1000000
    eval_every: int = 0
    eval_full_resolution: bool = False
    box: Sequence[Sequence[float]] | None = None
    visible_fraction: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        for name in ("steps", "downscale", "init_count", "sh_degree_every", "refine_every", "max_gaussians"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"gaussian fit: {name} must be a positive integer, got {value!r}")
        for name in ("holdout_every", "refine_start", "refine_stop", "reset_every", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"gaussian fit: {name} must be a non-negative integer, got {value!r}")
        if isinstance(self.sh_degree, bool) or self.sh_degree not in (0, 1, 2, 3):
            raise ConfigError(f"gaussian fit: sh_degree must be 0, 1, 2 or 3, got {self.sh_degree!r}")
        if self.init not in INIT_KINDS:
            raise ConfigError(f"gaussian fit: init must be one of {', '.join(INIT_KINDS)}, got {self.init!r}")
        positive = ("init_scale", "grow_grad2d", "grow_scale3d", "prune_scale3d", *_LR_FIELDS.values())
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ConfigError(f"gaussian fit: {name} must be a finite number > 0, got {value!r}")
        for name in ("init_opacity", "lr_means_final_factor", "visible_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
                raise ConfigError(f"gaussian fit: {name} must be in (0, 1], got {value!r}")
        if self.init_opacity >= 1:
            raise ConfigError(f"gaussian fit: init_opacity must be below 1, got {self.init_opacity!r}")
        for name in ("ssim_weight", "prune_opacity"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(f"gaussian fit: {name} must be in [0, 1), got {value!r}")
        check_background_and_box("gaussian fit", self.background, self.box)


@dataclass
class FittedGaussians:
    """A fitted Gaussian scene.

    Attributes:
        cloud: the Gaussians (SH of ``sh_degree``), ready for :func:`~pc3d.data.gaussians.write_gaussian_ply`.
        init: the initialisation used (``points``, ``depth`` or ``random``) and ``init_gaussians`` its size.
        heldout_psnr: mean PSNR (dB) over held-out views, or ``None`` without held-out views.
        heldout_psnr_full: the same on the images as stored, if asked (``eval_full_resolution``).
        train_psnr: PSNR of the last 100 steps' training views.
        history: ``(step, seconds, held-out PSNR, Gaussians)`` of every evaluation.
        scene_scale: the scale the means' learning rate and the densification thresholds use.
        seconds: wall time of the optimisation (without loading images).
    """

    cloud: GaussianCloud
    init: str
    init_gaussians: int
    heldout_psnr: float | None
    heldout_psnr_full: float | None
    train_psnr: float
    history: list[tuple[int, float, float, int]]
    scene_scale: float
    seconds: float


# --------------------------------------------------------------------------- views


@dataclass
class _Views:
    """Images, optional alphas and cameras (``viewmats (V, 4, 4)``, ``Ks (V, 3, 3)``) of a set of views."""

    images: list[Tensor]  # (H, W, 3) each
    alphas: list[Tensor] | None  # (H, W, 1) each, when every view has one and the set has a background
    viewmats: Tensor
    Ks: Tensor

    @classmethod
    def load(cls, posed: PosedImages, views: Sequence[int], downscale: int) -> "_Views":
        images, alphas, viewmats, ks = [], [], [], []
        for i in views:
            camera = posed.cameras[int(i)].scaled(1.0 / downscale) if downscale > 1 else posed.cameras[int(i)]
            images.append(torch.from_numpy(posed.image(int(i), downscale=downscale)))
            alpha = posed.alpha(int(i), downscale=downscale) if posed.background is not None else None
            alphas.append(None if alpha is None else torch.from_numpy(alpha)[..., None])
            viewmats.append(torch.from_numpy(camera.world_to_camera()).float())
            ks.append(torch.from_numpy(camera.intrinsics).float())
        have_alpha = bool(alphas) and all(a is not None for a in alphas)
        return cls(images, alphas if have_alpha else None, torch.stack(viewmats), torch.stack(ks))  # type: ignore

    def __len__(self) -> int:
        return len(self.images)


def scene_scale_from_cameras(posed: PosedImages, views: Sequence[int]) -> float:
    """1.1 x the largest distance of a camera centre from the centres' mean (3DGS's ``cameras_extent``)."""
    centres = np.stack([posed.cameras[int(i)].center for i in views])
    return float(1.1 * np.linalg.norm(centres - centres.mean(0), axis=1).max()) or 1.0


# --------------------------------------------------------------------------- initialisation


def _depth_points(posed: PosedImages, views: Sequence[int], count: int,
                  generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(P, 3)`` world points and ``(P, 3)`` colours unprojected from the views' depth images."""
    per_view = max(1, math.ceil(count / max(1, len(views))))
    points, colors = [], []
    for i in views:
        camera = posed.cameras[int(i)]
        depth = posed.depth(int(i)).reshape(-1)
        valid = np.flatnonzero(depth > 0)
        if len(valid) == 0:
            continue
        pick = valid[torch.randperm(len(valid), generator=generator)[:per_view].numpy()]
        origins, directions = camera_rays(camera)
        # depth is camera-frame z: a unit ray reaches it after depth / (ray . optical axis)
        along = directions[pick] @ camera.camera_to_world[:3, 2].astype(np.float32)
        points.append(origins[pick] + directions[pick] * (depth[pick] / along)[:, None])
        colors.append(posed.image(int(i)).reshape(-1, 3)[pick])
    if not points:
        raise ConfigError("gaussian fit: init=depth but no training view has a valid depth pixel")
    return np.concatenate(points)[:count], np.concatenate(colors)[:count]


#: a random initial point survives carving where every view's alpha at its pixel exceeds this
SILHOUETTE_ALPHA = 0.05


def _silhouettes(posed: PosedImages, views: Sequence[int], downscale: int) -> list[tuple]:
    """``(camera, alpha (H, W))`` of every view with an alpha channel, at ``downscale``."""
    out = []
    if posed.background is None:
        return out
    for i in views:
        alpha = posed.alpha(int(i), downscale=downscale)
        if alpha is None:
            return []
        camera = posed.cameras[int(i)].scaled(1.0 / downscale) if downscale > 1 else posed.cameras[int(i)]
        out.append((camera, alpha))
    return out


def _carved_points(box: np.ndarray, silhouettes: list[tuple], count: int, generator: torch.Generator,
                   rounds: int = 64) -> np.ndarray:
    """``(count, 3)`` points uniform in ``box`` and, given silhouettes, inside every one of them.

    Space carving (a visual hull): a point that projects onto a transparent pixel of any view
    cannot be on the object; points outside a view's image are not judged by it. Without
    silhouettes this is plain uniform sampling (3DGS's random initialisation).
    """
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(rounds if silhouettes else 1):
        unit = torch.rand(count if not silhouettes else 4 * count, 3, generator=generator, dtype=torch.float64)
        candidates = box[0] + unit.numpy() * (box[1] - box[0])
        inside = np.ones(len(candidates), dtype=bool)
        for camera, alpha in silhouettes:
            uv, depth = camera.project(candidates)
            col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
            seen = (depth > 0) & (col >= 0) & (col < alpha.shape[1]) & (row >= 0) & (row < alpha.shape[0])
            clear = np.zeros(len(candidates), dtype=bool)
            clear[seen] = alpha[row[seen], col[seen]] <= SILHOUETTE_ALPHA
            inside &= ~clear
        kept.append(candidates[inside])
        total += int(inside.sum())
        if total >= count:
            break
    points = np.concatenate(kept)[:count]
    if len(points) < 4:
        raise ConfigError("gaussian fit: carving the random initialisation by the views' alpha left fewer than 4 "
                          "points (no view's silhouette overlaps the box); give box=... or set carve=false")
    return points


def _initial_points(posed: PosedImages, views: Sequence[int], config: GaussianFitConfig,
                    generator: torch.Generator) -> tuple[str, Tensor, Tensor]:
    """``(kind, points (P, 3), colours (P, 3))`` the fit starts from."""
    kind = config.init
    has_depth = all(posed.cameras[int(i)].depth_path is not None for i in views) and posed.depth_scale is not None
    if kind == "auto":
        kind = "points" if posed.points is not None and len(posed.points) >= 4 else "depth" if has_depth else "random"
    if kind == "points":
        if posed.points is None or len(posed.points) < 4:
            raise ConfigError(f"gaussian fit: init=points but the {posed.source or 'given'} capture has no SfM "
                              "points (expected COLMAP/LLFF points3D)")
        points = posed.points
        colors = posed.point_colors if posed.point_colors is not None else np.full_like(points, 0.5)
        if len(points) > config.init_count:
            pick = torch.randperm(len(points), generator=generator)[:config.init_count].numpy()
            points, colors = points[pick], colors[pick]
    elif kind == "depth":
        if not has_depth:
            raise ConfigError(f"gaussian fit: init=depth but the {posed.source or 'given'} capture has no depth "
                              "images with a depth scale (expected RGB-D frames)")
        points, colors = _depth_points(posed, views, config.init_count, generator)
    else:
        if config.box is not None:
            box = np.asarray(config.box, dtype=np.float64)
        elif posed.scene_box is not None:
            box = posed.scene_box
        else:
            box = scene_box_from_cameras(posed, views, config.visible_fraction)
        silhouettes = _silhouettes(posed, views, config.downscale) if config.carve else []
        points = _carved_points(box, silhouettes, config.init_count, generator)
        colors = torch.rand(len(points), 3, generator=generator).numpy()
    return kind, torch.as_tensor(np.asarray(points), dtype=torch.float32), \
        torch.as_tensor(np.asarray(colors), dtype=torch.float32)


class _Cloud:
    """The optimised Gaussians: one parameter and one Adam per attribute, so rows can be added and
    removed with their optimiser state (new rows start with zero moments, as in gsplat)."""

    def __init__(self, values: dict[str, Tensor], rates: dict[str, float]) -> None:
        self.params = {name: torch.nn.Parameter(value.contiguous()) for name, value in values.items()}
        self.optimizers = {name: torch.optim.Adam([param], lr=rates[name], eps=1e-15, betas=(0.9, 0.999))
                           for name, param in self.params.items()}

    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def colors(self, degree: int) -> Tensor:
        """``(N, (degree + 1)^2, 3)`` the SH coefficients in use."""
        rest = self.params["sh_rest"][:, : (degree + 1) ** 2 - 1]
        return torch.cat([self.params["sh0"], rest], dim=1)

    def _replace(self, name: str, value: Tensor, state: Callable[[Tensor], Tensor]) -> None:
        old = self.params[name]
        optimizer = self.optimizers[name]
        moments = optimizer.state.pop(old, None)
        new = torch.nn.Parameter(value.contiguous())
        optimizer.param_groups[0]["params"] = [new]
        if moments is not None:
            optimizer.state[new] = {k: (state(v) if k in ("exp_avg", "exp_avg_sq") else v) for k, v in moments.items()}
        self.params[name] = new

    def keep(self, mask: Tensor) -> None:
        """Keep the rows where ``mask (N,)`` is true."""
        for name, param in list(self.params.items()):
            self._replace(name, param.detach()[mask], lambda s: s[mask])

    def append(self, values: dict[str, Tensor]) -> None:
        """Add rows (every attribute given), with zero Adam moments."""
        for name, param in list(self.params.items()):
            self._replace(name, torch.cat([param.detach(), values[name]]),
                          lambda s, n=len(values[name]): torch.cat([s, s.new_zeros((n, *s.shape[1:]))]))

    def set_rows(self, name: str, value: Tensor) -> None:
        """Replace an attribute's values and zero its moments (the opacity reset)."""
        self._replace(name, value, torch.zeros_like)


def _initial_cloud(points: Tensor, colors: Tensor, config: GaussianFitConfig, scene_scale: float,
                   generator: torch.Generator) -> _Cloud:
    num = len(points)
    neighbours = min(4, num)
    dist2, _ = knn(points[None], points[None], neighbours)
    spacing = dist2[0, :, 1:].mean(dim=-1).sqrt() if neighbours > 1 else torch.full((num,), 0.01 * scene_scale)
    spacing = spacing.clamp_min(1e-7)
    rest = (config.sh_degree + 1) ** 2 - 1
    values = {
        "means": points,
        "quats": torch.rand(num, 4, generator=generator),
        "log_scales": torch.log(spacing * config.init_scale)[:, None].repeat(1, 3),
        "opacity_logits": torch.full((num,), math.log(config.init_opacity / (1 - config.init_opacity))),
        "sh0": rgb_to_sh(colors),
        "sh_rest": torch.zeros(num, rest, 3),
    }
    rates = {name: getattr(config, field) for name, field in _LR_FIELDS.items()}
    rates["means"] *= scene_scale
    return _Cloud(values, rates)


# --------------------------------------------------------------------------- densification


class _Densifier:
    """gsplat's ``DefaultStrategy`` (classic): accumulate image-space gradients, grow, prune, reset."""

    def __init__(self, config: GaussianFitConfig, scene_scale: float) -> None:
        self.config = config
        self.scene_scale = scene_scale
        self.grad2d: Tensor | None = None
        self.count: Tensor | None = None

    def accumulate(self, means2d: Tensor, radii: Tensor, width: int, height: int) -> None:
        """After ``backward()``: add each visible Gaussian's 2D gradient norm (in NDC units)."""
        if means2d.grad is None:
            return
        grad = means2d.grad.detach()[0] * torch.tensor([width / 2.0, height / 2.0])
        visible = radii[0] > 0
        num = grad.shape[0]
        if self.grad2d is None or self.grad2d.shape[0] != num:
            self.grad2d, self.count = torch.zeros(num), torch.zeros(num)
        self.grad2d += grad.norm(dim=-1) * visible
        self.count += visible.float()

    def refine(self, cloud: _Cloud, step: int, generator: torch.Generator) -> tuple[int, int, int]:
        """Clone, split and prune; returns ``(cloned, split, pruned)``."""
        config = self.config
        cloned = split = 0
        with torch.no_grad():
            if self.grad2d is not None and len(cloud) < config.max_gaussians:
                average = self.grad2d / self.count.clamp_min(1)
                high = average > config.grow_grad2d
                small = cloud.params["log_scales"].exp().amax(dim=-1) <= config.grow_scale3d * self.scene_scale
                to_clone, to_split = high & small, high & ~small
                room = config.max_gaussians - len(cloud)
                to_clone, to_split = _within(to_clone, to_split, room)
                cloned, split = int(to_clone.sum()), int(to_split.sum())
                if cloned:
                    cloud.append({name: p.detach()[to_clone] for name, p in cloud.params.items()})
                if split:
                    to_split = torch.cat([to_split, torch.zeros(cloned, dtype=torch.bool)])
                    self._split(cloud, to_split, generator)
            opacity = torch.sigmoid(cloud.params["opacity_logits"].detach())
            prune = opacity < config.prune_opacity
            if config.reset_every and step > config.reset_every:
                largest = cloud.params["log_scales"].detach().exp().amax(dim=-1)
                prune |= largest > config.prune_scale3d * self.scene_scale
            if bool(prune.all()):  # never empty the scene: keep the most opaque
                prune[opacity.argmax()] = False
            pruned = int(prune.sum())
            if pruned:
                cloud.keep(~prune)
        self.grad2d = self.count = None
        return cloned, split, pruned

    @staticmethod
    def _split(cloud: _Cloud, mask: Tensor, generator: torch.Generator) -> None:
        params = {name: p.detach() for name, p in cloud.params.items()}
        scales = params["log_scales"][mask].exp()
        rotation = quat_to_rotmat(params["quats"][mask])
        offsets = torch.randn(2, len(scales), 3, generator=generator) * scales
        children = {name: value[mask].repeat(2, *([1] * (value.dim() - 1))) for name, value in params.items()}
        children["means"] = (params["means"][mask] + torch.einsum("nij,snj->sni", rotation, offsets)).reshape(-1, 3)
        children["log_scales"] = torch.log(scales / 1.6).repeat(2, 1)
        cloud.keep(~mask)
        cloud.append(children)


def _within(clone: Tensor, split: Tensor, room: int) -> tuple[Tensor, Tensor]:
    """Trim the clone and split masks (clone first) so at most ``room`` Gaussians are added."""
    if int(clone.sum()) + int(split.sum()) <= room:
        return clone, split
    clone_ids = torch.nonzero(clone, as_tuple=True)[0][:room]
    clone = torch.zeros_like(clone)
    clone[clone_ids] = True
    split_ids = torch.nonzero(split, as_tuple=True)[0][: max(0, room - len(clone_ids))]
    split = torch.zeros_like(split)
    split[split_ids] = True
    return clone, split


# --------------------------------------------------------------------------- fitting


def render_cloud(cloud: _Cloud | GaussianCloud, views: _Views, index: int, degree: int, background: Tensor):
    """Render view ``index`` of ``views``: :class:`~pc3d.ops.rasterize.RenderedImages` of one camera."""
    if isinstance(cloud, GaussianCloud):
        arguments = cloud.to_torch()
        arguments["colors"] = arguments["colors"][:, : (degree + 1) ** 2]
    else:
        arguments = {"means": cloud.params["means"], "quats": cloud.params["quats"],
                     "log_scales": cloud.params["log_scales"], "opacity_logits": cloud.params["opacity_logits"],
                     "colors": cloud.colors(degree)}
    height, width = views.images[index].shape[:2]
    return rasterize_gaussians(**arguments, viewmats=views.viewmats[index:index + 1], Ks=views.Ks[index:index + 1],
                               width=width, height=height, background=background)


def heldout_psnr(cloud: _Cloud | GaussianCloud, views: _Views, degree: int, background: Tensor) -> float:
    """Mean PSNR over ``views`` (each view's own MSE, as NeRF and 3DGS papers report)."""
    scores = []
    with torch.no_grad():
        for i in range(len(views)):
            rgb = render_cloud(cloud, views, i, degree, background).rgb[0].clamp(0, 1)
            scores.append(psnr(float(((rgb - views.images[i]) ** 2).mean())))
    return float(np.mean(scores))


def fit_gaussians(posed: PosedImages, config: GaussianFitConfig,
                  on_step: Callable[[int, float, int], None] | None = None) -> FittedGaussians:
    """Fit 3D Gaussians to ``posed`` (see the module docstring).

    ``on_step(step, train_psnr, gaussians)`` is called after every step (a progress bar).
    Deterministic for a given config on one machine and thread count.
    """
    config.validate()
    if len(posed) == 0:
        raise ConfigError("gaussian fit: the capture has no views")
    train_views, held_views = fit_split(posed, config.holdout_every, "gaussian fit")
    generator = torch.Generator().manual_seed(config.seed)
    background = background_color(posed, config.background)
    train = _Views.load(posed, train_views, config.downscale)
    held = _Views.load(posed, held_views, config.downscale) if len(held_views) else None
    random_background = config.random_background and train.alphas is not None
    image_background = torch.from_numpy(posed.background) if posed.background is not None else background
    scene_scale = scene_scale_from_cameras(posed, train_views)
    kind, points, colors = _initial_points(posed, train_views, config, generator)
    cloud = _initial_cloud(points, colors, config, scene_scale, generator)
    densifier = _Densifier(config, scene_scale)
    means_decay = config.lr_means_final_factor ** (1.0 / config.steps)
    history: list[tuple[int, float, float, int]] = []
    recent: list[float] = []
    order: list[int] = []
    started = time.perf_counter()
    for step in range(config.steps):
        degree = min(config.sh_degree, step // config.sh_degree_every)
        if not order:  # every training view once per epoch, in a fresh random order
            order = torch.randperm(len(train), generator=generator).tolist()
        view = order.pop()
        target = train.images[view]
        step_background = background
        if random_background:
            step_background = torch.rand(3, generator=generator)
            target = target + (1.0 - train.alphas[view]) * (step_background - image_background)  # type: ignore
        rendered = render_cloud(cloud, train, view, degree, step_background)
        rgb = rendered.rgb[0]
        l1 = (rgb - target).abs().mean()
        loss = (1 - config.ssim_weight) * l1
        if config.ssim_weight > 0:
            loss = loss + config.ssim_weight * (1 - ssim(rgb, target))
        cloud.zero_grad()
        loss.backward()
        mse = float(((rgb.detach() - target) ** 2).mean())
        refining = config.refine_start < step < config.refine_stop
        if refining:
            densifier.accumulate(rendered.means2d, rendered.radii, rgb.shape[1], rgb.shape[0])
        cloud.step()
        for group in cloud.optimizers["means"].param_groups:
            group["lr"] *= means_decay
        if refining and step % config.refine_every == 0:
            densifier.refine(cloud, step, generator)
        if config.reset_every and step > 0 and step % config.reset_every == 0:
            with torch.no_grad():
                cap = math.log(2 * config.prune_opacity / (1 - 2 * config.prune_opacity)) \
                    if config.prune_opacity > 0 else -math.inf
                cloud.set_rows("opacity_logits", cloud.params["opacity_logits"].detach().clamp_max(cap))
        recent = (recent + [mse])[-100:]
        if on_step is not None:
            on_step(step, psnr(float(np.mean(recent))), len(cloud))
        if held is not None and config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            history.append((step + 1, time.perf_counter() - started,
                            heldout_psnr(cloud, held, degree, background), len(cloud)))
    seconds = time.perf_counter() - started
    degree = min(config.sh_degree, (config.steps - 1) // config.sh_degree_every)
    heldout = heldout_full = None
    if held is not None:
        heldout = heldout_psnr(cloud, held, degree, background)
        history.append((config.steps, seconds, heldout, len(cloud)))
        if config.eval_full_resolution:
            heldout_full = heldout_psnr(cloud, _Views.load(posed, held_views, 1), degree, background)
    params = {name: p.detach() for name, p in cloud.params.items()}
    result = GaussianCloud(means=params["means"].numpy().copy(), quats=params["quats"].numpy().copy(),
                           log_scales=params["log_scales"].numpy().copy(),
                           opacity_logits=params["opacity_logits"].numpy().copy(),
                           sh=cloud.colors(degree).detach().numpy().copy())
    return FittedGaussians(cloud=result, init=kind, init_gaussians=len(points), heldout_psnr=heldout,
                           heldout_psnr_full=heldout_full, train_psnr=psnr(float(np.mean(recent))), history=history,
                           scene_scale=scene_scale, seconds=seconds)


def config_dict(config: GaussianFitConfig) -> dict:
    """The config as plain JSON values (for a manifest)."""
    out = asdict(config)
    if config.background is not None:
        out["background"] = [float(c) for c in config.background]
    if config.box is not None:
        out["box"] = [[float(v) for v in row] for row in config.box]
    return out


__all__ = ["FittedGaussians", "GaussianFitConfig", "INIT_KINDS", "config_dict", "fit_gaussians", "heldout_psnr",
           "render_cloud", "scene_scale_from_cameras"]
