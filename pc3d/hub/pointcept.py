"""Original Pointcept SpUNet-v1m1 checkpoints (github.com/Pointcept/Pointcept, ``SpUNetBase``): the backbone.

A Pointcept trainer saves ``{"epoch", "state_dict", "optimizer", "scheduler", ...}``, the model's
state dict with ``module.`` (DistributedDataParallel) and, for a ``DefaultSegmentor``,
``backbone.`` in front of the backbone's keys. pc3d reads the file with
``torch.load(weights_only=True)`` and rebuilds the backbone as a
:class:`~pc3d.encoders.SparseUNet` (``style="spunet"``, ``configs/encoder/spunet_v1m1.yaml``):
Pointcept's stride-1 stage is the stem alone (``blocks[0] = 0``), its ``channels[:4]`` are the
encoder widths at strides 2..16 and ``channels[4:]`` the decoder's at strides 8..1. The
segmentation head inside the backbone (``final.*``, present when ``num_classes > 0``) is not part
of the encoder and is left out; so are keys outside the backbone (criteria, a teacher).

Levels (the pc3d contract): the decoder outputs at strides 1, 2, 4, 8 (``dec[0..3]``, widths
``channels[7], channels[6], channels[5], channels[4]``) and the encoder bottleneck at stride 16
(``enc[3]``, ``channels[3]``); ``levels[0]`` is what ``SpUNetBase`` returns with ``num_classes=0``.
With v1m1's widths: ``(96, 96, 128, 256, 256)``, strides ``0.02 · (1, 2, 4, 8, 16)`` m.

Key mapping: :func:`pointcept_key_table`, one table for the architecture at hand, read both ways
(import and :func:`export_pointcept_spunet`). Pointcept's decoder lists run from the finest stride
(``up.0`` / ``dec.0``), pc3d's from the bottleneck. The shortcut of a decoder's first block is a
1×1×1 submanifold conv ``(O, 1, 1, 1, I)`` there, which spconv 2.x multiplies as
``features @ weight.view(I, O)`` (github.com/traveller59/spconv/issues/450): pc3d's linear weight
``(O, I)`` is that matrix transposed (:data:`pc3d.hub.weights.SHAPE_KINDS`), so pc3d computes what
the original computes with the spconv its weights were trained with.

Architecture from the weights: stem kernel and width, input width, every stage's width and block
count. Not in the weights: 2 cm voxels, and what the 6 input channels hold: colour in [-1, 1] and
normal (``NormalizeColor`` of Pointcept before v1.6.0, which the model zoo's SpUNet weights were
trained with; from v1.6.0 it divides by 255: pass ``config_overrides={"input_features": ["rgb",
"normal"]}`` for such checkpoints).
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

POINTCEPT_SPUNET_FORMAT = "pointcept-spunet"
#: Where the backbone's keys may sit in a file, tried in order.
PREFIXES = ("module.backbone.", "backbone.", "module.", "")
EXPORT_PREFIX = "module.backbone."
HEAD_PREFIX = "final."
DEFAULTS: dict[str, Any] = {"voxel_size": 0.02}
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_NOT_SPUNET = ("not a Pointcept SpUNet checkpoint (expected a 'state_dict' with the SpUNetBase keys conv_input.* "
               "and enc.0.block0.*, e.g. under module.backbone.)")


def _norm(original: str, pc3d: str) -> list[tuple[str, str, str | None]]:
    return [(f"{original}.{leaf}", f"{pc3d}.{leaf}", None) for leaf in _BN]


def _block(original: str, pc3d: str, project: bool) -> list[tuple[str, str, str | None]]:
    entries = []
    if project:
        entries += [(f"{original}.proj.0.weight", f"{pc3d}.project.0.weight", "spconv_1x1"),
                    *_norm(f"{original}.proj.1", f"{pc3d}.project.1")]
    entries += [(f"{original}.conv1.weight", f"{pc3d}.conv1.weight", None), *_norm(f"{original}.bn1", f"{pc3d}.norm1"),
                (f"{original}.conv2.weight", f"{pc3d}.conv2.weight", None), *_norm(f"{original}.bn2", f"{pc3d}.norm2")]
    return entries


def pointcept_key_table(config: Mapping[str, Any]) -> KeyTable:
    """Original ``SpUNetBase`` keys ↔ pc3d ``SparseUNet`` keys for ``config``, in the original's order."""
    blocks, dec_blocks = list(config["blocks"]), list(config["dec_blocks"])
    stages = len(blocks) - 1  # Pointcept's num_stages: the strided stages
    entries = [("conv_input.0.weight", "stem.0.weight", None), *_norm("conv_input.1", "stem.1")]
    for s in range(stages):
        entries += [(f"down.{s}.0.weight", f"down.{s}.0.weight", None), *_norm(f"down.{s}.1", f"down.{s}.1")]
    for s in range(stages):  # pc3d's decoder lists run from the bottleneck: Pointcept's s is pc3d's stages - 1 - s
        entries += [(f"up.{s}.0.weight", f"up.{stages - 1 - s}.0.weight", None),
                    *_norm(f"up.{s}.1", f"up.{stages - 1 - s}.1")]
    for s in range(stages):
        for k in range(blocks[s + 1]):
            entries += _block(f"enc.{s}.block{k}", f"encoder.{s + 1}.{k}", project=False)
    for s in range(stages):
        for k in range(dec_blocks[stages - 1 - s]):  # the first block takes the concatenated skip: a projection
            entries += _block(f"dec.{s}.block{k}", f"decoder.{stages - 1 - s}.{k}", project=k == 0)
    return KeyTable(entries)


