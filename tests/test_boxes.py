"""3D boxes: corners, exact IoU (axis-aligned and oriented) against independent references, NMS."""

import math

import numpy as np
import pytest
import torch

from pc3d.ops.boxes import box_corners, box_iou_3d, box_iou_3d_aligned, nms_3d


def random_boxes(n, seed, span=4.0, yaw=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 3, generator=g, dtype=dtype) * span
    sizes = torch.rand(n, 3, generator=g, dtype=dtype) * 1.5 + 0.2
    yaws = (torch.rand(n, 1, generator=g, dtype=dtype) * 2 - 1) * math.pi if yaw else torch.zeros(n, 1, dtype=dtype)
    return torch.cat([centres, sizes, yaws], dim=1)


def aligned_iou_reference(a, b):
    """Pair-by-pair interval arithmetic in Python floats."""
    out = np.zeros((len(a), len(b)))
    for i, x in enumerate(a.tolist()):
        for j, y in enumerate(b.tolist()):
            inter = 1.0
            for d in range(3):
                lo = max(x[d] - x[d + 3] / 2, y[d] - y[d + 3] / 2)
                hi = min(x[d] + x[d + 3] / 2, y[d] + y[d + 3] / 2)
                inter *= max(0.0, hi - lo)
            union = x[3] * x[4] * x[5] + y[3] * y[4] * y[5] - inter
            out[i, j] = inter / union
    return out


def monte_carlo_iou(x, y, samples=400_000, seed=0):
    """Uniform samples in the joint bounding box, point-in-box tests in each box's own frame."""
    g = torch.Generator().manual_seed(seed)
    corners = box_corners(torch.stack([x, y]))
    lo, hi = corners.reshape(-1, 3).amin(0), corners.reshape(-1, 3).amax(0)
    points = lo + torch.rand(samples, 3, generator=g, dtype=torch.float64) * (hi - lo)

    def inside(box):
        d = points - box[:3]
        c, s = math.cos(box[6]), math.sin(box[6])
        local_x, local_y = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
        return (local_x.abs() <= box[3] / 2) & (local_y.abs() <= box[4] / 2) & (d[:, 2].abs() <= box[5] / 2)

    ia, ib = inside(x), inside(y)
    return ((ia & ib).sum() / (ia | ib).sum()).item()


def test_corners_of_an_unrotated_box_are_its_extremes():
    box = torch.tensor([[1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 0.0]])
    corners = box_corners(box)[0]
    assert torch.allclose(corners.amin(0), torch.tensor([0.0, 0.0, 0.0]))
    assert torch.allclose(corners.amax(0), torch.tensor([2.0, 4.0, 6.0]))
    turned = box_corners(torch.tensor([[0.0, 0.0, 0.0, 2.0, 1.0, 1.0, math.pi / 2]]))[0]
    assert torch.allclose(turned[:, 0].abs().amax(), torch.tensor(0.5)) and torch.allclose(turned[:, 1].abs().amax(),
                                                                                          torch.tensor(1.0))


def test_aligned_iou_matches_interval_reference():
    a, b = random_boxes(25, 1, yaw=False), random_boxes(20, 2, yaw=False)
    np.testing.assert_allclose(box_iou_3d_aligned(a, b).numpy(), aligned_iou_reference(a, b), atol=1e-12)


def test_oriented_iou_with_zero_yaw_is_the_aligned_iou():
    a, b = random_boxes(40, 3, yaw=False), random_boxes(30, 4, yaw=False)
    assert torch.allclose(box_iou_3d(a, b), box_iou_3d_aligned(a, b), atol=1e-12)


def test_oriented_iou_matches_monte_carlo():
    a, b = random_boxes(30, 5), random_boxes(30, 6)
    iou = box_iou_3d(a, b)
    pairs = [(i, j) for i in range(30) for j in range(30) if iou[i, j] > 0.05][:10]
    assert len(pairs) >= 8
    for i, j in pairs:  # 400k samples: standard error well below 0.005 at these IoUs
        assert abs(iou[i, j].item() - monte_carlo_iou(a[i], b[j])) < 0.006, (i, j)
    assert (iou >= 0).all() and (iou <= 1 + 1e-12).all()


