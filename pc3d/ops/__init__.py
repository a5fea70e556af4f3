"""Geometry ops: farthest point sampling, kNN, ball query, Chamfer-L2, the batched gather, 3D boxes,
the 3D Gaussian rasterizer.

Pure torch, batched ``(B, N, 3)``, memory-bounded by chunking; optional accelerators
(pytorch3d, torch-cluster, gsplat) are picked by :func:`pc3d.ops.backends.resolve_backend`.
"""

from pc3d.ops.backends import resolve_backend
from pc3d.ops.boxes import box_corners, box_iou_3d, box_iou_3d_aligned, nms_3d, points_in_boxes
from pc3d.ops.chamfer import chamfer_l2
from pc3d.ops.neighbors import CHUNK_FLOATS, ball_query, gather_points, knn
from pc3d.ops.rasterize import RenderedImages, rasterize_gaussians
from pc3d.ops.sampling import farthest_point_sample

__all__ = [
    "CHUNK_FLOATS",
    "ball_query",
    "box_corners",
    "box_iou_3d",
    "box_iou_3d_aligned",
    "chamfer_l2",
    "farthest_point_sample",
    "gather_points",
    "knn",
    "nms_3d",
    "points_in_boxes",
    "rasterize_gaussians",
    "RenderedImages",
    "resolve_backend",
]
