"""3D Swin Transformer on dense grids: NeRF-MAE's encoder (Irshad et al., ECCV 2024).

Input: a :class:`~pc3d.ops.dense_grid.DenseGrid` of ``(B, C, X, Y, Z)`` cells (NeRF-MAE: radiance
grids, channels R, G, B, alpha in [0, 1]). The grid is zero-padded at the high end of every axis
to a multiple of ``patch_size``; its ``valid`` cells say which tokens of every level are real.

Architecture (the original's, checkpoint-compatible through :mod:`pc3d.hub.nerf_mae`):

- **Patch partition**: non-overlapping ``patch_size³`` cells → ``embed_dim`` (a strided Conv3d,
  run channels-last), LayerNorm, plus a fixed 3D sin-cos
  position embedding (:func:`sincos_position_embedding`; computed for the grid's token shape,
  never stored). With a mask, masked tokens are then *replaced* by the mask token (no position).
- **Stages** ``s = 0..3`` of width ``embed_dim · 2^s`` (strides 4, 8, 16, 32 cells): stage
  ``s > 0`` starts with a patch merging (2×2×2 tokens → LayerNorm(8C) → Linear(8C, 2C), sub-token
  ``(a, b, c)`` in channel slot ``a + 2b + 4c``, odd sizes zero-padded first), then ``depths[s]``
  pre-norm blocks ``x + DropPath(WindowAttention(LN(x)))``, ``x + DropPath(MLP(LN(x)))``.
  There is no norm after a stage; each stage's last block output is a level.
- **Window attention**: windows of ``window_size³`` tokens; every second block shifts the windows
  by ``window_size // 2`` on each axis whose padded size exceeds the window. The input of the
  attention (after LN) is zero-padded to a multiple of the window, and the padded tokens take
  part as keys (as in the original: they are not masked out). A learned relative position bias
  (a ``(2w-1)³ × heads`` table indexed by query − key offsets) and, in shifted windows, −100 between
  tokens of different pre-shift regions (−10⁴ below float64, see ``SHIFT_MASK_VALUE``), are the
  additive ``attn_mask`` of
  ``F.scaled_dot_product_attention``. Window partition, shift and padding are one precomputed
  token gather per ``(token shape, shift)``, and its inverse also crops the padding.
- **Stochastic depth**: block ``b`` of ``sum(depths)`` drops its branches per sample with
  probability ``drop_path_rate · b / (sum(depths) − 1)``.

Padded cells (of the grid and of the batch) are zeros for the computation, exactly as the
original, which pads every grid to 160³; ``FeatureLevel.valid`` marks the tokens covering at
least one valid cell. ``global_feature`` is ``[max ‖ mean]`` of the last level's valid tokens.

Presets (:data:`SWIN3D_PRESETS`): ``swin_t`` (96, depths 2-2-6-2, heads 3-6-12-24), ``swin_s``
(96, 2-2-18-2, 3-6-12-24: NeRF-MAE's, the default) and ``swin_l`` (192, 2-2-18-2, 6-12-24-48).
NeRF-MAE's ``swin_b`` (embed_dim 128) is not offered: the 3D sin-cos embedding splits the width
into three even parts, so it needs ``embed_dim`` divisible by 6; the original cannot build it
either, and any other embedding would make its own, untested, architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.data.features import INPUT_FEATURES
from pc3d.encoders.base import Encoder, EncoderOutput, EncoderSpec, FeatureLevel, max_mean_pool
from pc3d.encoders.layers import DropPath, Mlp
from pc3d.ops.dense_grid import DenseGrid

#: Architectures of NeRF-MAE's run script (``swin_b`` is left out, see the module docstring).
SWIN3D_PRESETS: dict[str, dict[str, object]] = {
    "swin_t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_s": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "swin_l": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)},
}
CACHE_SIZE = 16  # window layouts / position tables kept per stage (one per token shape, shift, device, dtype)
# Between tokens of different pre-shift regions: the original's -100 in float64. In lower precisions
# exp(-100 + logit gap) is a denormal (4-50x slower x86 arithmetic, and flushing them is per thread)
# below the resolution of the window's other weights, so -1e4 (an exact 0 weight) gives the same
# values unless a masked logit exceeds every unmasked one of its row by more than ~80.
SHIFT_MASK_VALUE = -100.0
LOW_PRECISION_SHIFT_MASK_VALUE = -1.0e4


def sincos_position_embedding(shape: Sequence[int], dim: int) -> Tensor:
    """NeRF-MAE's fixed 3D sin-cos position embedding of a token grid.

    Each third of the ``dim`` channels encodes one integer token index ``p`` as
    ``[sin(p ω_m), cos(p ω_m)]``, ``ω_m = 10000^(−m / (d/2))``, ``d = dim / 3``; the thirds encode
    the **second**, first and third axis, in this order (the original's ``np.meshgrid`` 'xy'
    order). Computed in float64, returned as float32 (as the original stores it). The table of a
    smaller grid is the corner of a larger one.

    Args:
        shape: ``(n1, n2, n3)`` tokens per axis.
        dim: channels, divisible by 6.
    Returns:
        ``(n1, n2, n3, dim)`` float32.
    """
    if dim % 6:
        raise ValueError(f"the 3D sin-cos position embedding needs dim divisible by 6, got {dim}")
    third = dim // 3
    omega = 1.0 / 10000.0 ** (torch.arange(third // 2, dtype=torch.float64) / (third / 2.0))

    def encode(n: int) -> Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, third)

    n1, n2, n3 = (int(n) for n in shape)
    first, second, last = encode(n1), encode(n2), encode(n3)
    table = torch.cat([second[None, :, None, :].expand(n1, n2, n3, third),
                       first[:, None, None, :].expand(n1, n2, n3, third),
                       last[None, None, :, :].expand(n1, n2, n3, third)], dim=-1)
    return table.float()


def relative_position_index(window_size: int) -> Tensor:
    """``(L, L)`` int64 row of the bias table for query ``i`` and key ``j`` of a window, ``L = w³``.

    Tokens are in C order inside the window; the offset ``query − key + (w − 1)`` per axis is
    flattened with the last axis fastest: ``Δ1 (2w−1)² + Δ2 (2w−1) + Δ3``.
    """
    w = window_size
    axes = torch.arange(w)
    coords = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij"), dim=-1).reshape(-1, 3)
    delta = coords[:, None, :] - coords[None, :, :] + (w - 1)
    return delta[..., 0] * (2 * w - 1) ** 2 + delta[..., 1] * (2 * w - 1) + delta[..., 2]


@dataclass(frozen=True)
class WindowLayout:
    """How the ``N`` tokens of one stage map to windows, for one shift.

    Attributes:
        gather: ``(W·L,)`` int64 source token of every window slot (``N`` = the zero row of padding).
        scatter: ``(N,)`` int64 window slot of every token (inverse of ``gather``, padding cropped).
        padded: whether any slot is padding (index ``N``: a row appended before gathering).
        num_windows: ``W``.
        shift_mask: ``(W, L, L)`` additive mask between pre-shift regions, or None (no shift).
        identity: window order is the tokens' own order (no gather needed).
    """

    gather: Tensor
    scatter: Tensor
    padded: bool
    num_windows: int
    shift_mask: Tensor | None
    identity: bool = False


def window_layout(shape: Sequence[int], window_size: int, shift: int, device: torch.device,
                  dtype: torch.dtype) -> WindowLayout:
    """The :class:`WindowLayout` of a ``shape = (n1, n2, n3)`` token grid (see the module docstring).

    Each axis is padded to a multiple of the window; an axis whose padded size is not larger
    than the window is not shifted. Slot ``(window (W1, W2, W3), in-window (a, b, c))`` holds the
    token at padded position ``(W·w + a + s) mod P`` per axis (the cyclic shift by ``−s``).
    Regions: along a shifted axis, ``[0, P−w)``, ``[P−w, P−s)``, ``[P−s, P)`` of the shifted grid.
    """
    w = window_size
    sizes = [int(n) for n in shape]
    padded = [-(-n // w) * w for n in sizes]
    shifts = [shift if p > w else 0 for p in padded]
    per_axis, regions = [], []
    for n, p, s in zip(sizes, padded, shifts):
        slot = torch.arange(p)
        source = (slot + s) % p
        per_axis.append(torch.where(source < n, source, -1))
        if s:
            regions.append((slot >= p - w).long() + (slot >= p - s).long())
        else:
            regions.append(torch.zeros(p, dtype=torch.long))
    windows = [p // w for p in padded]

    def to_windows(grid: Tensor) -> Tensor:  # (P1, P2, P3) → (W, L) in window order
        return (grid.reshape(windows[0], w, windows[1], w, windows[2], w)
                .permute(0, 2, 4, 1, 3, 5).reshape(-1, w ** 3))

    i, j, k = per_axis
    real = (i[:, None, None] >= 0) & (j[None, :, None] >= 0) & (k[None, None, :] >= 0)
    flat = (i[:, None, None] * sizes[1] + j[None, :, None]) * sizes[2] + k[None, None, :]
    num_tokens = sizes[0] * sizes[1] * sizes[2]
    gather = to_windows(torch.where(real, flat, num_tokens)).reshape(-1)
    scatter = torch.empty(num_tokens, dtype=torch.long)
    slots = torch.arange(gather.numel())
    keep = gather < num_tokens
    scatter[gather[keep]] = slots[keep]
    shift_mask = None
    if any(shifts):
        label = to_windows(regions[0][:, None, None] * 9 + regions[1][None, :, None] * 3 + regions[2][None, None, :])
        value = SHIFT_MASK_VALUE if dtype == torch.float64 else LOW_PRECISION_SHIFT_MASK_VALUE
        shift_mask = ((label[:, :, None] != label[:, None, :]).to(dtype) * value).to(device)
    identity = len(gather) == num_tokens and torch.equal(gather, torch.arange(num_tokens))
    return WindowLayout(gather.to(device), scatter.to(device), bool((~keep).any()), len(gather) // w ** 3,
                        shift_mask, identity)


class _WindowAttentionFunction(torch.autograd.Function):
    """``F.scaled_dot_product_attention`` forward (the fused CPU kernel) with an explicit backward.

    On CPU, SDPA takes its unfused path when the ``attn_mask`` (the learned bias) needs a gradient
    (with extra passes guarding fully masked rows, which windows never have); this keeps the fused
    forward, saves only q, k, v and the output (not the ``L × L`` weights) and recomputes the
    weights in the backward.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:  # type: ignore[override]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        ctx.save_for_backward(q, k, v, attn_mask, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, attn_mask, out = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(attn_mask), dim=-1)
        grad_v = torch.matmul(weights.transpose(-1, -2), grad_out)
        grad_scores = torch.matmul(grad_out, v.transpose(-1, -2))
        grad_scores.sub_((grad_out * out).sum(dim=-1, keepdim=True)).mul_(weights)
        grad_q = torch.matmul(grad_scores, k).mul_(scale)
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q).mul_(scale)
        grad_mask = None
        if ctx.needs_input_grad[3]:
            grad_mask = grad_scores.sum(0, keepdim=True) if attn_mask.shape[0] == 1 else grad_scores
        return grad_q, grad_k, grad_v, grad_mask


