"""``pc3d detect train|eval``: fit the detection head (with its encoder) and score it with mAP@0.25/0.5.

``train`` builds the encoder (``checkpoint=random`` from ``encoder``; otherwise any file
:func:`pc3d.hub.load_encoder` reads, strict; ``detect.num_groups`` / ``detect.group_size`` set
how many patch tokens a scene gets for encoders that declare those as ``resolution_args``), puts
a :class:`~pc3d.eval.detection_head.CenterDetectionHead` on its level ``detect.level`` (oriented
heading bins when the data's boxes are oriented), trains both with the one Trainer into
``out_dir`` and evaluates the final model on the val scenes. Scenes reach the encoder through the
one input adapter (:mod:`pc3d.encoders.inputs`: voxelisation and normals in the data loader); with
``data=grids`` (grids of scans with boxes) each sample is a whole grid, for a grid encoder. ``eval``
rebuilds the detector from a ``detect train`` run directory (its newest checkpoint) and only
evaluates. The val scenes are scored turned in place by ``detect.val_rotation`` degrees about z
(:meth:`~pc3d.data.detection_data.DetectionData.rotated_val`; multiples of 90 for axis-aligned boxes;
null = the data's ``val_rotation``: 90 for ScanNet scans, 0 for upright SUN RGB-D camera frames and
synthetic rooms), so scan numbers hold for a rescan in another orientation. Both write
``metrics.json`` and a bird's-eye PNG per scene for the first
``detect.bev_scenes`` val scenes (points grey, ground truth green, detections above
``detect.bev_score`` red).

Metric keys (stable): ``mAP25``, ``mAP50``, ``recall25``, ``recall50``, ``AP25/<class>``,
``AP50/<class>``, ``recall25/<class>``, ``recall50/<class>`` (see :mod:`pc3d.eval.detection`),
``val_scenes``, ``val_rotation``, ``init`` ("pretrained" | "random"), ``steps``, ``train_final_loss`` (train only),
``wall_s``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pc3d.data.detection_data import DetectionData
from pc3d.data.detection_scenes import DetectionScene
from pc3d.data.grid_data import GridData
from pc3d.data.scene_data import SceneData
from pc3d.encoders.base import Encoder
from pc3d.encoders.inputs import EncoderInputDataset
from pc3d.errors import CheckpointError, ConfigError
from pc3d.eval.detection import SceneBoxes, SceneDetections, evaluate_detections
from pc3d.eval.detection_head import CenterDetectionHead, Detector
from pc3d.ops.boxes import box_corners, box_iou_3d, box_iou_3d_aligned
from pc3d.utils.atomic import atomic_write_png
from pc3d.utils.config import Setting, check_settings, to_plain
from pc3d.utils.device import move_to


def build_detector(encoder: Encoder, data: DetectionData, detect: dict[str, Any]) -> Detector:
    """The detection head on level ``detect["level"]`` of ``encoder``, sized from its spec."""
    level = int(detect.get("level", -1))
    channels = encoder.spec.level_channels
    if not -len(channels) <= level < len(channels):
        raise ConfigError(f"detect.level={level}: the encoder has {len(channels)} levels")
    head = CenterDetectionHead(int(channels[level]), len(data.class_names),
                               num_heading_bins=int(detect["num_heading_bins"]) if data.oriented else 0,
                               hidden_dim=int(detect["hidden_dim"]), focal_gamma=float(detect["focal_gamma"]),
                               focal_alpha=float(detect["focal_alpha"]))
    return Detector(encoder, head, level)


def detection_dataset(detector: Detector, data: DetectionData, split: str, augment: bool,
                      seed: int) -> EncoderInputDataset:
    """The scenes of ``split`` as training / evaluation samples of ``detector``'s encoder."""
    return EncoderInputDataset(data.dataset(split, augment=augment, seed=seed), detector.encoder.spec)


