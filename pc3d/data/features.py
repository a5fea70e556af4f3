"""Per-point input channels of voxel and grid encoders (what ``EncoderSpec.input_features`` names)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

#: Quantities an input channel can hold, with their widths, concatenated in the order named:
#: ``color`` RGB mapped to [-1, 1] (MSM's input), ``rgb`` RGB in [0, 1] (radiance grids),
#: ``normal`` unit normals, ``alpha`` occupancy / opacity in [0, 1].
INPUT_FEATURES = {"color": 3, "rgb": 3, "normal": 3, "alpha": 1}


def point_input_features(names: Sequence[str], points: Tensor, colors: Tensor | None = None,
                         normals: Tensor | None = None) -> Tensor:
    """``(N, C)`` float32 input channels ``names`` of every point.

    Args:
        points: ``(N, 3)``; colors: ``(N, 3)`` in [0, 1] or None (then ``color`` is a neutral 0,
            ``rgb`` a 0.5 grey); normals: ``(N, 3)`` or None (then PCA normals are estimated,
            :func:`pc3d.ops.normals.estimate_normals`). ``alpha`` is 1 (the point is there).
    """
    parts = []
    for name in names:
        if name == "color":
            parts.append(colors * 2.0 - 1.0 if colors is not None else points.new_zeros(len(points), 3))
        elif name == "rgb":
            parts.append(colors if colors is not None else points.new_full((len(points), 3), 0.5))
        elif name == "normal":
            if normals is None:
                from pc3d.ops.normals import estimate_normals

                normals = torch.from_numpy(estimate_normals(points.detach().cpu().numpy())).to(points)
            parts.append(normals)
        elif name == "alpha":
            parts.append(points.new_ones(len(points), 1))
        else:
            raise ValueError(f"unknown input feature {name!r}; known: {sorted(INPUT_FEATURES)}")
    return torch.cat(parts, dim=1).float()
