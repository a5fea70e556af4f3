"""3D boxes: corners, exact 3D IoU (axis-aligned and yaw-oriented) and 3D NMS, in torch.

Box format everywhere in pc3d: ``(..., 7)`` = ``[cx, cy, cz, dx, dy, dz, yaw]`` — the
gravity centre, the full sizes along the box's own x / y / z axes, and the rotation about
+z (radians, counter-clockwise seen from above; ``yaw = 0`` puts ``dx`` along +x). Z is up.
Axis-aligned boxes are the same format with ``yaw`` ignored (ScanNet); oriented boxes use it
(SUN RGB-D).

Oriented IoU is exact: the bird's-eye intersection of two rectangles is a convex polygon
whose vertices are the corners of each rectangle inside the other plus the crossings of
their edges; its area comes from sorting those points by angle about their mean (shoelace),
multiplied by the overlap of the vertical extents. It runs batched over the pairs whose
bird's-eye bounding rectangles and heights overlap, in float64, in chunks of bounded memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pc3d.ops.neighbors import CHUNK_FLOATS

# Points of the candidate set per pair: 4 + 4 corners, 16 edge crossings.
_CANDIDATES = 24


def _check_boxes(name: str, boxes: Tensor) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 7:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be (N, 7) [cx, cy, cz, dx, dy, dz, yaw] boxes, got {shape}")
    if not boxes.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {boxes.dtype}")
    return boxes


def box_corners(boxes: Tensor) -> Tensor:
    """``boxes (..., 7)`` → corners ``(..., 8, 3)``: bottom face counter-clockwise from (-dx, -dy)/2, then the top face."""
    half = boxes[..., 3:6] / 2
    signs = boxes.new_tensor([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                              [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]])
    local = signs * half.unsqueeze(-2)  # (..., 8, 3)
    cos, sin = torch.cos(boxes[..., 6]).unsqueeze(-1), torch.sin(boxes[..., 6]).unsqueeze(-1)
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([x, y, local[..., 2]], dim=-1) + boxes[..., None, :3]


def points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """``points (P, 3)``, ``boxes (K, 7)`` → ``(P, K)`` bool, True where the point lies in the (oriented) box."""
    d = points[:, None, :] - boxes[None, :, :3]
    c, s = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    local_x = d[..., 0] * c + d[..., 1] * s
    local_y = -d[..., 0] * s + d[..., 1] * c
    half = boxes[None, :, 3:6] / 2
    return (local_x.abs() <= half[..., 0]) & (local_y.abs() <= half[..., 1]) & (d[..., 2].abs() <= half[..., 2])


def _volumes(boxes: Tensor) -> Tensor:
    return boxes[:, 3:6].clamp_min(0).prod(dim=-1)


def _height_overlap(a: Tensor, b: Tensor) -> Tensor:
    """``(N, M)`` overlap of the vertical extents."""
    a_lo, a_hi = a[:, 2] - a[:, 5] / 2, a[:, 2] + a[:, 5] / 2
    b_lo, b_hi = b[:, 2] - b[:, 5] / 2, b[:, 2] + b[:, 5] / 2
    return (torch.minimum(a_hi[:, None], b_hi[None]) - torch.maximum(a_lo[:, None], b_lo[None])).clamp_min(0)


def _iou_from_intersection(a: Tensor, b: Tensor, intersection: Tensor) -> Tensor:
    union = _volumes(a)[:, None] + _volumes(b)[None] - intersection
    return torch.where(union > 0, intersection / union.clamp_min(torch.finfo(union.dtype).tiny),
                       torch.zeros_like(union))


def box_iou_3d_aligned(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Axis-aligned 3D IoU (``yaw`` ignored): ``(N, 7), (M, 7)`` → ``(N, M)``."""
    a, b = _check_boxes("boxes_a", boxes_a), _check_boxes("boxes_b", boxes_b)
    lo = torch.maximum((a[:, None, :3] - a[:, None, 3:6] / 2), (b[None, :, :3] - b[None, :, 3:6] / 2))
    hi = torch.minimum((a[:, None, :3] + a[:, None, 3:6] / 2), (b[None, :, :3] + b[None, :, 3:6] / 2))
    intersection = (hi - lo).clamp_min(0).prod(dim=-1)
    return _iou_from_intersection(a, b, intersection)


def _bev_corners(boxes: Tensor) -> Tensor:
    """``(N, 7)`` → the counter-clockwise bird's-eye rectangle ``(N, 4, 2)``."""
    return box_corners(boxes)[:, :4, :2]


def _cross(u: Tensor, v: Tensor) -> Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _inside(points: Tensor, polygon: Tensor, eps: float) -> Tensor:
    """``points (P, K, 2)`` inside the counter-clockwise convex ``polygon (P, 4, 2)`` (boundary included): ``(P, K)``."""
    edges = polygon.roll(-1, dims=1) - polygon  # (P, 4, 2)
    rel = points[:, :, None, :] - polygon[:, None, :, :]  # (P, K, 4, 2)
    side = _cross(edges[:, None], rel)  # (P, K, 4)
    scale = edges.norm(dim=-1)[:, None].clamp_min(1e-300)
    return (side >= -eps * scale).all(dim=-1)


