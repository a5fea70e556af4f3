"""The embedded detection rooms: boxes hold their objects, never overlap, and depend only on (seed, index)."""

import math

import numpy as np
import torch

from pc3d.data.synthetic_rooms import ROOM_CLASSES, generate_room
from pc3d.ops.boxes import box_iou_3d


def inside(box, points, margin=0.02):
    d = points.astype(np.float64) - box[:3]
    c, s = math.cos(box[6]), math.sin(box[6])
    lx, ly = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    return (np.abs(lx) <= box[3] / 2 + margin) & (np.abs(ly) <= box[4] / 2 + margin) & (np.abs(d[:, 2]) <= box[5] / 2 + margin)


def test_rooms_are_seeded_and_hold_several_classes():
    a, b = generate_room(3, seed=1), generate_room(3, seed=1)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(generate_room(4, seed=1).boxes, a.boxes)
    seen = set()
    for index in range(12):
        room = generate_room(index, seed=0)
        assert 3 <= len(room.boxes) <= 8 and room.points.dtype == np.float32 and room.points.shape[1] == 3
        seen |= set(room.labels.tolist())
    assert len(seen) >= 5 and len(ROOM_CLASSES) >= 5


def test_boxes_are_tight_on_their_objects_and_disjoint():
    room = generate_room(0, seed=2)
    iou = box_iou_3d(torch.from_numpy(room.boxes).double(), torch.from_numpy(room.boxes).double())
    assert torch.allclose(iou, torch.eye(len(room.boxes), dtype=torch.float64), atol=1e-9)
    assert (room.boxes[:, 2] == room.boxes[:, 5] / 2).all()  # standing on the floor
    for box in room.boxes:
        held = inside(box, room.points)
        assert held.sum() >= 64  # the object's own surface points
        # a tight box: shrinking it by 15 % loses points (the object reaches the faces)
        small = box.copy()
        small[3:6] *= 0.85
        assert inside(small, room.points, margin=0.0).sum() < held.sum()
