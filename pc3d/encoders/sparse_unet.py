"""Sparse-conv UNet for scenes (MSM's backbone), with serialized window attention in its deepest stages.

Input: :class:`~pc3d.ops.sparse_conv.SparseVoxels` at ``voxel_size`` (2 cm) with colour +
normal features (6 channels). Layout (defaults = MSM's reference settings, see
``configs/encoder/sparse_unet.yaml``):

* stem: submanifold conv (kernel 5) → ``channels[0]``;
* encoder stage ``i`` (stride ``2^i``): for ``i > 0`` a kernel-2 stride-2 conv, then
  ``blocks[i]`` residual blocks (two 3×3×3 submanifold convs, BN, ReLU); stages listed in
  ``attention_stages`` add serialized window attention blocks: voxels ordered along a
  space-filling curve (z-order / Hilbert, alternating, also with x and y swapped), cut into
  windows of ``window_size`` voxels, ``scaled_dot_product_attention`` inside each window,
  a submanifold-conv positional encoding before each block (PTv3's xCPE);
* decoder level ``j`` (from the bottleneck up): inverse conv back to stride ``2^(4-j-1)``,
  concatenate the encoder skip, ``dec_blocks[j]`` residual blocks.

``forward`` returns the shared :class:`~pc3d.encoders.base.EncoderOutput` with
``levels`` = decoder outputs at strides 1, 2, 4, 8 and the bottleneck at 16 (finest first;
64 + 96 + 128 + 256 + 384 = 928 channels with the defaults, MSM's probe width). Each
level's voxels are padded per sample (``valid``) in ``(batch, x, y, z)`` order, so the
flattened order does not depend on the conv backend. ``coords`` are voxel centres in the
input frame, ``origin + (index + 0.5) · stride`` (``origin``: the input voxels' per-sample
origin, zero when they carry none).

The conv backend (``backend``) is a run-time choice, not architecture: it is not stored with
the encoder, can be changed on a built encoder (``encoder.backend = "torch"``), and is resolved
once per forward.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pc3d.encoders.base import INPUT_FEATURES, Encoder, EncoderOutput, EncoderSpec, FeatureLevel, max_mean_pool
from pc3d.encoders.layers import Attention, DropPath, Mlp
from pc3d.ops.serialization import serialization_order
from pc3d.ops.backends import resolve_backend
from pc3d.ops.sparse_conv import SparseConv3d, SparseVoxels, voxel_keys


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the voxels of a :class:`SparseVoxels` (optionally followed by ReLU)."""

    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(channels, eps=1e-3, momentum=0.01)
        self.relu = relu

    def forward(self, x: SparseVoxels) -> SparseVoxels:  # type: ignore[override]
        features = super().forward(x.features)
        return x.replace(torch.relu(features) if self.relu else features)


class ResidualBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))`` with 3×3×3 submanifold convs."""

    def __init__(self, in_channels: int, channels: int, key: str, backend: str) -> None:
        super().__init__()
        self.conv1 = SparseConv3d(in_channels, channels, 3, "submanifold", key, backend)
        self.norm1 = SparseBatchNorm(channels)
        self.conv2 = SparseConv3d(channels, channels, 3, "submanifold", key, backend)
        self.norm2 = SparseBatchNorm(channels, relu=False)
        self.project = None
        if in_channels != channels:
            self.project = nn.Sequential(nn.Linear(in_channels, channels, bias=False),
                                         nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01))

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        shortcut = x.features if self.project is None else self.project(x.features)
        out = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return out.replace(torch.relu(out.features + shortcut))


def window_partition(coords: Tensor, window_size: int, curve: str, transpose: bool) -> Tensor:
    """Windows of consecutive voxels along a curve, per sample.

    Args:
        coords: ``(M, 4)`` int ``[batch, x, y, z]``.
    Returns:
        ``(num_windows, window_size)`` int64 voxel indices, -1 for padding (a sample's last
        window may be short; windows never mix samples).
    """
    order = serialization_order(coords, curve, transpose)
    batch = coords[order, 0].to(torch.int64)
    counts = torch.bincount(batch)
    windows = (counts + window_size - 1) // window_size
    start = torch.cumsum(counts, 0) - counts
    first_window = torch.cumsum(windows, 0) - windows
    position = torch.arange(len(order), device=coords.device) - start[batch]
    index = torch.full((int(windows.sum()), window_size), -1, dtype=torch.int64, device=coords.device)
    index[first_window[batch] + position // window_size, position % window_size] = order
    return index


class SerializedAttentionBlock(nn.Module):
    """Pre-norm transformer block over space-filling-curve windows, with a sparse-conv position encoding."""

    def __init__(self, channels: int, num_heads: int, window_size: int, curve: str, transpose: bool,
                 key: str, backend: str, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size, self.curve, self.transpose = window_size, curve, transpose
        self.cpe_conv = SparseConv3d(channels, channels, 3, "submanifold", key, backend)
        self.cpe = nn.Sequential(nn.Linear(channels, channels), nn.LayerNorm(channels))
        self.norm1 = nn.LayerNorm(channels)
        self.attn = Attention(channels, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, int(channels * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        features = x.features + self.cpe(self.cpe_conv(x).features)
        index = window_partition(x.coords, self.window_size, self.curve, self.transpose)
        valid = index >= 0
        windows = self.norm1(features)[index.clamp_min(0)]  # (W, window, C)
        attended = self.attn(windows, key_mask=valid)
        update = torch.zeros_like(features).index_copy_(0, index[valid], attended[valid])
        features = features + self.drop_path(update)
        features = features + self.drop_path(self.mlp(self.norm2(features)))
        return x.replace(features)


def to_feature_level(x: SparseVoxels, stride: float) -> FeatureLevel:
    """Pad ``x`` per sample, voxels in key order → ``FeatureLevel`` (centres at ``origin + (index + 0.5)·stride``)."""
    order = torch.argsort(voxel_keys(x.coords))
    coords, features = x.coords[order], x.features[order]
    batch = coords[:, 0].to(torch.int64)
    counts = torch.bincount(batch, minlength=x.batch_size)
    position = torch.arange(len(coords), device=coords.device) - (torch.cumsum(counts, 0) - counts)[batch]
    width = int(counts.max()) if len(coords) else 0
    padded = features.new_zeros(x.batch_size, width, features.shape[1])
    padded[batch, position] = features
    centers = features.new_zeros(x.batch_size, width, 3)
    centers[batch, position] = (coords[:, 1:].to(features.dtype) + 0.5) * stride
    if x.origin is not None:
        centers[batch, position] += x.origin.to(centers)[batch]
    valid = torch.zeros(x.batch_size, width, dtype=torch.bool, device=coords.device)
    valid[batch, position] = True
    return FeatureLevel(padded, centers, valid, stride, origin=x.origin)


class SparseUNet(Encoder):
    """Hierarchical sparse-conv UNet (see the module docstring).

    Args:
        in_channels: input feature width (colour + normal = 6).
        channels: encoder widths, one per stride 1, 2, 4, 8, 16.
        blocks: residual blocks per encoder stage.
        dec_channels: decoder widths from stride 8 down to stride 1.
        dec_blocks: residual blocks per decoder level.
        voxel_size: input voxel edge (metres); level ``i`` has stride ``voxel_size · 2^i``.
        stem_kernel: kernel of the first submanifold conv.
        attention_stages: encoder stages (0-based) that add attention blocks.
        attention_depth: attention blocks per such stage.
        window_size: voxels per attention window.
        head_dim: channels per attention head.
        drop_path_rate: stochastic depth of the attention blocks (linear over them).
        backend: sparse-conv backend, ``"auto"`` | ``"torch"`` | ``"spconv"`` (run time, not stored).
        input_features: what the 6 (or ``in_channels``) input channels hold (see
            :data:`pc3d.encoders.base.INPUT_FEATURES`); MSM: colour in [-1, 1] and normal.

    Shapes:
        ``forward(SparseVoxels(features (M, in_channels), coords (M, 4)))`` → ``EncoderOutput``.
    """

    def __init__(self, in_channels: int = 6, channels: Sequence[int] = (32, 64, 128, 256, 384),
                 blocks: Sequence[int] = (2, 2, 2, 2, 2), dec_channels: Sequence[int] = (256, 128, 96, 64),
                 dec_blocks: Sequence[int] = (2, 2, 2, 2), voxel_size: float = 0.02, stem_kernel: int = 5,
                 attention_stages: Sequence[int] = (3, 4), attention_depth: int = 1, window_size: int = 1024,
                 head_dim: int = 32, drop_path_rate: float = 0.0, backend: str = "auto",
                 input_features: Sequence[str] = ("color", "normal")) -> None:
        super().__init__()
        channels, blocks, dec_channels, dec_blocks = list(channels), list(blocks), list(dec_channels), list(dec_blocks)
        if len(blocks) != len(channels) or len(dec_channels) != len(channels) - 1 or len(dec_blocks) != len(dec_channels):
            raise ValueError(f"SparseUNet: need len(blocks) == len(channels) and len(dec_channels) == "
                             f"len(dec_blocks) == len(channels) - 1; got channels={channels}, blocks={blocks}, "
                             f"dec_channels={dec_channels}, dec_blocks={dec_blocks}")
        if any(not 0 <= s < len(channels) for s in attention_stages):
            raise ValueError(f"attention_stages={list(attention_stages)}: stages are 0..{len(channels) - 1}")
        if voxel_size <= 0:
            raise ValueError(f"voxel_size: expected > 0, got {voxel_size}")
        self.input_features = tuple(input_features)
        self.voxel_size = voxel_size
        self.in_channels = in_channels
        self.stem = nn.Sequential(SparseConv3d(in_channels, channels[0], stem_kernel, "submanifold", "stem", backend),
                                  SparseBatchNorm(channels[0]))
        num_attention = attention_depth * len(attention_stages)
        rates = iter(torch.linspace(0, drop_path_rate, max(num_attention, 1)).tolist())
        orders = [("z", False), ("hilbert", False), ("z", True), ("hilbert", True)]
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        attention_count = 0
        for i, width in enumerate(channels):
            key = f"s{i}"
            if i > 0:
                self.down.append(nn.Sequential(SparseConv3d(channels[i - 1], width, 2, "down", f"d{i}", backend),
                                               SparseBatchNorm(width)))
            stage: list[nn.Module] = [ResidualBlock(width, width, key, backend) for _ in range(blocks[i])]
            if i in attention_stages:
                if width % head_dim:
                    raise ValueError(f"channels[{i}]={width} is not divisible by head_dim={head_dim}")
                for _ in range(attention_depth):
                    curve, transpose = orders[attention_count % len(orders)]
                    stage.append(SerializedAttentionBlock(width, width // head_dim, window_size, curve, transpose,
                                                          key, backend, drop_path=next(rates)))
                    attention_count += 1
            self.encoder.append(nn.Sequential(*stage))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        previous = channels[-1]
        for j, width in enumerate(dec_channels):
            i = len(channels) - 2 - j  # the encoder stage this level returns to
            self.up.append(nn.Sequential(SparseConv3d(previous, width, 2, "up", f"d{i + 1}", backend),
                                         SparseBatchNorm(width)))
            self.decoder.append(nn.Sequential(
                ResidualBlock(width + channels[i], width, f"s{i}", backend),
                *[ResidualBlock(width, width, f"s{i}", backend) for _ in range(dec_blocks[j] - 1)]))
            previous = width
        self.level_channels = [*reversed(dec_channels), channels[-1]]
        self.out_channels = sum(self.level_channels)
        self.backend = backend
        if any(f not in INPUT_FEATURES for f in self.input_features) or \
                sum(INPUT_FEATURES[f] for f in self.input_features) != in_channels:
            raise ValueError(f"input_features={list(self.input_features)}: expected names of "
                             f"{sorted(INPUT_FEATURES)} making in_channels={in_channels} channels")

    runtime_args = ("backend",)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        """Choose the conv backend of every layer (``auto`` | ``torch`` | ``spconv``)."""
        self._backend = name
        for module in self.modules():
            if isinstance(module, SparseConv3d):
                module.backend = name

    @property
    def spec(self) -> EncoderSpec:
        strides = tuple(self.voxel_size * 2 ** i for i in range(len(self.level_channels)))
        return EncoderSpec(input="voxels", level_channels=tuple(self.level_channels), level_strides=strides,
                           global_channels=2 * self.level_channels[-1], input_features=self.input_features,
                           voxel_size=self.voxel_size)

    def forward(self, voxels: SparseVoxels, mask: Tensor | None = None, mask_token: Tensor | None = None
                ) -> EncoderOutput:
        """Encode voxels; with ``mask (M,)`` bool, masked voxels enter as ``mask_token (channels[0],)``.

        The token replaces the stem output (and the stem sees zeros there), so masked voxels keep
        their position but lose their colour and normal.
        """
        if voxels.features.shape[1] != self.in_channels:
            raise ValueError(f"SparseUNet: expected {self.in_channels} input channels, got {voxels.features.shape[1]}")
        if mask is not None:
            if mask_token is None:
                raise ValueError("SparseUNet: a mask needs a mask_token")
            voxels = voxels.replace(voxels.features.masked_fill(mask[:, None], 0.0))
        x = self.stem(voxels.with_backend(resolve_backend(self.backend, "sparse_conv", voxels.features)))
        if mask is not None:
            x = x.replace(torch.where(mask[:, None], mask_token.to(x.features).expand_as(x.features), x.features))
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.down[i - 1](x)
            x = stage(x)
            skips.append(x)
        levels = [to_feature_level(x, self.voxel_size * 2 ** (len(skips) - 1))]
        for j, (up, decoder) in enumerate(zip(self.up, self.decoder)):
            skip = skips[len(skips) - 2 - j]
            x = up(x)
            x = decoder(skip.replace(torch.cat([x.features, skip.features], dim=1)))
            levels.append(to_feature_level(x, self.voxel_size * 2 ** (len(skips) - 2 - j)))
        levels.reverse()
        bottleneck = levels[-1]
        return EncoderOutput(levels=levels, global_feature=max_mean_pool(bottleneck.features, bottleneck.valid))
