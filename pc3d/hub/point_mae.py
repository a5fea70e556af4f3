"""Original Point-MAE checkpoints (Pang et al., github.com/Pang-Yatian/Point-MAE): pretraining and fine-tuned layouts.

An original file is ``torch.save({"base_model": state_dict, "optimizer": ..., "epoch": ...,
"metrics": ..., ...})`` (``"model"`` instead of ``"base_model"`` is accepted too, as the original
loader does), sometimes with ``module.`` in front of every key (DataParallel). It is read with
``torch.load(weights_only=True)``: no pickled code runs.

Two layouts are read:
- pretraining (``Point_MAE``): ``MAE_encoder.*``, ``MAE_decoder.*``, ``mask_token``, ``increase_dim.*``;
- fine-tuned classification (``PointTransformer``): ``encoder.*``, ``pos_embed.*``,
  ``blocks.blocks.*``, ``norm.*``, ``cls_token``, ``cls_pos``, ``cls_head_finetune.*``, saved
  under ``base_model`` with ``module.`` (DataParallel) or ``base_model.`` prefixes. Its encoder
  keys are renamed to the pretraining names (:data:`FINETUNED_TO_PRETRAIN`), so one table serves
  both; the encoder is then a ``PointViT(cls_token=True)`` and :func:`import_point_mae_classifier`
  also fills Point-MAE's head (:class:`~pc3d.eval.classifier.ObjectClassifier`).

Key mapping: :data:`KEY_MAP`, one table used in both directions (import and
:func:`export_point_mae`). The original's Conv1d kernels ``(out, in, 1)`` are pc3d Linear
weights ``(out, in)``. Everything else is the same tensor under another name.

Architecture inference from the weights (``config_overrides`` wins over all of it):
- ``embed_dim``: ``MAE_encoder.norm.weight`` (else the position MLP or a block norm);
- ``depth``: number of ``MAE_encoder.blocks.blocks.<i>``; ``decoder_depth``: of ``MAE_decoder.blocks.<i>``;
- ``mlp_ratio``: ``mlp.fc1`` rows / ``embed_dim``; ``qkv_bias``: whether ``attn.qkv.bias`` exists;
- ``group_size``: rows of ``increase_dim.0.weight`` / 3 (the reconstruction head predicts
  ``group_size × 3`` coordinates) when the file has the decoder, else 32.
Not in the weights, so the paper's values are assumed: ``num_heads=6``, ``num_groups=64``
(for 1024-point clouds), ``drop_path_rate=0.1``; for the full model ``decoder_num_heads=6``,
``mask_ratio=0.6``, ``mask_type="rand"``, ``decoder_drop_path_rate=0.1``. A checkpoint trained
with other head counts loads without error (the shapes do not depend on them) but computes
something else: pass ``config_overrides={"num_heads": ...}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub.weights import build_encoder, load_weights, method_from_weights, read_torch_file
from pc3d.utils.atomic import atomic_write

POINT_MAE_FORMAT = "point-mae"

# (original key prefix, pc3d PointMAE key prefix, the original layer is a Conv1d with kernel 1).
# An entry without a trailing "." names one whole key. The pc3d encoder's own keys are the
# PointMAE keys without "encoder.".
KEY_MAP: tuple[tuple[str, str, bool], ...] = (
    ("MAE_encoder.encoder.first_conv.0.", "encoder.patch_embed.conv1a.", True),
    ("MAE_encoder.encoder.first_conv.1.", "encoder.patch_embed.bn1.", False),
    ("MAE_encoder.encoder.first_conv.3.", "encoder.patch_embed.conv1b.", True),
    ("MAE_encoder.encoder.second_conv.0.", "encoder.patch_embed.conv2a.", True),
    ("MAE_encoder.encoder.second_conv.1.", "encoder.patch_embed.bn2.", False),
    ("MAE_encoder.encoder.second_conv.3.", "encoder.patch_embed.conv2b.", True),
    ("MAE_encoder.pos_embed.", "encoder.pos_embed.", False),
    ("MAE_encoder.blocks.blocks.", "encoder.blocks.blocks.", False),
    ("MAE_encoder.norm.", "encoder.norm.", False),
    ("MAE_encoder.cls_token", "encoder.cls_token", False),
    ("MAE_encoder.cls_pos", "encoder.cls_pos", False),
    ("mask_token", "mask_token", False),
    ("decoder_pos_embed.", "decoder_pos_embed.", False),
    ("MAE_decoder.blocks.", "decoder.blocks.", False),
    ("MAE_decoder.norm.", "decoder_norm.", False),
    ("increase_dim.0.", "reconstruction_head.", True),
)
ORIGINAL_ENCODER_PREFIX = "MAE_encoder."
PC3D_ENCODER_PREFIX = "encoder."
DDP_PREFIX = "module."
# Prefixes the original's fine-tuning code strips when it loads a file (DataParallel, nesting).
WRAPPER_PREFIXES = (DDP_PREFIX, "base_model.")
# Fine-tuned PointTransformer key prefix → pretraining name (same modules, same tensors).
FINETUNED_TO_PRETRAIN: tuple[tuple[str, str], ...] = (
    ("encoder.", "MAE_encoder.encoder."),
    ("pos_embed.", "MAE_encoder.pos_embed."),
    ("blocks.", "MAE_encoder.blocks."),
    ("norm.", "MAE_encoder.norm."),
    ("cls_token", "MAE_encoder.cls_token"),
    ("cls_pos", "MAE_encoder.cls_pos"),
)
HEAD_PREFIX = "cls_head_finetune."

# Not recoverable from the weights: the paper's values (cfgs/pretrain.yaml of the original).
ENCODER_DEFAULTS: dict[str, Any] = {"num_heads": 6, "drop_path_rate": 0.1, "num_groups": 64, "group_size": 32}
METHOD_DEFAULTS: dict[str, Any] = {"mask_ratio": 0.6, "mask_type": "rand", "decoder_num_heads": 6,
                                   "decoder_drop_path_rate": 0.1}

_BLOCK = re.compile(r"^MAE_encoder\.blocks\.blocks\.(\d+)\.")
_DECODER_BLOCK = re.compile(r"^MAE_decoder\.blocks\.(\d+)\.")


def rename_key(key: str, to: str = "pc3d") -> tuple[str, bool] | None:
    """Map one key between the layouts (``to="pc3d"``: original → pc3d PointMAE; ``"original"``: back).

    Returns:
        the new key and whether the tensor is a Conv1d/Linear kernel to reshape; None if unmapped.
    """
    for original, pc3d, conv in KEY_MAP:
        src, dst = (original, pc3d) if to == "pc3d" else (pc3d, original)
        if (src.endswith(".") and key.startswith(src)) or key == src:
            return dst + key[len(src):], conv and key.endswith(".weight")
    return None


def to_pc3d_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original state dict (``module.`` already stripped) → pc3d PointMAE state dict, unmapped original keys."""
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        renamed = rename_key(key, "pc3d")
        if renamed is None:
            unmapped.append(key)
            continue
        new_key, kernel = renamed
        if kernel and value.ndim == 3 and value.shape[-1] == 1:
            value = value.squeeze(-1)
        out[new_key] = value
    return out, unmapped