def _edge_crossings(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Crossings of every edge of ``a (P, 4, 2)`` with every edge of ``b``: points ``(P, 16, 2)``, valid ``(P, 16)``."""
    p, r = a[:, :, None, :], (a.roll(-1, dims=1) - a)[:, :, None, :]  # (P, 4, 1, 2)
    q, s = b[:, None, :, :], (b.roll(-1, dims=1) - b)[:, None, :, :]  # (P, 1, 4, 2)
    denominator = _cross(r, s)  # (P, 4, 4)
    qp = q - p
    safe = torch.where(denominator.abs() > 0, denominator, torch.ones_like(denominator))
    t = _cross(qp, s) / safe
    u = _cross(qp, r) / safe
    valid = (denominator.abs() > 1e-12 * (r.norm(dim=-1) * s.norm(dim=-1))) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    points = p + t[..., None] * r
    return points.reshape(a.shape[0], 16, 2), valid.reshape(a.shape[0], 16)


def _convex_area(points: Tensor, valid: Tensor) -> Tensor:
    """Area of the convex polygon spanned by the valid ``points (P, K, 2)``; 0 with fewer than 3."""
    count = valid.sum(dim=1)
    # Invalid slots repeat a valid point: equal angles keep them next to it, adding zero area.
    first = valid.float().argmax(dim=1)
    filler = points[torch.arange(points.shape[0], device=points.device), first]  # (P, 2)
    points = torch.where(valid[..., None], points, filler[:, None, :])
    weights = valid.to(points.dtype)
    centre = (points * weights[..., None]).sum(dim=1) / count.clamp_min(1)[:, None].to(points.dtype)
    rel = points - centre[:, None, :]
    order = torch.atan2(rel[..., 1], rel[..., 0]).argsort(dim=1)
    ordered = torch.gather(rel, 1, order[..., None].expand_as(rel))
    area = 0.5 * _cross(ordered, ordered.roll(-1, dims=1)).sum(dim=1)
    return torch.where(count >= 3, area.abs(), torch.zeros_like(area))


def _bev_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Intersection areas of the pairs of rectangles ``a (P, 4, 2)``, ``b (P, 4, 2)`` → ``(P,)``."""
    extent = torch.maximum(a.abs().amax(dim=(1, 2)), b.abs().amax(dim=(1, 2))).clamp_min(1.0)
    eps = 1e-9 * float(extent.max()) if extent.numel() else 1e-9
    a_in_b = _inside(a, b, eps)
    b_in_a = _inside(b, a, eps)
    crossings, crossing_valid = _edge_crossings(a, b)
    points = torch.cat([a, b, crossings], dim=1)
    valid = torch.cat([a_in_b, b_in_a, crossing_valid], dim=1)
    return _convex_area(points, valid)


def box_iou_3d(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Exact yaw-oriented 3D IoU: ``(N, 7), (M, 7)`` → ``(N, M)`` in the input dtype.

    Bird's-eye polygon intersection × vertical overlap, computed in float64 for the pairs
    whose bounding rectangles overlap, in chunks of bounded memory.
    """
    a, b = _check_boxes("boxes_a", boxes_a), _check_boxes("boxes_b", boxes_b)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return a.new_zeros((n, m), dtype=out_dtype)
    a64, b64 = a.double(), b.double()
    # Shift to a common origin: keeps the float64 cancellation error relative to box sizes.
    origin = torch.cat([a64[:, :2], b64[:, :2]]).mean(dim=0)
    a64 = torch.cat([a64[:, :2] - origin, a64[:, 2:]], dim=1)
    b64 = torch.cat([b64[:, :2] - origin, b64[:, 2:]], dim=1)
    bev_a, bev_b = _bev_corners(a64), _bev_corners(b64)
    heights = _height_overlap(a64, b64)  # (N, M)
    # Only pairs whose bird's-eye bounding rectangles and vertical extents overlap can intersect.
    lo_a, hi_a = bev_a.amin(dim=1), bev_a.amax(dim=1)
    lo_b, hi_b = bev_b.amin(dim=1), bev_b.amax(dim=1)
    touching = ((torch.minimum(hi_a[:, None], hi_b[None]) - torch.maximum(lo_a[:, None], lo_b[None])) > 0).all(-1)
    rows, cols = torch.nonzero(touching & (heights > 0), as_tuple=True)
    intersection = torch.zeros_like(heights)
    per_chunk = max(1, CHUNK_FLOATS // (_CANDIDATES * 2 * 8))
    for start in range(0, rows.numel(), per_chunk):
        r, c = rows[start:start + per_chunk], cols[start:start + per_chunk]
        intersection[r, c] = _bev_intersection(bev_a[r], bev_b[c]) * heights[r, c]
    return _iou_from_intersection(a64, b64, intersection).to(out_dtype)


def nms_3d(boxes: Tensor, scores: Tensor, iou_threshold: float, labels: Tensor | None = None,
           aligned: bool = False) -> Tensor:
    """Greedy 3D non-maximum suppression.

    Args:
        boxes: ``(N, 7)``; scores: ``(N,)``; labels: optional ``(N,)`` — boxes of different
            labels never suppress each other.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is
            greater than this.
        aligned: use :func:`box_iou_3d_aligned` (yaw ignored) instead of :func:`box_iou_3d`.
    Returns:
        indices of the kept boxes ``(K,)`` long, by descending score (ties: lower index first).
    """
    _check_boxes("boxes", boxes)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if labels is not None and labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels must be ({boxes.shape[0]},), got {tuple(labels.shape)}")
    if not math.isfinite(iou_threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    iou = (box_iou_3d_aligned if aligned else box_iou_3d)(ordered, ordered)
    overlapping = iou > iou_threshold
    if labels is not None:
        ordered_labels = labels[order]
        overlapping &= ordered_labels[:, None] == ordered_labels[None, :]
    overlapping = overlapping.cpu()
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    keep = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlapping[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]
