"""Gaussian2Scene (Liu et al., 2025): two-stage pretraining of a scene encoder with posed views and 3DGS.

No code of the paper is public. What it states: stage 1 is a dual-branch masked autoencoder of
points and posed images sharing one fusing encoder and decoder; stage 2 supervises the encoder by
the **positions of the fitted Gaussian primitives** and by **RGB images rendered** with a
differentiable Gaussian rasterizer from Gaussians the network predicts, starting from stage 1's
encoder. ``configs/method/gaussian2scene.yaml`` holds both recipes (``method.stage=1|2``, built
by :func:`gaussian2scene`); stage 2 starts from a stage-1 run with ``init_encoder=RUN``. Every
choice below is pc3d's and a config value.

Stage 1 (:class:`PointImageMAE`, a :class:`~pc3d.encoders.PointViT`):

- **Point branch** (Point-MAE's): FPS + kNN patches, the encoder's mini-PointNet, ``mask_ratio``
  (0.6) of the patches masked per sample (seeded), Chamfer-L2 reconstruction of the masked patches.
- **Image branch**: every patch centre is projected into the sample's views (:func:`view_patches`);
  it is *seen* in a view when it falls inside the frame in front of the camera and its depth
  differs from the view's depth at that pixel by at most ``depth_tolerance`` (0.2) times its depth
  (not occluded; relative, because depth rendered from splats runs short of the surface where it
  is seen at a grazing angle: by a median 10 % on the embedded rooms' views). The
  nearest such view gives the centre's image patch: ``patch_size²`` pixels around its pixel
  (moved to lie inside the image), embedded by a linear layer (a ViT's patch embedding). Image
  patches are thus aligned one-to-one with point tokens, in the same 3D positions.
- **Complementary masking**: a position shows its point patch when that is visible, else its
  image patch when seen, else a learned ``unseen_token``; the encoder's transformer (the
  fusing encoder, the encoder's own position embedding) runs on all positions, so at every
  position one modality must be inferred from the other and from context.
- **Decoder** (``decoder_depth`` Point-MAE blocks with their own position embedding) and two
  linear heads: the point head reconstructs the masked point patches (Chamfer-L2, m²), the image
  head the image patches of the positions whose points were shown (MSE on [0, 1] pixels).
  Loss = ``point_weight · chamfer + image_weight · mse``.

Point tokens are exactly those the encoder makes alone (no modality embedding), so the encoder
downstream sees the inputs it was pretrained on.

Stage 2 (:class:`Gaussian2Scene`, any point or voxel encoder):

- **Gaussians from the encoder's tokens.** Through the encoder contract only: the tokens of
  ``level`` (default 0, the finest: a sparse UNet's stride-1 voxels, a point-ViT's patch tokens)
  each predict ``gaussians_per_token`` Gaussians with a two-layer MLP: centre = token position +
  ``max_offset · tanh(·)`` (metres), standard deviation ``exp`` of a value squashed into
  ``[log min_scale, log max_scale]`` (as UniPre3D bounds its scales), a free quaternion, an
  opacity logit and an RGB colour through a sigmoid. The last layer starts near zero (weights
  of standard deviation 1e-3, so the encoder gets gradients from the first step; biases 0 but the
  quaternion's w = 1), so every token starts as a grey, half-opaque blob of the geometric-mean
  scale at its own position.
- **Rendering loss.** The predicted Gaussians of a sample are rendered into its views with
  :func:`~pc3d.ops.rasterize.rasterize_gaussians` (black background, the data's convention) and
  compared with the real images by 3DGS's photometric loss ``(1 − ssim_weight) · L1 +
  ssim_weight · (1 − SSIM)``.
- **Centre loss.** Chamfer-L2 (Point-MAE's, in m²) between the predicted centres and the scene's
  fitted Gaussian centres (``batch["gaussian_means"]``), weighted by ``center_weight``. The
  default 10 puts it at about a tenth of the image term at initialisation on the embedded rooms.
- **Colour masking** (``color_mask_ratio``, voxel encoders): the colour channels of whole cubes of
  ``color_mask_unit`` voxels are set to their no-colour value (MSM's cube masking, the same seeded
  draw); geometry stays, so the colour of masked regions must come from context. Point encoders
  take xyz only and see no colour to mask.

Loss = ``image_weight · photometric + center_weight · chamfer``, averaged over samples; the
components are returned as ``image_l1``, ``image_ssim`` and ``center_chamfer``.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pc3d.data.features import INPUT_FEATURES
from pc3d.data.gaussians import GaussianCloud, write_gaussian_ply
from pc3d.data.scene_views import ViewedSceneData
from pc3d.encoders.base import Encoder
from pc3d.encoders.inputs import EncoderInputDataset
from pc3d.encoders.layers import PositionalBlocks, init_vit_weights, positional_mlp
from pc3d.encoders.point_vit import PointViT
from pc3d.errors import ConfigError
from pc3d.methods.base import PretrainingMethod
from pc3d.methods.msm import unit_mask
from pc3d.methods.point_mae import patch_mask, select_tokens
from pc3d.ops import chamfer_l2
from pc3d.ops.rasterize import rasterize_gaussians, rgb_to_sh
from pc3d.ops.sparse_conv import SparseVoxels
from pc3d.ops.ssim import ssim
from pc3d.utils.atomic import atomic_write_png, make_dirs

#: channels per predicted Gaussian: offset 3, scale 3, quaternion 4, opacity 1, colour 3
GAUSSIAN_CHANNELS = 14
#: the no-colour value of each colour input channel (pc3d.data.features)
_NO_COLOR = {"color": 0.0, "rgb": 0.5}


class GaussianHead(nn.Module):
    """Token features ``(M, C)`` + positions ``(M, 3)`` → ``K`` Gaussians per token (see the module docstring).

    Returns a dict of ``means (M·K, 3)``, ``quats (M·K, 4)``, ``log_scales (M·K, 3)``,
    ``opacity_logits (M·K,)``, ``colors (M·K, 3)`` in [0, 1], token ``k``'s Gaussians at rows ``kK..kK+K-1``.
    """

    def __init__(self, channels: int, gaussians_per_token: int = 1, hidden: int = 128, max_offset: float = 0.1,
                 min_scale: float = 0.005, max_scale: float = 0.2) -> None:
        super().__init__()
        if gaussians_per_token < 1 or hidden < 1:
            raise ConfigError(f"method.gaussians_per_token and method.head_hidden must be >= 1, got "
                              f"{gaussians_per_token}, {hidden}")
        if not max_offset > 0 or not 0 < min_scale < max_scale:
            raise ConfigError(f"method.max_offset must be > 0 and 0 < method.min_scale < method.max_scale, got "
                              f"{max_offset}, {min_scale}, {max_scale}")
        self.per_token, self.max_offset = gaussians_per_token, max_offset
        self.log_min, self.log_max = math.log(min_scale), math.log(max_scale)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, gaussians_per_token * GAUSSIAN_CHANNELS))
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        with torch.no_grad():  # the identity rotation at start (the quaternion's w)
            self.mlp[-1].bias.view(gaussians_per_token, GAUSSIAN_CHANNELS)[:, 6] = 1.0

    def forward(self, features: Tensor, positions: Tensor) -> dict[str, Tensor]:
        raw = self.mlp(features).reshape(-1, self.per_token, GAUSSIAN_CHANNELS).float()
        offset, scale, quat, opacity, color = raw.split([3, 3, 4, 1, 3], dim=-1)
        means = positions.float()[:, None, :] + self.max_offset * torch.tanh(offset)
        log_scales = self.log_min + (self.log_max - self.log_min) * torch.sigmoid(scale)
        return {"means": means.reshape(-1, 3), "quats": quat.reshape(-1, 4), "log_scales": log_scales.reshape(-1, 3),
                "opacity_logits": opacity.reshape(-1), "colors": torch.sigmoid(color).reshape(-1, 3)}


def mask_colors(voxels: SparseVoxels, input_features: tuple[str, ...], masked: Tensor) -> SparseVoxels:
    """``voxels`` with the colour channels of the ``masked (M,)`` voxels set to their no-colour value."""
    features, start = voxels.features.clone(), 0
    for name in input_features:
        width = INPUT_FEATURES[name]
        if name in _NO_COLOR:
            features[masked, start:start + width] = _NO_COLOR[name]
        start += width
    return voxels.replace(features)


def viewed_scene_dataset(data: Any, encoder: Encoder, augment: bool) -> EncoderInputDataset:
    """The pretraining samples of scenes with views (``data=room_views``, ``data=scan_views``) with ``encoder``'s
    input added."""
    if not isinstance(data, ViewedSceneData):
        raise ConfigError(f"Gaussian2Scene pretrains on scenes with views (data=room_views or data=scan_views), got "
                          f"{type(data).__name__}")
    return EncoderInputDataset(data.pretrain_dataset(augment=augment), encoder.spec)


def view_patches(centers: Tensor, images: Tensor, depth: Tensor, viewmats: Tensor, Ks: Tensor, patch_size: int,
                 depth_tolerance: float) -> tuple[Tensor, Tensor]:
    """The image patch of each point, from the nearest view that sees it (see the module docstring).

    Args:
        centers: ``(B, G, 3)`` world points.
        images: ``(B, V, H, W, 3)``; ``depth``: ``(B, V, H, W)`` camera z (0 = nothing drawn).
        viewmats: ``(B, V, 4, 4)`` world-to-camera (OpenCV); ``Ks``: ``(B, V, 3, 3)``.
        patch_size: ``P``, at most ``H`` and ``W``.
        depth_tolerance: the share of its camera z by which a point's z may differ from the view's depth
            and the point still be seen.
    Returns:
        patches ``(B, G, P, P, 3)`` (zeros where unseen) and ``seen (B, G)`` bool.
    """
    batch, views, height, width, _ = images.shape
    if not 1 <= patch_size <= min(height, width):
        raise ConfigError(f"method.patch_size={patch_size}: expected 1..{min(height, width)} (the views are "
                          f"{width}x{height})")
    camera = torch.einsum("bvij,bgj->bvgi", viewmats[..., :3, :3], centers) + viewmats[:, :, None, :3, 3]
    z = camera[..., 2]
    pixel = torch.einsum("bvij,bvgj->bvgi", Ks, camera)
    u = pixel[..., 0] / z.clamp_min(1e-6)
    v = pixel[..., 1] / z.clamp_min(1e-6)
    inside = (z > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    col = u.clamp(0, width - 1).floor().long()
    row = v.clamp(0, height - 1).floor().long()
    flat = depth.reshape(batch, views, height * width)
    drawn = flat.gather(2, row * width + col)  # (B, V, G)
    seen_in = inside & (drawn > 0) & ((z - drawn).abs() <= depth_tolerance * z)
    best = torch.where(seen_in, z, torch.full_like(z, math.inf)).argmin(dim=1)  # (B, G)
    seen = seen_in.any(dim=1)
    pick = lambda t: t.gather(1, best[:, None]).squeeze(1)  # noqa: E731  (B, V, G) → (B, G) at the best view
    steps = torch.arange(patch_size, device=images.device)
    top = (pick(row) - patch_size // 2).clamp(0, height - patch_size)
    left = (pick(col) - patch_size // 2).clamp(0, width - patch_size)
    rows = (top[..., None] + steps)[..., :, None]  # (B, G, P, 1)
    cols = (left[..., None] + steps)[..., None, :]  # (B, G, 1, P)
    samples = torch.arange(batch, device=images.device)[:, None, None, None]
    patches = images[samples, best[..., None, None], rows, cols]  # (B, G, P, P, 3)
    return patches * seen[..., None, None, None], seen


class PointImageMAE(PretrainingMethod):
    """Gaussian2Scene stage 1: the dual-branch point/image masked autoencoder (see the module docstring).

    Args:
        encoder: the point-patch ViT being pretrained (its patch embedding and transformer).
        mask_ratio: share of point patches masked per sample.
        patch_size: image patch edge in pixels.
        depth_tolerance: relative (see :func:`view_patches`).
        decoder_depth, decoder_num_heads: the shared decoder.
        point_weight, image_weight: loss weights of the two reconstructions.
    """

    input_kinds = ("points",)
    no_weight_decay_names = ("unseen_token",)

    def __init__(self, encoder: PointViT, mask_ratio: float = 0.6, patch_size: int = 8, depth_tolerance: float = 0.2,
                 decoder_depth: int = 2, decoder_num_heads: int = 6, point_weight: float = 1.0,
                 image_weight: float = 1.0) -> None:
        super().__init__()
        if not isinstance(encoder, PointViT):
            raise ConfigError(f"Gaussian2Scene stage 1 pretrains a point-patch ViT (encoder=point_vit), got "
                              f"{type(encoder).__name__}")
        self.encoder = encoder
        masked = int(mask_ratio * encoder.num_groups)
        if not 0 < masked < encoder.num_groups:
            raise ConfigError(f"method.mask_ratio={mask_ratio} masks {masked} of the {encoder.num_groups} patches; "
                              "it must mask at least one and leave at least one visible")
        if patch_size < 1 or not depth_tolerance > 0 or decoder_depth < 1:
            raise ConfigError(f"method.patch_size and method.decoder_depth must be >= 1 and method.depth_tolerance "
                              f"> 0, got {patch_size}, {decoder_depth}, {depth_tolerance}")
        dim = encoder.embed_dim
        if decoder_num_heads < 1 or dim % decoder_num_heads:
            raise ConfigError(f"method.decoder_num_heads={decoder_num_heads} must divide the encoder width {dim}")
        if point_weight < 0 or image_weight < 0 or point_weight + image_weight == 0:
            raise ConfigError(f"method.point_weight and method.image_weight must be >= 0 and not both 0, got "
                              f"{point_weight}, {image_weight}")
        self.mask_ratio, self.patch_size, self.depth_tolerance = mask_ratio, patch_size, depth_tolerance
        self.point_weight, self.image_weight = point_weight, image_weight
        self.image_embed = nn.Linear(3 * patch_size ** 2, dim)
        self.unseen_token = nn.Parameter(torch.zeros(1, dim))
        self.decoder_pos_embed = positional_mlp(dim)
        self.decoder = PositionalBlocks(dim, decoder_depth, decoder_num_heads)
        self.decoder_norm = nn.LayerNorm(dim)
        self.point_head = nn.Linear(dim, 3 * encoder.group_size)
        self.image_head = nn.Linear(dim, 3 * patch_size ** 2)
        for module in (self.image_embed, self.decoder, self.point_head, self.image_head):
            module.apply(init_vit_weights)
        nn.init.trunc_normal_(self.unseen_token, std=0.02)

    def pretrain_dataset(self, data: Any, augment: bool = True) -> EncoderInputDataset:
        """Scenes with views (:func:`viewed_scene_dataset`) with this encoder's input added."""
        return viewed_scene_dataset(data, self.encoder, augment)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``batch``: ``points (B, N, 3)``, ``images (B, V, H, W, 3)``, ``depth (B, V, H, W)``, ``viewmats``,
        ``Ks``, optional ``sample_seed (B,)`` → ``{"loss", "point_chamfer", "image_mse", "seen"}`` (``seen``:
        the share of patch centres some view sees)."""
        neighborhoods, centers = self.encoder.group(batch["points"])
        size, groups = centers.shape[:2]
        point_masked = patch_mask(centers, self.mask_ratio, "rand", batch.get("sample_seed"))
        with torch.no_grad():
            patches, seen = view_patches(centers, batch["images"].float(), batch["depth"].float(),
                                         batch["viewmats"].float(), batch["Ks"].float(), self.patch_size,
                                         self.depth_tolerance)
        shown_image = point_masked & seen
        point_tokens = self.encoder.patch_embed(select_tokens(neighborhoods, ~point_masked))
        tokens = self.unseen_token.to(point_tokens.dtype).expand(size, groups, -1).clone()
        tokens[~point_masked] = point_tokens.reshape(-1, point_tokens.shape[-1])
        if shown_image.any():
            tokens[shown_image] = self.image_embed(patches[shown_image].flatten(1)).to(tokens.dtype)
        else:  # no masked patch is seen: the image embedding stays in the graph (DDP expects its gradient)
            tokens = tokens + 0.0 * self.image_embed.weight.sum()
        encoded, _, _ = self.encoder.encode(tokens, centers)
        decoded, _ = self.decoder(encoded, self.decoder_pos_embed(centers))
        decoded = self.decoder_norm(decoded)

        predicted = self.point_head(decoded[point_masked]).reshape(-1, self.encoder.group_size, 3)
        # losses in float32 also under bf16 autocast
        chamfer = chamfer_l2(predicted.float(), neighborhoods[point_masked].float())
        image_target = ~point_masked & seen
        if image_target.any():
            pixels = self.image_head(decoded[image_target]).float()
            mse = (pixels - patches[image_target].flatten(1).float()).square().mean()
        else:  # no view sees a shown point: nothing to reconstruct, the graph stays whole
            mse = 0.0 * self.image_head(decoded[:, :1]).float().sum()
        loss = self.point_weight * chamfer + self.image_weight * mse
        return {"loss": loss, "point_chamfer": chamfer.detach(), "image_mse": mse.detach(),
                "seen": seen.float().mean().detach()}


class Gaussian2Scene(PretrainingMethod):
    """Gaussian2Scene stage 2 (see the module docstring).

    Args:
        encoder: the scene encoder being pretrained (points or voxels).
        level: index of the encoder level whose tokens predict Gaussians.
        gaussians_per_token, head_hidden, max_offset, min_scale, max_scale: the Gaussian head.
        image_weight, ssim_weight, center_weight: loss weights (see the module docstring).
        color_mask_ratio, color_mask_unit: colour masking of voxel inputs (0 = off).
        background: ``(3,)`` colour behind the rendered Gaussians (the views' background).
    """

    input_kinds = ("points", "voxels")

    def __init__(self, encoder: Encoder, level: int = 0, gaussians_per_token: int = 1, head_hidden: int = 128,
                 max_offset: float = 0.1, min_scale: float = 0.005, max_scale: float = 0.2,
                 image_weight: float = 1.0, ssim_weight: float = 0.2, center_weight: float = 10.0,
                 color_mask_ratio: float = 0.0, color_mask_unit: int = 4,
                 background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.encoder = self.check_encoder(encoder)
        spec = encoder.spec
        if not -len(spec.level_channels) <= level < len(spec.level_channels):
            raise ConfigError(f"method.level={level}: the encoder has {len(spec.level_channels)} levels")
        if not 0.0 <= ssim_weight <= 1.0 or image_weight < 0 or center_weight < 0 or image_weight + center_weight == 0:
            raise ConfigError(f"method.ssim_weight must be in [0, 1] and method.image_weight, method.center_weight "
                              f">= 0 and not both 0, got {ssim_weight}, {image_weight}, {center_weight}")
        if not 0.0 <= color_mask_ratio < 1.0 or color_mask_unit < 1:
            raise ConfigError(f"method.color_mask_ratio must be in [0, 1) and method.color_mask_unit >= 1, got "
                              f"{color_mask_ratio}, {color_mask_unit}")
        if len(background) != 3:
            raise ConfigError(f"method.background: expected 3 values (RGB), got {list(background)}")
        self.level = level
        self.head = GaussianHead(spec.level_channels[level], gaussians_per_token, head_hidden, max_offset,
                                 min_scale, max_scale)
        self.image_weight, self.ssim_weight, self.center_weight = image_weight, ssim_weight, center_weight
        self.color_mask_ratio, self.color_mask_unit = color_mask_ratio, color_mask_unit
        self.register_buffer("background", torch.tensor([float(c) for c in background]), persistent=False)
        self._shown: dict[str, Any] | None = None

    def pretrain_dataset(self, data: Any, augment: bool = True) -> EncoderInputDataset:
        """Scenes with views (:func:`viewed_scene_dataset`) with this encoder's input added."""
        return viewed_scene_dataset(data, self.encoder, augment)

    def predict_gaussians(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
        """The predicted Gaussians of the batch (:class:`GaussianHead`'s dict) and the sample of each ``(M·K,)``."""
        inputs = batch["input"]
        if self.color_mask_ratio > 0 and isinstance(inputs, SparseVoxels):
            seeds = batch.get("sample_seed")
            if seeds is None:
                seeds = torch.randint(2 ** 62, (inputs.batch_size,))
            masked = unit_mask(inputs.coords, self.color_mask_unit, self.color_mask_ratio, seeds)
            inputs = mask_colors(inputs, self.encoder.spec.input_features, masked)
        level = self.encoder(inputs).levels[self.level]
        features, positions, batch_index = level.flatten()
        gaussians = self.head(features, positions)
        return gaussians, batch_index.repeat_interleave(self.head.per_token)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``batch``: ``input`` (the encoder's), ``images (B, V, H, W, 3)``, ``viewmats (B, V, 4, 4)``,
        ``Ks (B, V, 3, 3)``, ``gaussian_means (B, M, 3)`` → ``{"loss", "image_l1", "image_ssim", "center_chamfer"}``."""
        gaussians, owner = self.predict_gaussians(batch)
        images = batch["images"].float()
        height, width = images.shape[2:4]
        l1, dssim, chamfer = [], [], []
        for b in range(images.shape[0]):
            rows = owner == b
            mine = {key: value[rows] for key, value in gaussians.items()}
            rendered = rasterize_gaussians(**mine, viewmats=batch["viewmats"][b].float(), Ks=batch["Ks"][b].float(),
                                           width=width, height=height, background=self.background)
            l1.append((rendered.rgb - images[b]).abs().mean())
            dssim.append(1.0 - ssim(rendered.rgb, images[b]))
            chamfer.append(chamfer_l2(mine["means"][None], batch["gaussian_means"][b][None].float()))
            if b == 0 and self.training:  # what log_artifacts shows: the batch's first sample
                self._shown = {"gaussians": {key: value.detach() for key, value in mine.items()},
                               "image": images[0, 0].detach(), "rendered": rendered.rgb[0].detach()}
        image_l1, image_dssim, center = torch.stack(l1).mean(), torch.stack(dssim).mean(), torch.stack(chamfer).mean()
        photometric = (1.0 - self.ssim_weight) * image_l1 + self.ssim_weight * image_dssim
        loss = self.image_weight * photometric + self.center_weight * center
        return {"loss": loss, "image_l1": image_l1.detach(), "image_ssim": (1.0 - image_dssim).detach(),
                "center_chamfer": center.detach()}

    def log_artifacts(self, step: int, out_dir: Path, writer: Any) -> None:
        """The last training batch's first sample: ``views_STEP.png`` (its first view, real | rendered, also
        to TensorBoard) and ``gaussians_STEP.ply``, its predicted Gaussians in the 3DGS layout."""
        if self._shown is None:
            return
        shown = self._shown
        side_by_side = torch.cat([shown["image"], shown["rendered"]], dim=1).clamp(0, 1).float().cpu()
        make_dirs(out_dir)
        atomic_write_png(out_dir / f"views_{step:08d}.png", side_by_side)
        gaussians = {key: value.float().cpu().numpy() for key, value in shown["gaussians"].items()}
        write_gaussian_ply(out_dir / f"gaussians_{step:08d}.ply", GaussianCloud(
            means=gaussians["means"], quats=gaussians["quats"], log_scales=gaussians["log_scales"],
            opacity_logits=gaussians["opacity_logits"], sh=rgb_to_sh(gaussians["colors"])))
        if writer is not None:
            writer.add_image("gaussian2scene/real_rendered", side_by_side.numpy(), step, dataformats="HWC")


def gaussian2scene(encoder: Encoder, stage: int = 2, **settings: Any) -> PretrainingMethod:
    """Gaussian2Scene's stage ``1`` (:class:`PointImageMAE`) or ``2`` (:class:`Gaussian2Scene`) from one config
    node: ``settings`` holds both stages' keys (``configs/method/gaussian2scene.yaml``); each stage takes its
    own (``image_weight`` serves both) and a key of neither is refused."""
    stages = {1: PointImageMAE, 2: Gaussian2Scene}
    if stage not in stages:
        raise ConfigError(f"method.stage={stage!r}: expected 1 or 2")
    accepted = {stage_number: set(inspect.signature(cls).parameters) - {"encoder"}
                for stage_number, cls in stages.items()}
    unknown = sorted(set(settings) - accepted[1] - accepted[2])
    if unknown:
        raise ConfigError(f"method: unknown key(s) {', '.join(unknown)} for Gaussian2Scene")
    return stages[stage](encoder, **{k: v for k, v in settings.items() if k in accepted[stage]})