def to_original_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pc3d PointMAE state dict → the original's (Linear kernels back to Conv1d ``(out, in, 1)``)."""
    out = {}
    for key, value in state.items():
        renamed = rename_key(key, "original")
        if renamed is None:
            raise ConfigError(f"export_point_mae: model key {key!r} has no Point-MAE counterpart")
        new_key, kernel = renamed
        value = value.detach().to("cpu")
        out[new_key] = value.unsqueeze(-1) if kernel and value.ndim == 2 else value
    return out


def _is_finetuned(state: Mapping[str, Any]) -> bool:
    return "cls_token" in state and any(k.startswith("encoder.first_conv.") for k in state)


def _finetuned_to_pretrain_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for finetuned, pretrain in FINETUNED_TO_PRETRAIN:
            if (finetuned.endswith(".") and key.startswith(finetuned)) or key == finetuned:
                key = pretrain + key[len(finetuned):]
                break
        out[key] = value
    return out


def point_mae_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """The model state dict of a loaded original file in pretraining key names; None if not Point-MAE.

    Accepts ``{"base_model": sd, ...}``, ``{"model": sd, ...}`` or a bare state dict, with
    ``module.`` / ``base_model.`` prefixes (removed). A pretraining state has ``MAE_encoder.*``
    keys; a fine-tuned ``PointTransformer`` state (``cls_token`` + ``encoder.first_conv.*``) is
    renamed to them, its head staying under ``cls_head_finetune.*``.
    """
    if not isinstance(obj, Mapping):
        return None
    state = obj
    for name in ("base_model", "model"):
        if isinstance(obj.get(name), Mapping):
            state = obj[name]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    stripped = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    if _is_finetuned(stripped):
        stripped = _finetuned_to_pretrain_names(stripped)
    if not any(k.startswith(ORIGINAL_ENCODER_PREFIX) for k in stripped):
        return None
    return stripped


