"""The encoder output interface shared by every encoder, method and evaluator.

Token encoders (the point-ViT, the 3D Swin) fill ``mask=None``; sparse encoders
with a different number of voxels per sample pad to the longest sample and set
``mask``. Consumers that want a flat list of points/voxels call
:meth:`FeatureLevel.flatten`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FeatureLevel:
    """One resolution level of an encoder's output.

    Attributes:
        features: ``(B, T, C)`` token / voxel features.
        coords: ``(B, T, 3)`` position of each token in the input frame.
        mask: ``(B, T)`` bool, True where a token exists; ``None`` means all are real.
        stride: token spacing in input units (voxel size × 2^level); 0 for
            unstructured point tokens.
    """

    features: Tensor
    coords: Tensor
    mask: Tensor | None = None
    stride: float = 0.0

    def flatten(self) -> tuple[Tensor, Tensor, Tensor]:
        """Real tokens only: ``features (M, C)``, ``coords (M, 3)``, ``batch_index (M,)``."""
        batch, tokens, _ = self.features.shape
        batch_index = torch.arange(batch, device=self.features.device).repeat_interleave(tokens)
        features = self.features.reshape(batch * tokens, -1)
        coords = self.coords.reshape(batch * tokens, 3)
        if self.mask is None:
            return features, coords, batch_index
        keep = self.mask.reshape(-1)
        return features[keep], coords[keep], batch_index[keep]


@dataclass
class EncoderOutput:
    """What every pc3d encoder returns.

    Attributes:
        levels: feature levels, finest (or earliest layer) first; ``levels[-1]`` is
            the encoder's final representation.
        global_feature: ``(B, C_g)`` pooled feature of the whole input.
        cls_feature: ``(B, C)`` final class-token output of encoders that have one, else None.
    """

    levels: list[FeatureLevel]
    global_feature: Tensor
    cls_feature: Tensor | None = None


def max_mean_pool(features: Tensor, mask: Tensor | None = None) -> Tensor:
    """Concatenate max- and mean-pooling over tokens.

    Args:
        features: ``(B, T, C)``.
        mask: ``(B, T)`` bool or None.
    Returns:
        ``(B, 2C)`` = [max ‖ mean].
    """
    if mask is None:
        return torch.cat([features.amax(dim=1), features.mean(dim=1)], dim=-1)
    weights = mask.unsqueeze(-1).to(features.dtype)
    masked = features.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    mean = (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return torch.cat([masked.amax(dim=1), mean], dim=-1)
