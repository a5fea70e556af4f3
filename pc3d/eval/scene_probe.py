"""Scene probe: frozen multi-resolution point features → linear layer or kNN → semantic segmentation.

MSM's protocol: for every original point, sample the feature of every encoder level (the
UNet's decoder levels and bottleneck, strides ``voxel_size · 2^i``; any encoder whose levels lie
on a grid — voxels or dense cells) at the point's position — trilinear between the 8 nearest
cell centres of that level, renormalised over the occupied ones (``nearest``: the cell
containing the point; ``msm``: MSM's own interpolation, below) — and concatenate. The encoder is frozen;
a linear layer (softmax cross-entropy, AdamW) or a cosine kNN vote is trained on the points of
the train scans and scored on every point of the val scans: per-class IoU, mIoU over the
classes present in the val ground truth, overall and mean-class accuracy. Points labelled -1
are ignored everywhere.

``interpolation="msm"`` is what MSM's release computes (its ``MSM3D_InterpolationDecoder``): a
point of input voxel ``c`` (integer, from the input grid's origin) is sampled in level ``l`` (cells
of ``2^l`` voxels, ``D`` cells per axis = the sample's largest cell index + 1) with
``grid_sample(align_corners=True)`` at the normalised position ``((c + 0.5) / 2^l) / D · 2 − 1``,
i.e. at cell index ``u = (c + 0.5) / 2^l · (D − 1) / D``, in float32; empty cells count as zero and
the weights are not renormalised. Against ``trilinear`` that is (1) at the point's voxel centre,
not the point; (2) squeezed: the index ``(c + 0.5) / 2^l`` that would put the point between the
cell centres is scaled by ``(D − 1) / D`` (shifted by up to half a cell, most near index 0, even at
the finest level); (3) pulled towards zero next to empty cells.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.data.scenes import Scene, rotated_scene, wall_aligned_scene
from pc3d.encoders.base import Encoder, FeatureLevel
from pc3d.encoders.inputs import encoder_input
from pc3d.errors import ConfigError
from pc3d.eval.object_probe import calibrate_norm_statistics
from pc3d.ops.sparse_conv import voxel_keys
from pc3d.utils.config import Setting, check_settings
from pc3d.utils.device import move_to

INTERPOLATIONS = ("trilinear", "nearest", "msm")
#: how the scene probe orients each scan before it is featurised (see :func:`run_scene_probe`)
ALIGNMENTS = ("walls", "none")


def sample_level(level: FeatureLevel, positions: Tensor, batch_index: Tensor, mode: str = "trilinear",
                 voxel_size: float | None = None) -> Tensor:
    """Features of one strided level (voxels or dense cells) at arbitrary positions.

    Args:
        level: cells at ``origin + (index + 0.5) · stride`` (``stride > 0``).
        positions: ``(N, 3)`` in the input frame; every position's own cell must exist
            (true for the points the cells were made from).
        batch_index: ``(N,)`` sample of each position.
        mode: ``"trilinear"`` | ``"nearest"`` | ``"msm"`` (see the module docstring).
        voxel_size: the encoder's input voxel edge (``msm`` only: positions are taken at their input voxel).
    Returns:
        ``(N, C)``.
    """
    if level.stride <= 0:
        raise ConfigError("the scene probe needs a voxel encoder or a dense-grid encoder (levels on a grid, "
                          "e.g. encoder=sparse_unet); point-token levels have none")
    if mode not in INTERPOLATIONS:
        raise ConfigError(f"probe.interpolation={mode!r}: expected one of {', '.join(INTERPOLATIONS)}")
    features, centers, batch = level.flatten()
    cells = level.cell_index(centers, batch)
    keys = voxel_keys(torch.cat([batch[:, None], cells], dim=1))
    keys, order = torch.sort(keys)
    features = features[order]
    batch_index = batch_index.to(torch.int64)

    def lookup(index: Tensor) -> tuple[Tensor, Tensor]:
        query = voxel_keys(torch.cat([batch_index[:, None], index.clamp_min(0)], dim=1))
        pos = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
        return pos, (keys[pos] == query) & (index >= 0).all(dim=1)

    if mode == "msm":
        return _sample_msm(positions, batch_index, level.origin, level.stride, voxel_size, cells, batch, features,
                           lookup)
    if mode == "nearest":
        pos, found = lookup(level.cell_index(positions, batch_index))
        if not bool(found.all()):
            raise ValueError("sample_level: some positions lie in no cell of the level")
        return features[pos]
    local = positions if level.origin is None else positions - level.origin.to(positions)[batch_index]
    scaled = local / level.stride
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
        raise ValueError("sample_level: some positions have no occupied cell around them")
    return total / weight_sum


def _sample_msm(positions: Tensor, batch_index: Tensor, origin: Tensor | None, stride: float, voxel_size: float | None,
                cells: Tensor, cell_batch: Tensor, features: Tensor, lookup) -> Tensor:
    """MSM's ``grid_sample(align_corners=True)`` of a level's dense grid (see the module docstring), done sparsely.

    ``cells (M, 3)`` / ``cell_batch (M,)``: the level's occupied cells; ``lookup(index (N, 3))`` finds the
    row of ``features`` of each position's cell at ``index`` and whether it is occupied.
    """
    if voxel_size is None or voxel_size <= 0:
        raise ConfigError("interpolation=msm needs the encoder's input voxel size")
    local = positions if origin is None else positions - origin.to(positions)[batch_index]
    voxel = torch.floor(local / voxel_size).to(torch.float32)  # MSM's grid coordinate of the point
    factor = float(round(stride / voxel_size))  # 2^level
    samples = int(max(int(batch_index.max()), int(cell_batch.max()))) + 1
    extent = torch.zeros(samples, 3, dtype=torch.int64, device=cells.device).scatter_reduce(
        0, cell_batch[:, None].expand(-1, 3), cells, "amax")
    size = (extent + 1).to(torch.float32)[batch_index]
    normalised = ((voxel + 0.5) / factor) / size * 2.0 - 1.0  # float32, as MSM computes it
    u = ((normalised + 1.0) / 2.0) * (size - 1.0)  # grid_sample's unnormalisation with align_corners
    low = torch.floor(u)
    total = features.new_zeros(len(positions), features.shape[1])
    for corner in range(8):
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=positions.device)
        pos, found = lookup(low.to(torch.int64) + offset)
        weight = torch.where(offset.bool(), u - low, low + 1.0 - u).prod(dim=1, keepdim=True) * found[:, None]
        total += weight.to(features.dtype) * features[pos]
    return total


def scene_sample(scene: Scene) -> dict[str, Tensor]:
    """A scan as an encoder sample: ``points``, ``colors`` in [0, 1], ``normals``."""
    return {"points": torch.as_tensor(np.asarray(scene.points), dtype=torch.float32),
            "colors": torch.as_tensor(np.asarray(scene.colors), dtype=torch.float32),
            "normals": torch.as_tensor(np.asarray(scene.normals), dtype=torch.float32)}


@torch.no_grad()
def scene_point_features(encoder: Encoder, scene: Scene, device: torch.device | str = "cpu",
                         interpolation: str = "trilinear") -> Tensor:
    """``(N, ΣC)`` frozen features of every point of ``scene`` (all levels, finest first), on the CPU."""
    if any(stride <= 0 for stride in encoder.spec.level_strides):
        raise ConfigError("the scene probe needs a voxel encoder or a dense-grid encoder (levels on a grid, "
                          "e.g. encoder=sparse_unet)")
    sample = scene_sample(scene)
    output = encoder.to(device).eval()(move_to(encoder_input(encoder.spec, [sample]), device))
    positions = sample["points"].to(device)
    batch = torch.zeros(len(positions), dtype=torch.int64, device=device)
    voxel_size = encoder.spec.voxel_size
    return torch.cat([sample_level(level, positions, batch, interpolation, voxel_size) for level in output.levels],
                     dim=1).cpu()


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


#: a fitted probe: ``(M, C)`` frozen features → ``(M, num_classes)`` class probabilities
Scorer = Callable[[Tensor], Tensor]


def _labelled(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    keep = labels >= 0
    if not keep.any():
        raise ConfigError("the probe's train scans have no labelled points")
    return features[keep], labels[keep]


def linear_probe(features: Tensor, labels: Tensor, num_classes: int, steps: int = 2000, batch_size: int = 8192,
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0) -> Scorer:
    """Train one linear layer on ``features (N, C)`` / ``labels (N,)`` (-1 = ignore; features
    standardised with train statistics); returns the softmax scorer."""
    x, y = _labelled(features, labels)
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
    layer.requires_grad_(False)

    def score(chunk_features: Tensor) -> Tensor:
        return torch.cat([layer((chunk - mean) / std).softmax(dim=1) for chunk in chunk_features.split(65536)])

    return score


def knn_probe(features: Tensor, labels: Tensor, num_classes: int, k: int = 20, bank_size: int = 50000,
              seed: int = 0, temperature: float = 0.07) -> Scorer:
    """Cosine kNN vote (weights ``exp(sim / T)``, DINO's kNN classifier) against a seeded bank of
    ``bank_size`` labelled points of ``features (N, C)`` / ``labels (N,)``; returns the scorer (votes
    normalised to sum to 1)."""
    x, y = _labelled(features, labels)
    if len(y) > bank_size:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:bank_size]
        x, y = x[keep], y[keep]
    bank = F.normalize(x, dim=1)
    k = min(k, len(bank))

    def score(chunk_features: Tensor) -> Tensor:
        votes = []
        for chunk in chunk_features.split(4096):
            similarity, index = (F.normalize(chunk, dim=1) @ bank.T).topk(k, dim=1)
            # exp((s - 1) / T): the same vote ratios as exp(s / T) without overflowing at small T
            weight = ((similarity - 1) / temperature).exp()
            vote = torch.zeros(len(chunk), num_classes).scatter_add_(1, y[index], weight)
            votes.append(vote / vote.sum(dim=1, keepdim=True))
        return torch.cat(votes)

    return score


def run_scene_probe(encoder: Encoder, train: Sequence[Scene], val: Sequence[Scene], class_names: Sequence[str],
                    kind: str, device: torch.device | str = "cpu", interpolation: str = "trilinear",
                    seed: int = 0, align: str = "none", train_turns: int = 1, val_turns: int = 1,
                    val_rotation: float = 0.0, **options) -> dict[str, Any]:
    """Features of every point of ``train`` and ``val``, one probe (``kind``: ``linear`` | ``knn``), metrics.

    Args:
        align: ``walls`` turns every scan (train and val) about z so its walls run along x and y
            (:func:`~pc3d.data.scenes.wall_aligned_scene`): a scan in any orientation about z then
            differs from the train scans by a quarter turn at most. ``none`` = the scans as stored.
        train_turns: each train scan is featurised turned by this many quarter turns (1 = as
            stored, 2 = 0 / 180°, 4 = 0 / 90 / 180 / 270°) and the probe trains on all of them; with
            ``align=walls`` and 4 turns every orientation of a rescan is covered.
        val_turns: each val scan is scored in this many quarter turns and the probe's class
            probabilities are summed over them (Pointcept's test-time rotations); with 4 the
            prediction does not depend on which quarter turn the scan came in.
        val_rotation: the val scans are turned in place by this many degrees about z
            (:func:`~pc3d.data.scenes.rotated_scene`) before they are aligned and scored, so the numbers
            hold for a scan in another orientation than the train scans. When it is not a multiple of
            360 the val scans as stored are scored too, as ``same_orientation_miou``,
            ``same_orientation_overall_accuracy`` and ``same_orientation_mean_accuracy``.
    """
    if kind not in ("linear", "knn"):
        raise ConfigError(f"probe.kind={kind!r}: expected 'linear' or 'knn'")
    if align not in ALIGNMENTS:
        raise ConfigError(f"probe.align={align!r}: expected one of {list(ALIGNMENTS)}")
    for key, value in (("train_turns", train_turns), ("val_turns", val_turns)):
        if value not in (1, 2, 4):
            raise ConfigError(f"probe.{key}={value}: expected 1, 2 or 4")

    def aligned(scene: Scene) -> Scene:
        return wall_aligned_scene(scene) if align == "walls" else scene

    def turns(scene: Scene, count: int) -> list[Scene]:
        step = 360 // count
        return [rotated_scene(scene, turn * step) for turn in range(count)]

    def labels(scene: Scene) -> Tensor:
        segment = torch.from_numpy(np.asarray(scene.segment, dtype=np.int64))
        if len(segment) and int(segment.max()) >= len(class_names):
            raise ConfigError(f"{scene.name}: labels exceed the {len(class_names)} classes of the data")
        return segment

    train_scans = [turned for s in train for turned in turns(aligned(s), train_turns)]
    train_features = torch.cat([scene_point_features(encoder, s, device, interpolation) for s in train_scans])
    train_labels = torch.cat([labels(s) for s in train_scans])
    fit = linear_probe if kind == "linear" else knn_probe
    score = fit(train_features, train_labels, len(class_names), seed=seed, **options)
    feature_dim = int(train_features.shape[1])
    del train_features

    def predict(scene: Scene) -> tuple[np.ndarray, Tensor]:
        """Class of every point of ``scene`` (probabilities summed over its ``val_turns`` quarter
        turns: Pointcept's test-time rotations) and the features of the scan as given."""
        total, first = None, None
        for turned in turns(scene, val_turns):
            features = scene_point_features(encoder, turned, device, interpolation)
            first = features if first is None else first
            total = score(features) if total is None else total + score(features)
        return total.argmax(dim=1).numpy(), first

    turned = float(val_rotation) % 360 != 0
    predictions, truths, same_predictions, rank_features = [], [], [], []
    for scene in val:
        prediction, features = predict(aligned(rotated_scene(scene, val_rotation)))
        predictions.append(prediction)
        truths.append(labels(scene).numpy())
        rank_features.append(features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
                                      [:4096]])
        if turned:
            same_predictions.append(predict(aligned(scene))[0])
    truth = np.concatenate(truths)
    metrics: dict[str, Any] = segmentation_metrics(np.concatenate(predictions), truth, class_names)
    if turned:
        same = segmentation_metrics(np.concatenate(same_predictions), truth, class_names)
        metrics.update({f"same_orientation_{k}": same[k] for k in ("miou", "overall_accuracy", "mean_accuracy")})
    metrics.update({"val_rotation": float(val_rotation), "align": align, "train_turns": int(train_turns),
                    "val_turns": int(val_turns), "feature_dim": feature_dim})
    rank_features = torch.cat(rank_features)
    start = 0
    for i, width in enumerate(encoder.spec.level_channels):
        metrics[f"effective_rank/level{i}"] = effective_rank(rank_features[:, start:start + width], seed=seed)
        start += width
    return metrics


PROBE_SETTINGS = {"run": Setting(str), "kind": Setting(str, choices=("linear", "knn")),
                  "align": Setting(str, choices=ALIGNMENTS), "train_turns": Setting(int, choices=(1, 2, 4)),
                  "val_turns": Setting(int, choices=(1, 2, 4)),
                  "val_rotation": Setting(float),
                  "interpolation": Setting(str, choices=INTERPOLATIONS), "steps": Setting(int, 1),
                  "batch_size": Setting(int, 1), "lr": Setting(float, 0.0, open_low=True),
                  "weight_decay": Setting(float, 0.0), "k": Setting(int, 1), "bank_size": Setting(int, 1),
                  "temperature": Setting(float, 0.0, open_low=True), "baseline": Setting(bool),
                  "norm_stats": Setting(str, choices=("data", "stored"))}


def probe_command(cfg) -> dict[str, Any]:
    """``pc3d probe probe=scene_linear|scene_knn``: frozen multi-level point features → mIoU, beside random init."""
    import time

    from pc3d.data.scene_data import SceneData
    from pc3d.train.run import check_run_settings, finish_run, probe_encoders, report, resolve_device, start_run
    from pc3d.utils.config import call_target, to_plain

    started = time.perf_counter()
    check_settings("probe", cfg.probe, PROBE_SETTINGS)
    check_run_settings(cfg)
    device = resolve_device(cfg.device)
    data = call_target(cfg.data, "data")
    if not isinstance(data, SceneData):
        raise ConfigError(f"probe={cfg.probe.kind}: the scene probe needs scans with labels (data=scannet), "
                          f"got {type(data).__name__}")
    options = {k: v for k, v in to_plain(cfg.probe).items()
               if k not in ("run", "kind", "interpolation", "baseline", "norm_stats")}
    train, val = data.scenes(data.probe_train), data.scenes(data.probe_val)
    encoders = probe_encoders(cfg)
    out = start_run(cfg, resumable=False)
    if cfg.probe.norm_stats == "data":  # both encoders on the train scans' statistics: they differ only in weights
        samples = [scene_sample(scene) for scene in train]
        for encoder in encoders.values():
            calibrate_norm_statistics(encoder, samples, batch_size=1, device=device)
    results = {name: run_scene_probe(encoder, train, val, data.class_names, str(cfg.probe.kind), device=device,
                                     interpolation=str(cfg.probe.interpolation), seed=int(cfg.seed), **options)
               for name, encoder in encoders.items()}
    metrics = dict(results["pretrained"] if "pretrained" in results else results["random"])
    if "pretrained" in results and "random" in results:
        metrics.update({f"random_{k}": v for k, v in results["random"].items()})
    metrics.update({"probe": f"scene_{cfg.probe.kind}", "train_scans": [s.name for s in train],
                    "val_scans": [s.name for s in val], "wall_s": time.perf_counter() - started})
    finish_run(out, metrics)
    line = (f"probe scene_{cfg.probe.kind} ({len(train)} train / {len(val)} val scans, val turned "
            f"{metrics['val_rotation']:g}°): ")
    line += f"mIoU {'pretrained' if 'pretrained' in results else 'random'} {metrics['miou']:.4f}"
    if "pretrained" in results and "random" in results:
        line += f" | random init {metrics['random_miou']:.4f}"
    report(line + f" → {out}")
    return metrics
