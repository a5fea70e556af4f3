"""Anchor-free, centre-based 3D detection head on any pc3d encoder (one feature level).

Per token of a :class:`~pc3d.encoders.base.FeatureLevel` (a point patch, a voxel or a grid cell,
at ``coords`` in the scene frame) the head predicts: objectness (1), class scores (C), the offset to its object's
centre (3), the log of the object's sizes (3), and — for oriented boxes — the heading as one of
``num_heading_bins`` bins plus a residual within the bin (``num_heading_bins = 0``: axis-aligned,
yaw 0). Tokens inside a ground-truth box are its positives (the smallest box when several hold
the token); all other real tokens are negatives.

Losses (:meth:`CenterDetectionHead.loss`): sigmoid focal loss on objectness over real tokens
(``gamma = 0`` is BCE), cross-entropy on class and heading bin and L1 on offset, log-size and
heading residual over positives. Decoding (:meth:`CenterDetectionHead.decode`): score =
sigmoid(objectness) × class probability, boxes = token + offset, exp(log-size), bin centre +
residual; per-class 3D NMS (:func:`pc3d.ops.boxes.nms_3d`) and the top ``max_boxes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.encoders.base import Encoder, FeatureLevel
from pc3d.eval.detection import SceneDetections
from pc3d.ops.boxes import nms_3d, points_in_boxes
from pc3d.train.model import TrainableModel


@dataclass
class DetectionTargets:
    """Per-token targets ``(B, T, ...)``; ``box_index`` is -1 for negatives and padding."""

    box_index: Tensor  # (B, T) long
    valid: Tensor  # (B, T) bool: real tokens
    labels: Tensor  # (B, T) long, -1 for negatives
    offsets: Tensor  # (B, T, 3)
    log_sizes: Tensor  # (B, T, 3)
    heading_bins: Tensor  # (B, T) long
    heading_residuals: Tensor  # (B, T), in bin widths, [-0.5, 0.5)


def heading_to_bin(yaw: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """``yaw`` → bin in ``[0, num_bins)`` (bin 0 centred on -π) and residual in bin widths ``[-0.5, 0.5)``."""
    width = 2 * math.pi / num_bins
    shifted = torch.remainder(yaw + math.pi + width / 2, 2 * math.pi)
    bins = torch.div(shifted, width, rounding_mode="floor").long().clamp_max(num_bins - 1)
    return bins, shifted / width - bins - 0.5


def bin_to_heading(bins: Tensor, residuals: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`heading_to_bin`, wrapped to ``[-π, π)``."""
    width = 2 * math.pi / num_bins
    yaw = (bins.to(residuals.dtype) + residuals) * width - math.pi
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


