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

Pictures (:func:`reconstruction_picture`; the ``log_artifacts`` hook writes one of the last training batch's
first sample, ``recon_STEP.png``, also to TensorBoard; ``pc3d viz recon`` draws any cloud): four panels per
view, left to right: the input, the visible patches (blue), the visible and the masked patches' true points
(orange), the visible and the predicted points of the masked patches (orange).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pc3d.data.pictures import orbit_cameras, render_points, tile_panels
from pc3d.encoders.layers import PositionalBlocks, positional_mlp
from pc3d.encoders.point_vit import PointViT
from pc3d.errors import ConfigError
from pc3d.methods.base import PretrainingMethod
from pc3d.ops import chamfer_l2, gather_points, knn
from pc3d.utils.atomic import atomic_write_png, make_dirs


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


def patch_mask(centers: Tensor, ratio: float, mask_type: str = "rand", sample_seeds: Tensor | None = None) -> Tensor:
    """``centers (B, G, 3)`` → ``(B, G)`` bool, True = masked: :func:`random_patch_mask` (``"rand"``) or
    :func:`block_patch_mask` (``"block"``), from ``sample_seeds (B,)`` (:func:`per_sample_uniform`) when given,
    else from the global torch RNG."""
    batch, groups, _ = centers.shape
    noise = None if sample_seeds is None else per_sample_uniform(sample_seeds, groups, centers.device)
    if mask_type == "block":
        return block_patch_mask(centers, ratio, noise)
    return random_patch_mask(batch, groups, ratio, centers.device, noise)


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
        self._shown: Reconstruction | None = None  # the last batch's first sample, for log_artifacts

    input_kinds = ("points",)
    no_weight_decay_names = ("mask_token",)

    def make_mask(self, centers: Tensor, sample_seeds: Tensor | None = None) -> Tensor:
        """``centers (B, G, 3)`` → mask ``(B, G)`` bool, True = masked.

        With ``sample_seeds (B,)`` each sample's mask is a function of its seed alone (the
        trainer provides them, so masks survive resume and any split over processes);
        without, masks come from the global torch RNG.
        """
        return patch_mask(centers, self.mask_ratio, self.mask_type, sample_seeds)

    def reconstruct(self, batch: dict[str, Tensor]) -> "Reconstruction":
        """``batch["points"] (B, N, 3)``, optional ``batch["sample_seed"] (B,)`` → the patches, the mask and the
        decoder's predicted points of every masked patch (:class:`Reconstruction`)."""
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
        return Reconstruction(neighborhoods, centers, mask, predicted.reshape(batch_size, num_masked, -1, 3))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch["points"] (B, N, 3)``, optional ``batch["sample_seed"] (B,)`` → ``{"loss": scalar}``."""
        self._shown = None  # the last batch's tensors go before this one's are made
        rec = self.reconstruct(batch)
        self._shown = rec.first()
        return {"loss": reconstruction_loss(rec)}

    def log_artifacts(self, step: int, out_dir: Path, writer: Any) -> None:
        """``recon_STEP.png``: the last training batch's first sample (:func:`reconstruction_picture`, two views),
        also to TensorBoard."""
        if self._shown is None:
            return
        picture = reconstruction_picture(self._shown.to_cpu(), views=2)
        make_dirs(out_dir)
        atomic_write_png(out_dir / f"recon_{step:08d}.png", picture)
        if writer is not None:
            writer.add_image("point_mae/reconstruction", picture, step, dataformats="HWC")


@dataclass
class Reconstruction:
    """What Point-MAE reconstructs.

    Attributes:
        neighborhoods: ``(B, G, S, 3)`` every patch's points relative to its centre.
        centers: ``(B, G, 3)`` patch centres.
        mask: ``(B, G)`` bool, True = masked.
        predicted: ``(B, M, S, 3)`` predicted points of the masked patches (in patch order), relative to their
            centres.
    """

    neighborhoods: Tensor
    centers: Tensor
    mask: Tensor
    predicted: Tensor

    def first(self) -> "Reconstruction":
        """The first sample, detached (kept where it is: no device synchronisation per training step)."""
        return Reconstruction(*(t[:1].detach() for t in (self.neighborhoods, self.centers, self.mask, self.predicted)))

    def to_cpu(self) -> "Reconstruction":
        """On the CPU, coordinates in float32 (what a picture needs)."""
        return Reconstruction(*(t.float().cpu() if t.is_floating_point() else t.cpu()
                                for t in (self.neighborhoods, self.centers, self.mask, self.predicted)))


def reconstruction_loss(rec: Reconstruction) -> Tensor:
    """Chamfer-L2 between the predicted and the true points of every masked patch (float32, also under
    bf16 autocast)."""
    batch_size, num_masked, size, _ = rec.predicted.shape
    predicted = rec.predicted.reshape(batch_size * num_masked, size, 3)
    target = select_tokens(rec.neighborhoods, rec.mask).reshape(batch_size * num_masked, -1, 3)
    return chamfer_l2(predicted.float(), target.float())


VISIBLE_COLOR, MASKED_COLOR, INPUT_COLOR = (0.25, 0.55, 1.0), (1.0, 0.55, 0.1), (0.85, 0.85, 0.85)


def reconstruction_panels(rec: Reconstruction, points: np.ndarray | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four panels of sample 0 of ``rec`` as ``(points (P, 3), colors (P, 3))``: the input (``points``, or
    the patches' points), the visible patches, visible + masked truth, visible + predicted (see the module
    docstring)."""
    mask = rec.mask[0].numpy()
    patches = (rec.neighborhoods[0] + rec.centers[0][:, None]).numpy()
    predicted = (rec.predicted[0] + rec.centers[0][rec.mask[0]][:, None]).numpy()
    visible, truth = patches[~mask].reshape(-1, 3), patches[mask].reshape(-1, 3)
    predicted = predicted.reshape(-1, 3)
    source = patches.reshape(-1, 3) if points is None else np.asarray(points, np.float32)

    def paint(*parts: tuple[np.ndarray, tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([p for p, _ in parts]).astype(np.float32),
                np.concatenate([np.tile(np.asarray(c, np.float32), (len(p), 1)) for p, c in parts]))

    return [paint((source, INPUT_COLOR)), paint((visible, VISIBLE_COLOR)),
            paint((visible, VISIBLE_COLOR), (truth, MASKED_COLOR)),
            paint((visible, VISIBLE_COLOR), (predicted, MASKED_COLOR))]


def reconstruction_picture(rec: Reconstruction, points: np.ndarray | None = None, views: int = 3, width: int = 240,
                           height: int = 240, point_size: float = 1.0, fov: float = 40.0, elevation: float = 30.0
                           ) -> np.ndarray:
    """``(views·height, 4·width, 3)`` float32: one row per view (:func:`~pc3d.data.scene_views.orbit_cameras`
    around the input), the four panels of :func:`reconstruction_panels` side by side; every point of every
    panel is drawn as wide as ``point_size / 2`` times the input's median nearest-neighbour distance."""
    panels = reconstruction_panels(rec, points)
    source = torch.from_numpy(panels[0][0])[None]
    dist2, _ = knn(source, source, min(2, source.shape[1]))
    radius = 0.5 * point_size * max(float(dist2[0, :, -1].sqrt().median()), 1e-6)
    viewmats, Ks = orbit_cameras(panels[0][0], views, width, height, fov=fov, elevation=elevation)
    drawn = [render_points(cloud, colors, viewmats, Ks, width, height, radius=radius) for cloud, colors in panels]
    return tile_panels(drawn)
