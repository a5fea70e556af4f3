"""Detection head: targets round-trip through decoding to the ground truth, gradients flow, loss falls."""

import math

import numpy as np
import pytest
import torch

from pc3d.data.synthetic_rooms import ROOM_CLASSES, generate_room
from pc3d.encoders import PointViT
from pc3d.encoders.base import FeatureLevel
from pc3d.encoders.inputs import encoder_input
from pc3d.eval.detection import SceneBoxes, evaluate_detections
from pc3d.eval.detection_head import (CenterDetectionHead, Detector, assign_targets, bin_to_heading,
                                      heading_to_bin)
from pc3d.ops.boxes import box_iou_3d


def test_heading_bins_round_trip():
    yaw = torch.linspace(-math.pi, math.pi - 1e-6, 1001, dtype=torch.float64)
    bins, residuals = heading_to_bin(yaw, 12)
    assert bins.min() == 0 and bins.max() == 11 and residuals.abs().max() <= 0.5 + 1e-9
    assert torch.allclose(bin_to_heading(bins, residuals, 12), yaw, atol=1e-9)


def _room_level(room, tokens=600, seed=0):
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(room.points), tokens, replace=False)
    coords = torch.from_numpy(room.points[pick]).double()[None]
    return FeatureLevel(features=torch.zeros(1, tokens, 8, dtype=torch.float64), coords=coords)


def test_perfect_outputs_decode_to_the_ground_truth_with_map_one():
    room = generate_room(1, seed=4)
    level = _room_level(room, tokens=3000)
    boxes = torch.from_numpy(room.boxes).double()[None]
    labels = torch.from_numpy(room.labels)[None]
    head = CenterDetectionHead(8, len(ROOM_CLASSES), num_heading_bins=12)
    targets = assign_targets(level, boxes, labels, 12)
    positive = targets.box_index >= 0
    assert set(targets.box_index[positive].tolist()) == set(range(len(room.boxes)))  # every box has tokens
    big = 20.0
    outputs = {
        "objectness": torch.where(positive, big, -big).double(),
        "class_logits": torch.nn.functional.one_hot(targets.labels.clamp_min(0), len(ROOM_CLASSES)).double() * big,
        "offsets": targets.offsets, "log_sizes": targets.log_sizes,
        "heading_logits": torch.nn.functional.one_hot(targets.heading_bins, 12).double() * big,
        "heading_residuals": targets.heading_residuals[..., None].expand(-1, -1, 12).clone(),
    }
    detections = head.decode(outputs, level, score_threshold=0.5, nms_iou=0.25)[0]
    assert len(detections.boxes) == len(room.boxes)
    iou = box_iou_3d(detections.boxes.double(), boxes[0])
    assert (iou.max(dim=1).values > 0.999).all()
    metrics = evaluate_detections([detections], [SceneBoxes(boxes[0].float(), labels[0])], iou_fn=box_iou_3d,
                                  class_names=ROOM_CLASSES)
    assert metrics["mAP50"] == 1.0 and metrics["recall50"] == 1.0


def _batch(rooms, num_points=2048, seed=0, spec=None):
    """Scenes of ``rooms`` as a detection batch; ``input`` is what an encoder with ``spec`` takes
    (default: a point encoder's, the points themselves)."""
    rng = np.random.default_rng(seed)
    points = np.stack([r.points[rng.choice(len(r.points), num_points, replace=False)] for r in rooms])
    k = max(len(r.boxes) for r in rooms)
    gt_boxes = torch.zeros(len(rooms), k, 7)
    gt_labels = torch.full((len(rooms), k), -1, dtype=torch.long)
    for i, r in enumerate(rooms):
        gt_boxes[i, :len(r.boxes)] = torch.from_numpy(r.boxes)
        gt_labels[i, :len(r.boxes)] = torch.from_numpy(r.labels)
    samples = [{"points": torch.from_numpy(p)} for p in points]
    inputs = torch.from_numpy(points) if spec is None else encoder_input(spec, samples)
    return {"points": torch.from_numpy(points), "gt_boxes": gt_boxes, "gt_labels": gt_labels, "input": inputs}


def _detector():
    torch.manual_seed(0)
    encoder = PointViT(embed_dim=64, depth=2, num_heads=4, drop_path_rate=0.0, num_groups=128, group_size=16)
    return Detector(encoder, CenterDetectionHead(64, len(ROOM_CLASSES), num_heading_bins=12, hidden_dim=64))


def test_gradients_reach_encoder_and_every_head_output():
    detector = _detector()
    losses = detector(_batch([generate_room(0, seed=5), generate_room(1, seed=5)]))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["class"] > 0
    losses["loss"].backward()
    for name in ("encoder.patch_embed.conv1a.weight", "encoder.blocks.blocks.0.attn.qkv.weight",
                 "head.objectness.weight", "head.classes.weight", "head.box.weight", "head.heading.weight"):
        grad = dict(detector.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_loss_falls_when_fitting_two_rooms():
    detector = _detector()
    batch = _batch([generate_room(0, seed=6), generate_room(1, seed=6)])
    optimizer = torch.optim.AdamW(detector.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        loss = detector(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:5]), history
    detections = detector.eval().detect(batch["input"])
    assert len(detections) == 2 and all(d.boxes.shape[1] == 7 for d in detections)


def test_sparse_unet_detector_reads_voxel_levels_in_the_scene_frame():
    from pc3d.encoders import SparseUNet
    from pc3d.eval.detect import build_detector

    encoder = SparseUNet(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), blocks=(1,) * 5,
                         dec_blocks=(1,) * 4, voxel_size=0.1, stem_kernel=3, window_size=32, head_dim=8)
    rooms = [generate_room(0, seed=5), generate_room(1, seed=5)]
    batch = _batch(rooms, spec=encoder.spec)  # voxelised with grey colour and PCA normals, in the data loader
    level = encoder(batch["input"]).levels[2]
    assert level.stride == pytest.approx(0.4) and level.features.shape[-1] == 16
    for b in range(2):  # voxel centres sit inside the scene's bounds, within half a stride
        centres = level.coords[b][level.valid[b]]
        low, high = batch["points"][b].amin(0), batch["points"][b].amax(0)
        assert (centres >= low - 0.2).all() and (centres <= high + 0.2).all()
    data = type("Data", (), {"class_names": ROOM_CLASSES, "oriented": True})()
    detector = build_detector(encoder, data, {"level": 2, "num_heading_bins": 12, "hidden_dim": 32,
                                              "focal_gamma": 2.0, "focal_alpha": 0.25})
    losses = detector(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert detector.encoder.stem[0].weight.grad.abs().sum() > 0
    detections = detector.eval().detect(batch["input"])
    assert len(detections) == 2