def pointcept_state(obj: Any) -> tuple[dict[str, torch.Tensor], str] | None:
    """The backbone's state dict (prefix removed, head included) and its prefix in a loaded file; None if not SpUNet."""
    return prefixed_state(obj, PREFIXES, ("conv_input.0.weight", "enc.0.block0.conv1.weight"))


def infer_pointcept_config(state: Mapping[str, torch.Tensor], source: str = "state dict",
                           overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~pc3d.encoders.SparseUNet` config node of a ``SpUNetBase`` state dict (see the module docstring)."""
    overrides = dict(overrides or {})
    stem = state["conv_input.0.weight"]
    stages = len(count_blocks(state, r"down\.(\d+)\.(0)\.weight"))
    encoder_blocks = count_blocks(state, r"enc\.(\d+)\.block(\d+)\.conv1\.weight")
    decoder_blocks = count_blocks(state, r"dec\.(\d+)\.block(\d+)\.conv1\.weight")
    try:
        widths = [int(state[f"down.{s}.0.weight"].shape[0]) for s in range(stages)]
        dec_widths = [int(state[f"up.{s}.0.weight"].shape[0]) for s in range(stages)]
    except KeyError as exc:
        raise CheckpointError(f"{source}: SpUNet backbone without {exc.args[0]} (stages 0..{stages - 1} expected)"
                              ) from exc
    in_channels = int(stem.shape[-1])
    config: dict[str, Any] = {
        "_target_": "pc3d.encoders.SparseUNet", "style": "spunet", "in_channels": in_channels,
        "channels": [int(stem.shape[0]), *widths], "blocks": [0] + [encoder_blocks.get(s, 0) for s in range(stages)],
        "dec_channels": dec_widths[::-1], "dec_blocks": [decoder_blocks.get(s, 0) for s in range(stages)][::-1],
        "stem_kernel": int(stem.shape[1]), "attention_stages": [], **DEFAULTS}
    if "input_features" not in overrides:
        config["input_features"] = input_features_of_width(in_channels, f"{source}: SpUNet backbone")
    config.update(overrides)
    return config


def read_pointcept_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone state dict of a Pointcept SpUNet file and the prefix it was stored under."""
    return read_module_file(path, pointcept_state, _NOT_SPUNET)


def pointcept_encoder_weights(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A backbone state dict in pc3d's names, without the segmentation head (unknown keys kept, for a strict load)."""
    return pointcept_key_table(config).to_pc3d({k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)})


def pointcept_display(config: Mapping[str, Any], prefix: str):
    """How a pc3d key is named in messages: the file's spelling."""
    table = pointcept_key_table(config)
    return lambda key: prefix + table.display(key)


def export_pointcept_spunet(encoder: nn.Module, path: str | os.PathLike, prefix: str = EXPORT_PREFIX) -> Path:
    """Write a pc3d ``SparseUNet`` of Pointcept's layout as a Pointcept checkpoint, atomically.

    The file is ``{"state_dict": {prefix + key: tensor}}`` with ``SpUNetBase``'s keys and no head
    (``num_classes=0``): a ``SpUNetBase(num_classes=0)`` loads the keys without ``prefix``
    strictly; Pointcept's ``CheckpointLoader`` loads the file into a ``DefaultSegmentor`` (whose
    head then starts from its initialisation).
    """
    config = getattr(encoder, "init_config", None)
    if not config or config.get("style", "spunet") != "spunet" or list(config.get("attention_stages", [])) \
            or config["blocks"][0] != 0:
        shown = {} if not config else {k: config.get(k) for k in ("style", "blocks", "attention_stages")}
        raise ConfigError(f"export_pointcept_spunet: expected a SparseUNet of Pointcept's layout (style spunet, no "
                          f"attention, blocks[0] = 0), got {type(encoder).__name__} {shown}")
    state = pointcept_key_table(config).to_original(encoder.state_dict(), "export_pointcept_spunet")
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save({"state_dict": {prefix + k: v for k, v in state.items()}}, handle)
    return path
