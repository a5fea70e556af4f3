"""Scene probe: frozen multi-resolution point features → linear layer or kNN → semantic segmentation.

MSM's protocol: for every original point, sample the feature of every encoder level (the
UNet's decoder levels and bottleneck, strides ``voxel_size · 2^i``) at the point's position —
trilinear between the 8 nearest voxel centres of that level, renormalised over the occupied
ones (``nearest``: the voxel containing the point) — and concatenate. The encoder is frozen;
a linear layer (softmax cross-entropy, AdamW) or a cosine kNN vote is trained on the points of
the train scans and scored on every point of the val scans: per-class IoU, mIoU over the
classes present in the val ground truth, overall and mean-class accuracy. Points labelled -1
are ignored everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.data.scene_dataset import scan_voxels
from pc3d.data.scenes import Scene
from pc3d.encoders.base import FeatureLevel
from pc3d.errors import ConfigError
from pc3d.ops.sparse_conv import voxel_keys

INTERPOLATIONS = ("trilinear", "nearest")


def sample_level(level: FeatureLevel, positions: Tensor, batch_index: Tensor, mode: str = "trilinear") -> Tensor:
    """Features of one voxel level at arbitrary positions.

    Args:
        level: voxel centres at ``(index + 0.5) · stride`` (``stride > 0``).
        positions: ``(N, 3)`` in the level's frame; every position's own voxel must exist
            (true for the points the voxels were made from).
        batch_index: ``(N,)`` sample of each position.
        mode: ``"trilinear"`` | ``"nearest"``.
    Returns:
        ``(N, C)``.
    """
    if level.stride <= 0:
        raise ConfigError("the scene probe needs a voxel encoder (levels with a stride, e.g. encoder=sparse_unet)")
    if mode not in INTERPOLATIONS:
        raise ConfigError(f"probe.interpolation={mode!r}: expected one of {', '.join(INTERPOLATIONS)}")
    features, centres, batch = level.flatten()
    keys = voxel_keys(torch.cat([batch[:, None], torch.floor(centres / level.stride).to(torch.int64)], dim=1))
    keys, order = torch.sort(keys)
    features = features[order]
    batch_index = batch_index.to(torch.int64)[:, None]

    def lookup(index: Tensor) -> tuple[Tensor, Tensor]:
        query = voxel_keys(torch.cat([batch_index, index.clamp_min(0)], dim=1))
        pos = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
        return pos, (keys[pos] == query) & (index >= 0).all(dim=1)

    scaled = positions / level.stride
    if mode == "nearest":
        pos, found = lookup(torch.floor(scaled).to(torch.int64))
        if not bool(found.all()):
            raise ValueError("sample_level: some positions lie in no voxel of the level")
        return features[pos]
    base = torch.floor(scaled - 0.5).to(torch.int64)
    frac = scaled - 0.5 - base
    total = features.new_zeros(len(positions), features.shape[1])
    weight_sum = features.new_zeros(len(positions), 1)
    for corner in range(8):
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=positions.device)
        pos, found = lookup(base + offset)
        weight = torch.where(offset.bool(), frac, 1.0 - frac).prod(dim=1, keepdim=True) * found[:, None]
        total += weight * features[pos]
        weight_sum += weight
    if bool((weight_sum <= 0).any()):
        raise ValueError("sample_level: some positions have no occupied voxel around them")
    return total / weight_sum


@torch.no_grad()
def scene_point_features(encoder: nn.Module, scene: Scene, device: torch.device | str = "cpu",
                         interpolation: str = "trilinear") -> Tensor:
    """``(N, ΣC)`` frozen features of every point of ``scene`` (all levels, finest first), on the CPU."""
    voxel_size = float(getattr(encoder, "voxel_size", 0.0))
    if voxel_size <= 0:
        raise ConfigError("the scene probe needs a voxel encoder (encoder=sparse_unet)")
    voxels, _ = scan_voxels(scene, voxel_size)
    output = encoder.to(device).eval()(voxels.to(device))
    coord = torch.from_numpy(np.asarray(scene.coord, dtype=np.float32)).to(device)
    positions = coord - coord.amin(dim=0)  # the grid frame of scan_voxels
    batch = torch.zeros(len(positions), dtype=torch.int64, device=device)
    return torch.cat([sample_level(level, positions, batch, interpolation) for level in output.levels], dim=1).cpu()


def segmentation_metrics(prediction: np.ndarray, truth: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """``miou`` (over classes present in ``truth``), ``overall_accuracy``, ``mean_accuracy`` and ``iou/<class>``.

    Args:
        prediction, truth: ``(N,)`` class ids; ``truth == -1`` is ignored.
    """
    keep = truth >= 0
    prediction, truth = prediction[keep], truth[keep]
    num_classes = len(class_names)
    confusion = np.bincount(truth * num_classes + prediction, minlength=num_classes ** 2).reshape(num_classes, -1)
    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = confusion.sum(1) > 0
    iou = np.divide(true_positive, union, out=np.zeros(num_classes), where=union > 0)
    recall = np.divide(true_positive, confusion.sum(1), out=np.zeros(num_classes), where=present)
    metrics = {"miou": float(iou[present].mean()) if present.any() else 0.0,
               "overall_accuracy": float(true_positive.sum() / max(len(truth), 1)),
               "mean_accuracy": float(recall[present].mean()) if present.any() else 0.0,
               "num_classes_present": int(present.sum())}
    metrics.update({f"iou/{name}": float(iou[c]) for c, name in enumerate(class_names) if present[c]})
    return metrics


def effective_rank(features: Tensor, max_rows: int = 4096, seed: int = 0) -> float:
    """Entropy effective rank (Roy & Vetterli 2007) of centred features: ``exp(H(σ² / Σσ²))`` over the
    singular values of up to ``max_rows`` seeded rows. 1 = every row on one line; ``C`` = isotropic.
    Dimensional collapse of self-supervised features shows here before it shows in a probe.

    Args:
        features: ``(N, C)``, ``N >= 2``.
    """
    if len(features) > max_rows:
        features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:max_rows]]
    singular = torch.linalg.svdvals((features - features.mean(dim=0)).double())
    energy = singular.pow(2)
    if float(energy.sum()) == 0.0:
        return 0.0
    p = energy / energy.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class ProbeFeatures:
    """Frozen point features and labels of the train and val scans (labels -1 = ignore)."""

    train_features: Tensor
    train_labels: Tensor
    val_features: Tensor
    val_labels: Tensor


def linear_probe(data: ProbeFeatures, num_classes: int, steps: int = 2000, batch_size: int = 8192,
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0) -> np.ndarray:
    """Train one linear layer (features standardised with train statistics); val predictions ``(N_val,)``."""
    keep = data.train_labels >= 0
    x, y = data.train_features[keep], data.train_labels[keep]
    if len(y) == 0:
        raise ConfigError("the probe's train scans have no labelled points")
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(x.shape[1], num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer.reset_parameters()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        index = torch.randint(len(y), (min(batch_size, len(y)),), generator=generator)
        loss = F.cross_entropy(layer((x[index] - mean) / std), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return torch.cat([layer((chunk - mean) / std).argmax(dim=1)
                          for chunk in data.val_features.split(65536)]).numpy()


def knn_probe(data: ProbeFeatures, num_classes: int, k: int = 20, bank_size: int = 50000, seed: int = 0,
              temperature: float = 0.07) -> np.ndarray:
    """Cosine kNN vote (weights ``exp(sim / T)``, DINO's kNN classifier) against a seeded bank of
    ``bank_size`` labelled train points; val predictions ``(N_val,)``."""
    keep = torch.nonzero(data.train_labels >= 0).flatten()
    if len(keep) == 0:
        raise ConfigError("the probe's train scans have no labelled points")
    generator = torch.Generator().manual_seed(seed)
    if len(keep) > bank_size:
        keep = keep[torch.randperm(len(keep), generator=generator)[:bank_size]]
    bank = F.normalize(data.train_features[keep], dim=1)
    labels = data.train_labels[keep]
    k = min(k, len(bank))
    predictions = []
    for chunk in data.val_features.split(4096):
        similarity, index = (F.normalize(chunk, dim=1) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(1, labels[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions).numpy()


def run_scene_probe(encoder: nn.Module, train: Sequence[Scene], val: Sequence[Scene], class_names: Sequence[str],
                    kind: str, device: torch.device | str = "cpu", interpolation: str = "trilinear",
                    seed: int = 0, **options) -> dict[str, float]:
    """Features of every point of ``train`` and ``val``, one probe (``kind``: ``linear`` | ``knn``), metrics."""
    if kind not in ("linear", "knn"):
        raise ConfigError(f"probe.kind={kind!r}: expected 'linear' or 'knn'")

    def features(scenes: Sequence[Scene]) -> tuple[Tensor, Tensor]:
        parts = [scene_point_features(encoder, s, device, interpolation) for s in scenes]
        labels = [torch.from_numpy(np.asarray(s.segment, dtype=np.int64)) for s in scenes]
        return torch.cat(parts), torch.cat(labels)

    data = ProbeFeatures(*features(train), *features(val))
    if int(data.val_labels.max()) >= len(class_names) or int(data.train_labels.max()) >= len(class_names):
        raise ConfigError(f"labels exceed the {len(class_names)} classes of the data")
    probe = linear_probe if kind == "linear" else knn_probe
    prediction = probe(data, len(class_names), seed=seed, **options)
    metrics = segmentation_metrics(prediction, data.val_labels.numpy(), class_names)
    metrics["feature_dim"] = int(data.train_features.shape[1])
    start = 0
    for i, width in enumerate(getattr(encoder, "level_channels", [data.val_features.shape[1]])):
        metrics[f"effective_rank/level{i}"] = effective_rank(data.val_features[:, start:start + width], seed=seed)
        start += width
    return metrics
