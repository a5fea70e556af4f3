"""Transformer building blocks shared by the point-ViT, the Point-MAE decoder, the 3D Swin and the sparse UNet's
sliding-window attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal(0.02) linear/conv weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``x (B, T, C)`` → ``(B, T, C)``; ``key_mask (B, T)`` bool leaves out False keys (padding)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))``, then ``+ DropPath(MLP(LN(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PositionalBlocks(nn.Module):
    """A stack of blocks with a positional embedding added before every block (Point-MAE style)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, rate) for rate in rates
        )

    def forward(self, x: Tensor, pos: Tensor, return_layers: tuple[int, ...] = ()) -> tuple[Tensor, list[Tensor]]:
        """``x, pos (B, T, C)`` → final ``(B, T, C)`` and the outputs of blocks in ``return_layers``."""
        kept = []
        wanted = {i % len(self.blocks) for i in return_layers} if self.blocks else set()
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in wanted:
                kept.append(x)
        return x, kept


def positional_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Point-MAE's position embedding: MLP(3 → 128 → dim, GELU) of a patch centre."""
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, segment: Tensor, radius: int, block: int = 128,
                             max_scores: int = 1 << 24, dropout_p: float = 0.0) -> Tensor:
    """Local attention along a sequence: query ``i`` attends keys ``j`` with ``|i - j| <= radius`` of its segment.

    Flash-attention's ``window_size=(radius, radius)`` over variable-length sequences (MSM's
    serialized attention), computed in blocks of ``block`` queries, each against the
    ``block + 2·radius`` keys around it, so memory grows with ``N · radius``, not ``N²``.

    Args:
        q, k, v: ``(N, H, D)``, rows ordered so that each segment is contiguous.
        segment: ``(N,)`` segment (sample) of every row; queries never see another segment's keys.
        radius: keys on either side (``window_size // 2``).
        block: queries per block; max_scores: attention scores computed at once (bounds memory).
        dropout_p: dropout of the attention weights (training only; the caller decides).
    Returns:
        ``(N, H, D)``, softmax scale ``1 / sqrt(D)``.
    """
    n, heads, dim = q.shape
    if n == 0:
        return q.new_zeros(q.shape)
    block = max(1, min(block, n))
    width = block + 2 * radius
    num_blocks = -(-n // block)
    device = q.device
    rows = (torch.arange(num_blocks, device=device) * block)[:, None] + torch.arange(block, device=device)
    columns = rows[:, :1] - radius + torch.arange(width, device=device)
    rows, inside = rows.clamp_max(n - 1), (columns >= 0) & (columns < n)  # padded queries repeat the last one
    columns = columns.clamp(0, n - 1)
    per_group = max(1, max_scores // (heads * block * width))
    out = q.new_empty(num_blocks, block, heads, dim)
    for start in range(0, num_blocks, per_group):
        r, c, ok = rows[start:start + per_group], columns[start:start + per_group], inside[start:start + per_group]
        allowed = ok[:, None, :] & ((r[:, :, None] - c[:, None, :]).abs() <= radius) \
            & (segment[r][:, :, None] == segment[c][:, None, :])
        attended = F.scaled_dot_product_attention(q[r].transpose(1, 2), k[c].transpose(1, 2), v[c].transpose(1, 2),
                                                  attn_mask=allowed[:, None], dropout_p=dropout_p)
        out[start:start + per_group] = attended.transpose(1, 2)
    return out.reshape(num_blocks * block, heads, dim)[:n]
