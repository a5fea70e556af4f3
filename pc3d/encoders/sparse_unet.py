"""Sparse-conv UNet for scenes: Pointcept's SpUNet and MSM's encoder, with serialized attention.

Input: :class:`~pc3d.ops.sparse_conv.SparseVoxels` at ``voxel_size`` (2 cm) with colour +
normal features (6 channels). Encoder stage ``i`` works at stride ``2^i`` (a kernel-2 stride-2
conv leads into every stage but the first), the decoder walks back up with inverse convs and
the encoder's outputs as skips. Two block families (``style``):

* ``"spunet"`` (default; Pointcept's SpUNet-v1m1 layout, ``configs/encoder/spunet_v1m1.yaml``,
  and pc3d's MSM pretraining backbone ``configs/encoder/sparse_unet.yaml``):

  - stem: submanifold conv (kernel ``stem_kernel``) → BN → ReLU, ``channels[0]``;
  - encoder stage ``i``: for ``i > 0`` down conv → BN → ReLU, then ``blocks[i]`` residual
    blocks ``relu(x + BN(conv(relu(BN(conv(x))))))`` (3×3×3 submanifold convs); stages in
    ``attention_stages`` add serialized *window* attention blocks: voxels ordered along a
    space-filling curve, cut into windows of ``window_size`` voxels, full attention inside each
    window, a submanifold-conv positional encoding before each block (PTv3's xCPE); the blocks
    take the ``attention_orders`` in turn across the network;
  - decoder level ``j`` (from the bottleneck up): inverse conv → BN → ReLU back to stride
    ``2^(n-2-j)``, concatenate the encoder skip, ``dec_blocks[j]`` residual blocks (the first
    projects the concatenation with a linear + BN shortcut);
  - ``levels`` = decoder outputs at strides 1, 2, 4, 8 and the encoder bottleneck at 16.

* ``"msm"`` (the encoder of Masked Scene Modeling's release, ``MSM3D_Encoder`` with
  "transformer++" attention blocks, ``configs/encoder/msm_large.yaml``):

  - stem: linear → RMSNorm (no activation);
  - down conv (with bias) → RMSNorm; residual blocks ``x + γ · RMS(conv(gelu(conv(RMS(x)))))``
    (convs without bias, per-channel layer scale γ); attention blocks (pre-RMSNorm,
    ``qkv`` and output projections without bias, a GELU-gated MLP of 4× width, layer scales)
    over a *sliding* window: along the curve, each voxel attends the ``window_size // 2``
    voxels before and after it within its sample (flash-attention's local window). Each
    attention stage orders its voxels along ``attention_orders`` (block ``k`` of the stage
    takes order ``k mod 4``; with ``shuffle_orders`` a training forward permutes the orders
    per stage first). No positional encoding: the convs carry position;
  - a decoder stage at *every* stride, the first at the bottleneck: RMSNorm of the encoder's
    output, then per stage ``j > 0``: RMSNorm → inverse conv (with bias) to the next finer
    stride, merged with the encoder skip as ``γ · x + linear(RMS(skip))``, then
    ``dec_blocks[j]`` residual blocks and the attention blocks of
    ``decoder_attention_stages``;
  - ``levels`` = the outputs of every decoder stage, strides 1 .. 16 (with the release's widths
    64 + 96 + 128 + 256 + 384 = 928 channels, the multi-resolution feature MSM samples at every
    point).

``forward`` returns the shared :class:`~pc3d.encoders.base.EncoderOutput` (finest level first).
Each level's voxels are padded per sample (``valid``) in ``(batch, x, y, z)`` order, so the
flattened order does not depend on the conv backend. ``coords`` are voxel centres in the
input frame, ``origin + (index + 0.5) · stride`` (``origin``: the input voxels' per-sample
origin, zero when they carry none).

The conv backend (``backend``) is a run-time choice, not architecture: it is not stored with
the encoder, can be changed on a built encoder (``encoder.backend = "torch"``), and is resolved
once per forward.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.encoders.base import INPUT_FEATURES, Encoder, EncoderOutput, EncoderSpec, FeatureLevel, max_mean_pool
from pc3d.encoders.layers import Attention, DropPath, Mlp, sliding_window_attention
from pc3d.ops.serialization import serialization_order
from pc3d.ops.backends import resolve_backend
from pc3d.ops.sparse_conv import SparseConv3d, SparseVoxels, voxel_keys

STYLES = ("spunet", "msm")
ATTENTION_DTYPES = ("float32", "float16")
#: Serialization orders by name: a curve, and whether x and y are swapped first ("-trans").
ORDERS = {"z": ("z", False), "hilbert": ("hilbert", False), "z-trans": ("z", True), "hilbert-trans": ("hilbert", True)}


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


def sample_drop_path(features: Tensor, batch: Tensor, batch_size: int, p: float, training: bool) -> Tensor:
    """Stochastic depth of a residual branch per *sample* of a voxel batch (``batch (M,)``: each row's sample)."""
    if p == 0.0 or not training:
        return features
    keep = features.new_empty(batch_size).bernoulli_(1.0 - p).div_(1.0 - p)
    return features * keep[batch.long()][:, None]


class SparseRMSNorm(nn.Module):
    """MSM's RMS normalisation ``weight · x / (‖x‖₂ / √C + eps)`` of voxel or plain features ``(..., C)``.

    ``eps`` is added to the root mean square, not under the root (unlike ``torch.nn.RMSNorm``).
    """

    def __init__(self, channels: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels))

    def normalize(self, x: Tensor) -> Tensor:
        rms = x.norm(2, dim=-1, keepdim=True) * self.channels ** -0.5
        return self.weight * (x / (rms + self.eps))

    def forward(self, x: SparseVoxels | Tensor) -> SparseVoxels | Tensor:
        return x.replace(self.normalize(x.features)) if isinstance(x, SparseVoxels) else self.normalize(x)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class SparseLinear(nn.Linear):
    """A linear layer applied to every voxel's features."""

    def forward(self, x: SparseVoxels) -> SparseVoxels:  # type: ignore[override]
        return x.replace(super().forward(x.features))


