"""Point-MAE (Pang et al., ECCV 2022): masked point-patch autoencoding on objects.

Recipe (defaults in ``configs/method/point_mae.yaml`` are the paper's):
- group 1024 points into 64 patches of 32 (FPS + kNN), mask 60 % of the patches
  (``rand``: uniformly per sample; ``block``: the patches nearest a random centre);
- the encoder (a :class:`~pc3d.encoders.PointViT`) sees only the visible tokens;
- the decoder (depth 4, same width, 6 heads) gets visible tokens followed by one
  learnable mask token per masked patch, each with the position embedding of its
  centre, and a linear head predicts ``group_size × 3`` coordinates per masked patch;
- loss: Chamfer-L2 (sum of the two directional mean squared nearest distances)
  between predicted and true masked patches.

Departure from the reference code: ``embed_visible_only=True`` (default) runs the
mini-PointNet on visible patches only, since masked tokens are discarded before
the encoder. Outputs and gradients of the visible tokens are unchanged except that
the tokenizer's BatchNorm statistics come from visible patches only (same
distribution, 40 % of the points); set it to False for the reference behaviour.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pc3d.encoders.layers import PositionalBlocks, positional_mlp
from pc3d.encoders.point_vit import PointViT
from pc3d.errors import ConfigError
from pc3d.methods.base import PretrainingMethod
from pc3d.ops import chamfer_l2, gather_points


def _init_xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def per_sample_uniform(sample_seeds: Tensor, size: int, device: torch.device | str) -> Tensor:
    """``sample_seeds (B,)`` int64 → ``(B, size)`` uniform [0, 1) noise; row b depends on ``sample_seeds[b]`` only.

    Drawn on the CPU (a few hundred numbers per sample), so the masks do not depend on the
    device or on how a global batch is split over processes.
    """
    rows = [torch.rand(size, generator=torch.Generator().manual_seed(int(s))) for s in sample_seeds.tolist()]
    return torch.stack(rows).to(device)


def random_patch_mask(batch: int, groups: int, ratio: float, device: torch.device | str,
                      noise: Tensor | None = None) -> Tensor:
    """``(B, G)`` bool, True = masked; exactly ``int(ratio * G)`` masked per sample, uniformly chosen.

    ``noise``: optional ``(B, G)`` uniform noise to rank (else drawn from the global torch RNG).
    """
    num_masked = int(ratio * groups)
    if noise is None:
        noise = torch.rand(batch, groups, device=device)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, groups, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :num_masked], True)
    return mask


def block_patch_mask(centers: Tensor, ratio: float, noise: Tensor | None = None) -> Tensor:
    """``centers (B, G, 3)`` → ``(B, G)`` bool: mask the ``int(ratio * G)`` patches nearest a random centre.

    ``noise``: optional ``(B, 1+)`` uniform noise choosing the centre (else the global torch RNG).
    """
    batch, groups, _ = centers.shape
    num_masked = int(ratio * groups)
    if noise is None:
        seed_idx = torch.randint(groups, (batch, 1), device=centers.device)
    else:
        seed_idx = (noise[:, :1] * groups).long().clamp_max(groups - 1)
    seed = gather_points(centers, seed_idx)  # (B, 1, 3)
    order = (centers - seed).square().sum(-1).argsort(dim=1)
    mask = torch.zeros(batch, groups, dtype=torch.bool, device=centers.device)
    mask.scatter_(1, order[:, :num_masked], True)
    return mask


def select_tokens(x: Tensor, keep: Tensor) -> Tensor:
    """Rows of ``x (B, G, ...)`` where ``keep (B, G)`` is True; every sample keeps the same count."""
    batch = x.shape[0]
    return x[keep].reshape(batch, -1, *x.shape[2:])


class PointMAE(PretrainingMethod):
    """Point-MAE pretraining model: encoder + decoder + Chamfer loss.

    Args:
        encoder: the point-ViT being pretrained (its weights are what is kept).
        mask_ratio: fraction of patches masked (paper 0.6).
        mask_type: ``"rand"`` or ``"block"``.
        decoder_depth, decoder_num_heads, decoder_drop_path_rate: decoder size (paper 4, 6, 0.1).
        embed_visible_only: embed only visible patches (see module docstring).
    """

    def __init__(self, encoder: PointViT, mask_ratio: float = 0.6, mask_type: str = "rand",
                 decoder_depth: int = 4, decoder_num_heads: int = 6,
                 decoder_drop_path_rate: float = 0.1, embed_visible_only: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, PointViT):
            raise ConfigError(f"Point-MAE pretrains a point-patch ViT (encoder=point_vit), got {type(encoder).__name__}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        masked = int(mask_ratio * encoder.num_groups)
        if not 0 < masked < encoder.num_groups:
            raise ValueError(f"mask_ratio={mask_ratio} masks {masked} of the {encoder.num_groups} patches; it must mask "
                             "at least one and leave at least one visible")
        if mask_type not in ("rand", "block"):
            raise ValueError(f"mask_type must be 'rand' or 'block', got {mask_type!r}")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.mask_type = mask_type
        self.embed_visible_only = embed_visible_only
        dim = encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = positional_mlp(dim)
        self.decoder = PositionalBlocks(dim, decoder_depth, decoder_num_heads, 4.0, False, decoder_drop_path_rate)
        self.decoder_norm = nn.LayerNorm(dim)
        self.reconstruction_head = nn.Linear(dim, 3 * encoder.group_size)
        # The reference initialises decoder blocks with xavier-uniform and leaves the decoder's
        # position MLP and reconstruction head at PyTorch's default init; matched for faithfulness.
        self.decoder.apply(_init_xavier)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    input_kinds = ("points",)
    no_weight_decay_names = ("mask_token",)

    def make_mask(self, centers: Tensor, sample_seeds: Tensor | None = None) -> Tensor:
        """``centers (B, G, 3)`` → mask ``(B, G)`` bool, True = masked.

        With ``sample_seeds (B,)`` each sample's mask is a function of its seed alone (the
        trainer provides them, so masks survive resume and any split over processes);
        without, masks come from the global torch RNG.
        """
        batch, groups, _ = centers.shape
        noise = None if sample_seeds is None else per_sample_uniform(sample_seeds, groups, centers.device)
        if self.mask_type == "block":
            return block_patch_mask(centers, self.mask_ratio, noise)
        return random_patch_mask(batch, groups, self.mask_ratio, centers.device, noise)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch["points"] (B, N, 3)``, optional ``batch["sample_seed"] (B,)`` → ``{"loss": scalar}``."""
        points = batch["points"]
        neighborhoods, centers = self.encoder.group(points)
        mask = self.make_mask(centers, batch.get("sample_seed"))
        visible = ~mask
        if self.embed_visible_only:
            tokens = self.encoder.patch_embed(select_tokens(neighborhoods, visible))
        else:
            tokens = select_tokens(self.encoder.patch_embed(neighborhoods), visible)
        encoded, _, _ = self.encoder.encode(tokens, select_tokens(centers, visible))

        masked_centers = select_tokens(centers, mask)
        batch_size, num_masked, _ = masked_centers.shape
        decoder_in = torch.cat([encoded, self.mask_token.expand(batch_size, num_masked, -1)], dim=1)
        pos = self.decoder_pos_embed(torch.cat([select_tokens(centers, visible), masked_centers], dim=1))
        decoded, _ = self.decoder(decoder_in, pos)
        predicted = self.reconstruction_head(self.decoder_norm(decoded[:, -num_masked:]))
        predicted = predicted.reshape(batch_size * num_masked, -1, 3)
        target = select_tokens(neighborhoods, mask).reshape(batch_size * num_masked, -1, 3)
        # the loss in float32 also under bf16 autocast
        return {"loss": chamfer_l2(predicted.float(), target.float())}
