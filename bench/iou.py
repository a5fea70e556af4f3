"""Oriented 3D IoU and 3D NMS for 1k × 1k boxes: pc3d vs the peers installed in this environment.

    python bench/iou.py [--boxes 1000] [--span 10] [--repeats 3] [--threads 2]

Boxes: centres uniform in a span × span × 3 m room, sizes 0.2–1.7 m, yaw uniform — a
detector's raw output over a scene. Times (best of ``--repeats``) for pc3d's
``box_iou_3d`` (oriented), ``box_iou_3d_aligned`` and ``nms_3d``; peers when importable:
shapely 2 (vectorised GEOS polygon intersection × height overlap), pytorch3d
``box3d_overlap``, mmcv ``box_iou_rotated`` (bird's-eye IoU only, for scale). Also prints
the max abs difference between pc3d and each exact peer.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def random_boxes(n: int, span: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([span, span, 3.0], dtype=torch.float64)
    sizes = torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.5 + 0.2
    yaws = (torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    return torch.cat([centres, sizes, yaws], dim=1)


def best_time(fn, repeats: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def shapely_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import numpy as np
    import shapely

    from pc3d.ops.boxes import box_corners

    def polygons(boxes):
        return shapely.polygons(box_corners(boxes)[:, :4, :2].numpy())

    pa, pb = polygons(a), polygons(b)
    area = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    za, zb = a[:, 2].numpy(), b[:, 2].numpy()
    ha, hb = a[:, 5].numpy(), b[:, 5].numpy()
    height = np.clip(np.minimum((za + ha / 2)[:, None], (zb + hb / 2)[None])
                     - np.maximum((za - ha / 2)[:, None], (zb - hb / 2)[None]), 0, None)
    inter = area * height
    vol_a, vol_b = a[:, 3:6].prod(1).numpy(), b[:, 3:6].prod(1).numpy()
    return torch.from_numpy(inter / (vol_a[:, None] + vol_b[None] - inter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--span", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pc3d.ops.boxes import box_iou_3d, box_iou_3d_aligned, nms_3d

    a, b = random_boxes(args.boxes, args.span, 0), random_boxes(args.boxes, args.span, 1)
    scores = torch.rand(args.boxes, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result: dict = {"boxes": args.boxes, "span_m": args.span, "threads": args.threads, "torch": torch.__version__}
    t, iou = best_time(lambda: box_iou_3d(a, b), args.repeats)
    result["pc3d_box_iou_3d_s"] = t
    result["overlapping_pairs"] = float((iou > 0).double().mean())
    result["pc3d_box_iou_3d_aligned_s"] = best_time(lambda: box_iou_3d_aligned(a, b), args.repeats)[0]
    t, keep = best_time(lambda: nms_3d(a, scores, 0.25), args.repeats)
    result["pc3d_nms_3d_s"], result["nms_kept"] = t, int(keep.numel())

    try:
        import shapely

        t, reference = best_time(lambda: shapely_iou(a, b), args.repeats)
        result[f"shapely_{shapely.__version__}_s"] = t
        result["max_abs_diff_vs_shapely"] = float((reference - iou).abs().max())
        result["speedup_vs_shapely"] = t / result["pc3d_box_iou_3d_s"]
    except ImportError:
        result["shapely"] = "not installed"
    try:
        from pytorch3d.ops import box3d_overlap

        from pc3d.ops.boxes import box_corners

        # pytorch3d wants its own corner order; (0..3 bottom ccw, 4..7 top) matches pc3d's.
        ca, cb = box_corners(a).float(), box_corners(b).float()
        t, (_, reference) = best_time(lambda: box3d_overlap(ca, cb), args.repeats)
        result["pytorch3d_box3d_overlap_s"] = t
        result["max_abs_diff_vs_pytorch3d"] = float((reference.double() - iou).abs().max())
    except ImportError:
        result["pytorch3d"] = "not installed"
    try:
        from mmcv.ops import box_iou_rotated

        bev_a = a[:, [0, 1, 3, 4, 6]].float()
        bev_b = b[:, [0, 1, 3, 4, 6]].float()
        result["mmcv_box_iou_rotated_bev_s"] = best_time(lambda: box_iou_rotated(bev_a, bev_b), args.repeats)[0]
    except ImportError:
        result["mmcv"] = "not installed"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
