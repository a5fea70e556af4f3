"""Original NeRF-MAE checkpoints (Irshad et al., github.com/zubair-irshad/NeRF-MAE): pretraining and fine-tuned layouts.

Layouts (read with ``torch.load(weights_only=True)``; no pickled code runs):
- pretraining (``SwinTransformer_MAE3D_New``, ``nerf_mae_pretrained.pt``): ``{"epoch": int,
  "state_dict": ..., "train_args": dict}`` with ``pos_embed``, ``mask_token``,
  ``patch_partition.*``, ``stages.*``, ``decoder4..1.*``, ``out.conv.*``;
- fine-tuned detector (NeRF-RPN ``SwinTransformer_FPN_Pretrained_Skip`` + FCOS):
  ``{"epoch", "backbone_state_dict", "fcos_state_dict", "train_args"}``; the Swin is under
  ``base.`` (without ``mask_token`` and the decoder). Only the encoder is imported: the FPN
  neck (``fpn_neck.*``) and the FCOS head are left out.
``module.`` prefixes (DataParallel) are removed. ``train_args`` is the plain dict the scripts
save (``args.__dict__``), which ``weights_only=True`` loads. A file that pickled the
``argparse.Namespace`` itself would be refused by a weights-only load; it is read through a
data-only stand-in that becomes a dict of its values (``read_torch_file(namespaces=True)``;
argparse is never called), for NeRF-MAE files only.

Key mapping: :data:`KEY_MAP` (whole model) with :data:`BLOCK_LEAVES`, :data:`MERGE_LEAVES` and
:data:`UP_BLOCK_LEAVES` (inside stages and decoder blocks), one table used both ways by
:func:`rename_key`. A stage's layer ``j`` is the patch merging when ``j = 0`` and the stage is
not the first, else block ``j − 1`` (``j`` in stage 0). Every tensor keeps its shape.

Derived tensors (:data:`DERIVED`) are not pc3d parameters: ``pos_embed (1, n, n, n, E)`` (the
fixed sin-cos table, :func:`~pc3d.encoders.swin3d.sincos_position_embedding`) and every block's
``attn.relative_position_index``. Import checks them against the formulas (a file whose table
was trained or built otherwise is refused, since pc3d would compute something else); export
writes them, the table at the model's ``grid_size`` (the original's ``resolution``).

Architecture inference (``config_overrides`` wins): ``embed_dim`` and ``patch_size`` from
``patch_partition.0.weight (E, 4, p, p, p)``; ``depths`` from the blocks of each stage;
``num_heads`` from the bias tables ``((2w−1)³, heads)``, ``window_size`` from their rows;
``mlp_ratio`` from ``mlp.0.weight``. Not in the file: ``drop_path_rate = 0.1`` (hard-coded in
the original). Method: ``mask_ratio = train_args["masking_prob"]`` (0.75), ``grid_size =
train_args["resolution"]`` (else the ``pos_embed`` size, else 160).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pc3d.encoders.swin3d import SWIN3D_PRESETS, Swin3D, relative_position_index, sincos_position_embedding
from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub.weights import method_from_weights, read_torch_file
from pc3d.utils.atomic import atomic_write

NERF_MAE_FORMAT = "nerf-mae"

# (original key prefix, pc3d NeRFMAE key prefix, how the rest is renamed: "" unchanged, "stage" by the
# stage rule and BLOCK_LEAVES / MERGE_LEAVES, "up" by UP_BLOCK_LEAVES). An entry without a trailing "."
# is one whole key. The pc3d encoder's own keys are the NeRFMAE keys without "encoder.".
KEY_MAP: tuple[tuple[str, str, str], ...] = (
    ("patch_partition.0.", "encoder.patch_embed.proj.", ""),
    ("patch_partition.2.", "encoder.patch_embed.norm.", ""),
    ("stages.", "encoder.stages.", "stage"),
    ("mask_token", "mask_token", ""),
    ("decoder4.", "decoder.blocks.0.", "up"),
    ("decoder3.", "decoder.blocks.1.", "up"),
    ("decoder2.", "decoder.blocks.2.", "up"),
    ("decoder1.", "decoder.blocks.3.", "up"),
    ("out.conv.", "decoder.head.", ""),
)
BLOCK_LEAVES: tuple[tuple[str, str], ...] = (
    ("norm1.", "norm1."), ("attn.qkv.", "attn.qkv."), ("attn.proj.", "attn.proj."),
    ("attn.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("norm2.", "norm2."), ("mlp.0.", "mlp.fc1."), ("mlp.3.", "mlp.fc2."),
)
MERGE_LEAVES: tuple[tuple[str, str], ...] = (("reduction.", "reduction."), ("norm.", "norm."))
UP_BLOCK_LEAVES: tuple[tuple[str, str], ...] = (
    ("transp_conv.", "upsample."), ("conv_block.conv1.", "conv1."), ("conv_block.conv2.", "conv2."),
    ("conv_block.conv3.", "shortcut."),
)
DERIVED = ("pos_embed", "relative_position_index")
ORIGINAL_DECODER_PREFIXES = ("decoder4.", "decoder3.", "decoder2.", "decoder1.", "out.")
PC3D_ENCODER_PREFIX = "encoder."
FINETUNED_PREFIX = "base."
DDP_PREFIX = "module."
DEFAULT_RESOLUTION = 160
DEFAULT_DROP_PATH = 0.1  # stochastic_depth_prob of the original's run script (not in the file)
POS_EMBED_TOLERANCE = 1e-6

_ORIGINAL_STAGE = re.compile(r"^(\d+)\.(\d+)\.(.+)$")
_PC3D_STAGE = re.compile(r"^(\d+)\.(?:(merge)|blocks\.(\d+))\.(.+)$")

NOT_NERF_MAE = ("not a NeRF-MAE checkpoint (expected {'state_dict': ...} with patch_partition.* and stages.* keys, "
                "or the fine-tuned {'backbone_state_dict': ...} with base.patch_partition.* keys)")


def _leaf(rest: str, table: tuple[tuple[str, str], ...], to: str) -> str | None:
    for original, pc3d in table:
        src, dst = (original, pc3d) if to == "pc3d" else (pc3d, original)
        if (src.endswith(".") and rest.startswith(src)) or rest == src:
            return dst + rest[len(src):]
    return None


def _stage_key(rest: str, to: str) -> str | None:
    """``rest`` after ``stages.``: original ``{s}.{j}.{leaf}`` ↔ pc3d ``{s}.merge.{leaf}`` / ``{s}.blocks.{b}...``."""
    if to == "pc3d":
        found = _ORIGINAL_STAGE.match(rest)
        if not found:
            return None
        stage, layer, leaf = int(found[1]), int(found[2]), found[3]
        if stage > 0 and layer == 0:
            mapped = _leaf(leaf, MERGE_LEAVES, to)
            return None if mapped is None else f"{stage}.merge.{mapped}"
        mapped = _leaf(leaf, BLOCK_LEAVES, to)
        return None if mapped is None else f"{stage}.blocks.{layer - (stage > 0)}.{mapped}"
    found = _PC3D_STAGE.match(rest)
    if not found:
        return None
    stage, leaf = int(found[1]), found[4]
    if found[2]:
        mapped = _leaf(leaf, MERGE_LEAVES, to)
        return None if mapped is None or stage == 0 else f"{stage}.0.{mapped}"
    mapped = _leaf(leaf, BLOCK_LEAVES, to)
    return None if mapped is None else f"{stage}.{int(found[3]) + (stage > 0)}.{mapped}"


def rename_key(key: str, to: str = "pc3d") -> str | None:
    """Map one key between the layouts (``to="pc3d"``: original → pc3d NeRFMAE, ``"original"``: back).

    Returns None for a key no table entry maps."""
    for original, pc3d, rule in KEY_MAP:
        src, dst = (original, pc3d) if to == "pc3d" else (pc3d, original)
        if not ((src.endswith(".") and key.startswith(src)) or key == src):
            continue
        rest = key[len(src):]
        if rule == "stage":
            mapped = _stage_key(rest, to)
        elif rule == "up":
            mapped = _leaf(rest, UP_BLOCK_LEAVES, to)
        else:
            mapped = rest
        return None if mapped is None else dst + mapped
    return None


def encoder_display(key: str) -> str:
    """A pc3d Swin3D key as the original file spells it (for error messages)."""
    return rename_key(PC3D_ENCODER_PREFIX + key, "original") or key


def model_display(key: str) -> str:
    """A pc3d NeRFMAE key as the original file spells it (for error messages)."""
    return rename_key(key, "original") or key


# ------------------------------------------------------------------ reading
def _strip(state: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith(DDP_PREFIX):
            key = key[len(DDP_PREFIX):]
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        out[key] = value
    return out


def nerf_mae_checkpoint(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any], str] | None:
    """``(state dict in pretraining key names, train_args, "pretrain" | "finetuned")`` of a loaded
    original file; None if it is not NeRF-MAE."""
    if not isinstance(obj, Mapping):
        return None
    args = obj.get("train_args")
    train_args = dict(args) if isinstance(args, Mapping) else {}
    for name, prefix, layout in (("state_dict", "", "pretrain"), ("backbone_state_dict", FINETUNED_PREFIX, "finetuned")):
        state = obj.get(name)
        if not isinstance(state, Mapping):
            continue
        state = _strip(state, prefix)
        if "patch_partition.0.weight" in state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return state, train_args, layout
    return None


def read_nerf_mae_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """:func:`nerf_mae_checkpoint` of a file; a one-line :class:`CheckpointError` when it is not NeRF-MAE.

    ``argparse.Namespace`` values (``train_args``) are read as dicts (see :func:`read_torch_file`).
    """
    found = nerf_mae_checkpoint(read_torch_file(path, namespaces=True))
    if found is None:
        raise CheckpointError(f"{path}: {NOT_NERF_MAE}")
    return found


def _stage_blocks(state: Mapping[str, torch.Tensor]) -> dict[int, list[int]]:
    """Original layer slots holding a Swin block (``norm1``), per stage."""
    stages: dict[int, list[int]] = {}
    for key in state:
        found = re.match(r"^stages\.(\d+)\.(\d+)\.norm1\.weight$", key)
        if found:
            stages.setdefault(int(found[1]), []).append(int(found[2]))
    return {s: sorted(v) for s, v in sorted(stages.items())}


def infer_encoder_config(state: Mapping[str, torch.Tensor], source: str = "state dict",
                         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~pc3d.encoders.Swin3D` config node of an original state dict (see the module docstring)."""
    patch = state.get("patch_partition.0.weight")
    if patch is None or patch.ndim != 5:
        raise CheckpointError(f"{source}: no patch_partition.0.weight (E, 4, p, p, p); not a NeRF-MAE Swin")
    embed_dim, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    if channels != 4:
        raise CheckpointError(f"{source}: patch_partition.0.weight takes {channels} channels; NeRF-MAE grids have 4 "
                              "(R, G, B, alpha)")
    stages = _stage_blocks(state)
    if not stages or list(stages) != list(range(len(stages))):
        raise CheckpointError(f"{source}: stages.<s>.<j>.* blocks missing or not numbered 0..S-1 "
                              f"(found stages {list(stages)})")
    depths, heads, window = [], [], None
    for s, slots in stages.items():
        first = 1 if s > 0 else 0
        if slots != list(range(first, first + len(slots))):
            raise CheckpointError(f"{source}: stage {s} has blocks at layers {slots}, expected consecutive from {first}")
        table = state.get(f"stages.{s}.{first}.attn.relative_position_bias_table")
        if table is None or table.ndim != 2:
            raise CheckpointError(f"{source}: stages.{s}.{first}.attn.relative_position_bias_table missing")
        side = round(int(table.shape[0]) ** (1 / 3))
        if side ** 3 != table.shape[0] or side % 2 == 0:
            raise CheckpointError(f"{source}: relative_position_bias_table has {table.shape[0]} rows, "
                                  "expected (2w-1)^3")
        window = (side + 1) // 2
        depths.append(len(slots))
        heads.append(int(table.shape[1]))
    hidden = state.get("stages.0.0.mlp.0.weight")
    mlp_ratio = float(hidden.shape[0]) / embed_dim if hidden is not None else 4.0
    if embed_dim % 6:
        raise CheckpointError(f"{source}: embed_dim {embed_dim} is not divisible by 6 (the original's 3D sin-cos "
                              "position embedding cannot have been built for it)")
    config: dict[str, Any] = {"_target_": "pc3d.encoders.Swin3D", "embed_dim": embed_dim, "depths": depths,
                              "num_heads": heads, "patch_size": patch_size, "window_size": window,
                              "mlp_ratio": mlp_ratio, "drop_path_rate": DEFAULT_DROP_PATH,
                              "input_features": ["rgb", "alpha"]}
    config.update(overrides or {})
    return config


