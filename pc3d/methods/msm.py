"""Masked Scene Modeling (Hermosilla et al., CVPR 2025): masked deep-feature reconstruction on scans.

The authors published inference code only; this is pc3d's recipe (defaults in
``configs/method/msm.yaml``), written down here because no reference exists:

- **Views.** Each sample is a sphere crop of a scan (102,400 points) seen twice, with
  independent rotations, scale, flip, elastic distortion and colour jitter, each voxelised
  at 2 cm (:class:`~pc3d.data.scene_dataset.SceneViewDataset`). Every point links a voxel of
  view ``a`` to a voxel of view ``b`` at every level.
- **Masking.** View ``a`` is cut into cubes of ``mask_unit`` voxels (16 cm at 2 cm); a
  ``mask_ratio`` share of the cubes of each sample (exactly ``int(ratio · cubes)``, drawn from
  the batch's ``sample_seed``) is masked. Masked voxels keep their position; their colour and
  normal are zeroed and the stem output is replaced by a learnable mask token.
- **Student and teacher.** The student is the encoder (a
  :class:`~pc3d.encoders.sparse_unet.SparseUNet`) on the masked view ``a``; the teacher is an
  exponential moving average of the student (momentum ``ema_momentum[0]`` → ``[1]`` on a
  cosine schedule over training; BatchNorm statistics copied) on the unmasked view ``b``,
  without gradients.
- **Targets, coarse to fine.** The UNet decoder rebuilds the scene bottom-up: the bottleneck
  (stride 16), then strides 8, 4, 2, 1, each level computed from the one below it. At every
  level, a per-level linear predictor maps the student's features of each masked point's
  voxel to the teacher's features of the same point's voxel in view ``b`` (the teacher's
  deep features at that level). Level losses are averaged over masked points, then over levels.
- **Loss: cosine** (``1 − cos``), chosen over smooth-L1 because the levels' feature scales
  differ by orders of magnitude and drift as the teacher moves; cosine needs no target
  normalisation and is bounded. ``loss="smooth_l1"`` (on LayerNorm-ed targets, data2vec
  style) is available for comparison.
- **Anti-collapse: VICReg's variance and covariance terms on the student's levels.** A student
  that predicts an EMA of itself can lower the loss with features spanning a few directions
  (dimensional collapse). On the ScanNet samples, without these terms, the entropy effective
  rank of every level fell from 12-32 (random init) to 1.5-4.5 within 100 steps and the linear
  probe stayed at random init's level or fell below it; with them the ranks stay at 10-36 and the
  probe gains 6.5-7.2 mIoU after 100 steps (BENCHMARKS.md; longer runs on two scans lose the gain).
  At every level, all voxels of the batch: ``variance_weight ·
  mean_c relu(1 − std_c) + covariance_weight · Σ_{i≠j} cov_ij² / C`` (VICReg's 25 : 1 ratio,
  scaled to the cosine loss's range). ``target_norm="instance"`` (data2vec's per-sample, per-channel
  standardised targets) is available for comparison; alone it leaves the ranks collapsed (2.5-4.2).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.data.pictures import orbit_cameras, pca_colors, render_points, tile_panels
from pc3d.data.scene_data import SceneData
from pc3d.encoders.base import FeatureLevel
from pc3d.encoders.sparse_unet import SparseUNet
from pc3d.errors import ConfigError
from pc3d.methods.base import PretrainingMethod
from pc3d.ops.sparse_conv import COORD_BITS, SparseVoxels, voxel_keys
from pc3d.utils.atomic import atomic_write_png, make_dirs

LOSSES = ("cosine", "smooth_l1")
TARGET_NORMS = ("none", "instance")


def unit_mask(coords: Tensor, unit: int, ratio: float, sample_seeds: Tensor) -> Tensor:
    """Mask whole cubes of ``unit`` voxels: ``int(ratio · cubes)`` cubes of each sample, seeded per sample.

    Args:
        coords: ``(M, 4)`` int ``[batch, x, y, z]``.
        sample_seeds: ``(B,)`` int64; sample ``b``'s cubes are drawn from ``sample_seeds[b]`` only.
    Returns:
        ``(M,)`` bool, True = masked.
    """
    cubes = coords.clone()
    cubes[:, 1:] = torch.div(coords[:, 1:], unit, rounding_mode="floor")
    keys, cube_index = torch.unique(voxel_keys(cubes), return_inverse=True)  # sorted: samples in order
    cube_batch = (keys >> (3 * COORD_BITS)).cpu()
    masked = torch.zeros(len(keys), dtype=torch.bool)
    for b, seed in enumerate(sample_seeds.tolist()):
        members = torch.nonzero(cube_batch == b).flatten()
        noise = torch.rand(len(members), generator=torch.Generator().manual_seed(int(seed)))
        masked[members[noise.argsort()[:int(ratio * len(members))]]] = True
    return masked.to(coords.device)[cube_index]


def variance_covariance(features: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """VICReg's anti-collapse terms of a feature batch: ``mean(relu(1 − std_c))`` over channels and the
    squared off-diagonal covariance summed and divided by the channel count.

    Args:
        features: ``(M, C)``, ``M >= 2``.
    """
    centred = features - features.mean(dim=0)
    std = torch.sqrt(centred.var(dim=0) + eps)
    covariance = centred.T @ centred / (len(features) - 1)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    return F.relu(1.0 - std).mean(), off_diagonal.pow(2).sum() / features.shape[1]


def instance_standardize(features: Tensor, batch_index: Tensor, batch_size: int, eps: float = 1e-6) -> Tensor:
    """Standardise every channel over each sample's rows (data2vec's instance norm on targets).

    Args:
        features: ``(M, C)``; batch_index: ``(M,)`` sample of each row.
    """
    count = torch.zeros(batch_size, device=features.device).index_add_(0, batch_index, torch.ones_like(
        batch_index, dtype=features.dtype)).clamp_min(1)[:, None]
    mean = torch.zeros(batch_size, features.shape[1], device=features.device, dtype=features.dtype).index_add_(
        0, batch_index, features) / count
    centred = features - mean[batch_index]
    var = torch.zeros_like(mean).index_add_(0, batch_index, centred.pow(2)) / count
    return centred / torch.sqrt(var[batch_index] + eps)


def point_level_index(level: FeatureLevel, voxel_coords: Tensor, level_index: int) -> Tensor:
    """Row of ``level.flatten()`` holding each stride-1 voxel's ancestor at ``level_index``.

    Args:
        voxel_coords: ``(P, 4)`` int stride-1 voxels ``[batch, x, y, z]``.
    """
    _, centres, batch = level.flatten()
    grid = torch.floor(centres / level.stride).to(torch.int64)
    level_keys = voxel_keys(torch.cat([batch[:, None], grid], dim=1))  # already sorted (see to_feature_level)
    ancestors = voxel_coords.to(torch.int64).clone()
    ancestors[:, 1:] = ancestors[:, 1:] >> level_index
    return torch.searchsorted(level_keys, voxel_keys(ancestors))


class MaskedSceneModeling(PretrainingMethod):
    """MSM pretraining: student/EMA-teacher masked deep-feature reconstruction (see the module docstring).

    Args:
        encoder: the student :class:`SparseUNet` (its weights are what pretraining produces).
        mask_ratio: share of mask cubes masked per sample.
        mask_unit: mask cube edge in voxels.
        loss: ``"cosine"`` | ``"smooth_l1"``.
        ema_momentum: teacher momentum at the start and end of training (cosine schedule).
        level_weights: weight of each level's loss (finest first); default equal.
        target_norm: ``"none"`` | ``"instance"`` (each sample's teacher features standardised per channel).
        variance_weight, covariance_weight: VICReg terms on the student's features of every level
            (0 disables them).
    """

    def __init__(self, encoder: SparseUNet, mask_ratio: float = 0.6, mask_unit: int = 8, loss: str = "cosine",
                 ema_momentum: Sequence[float] = (0.996, 1.0), level_weights: Sequence[float] | None = None,
                 target_norm: str = "none", variance_weight: float = 1.0, covariance_weight: float = 0.04) -> None:
        super().__init__()
        if not isinstance(encoder, SparseUNet):
            raise ConfigError(f"MSM needs a SparseUNet encoder (encoder=sparse_unet), got {type(encoder).__name__}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: expected 0 < mask_ratio < 1")
        if mask_unit < 1:
            raise ValueError(f"mask_unit={mask_unit}: expected >= 1 voxel")
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {', '.join(LOSSES)}")
        if len(ema_momentum) != 2 or not 0.0 <= ema_momentum[0] <= ema_momentum[1] <= 1.0:
            raise ValueError(f"ema_momentum={list(ema_momentum)}: expected [start, end] with 0 <= start <= end <= 1")
        if target_norm not in TARGET_NORMS:
            raise ValueError(f"target_norm={target_norm!r}: expected one of {', '.join(TARGET_NORMS)}")
        if variance_weight < 0 or covariance_weight < 0:
            raise ValueError(f"variance_weight={variance_weight}, covariance_weight={covariance_weight}: expected >= 0")
        levels = len(encoder.level_channels)
        weights = [1.0] * levels if level_weights is None else [float(w) for w in level_weights]
        if len(weights) != levels or sum(weights) <= 0:
            raise ValueError(f"level_weights={level_weights}: expected {levels} non-negative weights")
        self.encoder = encoder
        self.teacher = copy.deepcopy(encoder)
        self.teacher.requires_grad_(False)
        self.mask_ratio, self.mask_unit, self.loss_kind = mask_ratio, mask_unit, loss
        self.target_norm = target_norm
        self.variance_weight, self.covariance_weight = float(variance_weight), float(covariance_weight)
        self.ema_momentum = (float(ema_momentum[0]), float(ema_momentum[1]))
        self.register_buffer("level_weights", torch.tensor(weights) / sum(weights), persistent=False)
        width = encoder.init_config["channels"][0]
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.predictors = nn.ModuleList(nn.Linear(c, c) for c in encoder.level_channels)
        self._shown: dict[str, Any] | None = None  # the last batch's views and levels, for log_artifacts

    input_kinds = ("voxels",)

    def pretrain_dataset(self, data: Any, augment: bool = True):
        """MSM's paired views of the scans of a scene data node (:meth:`SceneData.view_dataset`)."""
        if not isinstance(data, SceneData):
            raise ConfigError(f"method=msm needs scans with colour and normals (data=scannet), got "
                              f"{type(data).__name__}")
        spec = self.encoder.spec
        return data.view_dataset(voxel_size=spec.voxel_size, input_features=spec.input_features, augment=augment)

    def momentum(self, step: int, total_steps: int) -> float:
        start, end = self.ema_momentum
        return end - (end - start) * (math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)) + 1) / 2

    @torch.no_grad()
    def on_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher (called by the Trainer after every optimiser step)."""
        m = self.momentum(step, total_steps)
        for teacher, student in zip(self.teacher.parameters(), self.encoder.parameters()):
            teacher.mul_(m).add_(student.detach(), alpha=1.0 - m)
        for teacher, student in zip(self.teacher.buffers(), self.encoder.buffers()):
            teacher.copy_(student)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self._shown = None  # the last batch's tensors go before this one's are made
        batch_size = int(batch["batch_size"])
        student_in = SparseVoxels(batch["a_features"], batch["a_coords"], batch_size)
        mask = unit_mask(student_in.coords, self.mask_unit, self.mask_ratio, batch["sample_seed"])
        student = self.encoder(student_in, mask=mask, mask_token=self.mask_token)
        with torch.no_grad():
            self.teacher.train(self.training)
            teacher = self.teacher(SparseVoxels(batch["b_features"], batch["b_coords"], batch_size))
        a_voxels = student_in.coords[batch["a_point_voxel"]]
        b_voxels = batch["b_coords"][batch["b_point_voxel"]]
        masked_points = mask[batch["a_point_voxel"]]
        a_voxels, b_voxels = a_voxels[masked_points], b_voxels[masked_points]
        out: dict[str, Tensor] = {"masked_fraction": mask.float().mean().detach()}
        total = student.levels[0].features.new_zeros((), dtype=torch.float32)
        for i, (s_level, t_level) in enumerate(zip(student.levels, teacher.levels)):
            s_features = s_level.flatten()[0]
            prediction = self.predictors[i](s_features[point_level_index(s_level, a_voxels, i)]).float()
            t_features, _, t_batch = t_level.flatten()
            if self.target_norm == "instance":
                t_features = instance_standardize(t_features.float(), t_batch, batch_size)
            target = t_features[point_level_index(t_level, b_voxels, i)].float()
            if self.loss_kind == "cosine":
                level_loss = (1.0 - F.cosine_similarity(prediction, target, dim=1)).mean()
            else:
                if self.target_norm == "none":
                    target = F.layer_norm(target, target.shape[-1:])
                level_loss = F.smooth_l1_loss(prediction, target)
            out[f"loss_level{i}"] = level_loss.detach()
            total = total + self.level_weights[i] * level_loss
            if self.variance_weight or self.covariance_weight:
                variance, covariance = variance_covariance(s_features.float())
                out[f"variance_level{i}"], out[f"covariance_level{i}"] = variance.detach(), covariance.detach()
                total = total + self.level_weights[i] * (self.variance_weight * variance
                                                         + self.covariance_weight * covariance)
        out["loss"] = total
        # references only: picking sample 0 (boolean indexing) would synchronise a GPU every step
        self._shown = {"coords": student_in.coords, "mask": mask.detach(),
                       "student": replace(student.levels[0], features=student.levels[0].features.detach()),
                       "teacher": teacher.levels[0]}
        return out

    def log_artifacts(self, step: int, out_dir: Path, writer: Any) -> None:
        """``features_STEP.png``: the last training batch's first sample from two cameras; left to right, the
        student's view with its masked voxels (orange) and visible ones (blue), the PCA colours of the
        student's finest-level features there, and of the teacher's on the other view."""
        if self._shown is None:
            return
        shown = self._shown
        first = shown["coords"][:, 0] == 0
        size = float(self.encoder.spec.voxel_size)
        voxels = ((shown["coords"][first, 1:].float().cpu() + 0.5) * size).numpy()
        masked = shown["mask"][first].cpu().numpy()[:, None]
        mask_colors = np.where(masked, np.float32([1.0, 0.55, 0.1]), np.float32([0.25, 0.55, 1.0]))
        panels = [(voxels, mask_colors)]
        for name in ("student", "teacher"):
            features, coords = _first_sample(shown[name])
            panels.append((coords.float().cpu().numpy(), pca_colors(features.float().cpu())))
        rows = []
        for points, colors in panels:
            viewmats, Ks = orbit_cameras(points, 2, 240, 240)
            rows.append(render_points(points, colors, viewmats, Ks, 240, 240, radius=size))
        picture = tile_panels(rows)
        make_dirs(out_dir)
        atomic_write_png(out_dir / f"features_{step:08d}.png", picture)
        if writer is not None:
            writer.add_image("msm/features", picture, step, dataformats="HWC")


def _first_sample(level: FeatureLevel) -> tuple[Tensor, Tensor]:
    """``features (T, C)`` and ``coords (T, 3)`` of sample 0 of a level, detached."""
    features, coords, batch_index = level.flatten()
    keep = batch_index == 0
    return features[keep].detach(), coords[keep].detach()