def test_oriented_iou_is_symmetric_rotation_invariant_and_one_on_itself():
    a, b = random_boxes(20, 7), random_boxes(15, 8)
    iou = box_iou_3d(a, b)
    assert torch.allclose(iou, box_iou_3d(b, a).T, atol=1e-12)
    angle = 0.7
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                            dtype=torch.float64)

    def rotate(boxes):
        out = boxes.clone()
        out[:, :2] = boxes[:, :2] @ rotation.T + torch.tensor([5.0, -3.0], dtype=torch.float64)
        out[:, 6] = boxes[:, 6] + angle
        return out

    assert torch.allclose(box_iou_3d(rotate(a), rotate(b)), iou, atol=1e-10)
    assert torch.allclose(box_iou_3d(a, a).diagonal(), torch.ones(20, dtype=torch.float64), atol=1e-12)


def test_quarter_turn_with_swapped_sizes_is_the_same_box():
    box = torch.tensor([[0.0, 0.0, 0.0, 3.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    turned = torch.tensor([[0.0, 0.0, 0.0, 1.0, 3.0, 1.0, math.pi / 2]], dtype=torch.float64)
    assert box_iou_3d(box, turned).item() == pytest.approx(1.0, abs=1e-12)
    # a 45° square inside the unit square: area 0.5 of 1
    diamond = torch.tensor([[0.0, 0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5), 1.0, math.pi / 4]], dtype=torch.float64)
    unit = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert box_iou_3d(unit, diamond).item() == pytest.approx(0.5, abs=1e-12)


def test_disjoint_touching_and_nested_boxes():
    unit = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.3]], dtype=torch.float64)
    far = unit.clone()
    far[0, 0] = 5.0
    above = unit.clone()
    above[0, 2] = 1.0  # shares the top face: no volume in common
    inner = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.1]], dtype=torch.float64)
    assert box_iou_3d(unit, far).item() == 0.0
    assert box_iou_3d(unit, above).item() == 0.0
    assert box_iou_3d(unit, inner).item() == pytest.approx(0.125, abs=1e-12)


def test_float32_inputs_and_empty_sets():
    a, b = random_boxes(10, 9, dtype=torch.float32), random_boxes(8, 10, dtype=torch.float32)
    out = box_iou_3d(a, b)
    assert out.dtype == torch.float32 and out.shape == (10, 8)
    assert torch.allclose(out.double(), box_iou_3d(a.double(), b.double()), atol=1e-5)
    assert box_iou_3d(a[:0], b).shape == (0, 8)
    with pytest.raises(ValueError, match=r"boxes_b must be \(N, 7\)"):
        box_iou_3d(a, b[:, :6])


def nms_reference(boxes, scores, threshold, iou_fn):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    iou = iou_fn(boxes, boxes)
    keep = []
    for i in order:
        if all(iou[i, k] <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("aligned", [False, True])
def test_nms_matches_the_greedy_reference(aligned):
    boxes, scores = random_boxes(120, 11), torch.rand(120, generator=torch.Generator().manual_seed(12))
    scores[5] = scores[6]  # a tie: the lower index goes first
    iou_fn = box_iou_3d_aligned if aligned else box_iou_3d
    for threshold in (0.1, 0.25, 0.5):
        keep = nms_3d(boxes, scores, threshold, aligned=aligned)
        assert keep.tolist() == nms_reference(boxes, scores, threshold, iou_fn)
    assert 0 < len(nms_3d(boxes, scores, 0.1, aligned=aligned)) < 120


def test_nms_never_suppresses_across_labels():
    boxes = random_boxes(1, 13).repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_3d(boxes, scores, 0.5).tolist() == [0]
    assert nms_3d(boxes, scores, 0.5, labels=torch.tensor([0, 1, 0, 2])).tolist() == [0, 1, 3]
    assert nms_3d(boxes[:0], scores[:0], 0.5).numel() == 0


def test_points_in_boxes_matches_the_corner_frame():
    from pc3d.ops.boxes import points_in_boxes

    box = torch.tensor([[1.0, 2.0, 0.5, 2.0, 1.0, 1.0, math.pi / 2]], dtype=torch.float64)  # dx now along y
    points = torch.tensor([[1.0, 2.9, 0.5], [1.9, 2.0, 0.5], [1.0, 2.0, 1.1]], dtype=torch.float64)
    assert points_in_boxes(points, box)[:, 0].tolist() == [True, False, False]
    corners = box_corners(box)[0]
    assert points_in_boxes(corners * 0.999 + box[0, :3] * 0.001, box).all()