def detect_scenes(detector: Detector, data: DetectionData, detect: dict[str, Any], seed: int,
                  device: torch.device) -> list[SceneDetections]:
    """Detections for every val scene (unaugmented, ``data.num_points`` points each, seeded)."""
    dataset = detection_dataset(detector, data, "val", augment=False, seed=seed)
    detector = detector.to(device).eval()
    out = []
    for index in range(len(dataset)):
        inputs = move_to(dataset.collate([dataset[index]])["input"], device)
        scene = detector.detect(inputs, score_threshold=float(detect["score_threshold"]),
                                nms_iou=float(detect["nms_iou"]), max_boxes=int(detect["max_boxes"]))[0]
        out.append(SceneDetections(scene.boxes.cpu(), scene.scores.cpu(), scene.labels.cpu()))
    return out


def score(data: DetectionData, detections: list[SceneDetections]) -> dict[str, float]:
    truth = [SceneBoxes(torch.from_numpy(s.boxes), torch.from_numpy(s.labels)) for s in data.val]
    return evaluate_detections(detections, truth, iou_fn=box_iou_3d if data.oriented else box_iou_3d_aligned,
                               class_names=data.class_names)


def write_bev_png(path: Path, scene: DetectionScene, detections: SceneDetections, min_score: float,
                  size: int = 640) -> None:
    """Bird's-eye view: points grey, ground-truth boxes green, detections with score ≥ ``min_score`` red."""
    from PIL import Image, ImageDraw

    xy = scene.points[:, :2]
    lo, hi = xy.min(0) - 0.2, xy.max(0) + 0.2
    scale = (size - 1) / float((hi - lo).max())

    def pixel(points: np.ndarray) -> list[tuple[float, float]]:
        p = (points - lo) * scale
        return [(float(x), float(size - 1 - y)) for x, y in p]

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    step = max(1, len(xy) // 20000)
    for x, y in pixel(xy[::step]):
        draw.point((x, y), fill=(170, 170, 170))
    for boxes, colour in ((scene.boxes, (0, 160, 0)),
                          (detections.boxes[detections.scores >= min_score].numpy(), (220, 0, 0))):
        if len(boxes):
            for corners in box_corners(torch.from_numpy(np.asarray(boxes, dtype=np.float64)))[:, :4, :2].numpy():
                outline = pixel(corners)
                draw.line(outline + outline[:1], fill=colour, width=2)
    atomic_write_png(path, np.asarray(image))


def _report_bev(out: Path, data: DetectionData, detections: list[SceneDetections], detect: dict[str, Any]) -> None:
    from pc3d.train.run import is_main_process

    if not is_main_process():
        return
    for scene, found in list(zip(data.val, detections))[: int(detect["bev_scenes"])]:
        write_bev_png(out / f"bev_{scene.name}.png", scene, found, float(detect["bev_score"]))


def token_overrides(config: dict[str, Any], detect: dict[str, Any]) -> dict[str, Any]:
    """``detect.num_groups`` / ``detect.group_size`` for encoders that declare them as ``resolution_args``."""
    from pc3d.hub.weights import encoder_class

    cls = encoder_class(config)
    declared = cls.resolution_args if cls is not None and issubclass(cls, Encoder) else ()
    return {key: int(detect[key]) for key in ("num_groups", "group_size") if key in declared}


DETECT_SETTINGS = {"num_groups": Setting(int, 1), "group_size": Setting(int, 1), "level": Setting(int),
                   "hidden_dim": Setting(int, 1), "num_heading_bins": Setting(int, 1),
                   "focal_gamma": Setting(float, 0.0), "focal_alpha": Setting(float, -1.0, 1.0),
                   "score_threshold": Setting(float, 0.0, 1.0, open_high=True),
                   "nms_iou": Setting(float, 0.0, 1.0, open_low=True), "max_boxes": Setting(int, 1),
                   "bev_scenes": Setting(int, 0), "bev_score": Setting(float, 0.0, 1.0),
                   "val_rotation": Setting(float, optional=True)}


def run_detect(mode: str, cfg) -> dict[str, Any]:
    """``mode``: ``train`` or ``eval`` (see module docstring); returns the flat metrics."""
    from pc3d.hub import build_encoder, encoder_config_from_checkpoint
    from pc3d.train import Trainer
    from pc3d.train.checkpoint import latest_checkpoint
    from pc3d.train.run import (check_run, check_run_settings, check_sample, downstream_encoder, finish_run, report, resolve_device, start_run,
                                trainer_config)
    from pc3d.utils.config import call_target, seed_everything

    started = time.perf_counter()
    detect = check_settings("detect", cfg.detect, DETECT_SETTINGS)
    check_run_settings(cfg)
    device = resolve_device(cfg.device)
    data = call_target(cfg.data, "data")
    if isinstance(data, (SceneData, GridData)):  # a scene or grid folder that also has boxes
        data = data.detection()
    if not isinstance(data, DetectionData):
        raise ConfigError(f"data: pc3d detect needs a detection dataset (synthetic_rooms, scannet, sunrgbd, "
                          f"grids of scans), got {type(data).__name__}")
    val_rotation = detect.get("val_rotation")
    val_rotation = data.val_rotation if val_rotation is None else float(val_rotation)
    data = data.rotated_val(val_rotation)
    seed_everything(cfg.seed)
    if mode == "eval":
        found = latest_checkpoint(cfg.checkpoint) if Path(str(cfg.checkpoint)).is_dir() else None
        if found is None:
            raise CheckpointError(f"checkpoint={cfg.checkpoint}: expected a `pc3d detect train` run directory "
                                  "with a readable checkpoint")
        state = found[1]
        stored = state.get("config") or {}
        if "detect" not in stored or "encoder" not in stored:
            raise CheckpointError(f"{found[0]}: not a `pc3d detect train` checkpoint (no detect/encoder config)")
        detect = {**stored["detect"], **{k: detect[k] for k in ("score_threshold", "nms_iou", "max_boxes",
                                                                 "bev_scenes", "bev_score", "val_rotation")}}
        from pc3d.hub.weights import architecture_config

        detector = build_detector(build_encoder(architecture_config(stored["encoder"])), data, detect)
        try:
            detector.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{found[0]}: detector weights do not fit this data's classes/heading "
                                  f"({str(exc).splitlines()[0]})") from exc
        init, fit = str(stored.get("init", "unknown")), {"steps": int(state["step"])}
        out = start_run(cfg, resumable=False)
    else:
        # patch tokens per scene are a detect setting for point-token encoders; voxel encoders keep theirs
        source = (to_plain(cfg.encoder) if str(cfg.checkpoint) == "random"
                  else encoder_config_from_checkpoint(cfg.checkpoint))
        overrides = {**to_plain(cfg.get("checkpoint_overrides") or {}), **token_overrides(source, detect)}
        encoder, encoder_config, init = downstream_encoder(cfg, overrides)
        detector = build_detector(encoder, data, detect)
        run_config = {**to_plain(cfg), "encoder": encoder_config, "init": init}
        run_state = check_run(run_config)
        train_set = detection_dataset(detector, data, "train", bool(cfg.augment), int(cfg.seed))
        check_sample(encoder, train_set.dataset[0])
        trainer = Trainer(detector, train_set, trainer_config(cfg), cfg.out_dir, run_config=run_config)
        out = start_run(run_config, run_state, step=trainer.step)
        fit = trainer.fit()
    detections = detect_scenes(detector, data, detect, cfg.seed, device)
    metrics: dict[str, Any] = {"init": init, **score(data, detections), "val_scenes": len(data.val),
                               "val_rotation": val_rotation, "steps": fit["steps"]}
    if "final_loss" in fit:
        metrics["train_final_loss"] = fit["final_loss"]
    _report_bev(out, data, detections, detect)
    metrics["wall_s"] = time.perf_counter() - started
    finish_run(out, metrics)
    report(f"detect {mode} ({init}, {len(data.val)} val scenes): mAP@0.25 {metrics['mAP25']:.4f}, "
           f"mAP@0.5 {metrics['mAP50']:.4f} → {out}")
    return metrics