def _rows(state: Mapping[str, torch.Tensor], *keys: str) -> int | None:
    for key in keys:
        if key in state and state[key].ndim >= 1:
            return int(state[key].shape[0])
    return None


def _count(state: Mapping[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    found = [int(m.group(1)) for m in map(pattern.match, state) if m]
    return max(found) + 1 if found else 0


def infer_encoder_config(state: Mapping[str, torch.Tensor], source: str = "state dict",
                         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~pc3d.encoders.PointViT` config node of an original state dict (see module docstring)."""
    embed_dim = _rows(state, "MAE_encoder.norm.weight", "MAE_encoder.pos_embed.2.weight",
                      "MAE_encoder.blocks.blocks.0.norm1.weight", "MAE_encoder.encoder.second_conv.3.weight")
    if embed_dim is None:
        raise CheckpointError(f"{source}: cannot infer embed_dim (no MAE_encoder.norm.weight, "
                              "pos_embed or block norm in the file)")
    depth = _count(state, _BLOCK)
    hidden = next((int(v.shape[0]) for k, v in state.items()
                   if _BLOCK.match(k) and k.endswith(".mlp.fc1.weight")), 4 * embed_dim)
    qkv_bias = any(_BLOCK.match(k) and k.endswith(".attn.qkv.bias") for k in state)
    config: dict[str, Any] = {"_target_": "pc3d.encoders.PointViT", "embed_dim": embed_dim, "depth": depth,
                              "mlp_ratio": hidden / embed_dim, "qkv_bias": qkv_bias, **ENCODER_DEFAULTS,
                              "feature_layers": [], "cls_token": "MAE_encoder.cls_token" in state}
    head = _rows(state, "increase_dim.0.weight")
    if head is not None and head % 3 == 0:
        config["group_size"] = head // 3
    config.update(overrides or {})
    return config


def infer_method_config(state: Mapping[str, torch.Tensor],
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~pc3d.methods.PointMAE` config node (decoder depth from the weights, the rest the paper's)."""
    config = {"_target_": "pc3d.methods.PointMAE", "decoder_depth": _count(state, _DECODER_BLOCK), **METHOD_DEFAULTS}
    config.update(overrides or {})
    return config


def encoder_display(key: str) -> str:
    """A pc3d encoder key as the original file spells it (for error messages)."""
    if key.startswith(ORIGINAL_ENCODER_PREFIX):
        return key  # an original key that no table entry maps, kept under its own name
    renamed = rename_key(PC3D_ENCODER_PREFIX + key, "original")
    return renamed[0] if renamed else key


def model_display(key: str) -> str:
    """A pc3d PointMAE key as the original file spells it (for error messages)."""
    renamed = rename_key(key, "original")
    return renamed[0] if renamed else key


def encoder_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of an original state dict in :class:`~pc3d.encoders.PointViT` key names.

    ``MAE_encoder.*`` keys that no table entry maps stay under their original name (so a strict
    load reports them as unexpected); the decoder, mask token and head are left out.
    """
    encoder_part = {k: v for k, v in state.items() if k.startswith(ORIGINAL_ENCODER_PREFIX)}
    mapped, unmapped = to_pc3d_state(encoder_part)
    weights = {k[len(PC3D_ENCODER_PREFIX):]: v for k, v in mapped.items()}
    weights.update({k: encoder_part[k] for k in unmapped})
    return weights


NOT_POINT_MAE = ("not a Point-MAE checkpoint (expected a 'base_model' state dict with MAE_encoder.* keys, "
                 "or the fine-tuned layout with cls_token and encoder.first_conv.* keys)")


def read_point_mae_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict of an original Point-MAE file, in pretraining key names (see :func:`point_mae_state`)."""
    state = point_mae_state(read_torch_file(path))
    if state is None:
        raise CheckpointError(f"{path}: {NOT_POINT_MAE}")
    return state


def import_point_mae_model(path: str | os.PathLike, strict: bool = True,
                           config_overrides: Mapping[str, Any] | None = None,
                           method_overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild an original Point-MAE pretraining checkpoint as a pc3d :class:`~pc3d.methods.PointMAE`.

    Encoder, decoder, mask token and reconstruction head are all filled, so pretraining can
    go on in pc3d. The configs are :func:`infer_encoder_config` / :func:`infer_method_config`
    of the weights plus the overrides (``config_overrides`` for the encoder node,
    ``method_overrides`` for the method node, e.g. ``{"embed_visible_only": False}``).

    Returns:
        the model in eval mode, on CPU.
    Raises:
        CheckpointError: unreadable or non-Point-MAE file; with ``strict``, any missing,
            unexpected or wrongly shaped tensor (named as the original file spells it).
    """
    state = read_point_mae_file(path)
    if any(k.startswith(HEAD_PREFIX) for k in state):
        raise CheckpointError(f"{path}: is a fine-tuned Point-MAE classifier (no decoder); use "
                              "import_point_mae_classifier, or load_encoder for its encoder")
    encoder_config = infer_encoder_config(state, str(path), config_overrides)
    method_config = infer_method_config(state, method_overrides)
    weights, unmapped = to_pc3d_state(state)
    weights.update({k: state[k] for k in unmapped})
    return method_from_weights(method_config, encoder_config, weights, strict=strict, source=str(path),
                               what="Point-MAE weights", display=model_display)


def import_point_mae_classifier(path: str | os.PathLike, strict: bool = True,
                                config_overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild a fine-tuned Point-MAE ``PointTransformer`` file as a pc3d :class:`~pc3d.eval.classifier.ObjectClassifier`.

    The encoder is :func:`infer_encoder_config` of the weights (with the class token), the head
    Point-MAE's 256-256-C MLP with C from ``cls_head_finetune.8``.

    Returns:
        the classifier in eval mode, on CPU; ``classifier.logits(points)`` are the original's outputs.
    Raises:
        CheckpointError: unreadable file, not the fine-tuned layout, or (``strict``) weights that do not fit.
    """
    from pc3d.eval.classifier import ObjectClassifier

    state = read_point_mae_file(path)
    final = _rows(state, HEAD_PREFIX + "8.weight")
    if final is None or "MAE_encoder.cls_token" not in state:
        raise CheckpointError(f"{path}: not a fine-tuned Point-MAE classifier (no cls_token / "
                              f"{HEAD_PREFIX}8.weight)")
    encoder = build_encoder(infer_encoder_config(state, str(path), config_overrides))
    classifier = ObjectClassifier(encoder, num_classes=final)
    body = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    weights, unmapped = to_pc3d_state(body)  # PointMAE's "encoder.*" names are the classifier's too
    weights.update({k: body[k] for k in unmapped})
    weights.update({"head." + k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)})

    def display(key: str) -> str:
        return HEAD_PREFIX + key[len("head."):] if key.startswith("head.") else model_display(key)

    load_weights(classifier, weights, strict=strict, source=str(path), target="pc3d.eval.ObjectClassifier",
                 what="fine-tuned Point-MAE weights", display=display)
    return classifier.eval()


def export_point_mae(model: nn.Module, path: str | os.PathLike, epoch: int = 0) -> Path:
    """Write a pc3d :class:`~pc3d.methods.PointMAE` in the original's checkpoint layout, atomically.

    The file is ``{"base_model": state_dict, "epoch": epoch}``, which the original code's
    ``load_model`` / fine-tuning ``--ckpts`` read (no optimizer state: not a resume file).
    """
    payload = {"base_model": to_original_state(model.state_dict()), "epoch": int(epoch)}
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return path

