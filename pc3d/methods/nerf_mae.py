"""NeRF-MAE (Irshad et al., ECCV 2024): masked autoencoding of NeRF radiance grids with a 3D Swin.

Recipe (defaults in ``configs/method/nerf_mae.yaml`` are the paper's, from the authors' code at
github.com/zubair-irshad/NeRF-MAE @ 721b5ee):

- **Input**: radiance grids ``(4, X, Y, Z)`` = R, G, B, alpha in [0, 1] (alpha from the NeRF's
  density), zero-padded at the high end of every axis to ``grid_size``³ (160; a larger axis to the
  next multiple of 32, which the decoder needs — the original would crop it). The target is the
  padded input itself.
- **Masking** (SimMIM-style, on tokens): after the patch embedding and position embedding of
  the :class:`~pc3d.encoders.swin3d.Swin3D`, the token grid is cut into cubes of ``mask_unit``³
  tokens (4³ tokens = 16³ cells); each cube is masked with probability ``mask_ratio`` (a
  Bernoulli draw per cube, not a fixed count; trailing partial cubes are never masked) and its
  tokens are replaced by a learnable mask token. The encoder sees every token.
- **Decoder** (UNETR-like, the original's, so its weights import): from the deepest level,
  three up-blocks ``ConvTranspose3d(k=2, s=2)`` → concatenate the encoder level of that
  resolution → residual block (two 3³ convs with InstanceNorm (no affine), LeakyReLU 0.01, a
  1³ conv + InstanceNorm shortcut), then one up-block by ``patch_size`` without skip to
  ``embed_dim / 2`` channels at cell resolution, and a 1³ conv to 4 channels (RGB and an alpha
  logit).
- **Loss** (the original's reductions, pooled over the whole batch): ``loss_rgb`` = sum of the
  squared RGB error over the cells with target alpha > ``alpha_threshold`` — masked *or not* —
  divided by the number of those cells (summed, not averaged, over the 3 channels);
  ``loss_alpha`` = squared error of ``sigmoid(alpha logit)`` over the valid cells of masked
  tokens, divided by their count; ``loss = loss_rgb + loss_alpha``.
- **Metrics** (outputs beside the loss): ``psnr`` = ``−10 log10`` of the mean squared RGB error
  over cells with alpha > ``alpha_threshold`` (the original's evaluation), ``psnr_masked`` the
  same over those cells of masked tokens only, ``masked_fraction``.

Departures (documented, deliberate):
- The mask is drawn **per sample** from ``batch["sample_seed"]`` (a function of the seed and
  the token grid shape only), so runs resume exactly and a batch split over processes draws
  the same masks; the original draws one mask per batch (per GPU) from Python's global
  ``random``.
- Cells outside ``grid.valid`` are left out of the RGB term too (the original's padding has
  alpha 0, so on its data this changes nothing); an empty mask gives a 0 term instead of NaN.
- Weight decay: pc3d's groups (no decay for biases, norms, the relative position bias tables
  and the mask token); the original decays every parameter. ``decay_everything=True`` restores
  that (with wd 1e-3 and lr 1e-4 the two differ little).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.data.pictures import orbit_cameras, tile_panels
from pc3d.encoders.inputs import EncoderInputDataset
from pc3d.encoders.swin3d import Swin3D
from pc3d.errors import ConfigError, DataFormatError
from pc3d.methods.base import PretrainingMethod
from pc3d.ops.dense_grid import DenseGrid
from pc3d.ops.volume_render import render_alpha_grid
from pc3d.utils.atomic import atomic_write_png, make_dirs


def cube_token_mask(sample_seeds: Tensor, token_shape: Sequence[int], unit: int, ratio: float,
                    device: torch.device | str = "cpu") -> Tensor:
    """Mask cubes of ``unit``³ tokens, each with probability ``ratio``, independently per sample.

    Args:
        sample_seeds: ``(B,)`` int64; row ``b`` depends only on ``sample_seeds[b]`` and ``token_shape``.
        token_shape: ``(n1, n2, n3)`` tokens per axis; the ``n % unit`` trailing tokens of an axis
            are never masked.
    Returns:
        ``(B, n1, n2, n3)`` bool, True = masked.
    """
    n1, n2, n3 = (int(n) for n in token_shape)
    cubes = (n1 // unit, n2 // unit, n3 // unit)
    count = cubes[0] * cubes[1] * cubes[2]
    rows = [torch.rand(count, generator=torch.Generator().manual_seed(int(s))) < ratio
            for s in sample_seeds.tolist()]  # on the CPU: the mask does not depend on the device
    mask = torch.stack(rows).reshape(len(rows), *cubes) if rows else torch.zeros(0, *cubes, dtype=torch.bool)
    for axis in (1, 2, 3):
        mask = mask.repeat_interleave(unit, dim=axis)
    mask = F.pad(mask, (0, n3 - mask.shape[3], 0, n2 - mask.shape[2], 0, n1 - mask.shape[1]))
    return mask.to(device)


def instance_norm(x: Tensor) -> Tensor:
    """InstanceNorm3d without affine or running statistics (the decoder's, eps 1e-5)."""
    return F.instance_norm(x, eps=1e-5)


class UpBlock(nn.Module):
    """``ConvTranspose3d(k, stride k)`` → ``[upsampled ‖ skip]`` → residual block of two 3³ convs.

    Keys ``upsample``, ``conv1``, ``conv2`` and ``shortcut`` (a 1³ conv, present when the
    concatenation changes the width). The conv biases in front of the InstanceNorms cancel out
    but are kept, as the original's checkpoints have them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, skip_channels: int = 0,
                 negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        joined = out_channels + skip_channels
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, kernel, stride=kernel)
        self.conv1 = nn.Conv3d(joined, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv3d(joined, out_channels, 1) if joined != out_channels else None

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``x (B, C_in, n1, n2, n3)``, ``skip (B, C_skip, k·n1, k·n2, k·n3)`` → ``(B, C_out, k·n1, ...)``."""
        y = self.upsample(x)
        if skip is not None:
            y = torch.cat([y, skip], dim=1)
        out = F.leaky_relu(instance_norm(self.conv1(y)), self.negative_slope)
        out = instance_norm(self.conv2(out))
        residual = y if self.shortcut is None else instance_norm(self.shortcut(y))
        return F.leaky_relu(out + residual, self.negative_slope)


class NeRFMAEDecoder(nn.Module):
    """NeRF-MAE's decoder: up-blocks with skips from the deepest level, one up-block to cell
    resolution, a 1³ conv head (see the module docstring).

    Args:
        level_channels: encoder widths, finest first (``E, 2E, 4E, 8E``).
        patch_size: cells per stage-0 token edge (the last up-block's factor).
        out_channels: predicted channels (R, G, B, alpha logit).
    """

    def __init__(self, level_channels: Sequence[int], patch_size: int, out_channels: int = 4) -> None:
        super().__init__()
        widths = list(level_channels)
        self.blocks = nn.ModuleList(UpBlock(widths[s], widths[s - 1], 2, widths[s - 1])
                                    for s in range(len(widths) - 1, 0, -1))
        self.blocks.append(UpBlock(widths[0], widths[0] // 2, patch_size))
        self.head = nn.Conv3d(widths[0] // 2, out_channels, 1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """``levels``: ``(B, C_s, n1/2^s, n2/2^s, n3/2^s)`` per stage, finest first → ``(B, out, X, Y, Z)``."""
        x = levels[-1]
        for block, skip in zip(self.blocks, reversed(levels[:-1])):
            x = block(x, skip)
        return self.head(self.blocks[-1](x))


class NeRFMAE(PretrainingMethod):
    """NeRF-MAE pretraining: token masking, the Swin3D encoder, the UNETR-like decoder and the
    opacity-aware loss (see the module docstring).

    Args:
        encoder: a :class:`Swin3D` on ``("rgb", "alpha")`` grids.
        mask_ratio: probability that a cube of tokens is masked (paper 0.75).
        mask_unit: mask cube edge in stage-0 tokens (paper 4).
        grid_size: every grid is zero-padded to at least this cube (paper 160); None pads each
            axis only to the next multiple of ``patch_size · 2^(stages − 1)``.
        alpha_threshold: cells with target alpha above it carry the RGB loss (paper 0.01).
        decay_everything: weight-decay every parameter, as the original's AdamW does.
    """

    def __init__(self, encoder: Swin3D, mask_ratio: float = 0.75, mask_unit: int = 4, grid_size: int | None = 160,
                 alpha_threshold: float = 0.01, decay_everything: bool = False) -> None:
        super().__init__()
        if not isinstance(encoder, Swin3D):
            raise ConfigError(f"NeRF-MAE pretrains a 3D Swin (encoder=swin3d), got {type(encoder).__name__}")
        if tuple(encoder.input_features) != ("rgb", "alpha"):
            raise ConfigError(f"NeRF-MAE reconstructs R, G, B, alpha grids; the encoder takes "
                              f"{list(encoder.input_features)} (set encoder.input_features=[rgb,alpha])")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio={mask_ratio}: expected 0 < mask_ratio < 1")
        if mask_unit < 1:
            raise ConfigError(f"method.mask_unit={mask_unit}: expected >= 1 token")
        self.multiple = encoder.patch_size * 2 ** (len(encoder.stages) - 1)
        if grid_size is not None and (grid_size < 1 or grid_size % self.multiple):
            raise ConfigError(f"method.grid_size={grid_size}: expected a multiple of {self.multiple} (patch_size "
                              f"{encoder.patch_size} × 2^{len(encoder.stages) - 1} stages) or null")
        self.encoder = encoder
        self.mask_ratio, self.mask_unit = float(mask_ratio), int(mask_unit)
        self.grid_size = None if grid_size is None else int(grid_size)
        self.alpha_threshold = float(alpha_threshold)
        self.decay_everything = bool(decay_everything)
        self.mask_token = nn.Parameter(torch.zeros(encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = NeRFMAEDecoder(encoder.level_channels, encoder.patch_size, encoder.in_channels)
        self._shown: dict[str, Any] | None = None  # the last batch's grids, mask, prediction, for log_artifacts

    input_kinds = ("grid",)
    no_weight_decay_names = ("mask_token",)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        if self.decay_everything:
            return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]
        return super().param_groups(weight_decay)

    def pretrain_dataset(self, data: Any, augment: bool = True) -> EncoderInputDataset:
        """The radiance-grid samples of ``data.grid_dataset(augment=...)`` with the encoder input added
        (``batch["input"]`` is a :class:`DenseGrid`); augmentation is the data node's."""
        make = getattr(data, "grid_dataset", None)
        if not callable(make):
            raise ConfigError(f"method=nerf_mae needs radiance grids: a data node with grid_dataset(), got "
                              f"{type(data).__name__}")
        return EncoderInputDataset(make(augment=augment), self.encoder.spec)

    # ------------------------------------------------------------ pieces
    def batch_grid(self, batch: Mapping[str, Any]) -> DenseGrid:
        """The batch's grids: ``batch["input"]`` (a :class:`DenseGrid`) or ``batch["grid"] (B, 4, X, Y, Z)``
        with optional ``grid_valid``, ``grid_origin``, ``grid_cell_size``."""
        grid = batch.get("input")
        if isinstance(grid, DenseGrid):
            return grid
        values = batch.get("grid")
        if not isinstance(values, Tensor) or values.dim() != 5:
            raise DataFormatError("NeRF-MAE batches need batch['input'] (a DenseGrid of R, G, B, alpha cells) or "
                                  "batch['grid'] (B, 4, X, Y, Z)")
        valid = batch.get("grid_valid")
        if valid is None:
            valid = torch.ones(values.shape[0], *values.shape[2:], dtype=torch.bool, device=values.device)
        origin = batch.get("grid_origin")
        if origin is None:
            origin = values.new_zeros(values.shape[0], 3)
        cell = batch.get("grid_cell_size", self.encoder.voxel_size)
        cell = float(cell.reshape(-1)[0]) if isinstance(cell, Tensor) else float(cell)
        return DenseGrid(values, valid.to(torch.bool), origin, cell)

    def pad_grid(self, grid: DenseGrid) -> DenseGrid:
        """Zero-pad to ``grid_size``³ (axes larger than that, and ``grid_size=None``, to the next
        multiple the decoder needs); padded cells are invalid."""
        target = []
        for size in grid.shape:
            size = -(-size // self.multiple) * self.multiple
            target.append(max(size, self.grid_size) if self.grid_size else size)
        pads = [t - s for t, s in zip(target, grid.shape)]
        if not any(pads):
            return grid
        spec = (0, pads[2], 0, pads[1], 0, pads[0])
        return DenseGrid(F.pad(grid.values, spec), F.pad(grid.valid, spec), grid.origin, grid.cell_size)

    def token_mask(self, sample_seeds: Tensor, grid_shape: Sequence[int], device: torch.device | str) -> Tensor:
        """``(B, n1, n2, n3)`` bool masked tokens of a padded grid (:func:`cube_token_mask`)."""
        return cube_token_mask(sample_seeds, self.encoder.token_shape(grid_shape), self.mask_unit, self.mask_ratio,
                               device)

    def predict(self, grid: DenseGrid, mask: Tensor) -> Tensor:
        """Decoder output ``(B, 4, X, Y, Z)`` (R, G, B, alpha logit) of a padded grid with ``mask (B, n1, n2, n3)``."""
        encoded = self.encoder(grid, mask=mask, mask_token=self.mask_token)
        return self.decoder([level.to_dense()[0] for level in encoded.levels])

    def masked_cells(self, grid: DenseGrid, mask: Tensor) -> Tensor:
        """``(B, X, Y, Z)`` bool: the valid cells of ``grid`` under a masked token of ``mask (B, n1, n2, n3)``."""
        p = self.encoder.patch_size
        cells = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).repeat_interleave(p, 3)
        x, y, z = grid.values.shape[2:]
        return cells[:, :x, :y, :z] & grid.valid

    def losses(self, grid: DenseGrid, prediction: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The loss terms and metrics of a prediction (see the module docstring); float32 at least."""
        dtype = torch.promote_types(prediction.dtype, torch.float32)
        prediction, target = prediction.to(dtype), grid.values.to(dtype)
        alpha = target[:, 3]
        masked_cells = self.masked_cells(grid, mask)
        colored = (alpha > self.alpha_threshold) & grid.valid
        rgb_error = (prediction[:, :3] - target[:, :3]).square().sum(dim=1)  # (B, X, Y, Z), summed over R, G, B
        colored_count = colored.sum().clamp_min(1)
        loss_rgb = (rgb_error * colored).sum() / colored_count
        loss_alpha = ((torch.sigmoid(prediction[:, 3]) - alpha).square() * masked_cells).sum() / \
            masked_cells.sum().clamp_min(1)
        both = colored & masked_cells
        masked_rgb = (rgb_error * both).sum().detach() / (3 * both.sum().clamp_min(1))
        return {"loss": loss_rgb + loss_alpha, "loss_rgb": loss_rgb.detach(), "loss_alpha": loss_alpha.detach(),
                "psnr": -10.0 * torch.log10(loss_rgb.detach() / 3), "psnr_masked": -10.0 * torch.log10(masked_rgb),
                "masked_fraction": mask.float().mean()}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``batch["input"]`` (or ``batch["grid"]``), ``batch["sample_seed"] (B,)`` → ``{"loss", "loss_rgb",
        "loss_alpha", "psnr", "psnr_masked", "masked_fraction"}``.

        Without ``sample_seed`` (evaluation outside the Trainer) the seeds come from the global torch RNG.
        """
        self._shown = None  # the last batch's tensors go before this one's are made
        grid = self.pad_grid(self.batch_grid(batch))
        seeds = batch.get("sample_seed")
        if seeds is None:
            seeds = torch.randint(0, 2 ** 62, (grid.values.shape[0],))
        mask = self.token_mask(seeds, grid.shape, grid.values.device)
        prediction = self.predict(grid, mask)
        self._shown = {"grid": grid, "mask": mask, "prediction": prediction.detach()}
        return self.losses(grid, prediction, mask)

    def log_artifacts(self, step: int, out_dir: Path, writer: Any) -> None:
        """``grid_STEP.png``: the last training batch's first grid volume-rendered from two cameras; left to
        right, the grid, the grid with its masked cells emptied, the reconstruction (what ``pc3d viz grid``
        draws). Also to TensorBoard."""
        if self._shown is None:
            return
        padded, mask = self._shown["grid"], self._shown["mask"]
        hidden = self.masked_cells(padded, mask)[0].cpu()
        valid = padded.valid[0].cpu()
        cells = valid.nonzero()
        high = (cells.max(dim=0).values + 1).tolist() if len(cells) else list(valid.shape)
        crop = (slice(None), slice(0, high[0]), slice(0, high[1]), slice(0, high[2]))
        grid, hidden = padded.values[0].detach().float().cpu()[crop], hidden[crop[1:]]
        prediction = self._shown["prediction"][0].float().cpu()[crop]
        box = torch.tensor([[0.0, 0.0, 0.0], [float(h) for h in high]])
        picture = grid_picture(grid, box, hidden, prediction, views=2, width=200, height=200)
        make_dirs(out_dir)
        atomic_write_png(out_dir / f"grid_{step:08d}.png", picture)
        if writer is not None:
            writer.add_image("nerf_mae/reconstruction", picture, step, dataformats="HWC")


def grid_picture(grid: Tensor, box: Tensor, hidden: Tensor | None = None, prediction: Tensor | None = None,
                 views: int = 2, width: int = 200, height: int = 200, fov: float = 60.0, elevation: float = 45.0
                 ) -> np.ndarray:
    """``(views·height, P·width, 3)`` float32: ``grid (4, X, Y, Z)`` (R, G, B, alpha over ``box (2, 3)``)
    volume-rendered (:func:`~pc3d.ops.volume_render.render_alpha_grid`) from ``views`` orbit cameras; with
    ``hidden (X, Y, Z)`` bool and ``prediction (4, X, Y, Z)`` (R, G, B, alpha logit, the decoder's output)
    also the grid with the hidden cells emptied and the reconstruction (``P = 3``, else ``1``)."""
    panels = [grid]
    if hidden is not None and prediction is not None:
        panels += [grid * ~hidden, torch.cat([prediction[:3].clamp(0, 1), torch.sigmoid(prediction[3:])])]
    corners = np.array(np.meshgrid(*box.numpy().T, indexing="ij")).reshape(3, -1).T
    viewmats, Ks = orbit_cameras(corners, views, width, height, fov, elevation)
    drawn = [render_alpha_grid(panel.float(), box, torch.from_numpy(viewmats), torch.from_numpy(Ks), width,
                               height).numpy() for panel in panels]
    return tile_panels(drawn)