def window_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    """Softmax attention ``(W, heads, L, d)`` with an additive ``attn_mask (W or 1, heads, L, L)``.

    Always ``F.scaled_dot_product_attention`` in the forward; on CPU with gradients through
    :class:`_WindowAttentionFunction` (same values, a faster and leaner backward).
    """
    if q.device.type == "cpu" and torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad or attn_mask.requires_grad):
        return _WindowAttentionFunction.apply(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3D windows with a relative position bias.

    Keys ``qkv``, ``proj``, ``relative_position_bias_table`` ``((2w−1)³, heads)``; the index
    (:func:`relative_position_index`) is a non-persistent buffer.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.window_size = num_heads, window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 3, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size).reshape(-1),
                             persistent=False)

    def position_bias(self) -> Tensor:
        """``(heads, L, L)`` bias of query ``i`` attending to key ``j``."""
        length = self.window_size ** 3
        # gathered from the transposed table: contiguous (heads, L, L), 2-3x faster to combine with masks
        return self.relative_position_bias_table.t()[:, self.relative_position_index].reshape(-1, length, length)

    def forward(self, x: Tensor, layout: WindowLayout) -> Tensor:
        """``x (B, N, C)`` (normalised tokens of a stage, C order) → ``(B, N, C)``."""
        batch, _, dim = x.shape
        heads, length = self.num_heads, self.window_size ** 3
        if layout.padded:
            # a padding token is zero after the norm, so its q, k, v are the qkv bias: no product for it
            qkv = self.qkv(x)
            qkv = torch.cat([qkv, self.qkv.bias.to(qkv.dtype).expand(batch, 1, 3 * dim)], dim=1)
            qkv = qkv.index_select(1, layout.gather)
        else:
            qkv = self.qkv(x if layout.identity else x.index_select(1, layout.gather))
        q, k, v = qkv.reshape(-1, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.position_bias().to(q.dtype)
        if layout.shift_mask is None:
            attn_mask = bias[None]  # (1, heads, L, L): a leading batch dim keeps SDPA on its fused path
        else:
            attn_mask = bias[None] + layout.shift_mask.to(q.dtype)[:, None]
            if batch > 1:
                attn_mask = attn_mask.repeat(batch, 1, 1, 1)
        out = window_attention(q, k, v, attn_mask)
        out = out.transpose(1, 2).reshape(batch, layout.num_windows * length, dim)
        if not layout.identity:
            out = out.index_select(1, layout.scatter)
        return self.proj(out)  # after the crop: no work on padding


class SwinBlock3D(nn.Module):
    """Pre-norm Swin block (keys ``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, layout: WindowLayout) -> Tensor:
        """``x (B, N, C)`` → ``(B, N, C)``."""
        x = x + self.drop_path(self.attn(self.norm1(x), layout))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging3D(nn.Module):
    """2×2×2 tokens → one: concatenation in the original's order, LayerNorm(8C), Linear(8C, 2C) without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, n1, n2, n3, C)`` → ``(B, ⌈n1/2⌉, ⌈n2/2⌉, ⌈n3/2⌉, 2C)``.

        Sub-token ``(a, b, c)`` (offsets along axes 1, 2, 3) fills channel slot ``a + 2b + 4c``
        (the first axis fastest), so the view is permuted to ``(c, b, a, C)`` before flattening.
        """
        batch, n1, n2, n3, dim = x.shape
        if n1 % 2 or n2 % 2 or n3 % 2:
            x = F.pad(x, (0, 0, 0, n3 % 2, 0, n2 % 2, 0, n1 % 2))
        m1, m2, m3 = (n1 + 1) // 2, (n2 + 1) // 2, (n3 + 1) // 2
        x = x.reshape(batch, m1, 2, m2, 2, m3, 2, dim).permute(0, 1, 3, 5, 6, 4, 2, 7)
        return self.reduction(self.norm(x.reshape(batch, m1, m2, m3, 8 * dim)))


class Swin3DStage(nn.Module):
    """Optional patch merging (``merge``), then ``blocks`` sharing the stage's window layouts."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_paths: Sequence[float], merge_from: int | None) -> None:
        super().__init__()
        self.window_size = window_size
        self.merge = PatchMerging3D(merge_from) if merge_from is not None else None
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, drop_paths[i])
            for i in range(depth))
        self._layouts: dict[tuple, WindowLayout] = {}

    def layout(self, shape: tuple[int, int, int], shift: int, x: Tensor) -> WindowLayout:
        key = (shape, shift, x.device, x.dtype)
        if key not in self._layouts:
            if len(self._layouts) >= CACHE_SIZE:  # grids of many sizes: keep the newest layouts only
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = window_layout(shape, self.window_size, shift, x.device, x.dtype)
        return self._layouts[key]

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, n1, n2, n3, C_in)`` → ``(B, m1, m2, m3, C)`` (channels last)."""
        if self.merge is not None:
            x = self.merge(x)
        batch, n1, n2, n3, dim = x.shape
        tokens = x.reshape(batch, n1 * n2 * n3, dim)
        for block in self.blocks:
            tokens = block(tokens, self.layout((n1, n2, n3), block.shift, tokens))
        return tokens.reshape(batch, n1, n2, n3, dim)


class Swin3D(Encoder):
    """3D Swin Transformer on dense grids (see the module docstring).

    Args:
        embed_dim: width of stage 0 (stage ``s`` has ``embed_dim · 2^s``); divisible by 6.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        patch_size: cells per token edge at stage 0.
        window_size: tokens per attention window edge (shift ``window_size // 2``).
        mlp_ratio: MLP hidden width / block width.
        drop_path_rate: stochastic depth of the last block (linear from 0 over all blocks).
        input_features: what the grid channels hold (:data:`pc3d.encoders.base.INPUT_FEATURES`);
            NeRF-MAE: ``("rgb", "alpha")``.
        voxel_size: cell edge used when point data is turned into a grid by the input adapter
            (radiance grids carry their own cell size).

    Shapes:
        ``forward(DenseGrid(values (B, C, X, Y, Z), ...))`` → ``EncoderOutput`` with one level per
        stage, ``(B, T_s, embed_dim · 2^s)`` at strides ``patch_size · 2^s`` cells.
    """

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), patch_size: int = 4, window_size: int = 4,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1,
                 input_features: Sequence[str] = ("rgb", "alpha"), voxel_size: float = 0.05) -> None:
        super().__init__()
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        if len(depths) != len(num_heads) or not depths or min(depths) < 1:
            raise ValueError(f"Swin3D: depths={depths} and num_heads={num_heads} need one entry >= 1 per stage")
        if embed_dim % 6:
            raise ValueError(f"Swin3D: embed_dim={embed_dim} must be divisible by 6 (the 3D sin-cos position "
                             "embedding splits it into three even parts; NeRF-MAE's swin_b, 128, cannot be built)")
        if patch_size < 1 or window_size < 2:
            raise ValueError(f"Swin3D: patch_size={patch_size} must be >= 1 and window_size={window_size} >= 2")
        unknown = [f for f in input_features if f not in INPUT_FEATURES]
        if unknown or not input_features:
            raise ValueError(f"Swin3D: input_features={list(input_features)}: expected names of "
                             f"{sorted(INPUT_FEATURES)}")
        if not voxel_size > 0:
            raise ValueError(f"Swin3D: voxel_size must be > 0, got {voxel_size}")
        self.embed_dim, self.patch_size, self.window_size = embed_dim, patch_size, window_size
        self.input_features, self.voxel_size = tuple(input_features), float(voxel_size)
        self.in_channels = sum(INPUT_FEATURES[f] for f in self.input_features)
        self.level_channels = tuple(embed_dim * 2 ** s for s in range(len(depths)))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(self.in_channels, embed_dim, patch_size, stride=patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * b / max(total - 1, 1) for b in range(total)]
        self.stages = nn.ModuleList()
        for s, (depth, heads) in enumerate(zip(depths, num_heads)):
            if self.level_channels[s] % heads:
                raise ValueError(f"Swin3D: stage {s} width {self.level_channels[s]} is not divisible by "
                                 f"num_heads[{s}]={heads}")
            start = sum(depths[:s])
            self.stages.append(Swin3DStage(self.level_channels[s], depth, heads, window_size, mlp_ratio,
                                           rates[start:start + depth], self.level_channels[s - 1] if s else None))
        self._init_weights()
        self.no_weight_decay_names = tuple(
            name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table"))
        self._position: dict[tuple, Tensor] = {}

    def _init_weights(self) -> None:
        """The original's: every Linear trunc-normal(0.02) with zero bias, bias tables trunc-normal(0.02);
        the patch conv and the LayerNorms keep PyTorch's defaults."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention3D):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "Swin3D":
        """A :data:`SWIN3D_PRESETS` architecture (``swin_t``, ``swin_s``, ``swin_l``); ``kwargs`` override."""
        if name not in SWIN3D_PRESETS:
            raise ValueError(f"Swin3D preset {name!r}: expected one of {', '.join(SWIN3D_PRESETS)} (swin_b is not "
                             "offered: its embed_dim 128 is not divisible by 6, see pc3d.encoders.swin3d)")
        return cls(**{**SWIN3D_PRESETS[name], **kwargs})

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage.blocks) for stage in self.stages)

    @property
    def spec(self) -> EncoderSpec:
        strides = tuple(self.voxel_size * self.patch_size * 2 ** s for s in range(len(self.stages)))
        return EncoderSpec("grid", self.level_channels, strides, 2 * self.level_channels[-1], self.input_features,
                           self.voxel_size)

    def position_embedding(self, shape: tuple[int, int, int], like: Tensor) -> Tensor:
        """``(n1, n2, n3, embed_dim)`` sin-cos table on ``like``'s device and dtype (cached)."""
        key = (shape, like.device, like.dtype)
        if key not in self._position:
            if len(self._position) >= CACHE_SIZE:
                self._position.pop(next(iter(self._position)))
            self._position[key] = sincos_position_embedding(shape, self.embed_dim).to(like.device, like.dtype)
        return self._position[key]

    def token_shape(self, grid_shape: Sequence[int]) -> tuple[int, int, int]:
        """Stage-0 tokens per axis of a grid of ``grid_shape`` cells (after padding to the patch)."""
        return tuple(-(-int(n) // self.patch_size) for n in grid_shape)  # type: ignore[return-value]

    def embed(self, values: Tensor) -> Tensor:
        """Patch partition + LayerNorm + position: ``values (B, C, X, Y, Z)`` (multiples of the patch)
        → tokens ``(B, n1, n2, n3, E)`` channels last."""
        # a channels-last conv writes its output channels last: the permute below is free
        tokens = self.patch_embed.proj(values.contiguous(memory_format=torch.channels_last_3d)).permute(0, 2, 3, 4, 1)
        tokens = self.patch_embed.norm(tokens.contiguous())
        return tokens + self.position_embedding(tuple(tokens.shape[1:4]), tokens)

    def forward(self, grid: DenseGrid, mask: Tensor | None = None, mask_token: Tensor | None = None
                ) -> EncoderOutput:
        """Encode a batch of grids.

        Args:
            grid: :class:`DenseGrid` with ``values (B, in_channels, X, Y, Z)``.
            mask: ``(B, n1, n2, n3)`` bool stage-0 tokens to mask (True = masked), or None;
                ``n = ⌈size / patch_size⌉`` per axis (:meth:`token_shape`).
            mask_token: ``(embed_dim,)``, replaces masked tokens after the position embedding.
        """
        if grid.values.shape[1] != self.in_channels:
            raise ValueError(f"Swin3D: expected {self.in_channels} grid channels ({', '.join(self.input_features)}), "
                             f"got {grid.values.shape[1]}")
        grid = grid.pad_to(self.patch_size)
        x = self.embed(grid.values)
        if mask is not None:
            if mask_token is None:
                raise ValueError("Swin3D: a mask needs a mask_token")
            if tuple(mask.shape) != tuple(x.shape[:4]):
                raise ValueError(f"Swin3D: mask must be (B, n1, n2, n3) = {tuple(x.shape[:4])}, got {tuple(mask.shape)}")
            x = torch.where(mask[..., None], mask_token.to(x.dtype), x)
        valid = F.max_pool3d(grid.valid[:, None].float(), self.patch_size)[:, 0] > 0
        levels = []
        cell = float(grid.cell_size)
        for s, stage in enumerate(self.stages):
            if s > 0:
                valid = F.max_pool3d(valid[:, None].float(), 2, ceil_mode=True)[:, 0] > 0
            x = stage(x)
            levels.append(FeatureLevel.from_dense(x.permute(0, 4, 1, 2, 3), valid,
                                                  cell * self.patch_size * 2 ** s, grid.origin))
        last = levels[-1]
        return EncoderOutput(levels, max_mean_pool(last.features, last.valid))
