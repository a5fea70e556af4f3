"""Point-ViT: Point-MAE's patch tokenizer + a standard pre-norm ViT over point patches.

Tokenizer (Pang et al., ECCV 2022): farthest-point sampling picks ``num_groups``
centres, kNN takes ``group_size`` points per centre, each patch is expressed
relative to its centre and embedded by a mini-PointNet
(3→128→256, max-pool, concat the pooled feature to every point → 512→512→C, max-pool).

Departure from the reference code, same function: the second PointNet layer sees
``[global ‖ local]``; its weight is split so the global half is applied once per
patch instead of once per point (27 % fewer FLOPs in the tokenizer, identical
parameters and identical output up to float rounding). The weights keep the
reference layout, so reference checkpoints map one-to-one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.encoders.base import Encoder, EncoderOutput, EncoderSpec, FeatureLevel, max_mean_pool
from pc3d.encoders.layers import PositionalBlocks, init_vit_weights, positional_mlp
from pc3d.ops import farthest_point_sample, gather_points, knn


def group_points(points: Tensor, num_groups: int, group_size: int) -> tuple[Tensor, Tensor]:
    """FPS centres + kNN patches.

    Args:
        points: ``(B, N, 3)``.
    Returns:
        neighborhoods ``(B, G, K, 3)`` relative to their centre, centres ``(B, G, 3)``.
    """
    center_idx = farthest_point_sample(points, num_groups)
    centers = gather_points(points, center_idx)
    _, patch_idx = knn(centers, points, group_size)
    neighborhoods = gather_points(points, patch_idx) - centers.unsqueeze(2)
    return neighborhoods, centers


class PatchEmbed(nn.Module):
    """Mini-PointNet: one token per point patch.

    Input ``(B, G, K, 3)`` → output ``(B, G, C)``.
    """

    def __init__(self, embed_dim: int = 384) -> None:
        super().__init__()
        self.conv1a = nn.Linear(3, 128)
        self.bn1 = nn.BatchNorm1d(128)
        self.conv1b = nn.Linear(128, 256)
        self.conv2a = nn.Linear(512, 512)
        self.bn2 = nn.BatchNorm1d(512)
        self.conv2b = nn.Linear(512, embed_dim)

    def forward(self, patches: Tensor) -> Tensor:
        batch, groups, size, _ = patches.shape
        x = patches.reshape(batch * groups * size, 3)
        x = F.relu(self.bn1(self.conv1a(x)))
        local = self.conv1b(x).reshape(batch * groups, size, 256)
        pooled = local.amax(dim=1)  # (BG, 256)
        # [pooled ‖ local] @ W.T split into its global and local halves.
        weight = self.conv2a.weight
        from_global = F.linear(pooled, weight[:, :256], self.conv2a.bias)  # (BG, 512)
        from_local = F.linear(local, weight[:, 256:])  # (BG, K, 512)
        x = (from_local + from_global.unsqueeze(1)).reshape(batch * groups * size, 512)
        x = self.conv2b(F.relu(self.bn2(x))).reshape(batch * groups, size, -1)
        return x.amax(dim=1).reshape(batch, groups, -1)


class PointViT(Encoder):
    """Point-patch ViT encoder (Point-MAE's encoder, usable alone).

    Takes ``points (B, N, 3)``; returns one level of ``num_groups`` tokens at the patch centres
    (plus the ``feature_layers``), ``global_feature`` = [max ‖ mean] of the final tokens.

    Args:
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate: ViT size
            (paper: 384, 12, 6, 4.0, False, 0.1).
        num_groups: patches per cloud (paper: 64 for 1024 points).
        group_size: points per patch (paper: 32).
        feature_layers: extra block outputs exposed as earlier levels of the output
            (block indices, negative allowed); the final normed tokens are always the
            last level.
        cls_token: prepend a learnable class token (with its own learnable position,
            ``cls_pos``) as Point-MAE's fine-tuning model does; its final normed
            output is ``EncoderOutput.cls_feature``. Pretraining checkpoints have no
            class token: loading one leaves ``cls_token``/``cls_pos`` at their init.
    """

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path_rate: float = 0.1,
                 num_groups: int = 64, group_size: int = 32,
                 feature_layers: Sequence[int] = (), cls_token: bool = False) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_groups", num_groups),
                            ("group_size", group_size)):
            if value < 1:
                raise ValueError(f"{name}={value}: expected >= 1")
        if depth < 0 or not 0.0 <= drop_path_rate < 1.0 or mlp_ratio <= 0:
            raise ValueError(f"depth={depth}, drop_path_rate={drop_path_rate}, mlp_ratio={mlp_ratio}: expected "
                             "depth >= 0, 0 <= drop_path_rate < 1, mlp_ratio > 0")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_groups = num_groups
        self.group_size = group_size
        self.feature_layers = tuple(int(i) for i in feature_layers)
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = positional_mlp(embed_dim)
        self.blocks = PositionalBlocks(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        self.cls_token: nn.Parameter | None = None
        self.cls_pos: nn.Parameter | None = None
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.apply(init_vit_weights)

    resolution_args = ("num_groups", "group_size")
    no_weight_decay_names = ("cls_token", "cls_pos")
    supports_cls_token = True

    @property
    def spec(self) -> EncoderSpec:
        depth = len(self.blocks.blocks)
        levels = len({i % depth for i in self.feature_layers} if depth else set()) + 1
        return EncoderSpec(input="points", level_channels=(self.embed_dim,) * levels, level_strides=(0.0,) * levels,
                           global_channels=2 * self.embed_dim,
                           cls_channels=self.embed_dim if self.cls_token is not None else 0)

    def validate_sample(self, sample: dict) -> None:
        points = sample.get("points")
        if points is not None and len(points) < max(self.group_size, self.num_groups):
            raise ValueError(f"clouds of {len(points)} points are too small for num_groups={self.num_groups} "
                             f"patches of group_size={self.group_size} points (data.num_points must be at least "
                             f"{max(self.group_size, self.num_groups)})")

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``points (B, N, 3)`` → neighborhoods ``(B, G, K, 3)``, centres ``(B, G, 3)``."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
        if points.shape[1] < self.group_size:
            raise ValueError(f"clouds of {points.shape[1]} points are smaller than group_size={self.group_size}")
        return group_points(points, self.num_groups, self.group_size)

    def encode(self, tokens: Tensor, centers: Tensor) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """Run the transformer on patch tokens (the class token, if any, is prepended here).

        Args:
            tokens: ``(B, T, C)`` patch tokens (all or only the visible ones).
            centers: ``(B, T, 3)`` their centres.
        Returns:
            final normed patch tokens ``(B, T, C)``, the raw patch-token outputs of
            ``feature_layers``, and the final normed class token ``(B, C)`` (None without one).
        """
        pos = self.pos_embed(centers)
        if self.cls_token is None:
            x, extra = self.blocks(tokens, pos, self.feature_layers)
            return self.norm(x), extra, None
        batch = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)
        x, extra = self.blocks(tokens, pos, self.feature_layers)
        x = self.norm(x)
        return x[:, 1:], [e[:, 1:] for e in extra], x[:, 0]

    def forward(self, points: Tensor) -> EncoderOutput:
        """``points (B, N, 3)`` → :class:`EncoderOutput` with token levels at the patch centres."""
        neighborhoods, centers = self.group(points)
        final, extra, cls = self.encode(self.patch_embed(neighborhoods), centers)
        levels = [FeatureLevel(features=f, coords=centers) for f in extra]
        levels.append(FeatureLevel(features=final, coords=centers))
        return EncoderOutput(levels=levels, global_feature=max_mean_pool(final), cls_feature=cls)
