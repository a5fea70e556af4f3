"""Original MSM checkpoints (Masked Scene Modeling, Hermosilla et al., github.com/phermosilla/msm): the encoder.

The inference release builds ``MSM3D_EncDec`` with the encoder ``MSM3D_Encoder`` ("transformer++"
attention blocks) and loads it from a torch file whose ``"state_dict"`` (or ``"model"``) holds the
pretraining model, the encoder under ``module.student.``. pc3d reads such a file with
``torch.load(weights_only=True)`` (no pickled code runs) and rebuilds the encoder as a
:class:`~pc3d.encoders.SparseUNet` with ``style="msm"`` (``configs/encoder/msm_large.yaml`` is the
release's architecture). The encoder's keys are found under the first of :data:`PREFIXES` that
holds them, so a bare ``MSM3D_Encoder`` state dict or an ``MSM3D_EncDec`` one load too; keys under
other prefixes (a teacher, heads) are not the encoder and are left out.

Key mapping: :func:`msm_key_table`, one table for the architecture at hand, read both ways
(import and :func:`export_msm`). The layer-scale vectors ``gamma`` are ``(1, C)`` in the original,
``(C,)`` in pc3d; every other tensor is the same under another name.

Architecture from the weights (``config_overrides`` wins over all of it): widths, stage count,
residual blocks per stage (``resnet_enc`` / ``resnet_dec``), attention blocks per stage (``att_enc`` /
``att_dec``), input width. Not in the weights, so the release's values (``model_cfg.py``) are
assumed: 8 channels per head (its ``num_heads`` are the widths / 8), sliding windows of 1,024
voxels, the curve list ``xyz_z-order, yxz_z-order, xyz_hilbert, yxz_hilbert``
(:data:`MSM_ORDERS`), 2 cm voxels of colour in [-1, 1] and normal, attention on half-precision
q, k, v (``attention_dtype="float16"``: the release casts them to float16 for flash-attention,
which also returns float16; float32 attention moves the features by about 1e-3); training
settings drop path 0.2, attention dropout 0.1, shuffled curve orders.

Inputs: the release voxelises a scan its own way (``CenterShift`` to the x/y centre and the lowest z,
``floor(coord / 0.02)`` from the grid's minimum, one *random* point's colour and normal per voxel); pc3d's
input adapter puts the grid at the points' minimum and averages the voxel's points, so a pc3d run on
the same scan sees slightly different voxels. Given the same voxels the features agree (within 1e-5,
``tests/test_reference_msm.py``), and ``probe.interpolation=msm`` samples them per point as the
release's ``MSM3D_InterpolationDecoder`` does (:mod:`pc3d.eval.scene_probe`).

Two differences from the release's own inference, both about randomness, none about weights:
the release permutes the four curve orders afresh at every forward (``shuffle_sfc=True``) and
passes its attention dropout (0.1) to flash-attention, which applies it in evaluation too.
pc3d evaluates deterministically: the curves as listed, no dropout (what the release computes
when its permutation comes out as the identity and ``att_drop_prob=0``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub.weights import (KeyTable, count_blocks, input_features_of_width, prefixed_state,
                              read_module_file)
from pc3d.utils.atomic import atomic_write

MSM_FORMAT = "msm"
#: Where the encoder's keys may sit in a file, tried in order (the release: ``module.student.``).
PREFIXES = ("module.student.", "student.", "module.encoder.", "encoder.", "module.", "")
EXPORT_PREFIX = "module.student."
#: MSM's curve list (``xyz_z-order``, ``yxz_z-order``, ``xyz_hilbert``, ``yxz_hilbert``) in pc3d's names.
MSM_ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
# Not recoverable from the weights: the release's values (inference/model_cfg.py, ENCODER_L_MODEL).
DEFAULTS: dict[str, Any] = {"voxel_size": 0.02, "head_dim": 8, "window_size": 1024,
                            "attention_orders": list(MSM_ORDERS), "attention_dtype": "float16", "shuffle_orders": True,
                            "drop_path_rate": 0.2, "attention_dropout": 0.1}

_RESIDUAL = (("conv1.weight", "conv1.weight", None), ("conv2.weight", "conv2.weight", None),
             ("norm.norm.scale", "norm1.weight", None), ("skip_path.gamma", "layer_scale", "row"),
             ("norm_post_layer.norm.scale", "norm2.weight", None))
_ATTENTION = (("norm.norm.scale", "norm1.weight", None), ("linear_in.weight", "qkv.weight", None),
              ("linear_out.weight", "proj.weight", None), ("skip_path_1.gamma", "layer_scale1", "row"),
              ("mlp_norm.norm.scale", "norm2.weight", None), ("mlp_lin_1.weight", "fc1.weight", None),
              ("mlp_lin_2.weight", "fc2.weight", None), ("skip_path_2.gamma", "layer_scale2", "row"))
_NOT_MSM = ("not an MSM checkpoint (expected a 'state_dict' or 'model' dict with the MSM3D_Encoder keys "
            "init_transform.* and decoder_init_norm.*, e.g. under module.student.)")


def _block_entries(original: str, pc3d: str, leaves: tuple) -> list[tuple[str, str, str | None]]:
    return [(original + a, pc3d + b, kind) for a, b, kind in leaves]


def msm_key_table(config: Mapping[str, Any]) -> KeyTable:
    """Original ``MSM3D_Encoder`` keys ↔ pc3d ``SparseUNet(style="msm")`` keys for ``config``, in the original's
    order."""
    stages = len(config["channels"])
    blocks, dec_blocks = list(config["blocks"]), list(config["dec_blocks"])
    encoder_attention = _depths(config, "attention_stages", "attention_depth")
    decoder_attention = _depths(config, "decoder_attention_stages", "decoder_attention_depth")
    entries: list[tuple[str, str, str | None]] = [
        ("init_transform.0.weight", "stem.0.weight", None), ("init_transform.0.bias", "stem.0.bias", None),
        ("init_transform.1.norm.scale", "stem.1.weight", None)]
    for s in range(1, stages):
        entries += [(f"down.{s - 1}.0.weight", f"down.{s - 1}.0.weight", None),
                    (f"down.{s - 1}.0.bias", f"down.{s - 1}.0.bias", None),
                    (f"down.{s - 1}.1.norm.scale", f"down.{s - 1}.1.weight", None)]
    for s in range(stages):
        for k in range(blocks[s]):
            entries += _block_entries(f"resnet_enc.{s}.{k}.", f"encoder.{s}.{k}.", _RESIDUAL)
    for s in range(stages):  # index 0 of an original attention stage is its (weightless) curve serializer
        for a in range(encoder_attention.get(s, 0)):
            entries += _block_entries(f"att_enc.{s}.{a + 1}.", f"encoder_attention.{s}.{a}.", _ATTENTION)
    entries.append(("decoder_init_norm.norm.scale", "decoder_norm.weight", None))
    for j in range(1, stages):
        entries += [(f"up.{j - 1}.0.norm.scale", f"up.{j - 1}.0.weight", None),
                    (f"up.{j - 1}.1.weight", f"up.{j - 1}.1.weight", None),
                    (f"up.{j - 1}.1.bias", f"up.{j - 1}.1.bias", None)]
    for j in range(stages):
        for a in range(decoder_attention.get(stages - 1 - j, 0)):
            entries += _block_entries(f"att_dec.{j}.{a + 1}.", f"decoder_attention.{j}.{a}.", _ATTENTION)
    for j in range(stages):
        for k in range(dec_blocks[j]):
            entries += _block_entries(f"resnet_dec.{j}.{k}.", f"decoder.{j}.{k}.", _RESIDUAL)
    for j in range(1, stages):
        entries += [(f"linears_skip.{j - 1}.0.norm.scale", f"merge.{j - 1}.norm.weight", None),
                    (f"linears_skip.{j - 1}.1.weight", f"merge.{j - 1}.proj.weight", None),
                    (f"linears_skip.{j - 1}.1.bias", f"merge.{j - 1}.proj.bias", None)]
    for j in range(1, stages):
        entries.append((f"skip.{j - 1}.gamma", f"merge.{j - 1}.layer_scale", "row"))
    return KeyTable(entries)


def _depths(config: Mapping[str, Any], stages_key: str, depth_key: str) -> dict[int, int]:
    stages = list(config.get(stages_key, ()))
    depth = config.get(depth_key, 1)
    depths = [int(depth)] * len(stages) if isinstance(depth, int) else [int(d) for d in depth]
    return dict(zip(stages, depths))


def msm_state(obj: Any) -> tuple[dict[str, torch.Tensor], str] | None:
    """The encoder's state dict (prefix removed) and its prefix in a loaded file; None if not MSM."""
    return prefixed_state(obj, PREFIXES, ("init_transform.0.weight", "decoder_init_norm.norm.scale"))