class LayerScaleResidualBlock(nn.Module):
    """MSM's residual block: ``x + γ · RMS(conv2(gelu(conv1(RMS(x)))))``, 3×3×3 submanifold convs without bias."""

    def __init__(self, channels: int, key: str, backend: str, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = SparseRMSNorm(channels)
        self.conv1 = SparseConv3d(channels, channels, 3, "submanifold", key, backend)
        self.conv2 = SparseConv3d(channels, channels, 3, "submanifold", key, backend)
        self.norm2 = SparseRMSNorm(channels)
        self.layer_scale = nn.Parameter(torch.full((channels,), 0.1))
        self.drop_path = drop_path

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        hidden = self.conv1(self.norm1(x))
        out = self.norm2(self.conv2(hidden.replace(F.gelu(hidden.features)))).features * self.layer_scale
        out = sample_drop_path(out, x.coords[:, 0], x.batch_size, self.drop_path, self.training)
        return x.replace(out + x.features)


class SlidingWindowAttentionBlock(nn.Module):
    """MSM's "transformer++" block over serialized voxels.

    ``x + γ₁ · proj(attn(RMS(x)))``, then ``+ γ₂ · fc2(gelu(a) · b)`` with ``[a, b] = fc1(RMS(x))``;
    no biases. Attention runs in the curve order: each voxel attends the ``window_size // 2``
    voxels before and after it of its own sample (:func:`~pc3d.encoders.layers.sliding_window_attention`).
    """

    def __init__(self, channels: int, num_heads: int, window_size: int, drop_path: float = 0.0,
                 attention_dropout: float = 0.0, mlp_ratio: int = 4, attention_dtype: str = "float32") -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        if attention_dtype not in ATTENTION_DTYPES:
            raise ValueError(f"attention_dtype={attention_dtype!r}: expected one of {', '.join(ATTENTION_DTYPES)}")
        self.num_heads, self.window_size, self.attention_dtype = num_heads, window_size, attention_dtype
        self.drop_path, self.attention_dropout = drop_path, attention_dropout
        self.norm1 = SparseRMSNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj = nn.Linear(channels, channels, bias=False)
        self.layer_scale1 = nn.Parameter(torch.full((channels,), 0.1))
        self.norm2 = SparseRMSNorm(channels)
        self.fc1 = nn.Linear(channels, 2 * mlp_ratio * channels, bias=False)
        self.fc2 = nn.Linear(mlp_ratio * channels, channels, bias=False)
        self.layer_scale2 = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, x: SparseVoxels, order: Tensor, inverse: Tensor) -> SparseVoxels:
        """``order (M,)``: the voxels along the curve (grouped by sample); ``inverse``: its inverse permutation."""
        features, batch = x.features, x.coords[:, 0]
        channels = features.shape[1]
        qkv = self.qkv(self.norm1(features)[order]).reshape(len(order), 3, self.num_heads, channels // self.num_heads)
        if self.attention_dtype == "float16":  # MSM's flash-attention call: half-precision q, k, v and output
            qkv = qkv.to(torch.float16).to(qkv.dtype)
        attended = sliding_window_attention(*qkv.unbind(1), batch[order], self.window_size // 2,
                                            dropout_p=self.attention_dropout if self.training else 0.0)
        if self.attention_dtype == "float16":
            attended = attended.to(torch.float16).to(qkv.dtype)
        out = self.proj(attended.reshape(len(order), channels))[inverse] * self.layer_scale1
        features = sample_drop_path(out, batch, x.batch_size, self.drop_path, self.training) + features
        gate, value = self.fc1(self.norm2(features)).chunk(2, dim=-1)
        out = self.fc2(F.gelu(gate) * value) * self.layer_scale2
        return x.replace(sample_drop_path(out, batch, x.batch_size, self.drop_path, self.training) + features)


class SkipMerge(nn.Module):
    """MSM's decoder skip: ``γ · x + proj(RMS(skip))`` (``x``: the upsampled features on the skip's voxels)."""

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.norm = SparseRMSNorm(skip_channels)
        self.proj = nn.Linear(skip_channels, channels)
        self.layer_scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: SparseVoxels, skip: SparseVoxels) -> SparseVoxels:
        return x.replace(x.features * self.layer_scale + self.proj(self.norm(skip.features)))