def infer_method_config(state: Mapping[str, torch.Tensor], train_args: Mapping[str, Any],
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~pc3d.methods.NeRFMAE` config node (see the module docstring)."""
    resolution = train_args.get("resolution")
    if not isinstance(resolution, int):
        pos = state.get("pos_embed")
        patch = state["patch_partition.0.weight"]
        resolution = int(pos.shape[1]) * int(patch.shape[2]) if pos is not None and pos.ndim == 5 else DEFAULT_RESOLUTION
    ratio = train_args.get("masking_prob", 0.75)
    ratio = float(ratio) if isinstance(ratio, (int, float)) else 0.75
    config = {"_target_": "pc3d.methods.NeRFMAE", "mask_ratio": ratio,
              "mask_unit": 4, "grid_size": resolution, "alpha_threshold": 0.01}
    config.update(overrides or {})
    return config


def check_derived(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> None:
    """The stored ``pos_embed`` and relative position indices must be the ones pc3d computes."""
    pos = state.get("pos_embed")
    if pos is not None:
        embed_dim = int(config["embed_dim"])
        if pos.ndim != 5 or pos.shape[0] != 1 or pos.shape[-1] != embed_dim:
            raise CheckpointError(f"{source}: pos_embed has shape {tuple(pos.shape)}, expected "
                                  f"(1, n, n, n, {embed_dim})")
        expected = sincos_position_embedding(pos.shape[1:4], embed_dim)
        error = float((pos[0].float() - expected).abs().max())
        if not error <= POS_EMBED_TOLERANCE:
            raise CheckpointError(f"{source}: pos_embed differs from the fixed 3D sin-cos table by {error:.3g} "
                                  "(pc3d computes that table; a trained or different embedding cannot be imported)")
    index = relative_position_index(int(config["window_size"])).reshape(-1)
    for key, value in state.items():
        if key.endswith("attn.relative_position_index") and not torch.equal(value.to(index.dtype).reshape(-1), index):
            raise CheckpointError(f"{source}: {key} is not the relative position index of a "
                                  f"{config['window_size']}^3 window (query - key offsets)")


def to_pc3d_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original state dict → pc3d NeRFMAE state dict (derived tensors dropped) and the unmapped original keys."""
    out, unmapped = {}, []
    for key, value in state.items():
        if key.split(".")[-1] in DERIVED:
            continue
        renamed = rename_key(key, "pc3d")
        if renamed is None:
            unmapped.append(key)
        else:
            out[renamed] = value
    return out, unmapped


def encoder_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of an original state dict in :class:`~pc3d.encoders.Swin3D` key names (unmapped
    encoder keys are kept under their own names, so a strict load reports them)."""
    encoder_part = {k: v for k, v in state.items()
                    if k != "mask_token" and not k.startswith(ORIGINAL_DECODER_PREFIXES)}
    mapped, unmapped = to_pc3d_state(encoder_part)
    weights = {k[len(PC3D_ENCODER_PREFIX):]: v for k, v in mapped.items()}
    weights.update({k: encoder_part[k] for k in unmapped})
    return weights


def read_nerf_mae_encoder(path: str | os.PathLike, state: Mapping[str, torch.Tensor] | None = None
                          ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Encoder config node and weights of an original file (either layout), derived tensors checked."""
    if state is None:
        state = read_nerf_mae_file(path)[0]
    config = infer_encoder_config(state, str(path))
    check_derived(state, config, str(path))
    return config, encoder_weights(state)


def import_nerf_mae_model(path: str | os.PathLike, strict: bool = True,
                          config_overrides: Mapping[str, Any] | None = None,
                          method_overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild an original NeRF-MAE pretraining checkpoint as a pc3d :class:`~pc3d.methods.NeRFMAE`.

    Encoder, mask token and decoder are filled, so pretraining can go on in pc3d. The configs are
    :func:`infer_encoder_config` / :func:`infer_method_config` plus the overrides.

    Returns:
        the model in eval mode, on CPU.
    Raises:
        CheckpointError: unreadable or non-NeRF-MAE file, a fine-tuned file (no decoder), derived
            tensors that are not the formulas', or (``strict``) weights that do not fit, named as the
            original file spells them.
    """
    state, train_args, layout = read_nerf_mae_file(path)
    if layout != "pretrain":
        raise CheckpointError(f"{path}: is a fine-tuned NeRF-MAE detector (no decoder); use load_encoder for its "
                              "encoder")
    encoder_config = infer_encoder_config(state, str(path), config_overrides)
    check_derived(state, encoder_config, str(path))
    method_config = infer_method_config(state, train_args, method_overrides)
    weights, unmapped = to_pc3d_state(state)
    weights.update({k: state[k] for k in unmapped})
    return method_from_weights(method_config, encoder_config, weights, strict=strict, source=str(path),
                               what="NeRF-MAE weights", display=model_display)


# ------------------------------------------------------------------ writing
def _preset_name(encoder: Swin3D) -> str:
    found = {"embed_dim": encoder.embed_dim, "depths": tuple(encoder.depths),
             "num_heads": tuple(stage.blocks[0].attn.num_heads for stage in encoder.stages)}
    for name, preset in SWIN3D_PRESETS.items():
        if found == preset:
            return name
    return "custom"


def to_original_state(model: nn.Module, resolution: int) -> dict[str, torch.Tensor]:
    """A pc3d NeRFMAE's (or a bare Swin3D's) state dict in the original's names, with ``pos_embed`` for
    ``resolution``³ grids and every ``relative_position_index``; float32 as the original stores it."""
    encoder: Swin3D = model if isinstance(model, Swin3D) else model.encoder  # type: ignore[assignment]
    prefix = PC3D_ENCODER_PREFIX if isinstance(model, Swin3D) else ""
    if resolution % encoder.patch_size:
        raise ConfigError(f"export_nerf_mae: resolution {resolution} is not a multiple of patch_size "
                          f"{encoder.patch_size}")
    side = resolution // encoder.patch_size
    index = relative_position_index(encoder.window_size).reshape(-1)
    out = {"pos_embed": sincos_position_embedding((side, side, side), encoder.embed_dim)[None]}
    for key, value in model.state_dict().items():
        renamed = rename_key(prefix + key, "original")
        if renamed is None:
            raise ConfigError(f"export_nerf_mae: model key {key!r} has no NeRF-MAE counterpart")
        value = value.detach().to("cpu")
        out[renamed] = value.float() if value.is_floating_point() else value
        if renamed.endswith("attn.relative_position_bias_table"):
            out[renamed[:-len("bias_table")] + "index"] = index.clone()
    return out


def export_nerf_mae(model: nn.Module, path: str | os.PathLike, epoch: int = 0, resolution: int | None = None,
                    train_args: Mapping[str, Any] | None = None) -> Path:
    """Write a pc3d :class:`~pc3d.methods.NeRFMAE` in the original's pretraining layout, atomically.

    The file is ``{"epoch", "state_dict", "train_args"}``, which the original's
    ``SwinTransformer_MAE3D_New(resolution=...)`` loads with ``strict=True`` and NeRF-RPN's
    fine-tuning reads as ``--mae_checkpoint``.

    Args:
        resolution: grid size of the original model that will load it (sizes ``pos_embed``);
            default the model's ``grid_size``.
        train_args: extra values for ``train_args`` (``resolution``, ``masking_prob``,
            ``masking_strategy``, ``backbone_type``, ``input_dim`` are filled in).
    Raises:
        ConfigError: not a NeRFMAE model, no resolution, or keys without an original counterpart
            (nothing is written then).
    """
    from pc3d.methods.nerf_mae import NeRFMAE

    if not isinstance(model, NeRFMAE):
        raise ConfigError(f"export_nerf_mae writes a pc3d NeRFMAE model, got {type(model).__name__}")
    if len(model.encoder.stages) != 4:
        raise ConfigError(f"export_nerf_mae: the original has 4 stages, this encoder has {len(model.encoder.stages)}")
    resolution = resolution or model.grid_size
    if not resolution:
        raise ConfigError("export_nerf_mae: pass resolution= (the model has grid_size=None; the original sizes "
                          "pos_embed by its resolution)")
    state = to_original_state(model, int(resolution))
    args = {"resolution": int(resolution), "masking_prob": model.mask_ratio, "masking_strategy": "random",
            "backbone_type": _preset_name(model.encoder), "input_dim": 4, **dict(train_args or {})}
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save({"epoch": int(epoch), "state_dict": state, "train_args": args}, handle)
    return path