def assign_targets(level: FeatureLevel, gt_boxes: Tensor, gt_labels: Tensor, num_heading_bins: int) -> DetectionTargets:
    """Targets of the tokens of ``level`` for padded ground truth ``gt_boxes (B, K, 7)``, ``gt_labels (B, K)`` (-1 = pad)."""
    coords = level.coords
    batch, tokens, _ = coords.shape
    if gt_boxes.shape[1] == 0:  # no boxes in the whole batch: one padding slot keeps the gathers valid
        gt_boxes = gt_boxes.new_zeros(batch, 1, 7)
        gt_labels = gt_labels.new_full((batch, 1), -1)
    valid = level.valid if level.valid is not None else torch.ones(batch, tokens, dtype=torch.bool,
                                                                   device=coords.device)
    box_index = torch.full((batch, tokens), -1, dtype=torch.long, device=coords.device)
    for b in range(batch):
        real = gt_labels[b] >= 0
        if not real.any():
            continue
        boxes = gt_boxes[b][real]
        holds = points_in_boxes(coords[b].to(boxes.dtype), boxes) & valid[b, :, None]
        volume = boxes[:, 3:6].prod(-1)
        ranked = torch.where(holds, volume[None, :], torch.full_like(holds, float("inf"), dtype=volume.dtype))
        smallest = ranked.argmin(dim=1)
        chosen = torch.nonzero(real).squeeze(1)[smallest]
        box_index[b] = torch.where(holds.any(dim=1), chosen, box_index[b])
    positive = box_index >= 0
    safe = box_index.clamp_min(0)
    picked = torch.gather(gt_boxes, 1, safe[..., None].expand(-1, -1, 7))  # (B, T, 7)
    labels = torch.where(positive, torch.gather(gt_labels, 1, safe), torch.full_like(safe, -1))
    bins, residuals = heading_to_bin(picked[..., 6], max(num_heading_bins, 1))
    return DetectionTargets(box_index=box_index, valid=valid, labels=labels,
                            offsets=picked[..., :3] - coords.to(picked.dtype),
                            log_sizes=picked[..., 3:6].clamp_min(1e-3).log(), heading_bins=bins,
                            heading_residuals=residuals)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    """Element-wise focal loss (Lin et al.); ``gamma = 0`` and ``alpha < 0`` give plain BCE."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma == 0 and alpha < 0:
        return ce
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


class CenterDetectionHead(nn.Module):
    """Shared MLP + per-token output layers over one feature level.

    Args:
        in_dim: feature width C of the level.
        num_classes: detection classes.
        num_heading_bins: heading bins for oriented boxes; 0 = axis-aligned (yaw 0).
        hidden_dim: width of the two shared layers.
        focal_gamma, focal_alpha: objectness loss (``gamma=0, alpha=-1``: BCE).
        loss_weights: objectness, class, offset, size, heading-bin, heading-residual.
    """

    def __init__(self, in_dim: int, num_classes: int, num_heading_bins: int = 12, hidden_dim: int = 128,
                 focal_gamma: float = 2.0, focal_alpha: float = 0.25,
                 loss_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5)) -> None:
        super().__init__()
        if num_classes < 1 or num_heading_bins < 0:
            raise ValueError(f"num_classes must be >= 1 and num_heading_bins >= 0, got {num_classes}, "
                             f"{num_heading_bins}")
        self.num_classes = num_classes
        self.num_heading_bins = num_heading_bins
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.shared = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                                    nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU())
        self.objectness = nn.Linear(hidden_dim, 1)
        self.classes = nn.Linear(hidden_dim, num_classes)
        self.box = nn.Linear(hidden_dim, 6)  # offset (3) + log-size (3)
        self.heading = nn.Linear(hidden_dim, 2 * num_heading_bins) if num_heading_bins else None
        nn.init.constant_(self.objectness.bias, -math.log((1 - 0.01) / 0.01))  # start at p = 0.01

    def forward(self, level: FeatureLevel) -> dict[str, Tensor]:
        """Raw outputs ``(B, T, ...)``: objectness, class_logits, offsets, log_sizes[, heading_logits, heading_residuals]."""
        x = self.shared(level.features)
        box = self.box(x)
        out = {"objectness": self.objectness(x).squeeze(-1), "class_logits": self.classes(x),
               "offsets": box[..., :3], "log_sizes": box[..., 3:]}
        if self.heading is not None:
            heading = self.heading(x)
            out["heading_logits"] = heading[..., :self.num_heading_bins]
            out["heading_residuals"] = heading[..., self.num_heading_bins:]
        return out

    def loss(self, outputs: dict[str, Tensor], targets: DetectionTargets) -> dict[str, Tensor]:
        """``{"loss": weighted sum, "objectness", "class", "offset", "size", "heading_bin", "heading_residual"}``."""
        positive = targets.box_index >= 0
        valid = targets.valid
        objectness = sigmoid_focal_loss(outputs["objectness"], positive.to(outputs["objectness"].dtype),
                                        self.focal_gamma, self.focal_alpha)
        parts = {"objectness": objectness[valid].sum() / positive.sum().clamp_min(1)}
        zero = outputs["objectness"].sum() * 0
        if positive.any():
            parts["class"] = F.cross_entropy(outputs["class_logits"][positive], targets.labels[positive])
            parts["offset"] = F.l1_loss(outputs["offsets"][positive], targets.offsets[positive].to(outputs["offsets"].dtype))
            parts["size"] = F.l1_loss(outputs["log_sizes"][positive], targets.log_sizes[positive].to(outputs["offsets"].dtype))
        else:
            parts.update(**{"class": zero, "offset": zero, "size": zero})
        if self.heading is not None and positive.any():
            bins = targets.heading_bins[positive]
            parts["heading_bin"] = F.cross_entropy(outputs["heading_logits"][positive], bins)
            residual = torch.gather(outputs["heading_residuals"][positive], 1, bins[:, None]).squeeze(1)
            parts["heading_residual"] = F.l1_loss(residual, targets.heading_residuals[positive].to(residual.dtype))
        else:
            parts.update(heading_bin=zero, heading_residual=zero)
        names = ("objectness", "class", "offset", "size", "heading_bin", "heading_residual")
        parts["loss"] = sum(w * parts[n] for w, n in zip(self.loss_weights, names))
        return parts

    @torch.no_grad()
    def decode(self, outputs: dict[str, Tensor], level: FeatureLevel, score_threshold: float = 0.05,
               nms_iou: float = 0.25, max_boxes: int = 256) -> list[SceneDetections]:
        """Boxes per scene (see module docstring); scores in [0, 1]."""
        objectness = torch.sigmoid(outputs["objectness"])
        class_prob = outputs["class_logits"].softmax(dim=-1)
        class_score, labels = class_prob.max(dim=-1)
        scores = objectness * class_score
        centres = level.coords + outputs["offsets"]
        sizes = outputs["log_sizes"].exp()
        if self.heading is not None:
            bins = outputs["heading_logits"].argmax(dim=-1)
            residuals = torch.gather(outputs["heading_residuals"], 2, bins[..., None]).squeeze(-1)
            yaw = bin_to_heading(bins, residuals, self.num_heading_bins)
        else:
            yaw = torch.zeros_like(scores)
        boxes = torch.cat([centres, sizes, yaw[..., None]], dim=-1)
        valid = level.valid if level.valid is not None else torch.ones_like(scores, dtype=torch.bool)
        scenes = []
        for b in range(scores.shape[0]):
            keep = valid[b] & (scores[b] > score_threshold)
            scene_boxes, scene_scores, scene_labels = boxes[b][keep], scores[b][keep], labels[b][keep]
            kept = nms_3d(scene_boxes.double(), scene_scores, nms_iou, labels=scene_labels,
                          aligned=self.heading is None)[:max_boxes]
            scenes.append(SceneDetections(boxes=scene_boxes[kept].float(), scores=scene_scores[kept].float(),
                                          labels=scene_labels[kept]))
        return scenes


class Detector(TrainableModel):
    """Encoder + :class:`CenterDetectionHead` on one of its levels; ``forward(batch)`` returns the losses.

    ``batch``: ``input`` (the encoder's input, :class:`~pc3d.encoders.inputs.EncoderInputDataset`),
    ``gt_boxes (B, K, 7)``, ``gt_labels (B, K)`` (-1 pads scenes with fewer boxes). Every encoder
    returns its levels in the scene frame, so the head needs nothing else. The trainer fits it like
    any method.
    """

    def __init__(self, encoder: Encoder, head: CenterDetectionHead, level: int = -1) -> None:
        super().__init__()
        self.encoder, self.head, self.level = encoder, head, level

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        level = self.encoder(batch["input"]).levels[self.level]
        targets = assign_targets(level, batch["gt_boxes"], batch["gt_labels"], self.head.num_heading_bins)
        return self.head.loss(self.head(level), targets)

    @torch.no_grad()
    def detect(self, inputs: Any, **decode_kwargs) -> list[SceneDetections]:
        """The encoder's input of a batch of scenes → detections per scene (eval mode is the caller's choice)."""
        level = self.encoder(inputs).levels[self.level]
        return self.head.decode(self.head(level), level, **decode_kwargs)
