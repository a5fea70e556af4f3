"""Structural similarity (SSIM, Wang et al. 2004) of images, differentiable — the image term of 3DGS fitting.

Gaussian window of ``window_size`` pixels (σ = 1.5), ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` with data range
``L = 1``, statistics per channel, valid (unpadded) windows only, averaged over windows and channels: the
3DGS / scikit-image definition (scikit-image with ``gaussian_weights=True, use_sample_covariance=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _window(window_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    offsets = torch.arange(window_size, dtype=dtype, device=device) - (window_size - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * sigma * sigma))
    return weights / weights.sum()


def ssim(a: Tensor, b: Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of ``a`` and ``b`` ``(..., H, W, C)`` (channels last, as rendered images are): a 0-d tensor.

    Leading dimensions are a batch; images must be at least ``window_size`` pixels on each side.
    """
    if a.shape != b.shape or a.dim() < 3:
        raise ValueError(f"ssim: expected two images (..., H, W, C) of one shape, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    height, width, channels = a.shape[-3:]
    if min(height, width) < window_size:
        raise ValueError(f"ssim: images of {height}x{width} are smaller than the {window_size}-pixel window")
    x = torch.stack([a.reshape(-1, height, width, channels), b.reshape(-1, height, width, channels)])
    x = x.permute(0, 1, 4, 2, 3).reshape(2, -1, 1, height, width)  # (2, B·C, 1, H, W)
    g = _window(window_size, sigma, x.dtype, x.device)
    stats = torch.cat([x[0], x[1], x[0] * x[0], x[1] * x[1], x[0] * x[1]])  # (5·B·C, 1, H, W)
    stats = F.conv2d(F.conv2d(stats, g.reshape(1, 1, -1, 1)), g.reshape(1, 1, 1, -1))
    mu_a, mu_b, aa, bb, ab = stats.chunk(5)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return value.mean()