def _depth(depths: list[int]) -> int | list[int]:
    """Attention blocks per stage: one number when every stage has the same (the release: 2)."""
    return depths[0] if len(set(depths)) == 1 else depths


def infer_msm_config(state: Mapping[str, torch.Tensor], source: str = "state dict",
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~pc3d.encoders.SparseUNet` config node (``style="msm"``) of an original encoder state dict."""
    overrides = dict(overrides or {})
    stem = state["init_transform.0.weight"]
    stages = 1 + len(count_blocks(state, r"down\.(\d+)\.(0)\.weight"))
    try:
        channels = [int(stem.shape[0])] + [int(state[f"down.{s}.0.weight"].shape[0]) for s in range(stages - 1)]
        dec_channels = [int(state["decoder_init_norm.norm.scale"].shape[0])] + \
                       [int(state[f"up.{j}.1.weight"].shape[0]) for j in range(stages - 1)]
    except KeyError as exc:
        raise CheckpointError(f"{source}: MSM encoder without {exc.args[0]} (stages 0..{stages - 1} expected)") from exc
    residual = count_blocks(state, r"resnet_enc\.(\d+)\.(\d+)\.conv1\.weight")
    dec_residual = count_blocks(state, r"resnet_dec\.(\d+)\.(\d+)\.conv1\.weight")
    attention = count_blocks(state, r"att_enc\.(\d+)\.(\d+)\.linear_in\.weight")
    dec_attention = count_blocks(state, r"att_dec\.(\d+)\.(\d+)\.linear_in\.weight")
    in_channels = int(stem.shape[1])
    config: dict[str, Any] = {
        "_target_": "pc3d.encoders.SparseUNet", "style": "msm", "in_channels": in_channels, "channels": channels,
        "blocks": [residual.get(s, 0) for s in range(stages)], "dec_channels": dec_channels,
        "dec_blocks": [dec_residual.get(j, 0) for j in range(stages)],
        "attention_stages": sorted(attention), "attention_depth": _depth([attention[s] for s in sorted(attention)]),
        "decoder_attention_stages": sorted(stages - 1 - j for j in dec_attention),
        "decoder_attention_depth": _depth([dec_attention[stages - 1 - s]
                                           for s in sorted(stages - 1 - j for j in dec_attention)]),
        **DEFAULTS}
    if "input_features" not in overrides:
        config["input_features"] = input_features_of_width(in_channels, f"{source}: MSM encoder")
    config.update(overrides)
    return config


def read_msm_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder state dict of an original MSM file and the prefix it was stored under."""
    return read_module_file(path, msm_state, _NOT_MSM)


def msm_encoder_weights(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An original encoder state dict in pc3d's names (unknown keys kept, for a strict load to name)."""
    return msm_key_table(config).to_pc3d(state)


def msm_display(config: Mapping[str, Any], prefix: str):
    """How a pc3d key is named in messages: the file's spelling."""
    table = msm_key_table(config)
    return lambda key: prefix + table.display(key)


def export_msm(encoder: nn.Module, path: str | os.PathLike, prefix: str = EXPORT_PREFIX) -> Path:
    """Write a pc3d ``SparseUNet(style="msm")`` in the release's checkpoint layout, atomically.

    The file is ``{"state_dict": {prefix + key: tensor}}``, which the release's
    ``MSM3D_EncDec(encoder_weight_path=..., encoder_weight_prefix="module.student.")`` loads (strict).
    """
    config = getattr(encoder, "init_config", None)
    if not config or config.get("style") != "msm":
        raise ConfigError(f"export_msm: expected a SparseUNet with style='msm', got {type(encoder).__name__}"
                          f"{'' if not config else ' style=' + repr(config.get('style'))}")
    state = msm_key_table(config).to_original(encoder.state_dict(), "export_msm")
    payload = {"state_dict": {prefix + k: v for k, v in state.items()}}
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return path