def _per_stage(depth: int | Sequence[int], stages: Sequence[int], name: str) -> dict[int, int]:
    """``{stage: blocks}`` from ``depth`` (one count for every stage, or one per entry of ``stages``)."""
    stages = list(stages)
    depths = [int(depth)] * len(stages) if isinstance(depth, int) else [int(d) for d in depth]
    if len(depths) != len(stages):
        raise ValueError(f"{name}: expected one count per stage of {stages}, got {list(depths)}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"{name}: stages {stages} repeat")
    return dict(zip(stages, depths))


class SparseUNet(Encoder):
    """Hierarchical sparse-conv UNet (see the module docstring for both styles).

    Args:
        in_channels: input feature width (colour + normal = 6).
        channels: encoder widths, one per stride 1, 2, 4, 8, 16 (any number of stages).
        blocks: residual blocks per encoder stage (0 allowed: Pointcept's stride-1 stage is the stem alone).
        dec_channels: decoder widths from the bottleneck down. ``spunet``: one per finer stride
            (``len(channels) - 1``); ``msm``: one per stride, the first at the bottleneck and equal to
            ``channels[-1]``.
        dec_blocks: residual blocks per decoder stage (as many as ``dec_channels``).
        voxel_size: input voxel edge (metres); level ``i`` has stride ``voxel_size · 2^i``.
        stem_kernel: kernel of the stem's submanifold conv (``spunet``; the ``msm`` stem is linear).
        attention_stages: encoder stages (0-based) that add attention blocks after their residual blocks.
        attention_depth: attention blocks per such stage: one count, or one per entry of ``attention_stages``.
        window_size: ``spunet``: voxels per attention window; ``msm``: the sliding window (each voxel
            attends ``window_size // 2`` voxels on either side along the curve).
        head_dim: channels per attention head.
        drop_path_rate: stochastic depth. ``spunet``: of the attention blocks (linear over them);
            ``msm``: of every residual and attention block, as MSM schedules it (linear over the
            encoder's blocks, reversed linear over the decoder's).
        backend: sparse-conv backend, ``"auto"`` | ``"torch"`` | ``"spconv"`` (run time, not stored).
        input_features: what the 6 (or ``in_channels``) input channels hold (see
            :data:`pc3d.encoders.base.INPUT_FEATURES`); MSM and Pointcept: colour in [-1, 1] and normal.
        style: ``"spunet"`` | ``"msm"`` (block family, see the module docstring).
        attention_orders: serialization orders, names of :data:`ORDERS` (``z``, ``hilbert``,
            ``z-trans``, ``hilbert-trans``); ``spunet`` blocks take them in turn over the whole
            network, ``msm`` stages each start again from the first.
        decoder_attention_stages: (``msm``) decoder stages, named by the encoder stage they sit at
            (4 = the bottleneck of a five-stage net), that add attention blocks.
        decoder_attention_depth: (``msm``) attention blocks per such stage, like ``attention_depth``.
        shuffle_orders: (``msm``) a training forward permutes ``attention_orders`` per attention
            stage (from torch's global generator); evaluation always uses them as listed.
        attention_dropout: (``msm``) dropout of the attention weights in training.
        attention_dtype: (``msm``) ``"float32"``, or ``"float16"``: queries, keys, values and the
            attention output are rounded to half precision as in MSM's flash-attention call (the
            softmax and the sums stay in the features' precision), which is what reproduces the
            release's features (see :mod:`pc3d.hub.msm`).

    Shapes:
        ``forward(SparseVoxels(features (M, in_channels), coords (M, 4)))`` → ``EncoderOutput``.
    """

    def __init__(self, in_channels: int = 6, channels: Sequence[int] = (32, 64, 128, 256, 384),
                 blocks: Sequence[int] = (2, 2, 2, 2, 2), dec_channels: Sequence[int] = (256, 128, 96, 64),
                 dec_blocks: Sequence[int] = (2, 2, 2, 2), voxel_size: float = 0.02, stem_kernel: int = 5,
                 attention_stages: Sequence[int] = (3, 4), attention_depth: int | Sequence[int] = 1,
                 window_size: int = 1024, head_dim: int = 32, drop_path_rate: float = 0.0, backend: str = "auto",
                 input_features: Sequence[str] = ("color", "normal"), style: str = "spunet",
                 attention_orders: Sequence[str] = ("z", "hilbert", "z-trans", "hilbert-trans"),
                 decoder_attention_stages: Sequence[int] = (), decoder_attention_depth: int | Sequence[int] = 1,
                 shuffle_orders: bool = False, attention_dropout: float = 0.0,
                 attention_dtype: str = "float32") -> None:
        super().__init__()
        channels, blocks, dec_channels, dec_blocks = list(channels), list(blocks), list(dec_channels), list(dec_blocks)
        if style not in STYLES:
            raise ValueError(f"style={style!r}: expected one of {', '.join(STYLES)}")
        levels = len(channels) if style == "msm" else len(channels) - 1
        if len(blocks) != len(channels) or len(dec_channels) != levels or len(dec_blocks) != len(dec_channels):
            raise ValueError(f"SparseUNet ({style}): need len(blocks) == len(channels) and len(dec_channels) == "
                             f"len(dec_blocks) == {'len(channels)' if style == 'msm' else 'len(channels) - 1'}; got "
                             f"channels={channels}, blocks={blocks}, dec_channels={dec_channels}, "
                             f"dec_blocks={dec_blocks}")
        if style == "msm" and dec_channels[0] != channels[-1]:
            raise ValueError(f"SparseUNet (msm): the bottleneck decoder stage keeps the bottleneck's width: "
                             f"dec_channels[0]={dec_channels[0]} != channels[-1]={channels[-1]}")
        for name, stages in (("attention_stages", attention_stages), ("decoder_attention_stages",
                                                                       decoder_attention_stages)):
            if any(not 0 <= s < len(channels) for s in stages):
                raise ValueError(f"{name}={list(stages)}: stages are 0..{len(channels) - 1}")
        if style == "spunet" and len(decoder_attention_stages):
            raise ValueError("decoder_attention_stages: only the msm style has decoder attention")
        unknown = [o for o in attention_orders if o not in ORDERS]
        if unknown or not len(attention_orders):
            raise ValueError(f"attention_orders={list(attention_orders)}: expected names of {sorted(ORDERS)}")
        if attention_dtype not in ATTENTION_DTYPES:
            raise ValueError(f"attention_dtype={attention_dtype!r}: expected one of {', '.join(ATTENTION_DTYPES)}")
        if voxel_size <= 0:
            raise ValueError(f"voxel_size: expected > 0, got {voxel_size}")
        self.style = style
        self.input_features = tuple(input_features)
        self.voxel_size = voxel_size
        self.in_channels = in_channels
        self.attention_orders = [ORDERS[o] for o in attention_orders]
        self.shuffle_orders = shuffle_orders
        encoder_attention = _per_stage(attention_depth, attention_stages, "attention_depth")
        decoder_attention = _per_stage(decoder_attention_depth, decoder_attention_stages, "decoder_attention_depth")
        widths = [(i, channels[i]) for i in encoder_attention]
        widths += [(i, dec_channels[len(channels) - 1 - i]) for i in decoder_attention]  # msm: one stage per stride
        for i, width in widths:
            if width % head_dim:
                raise ValueError(f"stage {i}: width {width} is not divisible by head_dim={head_dim}")
        if style == "msm":
            self._build_msm(channels, blocks, dec_channels, dec_blocks, encoder_attention, decoder_attention,
                            window_size, head_dim, drop_path_rate, attention_dropout, attention_dtype, backend)
            self.level_channels = list(reversed(dec_channels))
        else:
            self._build_spunet(channels, blocks, dec_channels, dec_blocks, stem_kernel, encoder_attention,
                               window_size, head_dim, drop_path_rate, backend)
            self.level_channels = [*reversed(dec_channels), channels[-1]]
        self.out_channels = sum(self.level_channels)
        self.backend = backend
        if any(f not in INPUT_FEATURES for f in self.input_features) or \
                sum(INPUT_FEATURES[f] for f in self.input_features) != in_channels:
            raise ValueError(f"input_features={list(self.input_features)}: expected names of "
                             f"{sorted(INPUT_FEATURES)} making in_channels={in_channels} channels")

    def _build_spunet(self, channels: list[int], blocks: list[int], dec_channels: list[int], dec_blocks: list[int],
                      stem_kernel: int, attention: dict[int, int], window_size: int, head_dim: int,
                      drop_path_rate: float, backend: str) -> None:
        self.stem = nn.Sequential(SparseConv3d(self.in_channels, channels[0], stem_kernel, "submanifold", "stem",
                                               backend), SparseBatchNorm(channels[0]))
        num_attention = sum(attention.values())
        rates = iter(torch.linspace(0, drop_path_rate, max(num_attention, 1)).tolist())
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        attention_count = 0
        for i, width in enumerate(channels):
            key = f"s{i}"
            if i > 0:
                self.down.append(nn.Sequential(SparseConv3d(channels[i - 1], width, 2, "down", f"d{i}", backend),
                                               SparseBatchNorm(width)))
            stage: list[nn.Module] = [ResidualBlock(width, width, key, backend) for _ in range(blocks[i])]
            for _ in range(attention.get(i, 0)):
                curve, transpose = self.attention_orders[attention_count % len(self.attention_orders)]
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

    def _build_msm(self, channels: list[int], blocks: list[int], dec_channels: list[int], dec_blocks: list[int],
                   encoder_attention: dict[int, int], decoder_attention: dict[int, int], window_size: int,
                   head_dim: int, drop_path_rate: float, attention_dropout: float, attention_dtype: str,
                   backend: str) -> None:
        stages = len(channels)

        def attention_stack(width: int, count: int, rates: Iterator[float]) -> nn.ModuleList:
            return nn.ModuleList(SlidingWindowAttentionBlock(width, width // head_dim, window_size, next(rates),
                                                             attention_dropout, attention_dtype=attention_dtype)
                                 for _ in range(count))

        self.stem = nn.Sequential(SparseLinear(self.in_channels, channels[0]), SparseRMSNorm(channels[0]))
        encoder_blocks = sum(blocks) + sum(encoder_attention.values())
        rates = iter(torch.linspace(0, drop_path_rate, max(encoder_blocks, 1)).tolist())
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        self.encoder_attention = nn.ModuleList()
        for i, width in enumerate(channels):
            if i > 0:
                self.down.append(nn.Sequential(
                    SparseConv3d(channels[i - 1], width, 2, "down", f"d{i}", backend, bias=True), SparseRMSNorm(width)))
            self.encoder.append(nn.Sequential(*[LayerScaleResidualBlock(width, f"s{i}", backend, next(rates))
                                                for _ in range(blocks[i])]))
            self.encoder_attention.append(attention_stack(width, encoder_attention.get(i, 0), rates))
        self.decoder_norm = SparseRMSNorm(channels[-1])
        decoder_blocks = sum(dec_blocks) + sum(decoder_attention.values())
        rates = iter(torch.linspace(0, drop_path_rate, max(decoder_blocks, 1)).flip(0).tolist())
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_attention = nn.ModuleList()
        previous = channels[-1]
        for j, width in enumerate(dec_channels):
            i = stages - 1 - j  # the stride 2^i this stage works at
            if j > 0:
                self.up.append(nn.Sequential(SparseRMSNorm(previous), SparseConv3d(previous, width, 2, "up",
                                                                                   f"d{i + 1}", backend, bias=True)))
                self.merge.append(SkipMerge(channels[i], width))
            self.decoder.append(nn.Sequential(*[LayerScaleResidualBlock(width, f"s{i}", backend, next(rates))
                                                for _ in range(dec_blocks[j])]))
            self.decoder_attention.append(attention_stack(width, decoder_attention.get(i, 0), rates))
            previous = width

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
        levels = self._forward_msm(x) if self.style == "msm" else self._forward_spunet(x)
        bottleneck = levels[-1]
        return EncoderOutput(levels=levels, global_feature=max_mean_pool(bottleneck.features, bottleneck.valid))

    def _forward_spunet(self, x: SparseVoxels) -> list[FeatureLevel]:
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
        return levels

    def _forward_msm(self, x: SparseVoxels) -> list[FeatureLevel]:
        skips = []
        for i, (stage, attention) in enumerate(zip(self.encoder, self.encoder_attention)):
            if i > 0:
                x = self.down[i - 1](x)
            x = self._attend(stage(x), attention)
            skips.append(x)
        x = self.decoder_norm(x)
        levels = []
        for j, (stage, attention) in enumerate(zip(self.decoder, self.decoder_attention)):
            i = len(skips) - 1 - j
            if j > 0:
                x = self.merge[j - 1](self.up[j - 1](x), skips[i])
            x = self._attend(stage(x), attention)
            levels.append(to_feature_level(x, self.voxel_size * 2 ** i))
        levels.reverse()
        return levels

    def _attend(self, x: SparseVoxels, blocks: nn.ModuleList) -> SparseVoxels:
        """One attention stage: block ``k`` runs along order ``k mod len(attention_orders)``."""
        if not len(blocks):
            return x
        orders = self.attention_orders
        if self.shuffle_orders and self.training:
            orders = [orders[i] for i in torch.randperm(len(orders)).tolist()]
        serialized: dict[int, tuple[Tensor, Tensor]] = {}
        for k, block in enumerate(blocks):
            which = k % len(orders)
            if which not in serialized:
                order = serialization_order(x.coords, *orders[which])
                serialized[which] = (order, torch.empty_like(order).scatter_(
                    0, order, torch.arange(len(order), device=order.device)))
            x = block(x, *serialized[which])
        return x
