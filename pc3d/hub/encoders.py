"""Encoders from configs and from checkpoint files of every format pc3d reads.

Formats (``format=`` of :func:`load_encoder`):
- ``pc3d-checkpoint``: a pc3d training checkpoint file or run directory (its newest
  loadable checkpoint). Its resolved run config's ``encoder`` node (a Hydra ``_target_`` +
  arguments) rebuilds the architecture, and the method's ``encoder.*`` weights fill it.
- ``pc3d-encoder``: a ``.safetensors`` file written by :func:`~pc3d.hub.save_encoder`
  (weights + config in its metadata; see :mod:`pc3d.hub.encoder_file`).
- ``point-mae``: an original Point-MAE checkpoint, pretraining or fine-tuned classification
  layout (see :mod:`pc3d.hub.point_mae`).
- ``nerf-mae``: an original NeRF-MAE checkpoint, pretraining or fine-tuned (NeRF-RPN detector)
  layout (see :mod:`pc3d.hub.nerf_mae`).
- ``msm``: an original MSM checkpoint (the release's ``MSM3D_Encoder``, see :mod:`pc3d.hub.msm`).
- ``pointcept-spunet``: a Pointcept SpUNet-v1m1 checkpoint (its ``SpUNetBase`` backbone, see
  :mod:`pc3d.hub.pointcept`).
- ``auto`` (default): a directory is a run directory; a ``.safetensors`` suffix or a
  safetensors header is ``pc3d-encoder``; a torch file is loaded with
  ``torch.load(weights_only=True)`` and is ``pc3d-checkpoint`` if it says so
  (``format == "pc3d-checkpoint"``), ``point-mae`` if its (``base_model``) state dict has
  ``MAE_encoder.*`` keys, ``nerf-mae`` if its ``state_dict`` (or ``backbone_state_dict``) has
  ``patch_partition.*`` keys, ``msm`` if its ``state_dict`` holds ``init_transform.*`` and
  ``decoder_init_norm.*`` (under ``module.student.`` or another known prefix),
  ``pointcept-spunet`` if it holds ``conv_input.*`` and ``enc.0.block0.*`` (under
  ``module.backbone.`` ...), otherwise a :class:`CheckpointError` listing these formats.
No format runs pickled code, and a stored ``_target_`` must be a pc3d encoder class
(:func:`~pc3d.hub.weights.check_stored_target`), so a file cannot make pc3d call anything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub.encoder_file import ENCODER_FILE_FORMAT, looks_like_safetensors, read_encoder_file
from pc3d.hub.nerf_mae import (NERF_MAE_FORMAT, NOT_NERF_MAE, import_nerf_mae_model, nerf_mae_checkpoint,
                               read_nerf_mae_encoder)
from pc3d.hub.nerf_mae import encoder_display as nerf_mae_display
from pc3d.hub.msm import _NOT_MSM, MSM_FORMAT, infer_msm_config, msm_display, msm_encoder_weights, msm_state
from pc3d.hub.point_mae import (NOT_POINT_MAE, POINT_MAE_FORMAT, encoder_display, encoder_weights,
                                import_point_mae_model, infer_encoder_config, point_mae_state)
from pc3d.hub.pointcept import (_NOT_SPUNET, POINTCEPT_SPUNET_FORMAT, infer_pointcept_config, pointcept_display,
                                pointcept_encoder_weights, pointcept_state)
from pc3d.hub.weights import (architecture_config, build_encoder, check_stored_target, encoder_class, load_weights,
                              method_from_weights, read_torch_file)
from pc3d.train.checkpoint import CHECKPOINT_FORMAT, latest_checkpoint

ENCODER_PREFIX = "encoder."
FORMATS = ("auto", CHECKPOINT_FORMAT, ENCODER_FILE_FORMAT, POINT_MAE_FORMAT, NERF_MAE_FORMAT, MSM_FORMAT,
           POINTCEPT_SPUNET_FORMAT)
KNOWN_FORMATS = (f"{CHECKPOINT_FORMAT} (pc3d training checkpoint or run directory), "
                 f"{ENCODER_FILE_FORMAT} (.safetensors from pc3d.hub.save_encoder), "
                 f"{POINT_MAE_FORMAT} (original Point-MAE checkpoint, pretraining or fine-tuned), "
                 f"{NERF_MAE_FORMAT} (original NeRF-MAE checkpoint, pretraining or fine-tuned), "
                 f"{MSM_FORMAT} (original MSM release checkpoint), "
                 f"{POINTCEPT_SPUNET_FORMAT} (Pointcept SpUNet-v1m1 checkpoint)")

__all__ = ["FORMATS", "EncoderCheckpoint", "build_encoder", "encoder_config_from_checkpoint",
           "encoder_or_random", "encoder_state_from_checkpoint", "load_encoder", "read_encoder_checkpoint"]


@dataclass
class EncoderCheckpoint:
    """What a checkpoint holds for an encoder, in pc3d terms.

    ``config`` is the encoder's config node (overrides applied), ``weights`` its state dict in
    the encoder's key names, ``display`` how a key is named in messages (the file's spelling).
    """

    file: Path
    format: str
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    display: Callable[[str], str] | None = None


def encoder_state_from_checkpoint(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` weights of a method's state dict, prefix removed."""
    model = state["model"]
    return {k[len(ENCODER_PREFIX):]: v for k, v in model.items() if k.startswith(ENCODER_PREFIX)}


def _from_pc3d_checkpoint(file: Path, state: Mapping[str, Any]) -> EncoderCheckpoint:
    config = (state.get("config") or {}).get("encoder")
    if not config:
        raise CheckpointError(f"{file}: checkpoint carries no encoder config")
    return EncoderCheckpoint(file, CHECKPOINT_FORMAT, dict(config), encoder_state_from_checkpoint(state))


def _from_point_mae(file: Path, state: Mapping[str, torch.Tensor]) -> EncoderCheckpoint:
    return EncoderCheckpoint(file, POINT_MAE_FORMAT, infer_encoder_config(state, str(file)),
                             encoder_weights(state), encoder_display)


def _from_msm(file: Path, found: tuple[dict[str, torch.Tensor], str],
              overrides: Mapping[str, Any] | None) -> EncoderCheckpoint:
    state, prefix = found
    config = infer_msm_config(state, str(file), overrides)
    return EncoderCheckpoint(file, MSM_FORMAT, config, msm_encoder_weights(state, config), msm_display(config, prefix))


def _from_pointcept(file: Path, found: tuple[dict[str, torch.Tensor], str],
                    overrides: Mapping[str, Any] | None) -> EncoderCheckpoint:
    state, prefix = found
    config = infer_pointcept_config(state, str(file), overrides)
    return EncoderCheckpoint(file, POINTCEPT_SPUNET_FORMAT, config, pointcept_encoder_weights(state, config),
                             pointcept_display(config, prefix))


def _is_torch_file(path: Path) -> bool:
    """Zip-based torch.save (``PK``) or the legacy pickle stream (protocol marker 0x80)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def _nerf_mae_with_namespace(path: Path, format: str, refused: CheckpointError) -> Any:
    """The file read with ``argparse.Namespace`` as a dict, if that makes it a NeRF-MAE checkpoint; else ``refused``."""
    if format not in ("auto", NERF_MAE_FORMAT):
        raise refused
    try:
        obj = read_torch_file(path, namespaces=True)
    except CheckpointError:
        raise refused from None
    if nerf_mae_checkpoint(obj) is None:
        raise refused
    return obj


def _from_nerf_mae(path: Path, found: Any) -> EncoderCheckpoint:
    config, weights = read_nerf_mae_encoder(path, found[0])
    return EncoderCheckpoint(path, NERF_MAE_FORMAT, config, weights, nerf_mae_display)


def _torch_checkpoint(path: Path, format: str = "auto") -> tuple[Path, Any]:
    """``(file, content)`` of a torch checkpoint: a run directory's newest readable one, or the file itself
    (NeRF-MAE-style files whose arguments are an argparse.Namespace are read as dicts)."""
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: run directory has no readable checkpoint in checkpoints/")
        return found
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    try:
        return path, read_torch_file(path)
    except CheckpointError as refused:
        return path, _nerf_mae_with_namespace(path, format, refused)


def _read(path: Path, format: str, overrides: Mapping[str, Any] | None = None) -> EncoderCheckpoint:
    if path.is_dir():
        if format not in ("auto", CHECKPOINT_FORMAT):
            raise CheckpointError(f"{path}: is a directory; format '{format}' expects a file")
        return _from_pc3d_checkpoint(*_torch_checkpoint(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    if format == "auto" and (path.suffix == ".safetensors" or looks_like_safetensors(path)):
        format = ENCODER_FILE_FORMAT
    if format == ENCODER_FILE_FORMAT:
        config, weights = read_encoder_file(path)
        return EncoderCheckpoint(path, ENCODER_FILE_FORMAT, config, weights)
    if format == "auto" and not _is_torch_file(path):
        raise CheckpointError(f"{path}: unknown checkpoint format (neither safetensors nor a torch file); "
                              f"known formats: {KNOWN_FORMATS}")
    _, obj = _torch_checkpoint(path, format)  # read once; the content decides (auto) or must fit the forced format
    is_pc3d = isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT
    if format == CHECKPOINT_FORMAT and not is_pc3d:
        raise CheckpointError(f"{path}: not a pc3d training checkpoint (expected format '{CHECKPOINT_FORMAT}')")
    if is_pc3d and format in ("auto", CHECKPOINT_FORMAT):
        return _from_pc3d_checkpoint(path, obj)
    # the architecture of an original file is inferred from its weights; overrides take part (an input width
    # the weights cannot name, a head count)
    readers = {POINT_MAE_FORMAT: (point_mae_state, lambda found: _from_point_mae(path, found), NOT_POINT_MAE),
               NERF_MAE_FORMAT: (nerf_mae_checkpoint, lambda found: _from_nerf_mae(path, found), NOT_NERF_MAE),
               MSM_FORMAT: (msm_state, lambda found: _from_msm(path, found, overrides), _NOT_MSM),
               POINTCEPT_SPUNET_FORMAT: (pointcept_state, lambda found: _from_pointcept(path, found, overrides),
                                         _NOT_SPUNET)}
    for name, (detect, build, refusal) in readers.items():
        if format not in ("auto", name):
            continue
        found = detect(obj)
        if found is not None:
            return build(found)
        if format == name:
            raise CheckpointError(f"{path}: {refusal}")
    raise CheckpointError(f"{path}: unknown checkpoint format; known formats: {KNOWN_FORMATS}")


def read_encoder_checkpoint(path: str | os.PathLike, format: str = "auto",
                            config_overrides: Mapping[str, Any] | None = None) -> EncoderCheckpoint:
    """Read the encoder config and weights of a checkpoint of any known format (see module docstring).

    Args:
        format: ``"auto"`` or one of ``pc3d-checkpoint``, ``pc3d-encoder``, ``point-mae``, ``nerf-mae``,
            ``msm``, ``pointcept-spunet``.
        config_overrides: keys replacing those of the stored or inferred config node (e.g.
            ``{"feature_layers": [3, 7]}``, or ``{"num_heads": 12}`` for a Point-MAE file whose
            head count is not the paper's). A stored ``_target_`` must be a pc3d encoder class
            unless the overrides name the ``_target_`` themselves.
    Raises:
        ConfigError: unknown ``format`` value.
        CheckpointError: missing, unreadable, truncated or unrecognised file (named).
    """
    if format not in FORMATS:
        raise ConfigError(f"format: unknown value {format!r} (accepted: {', '.join(FORMATS)})")
    checkpoint = _read(Path(path), format, config_overrides)
    if "_target_" not in (config_overrides or {}):
        check_stored_target(checkpoint.config, str(checkpoint.file))
    # older files stored run-time choices (a conv backend) with the architecture: this machine decides
    checkpoint.config = {**architecture_config(checkpoint.config), **(config_overrides or {})}
    return checkpoint


def encoder_config_from_checkpoint(path: str | os.PathLike, format: str = "auto",
                                   config_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The encoder config node a checkpoint rebuilds (``{"_target_": ..., ...}``); nothing is built.

    A pc3d encoder file is read header-only; the other formats are loaded (weights-only).
    """
    path = Path(path)
    if format == ENCODER_FILE_FORMAT or (format == "auto" and path.is_file()
                                         and (path.suffix == ".safetensors" or looks_like_safetensors(path))):
        config = read_encoder_file(path, weights=False)[0]
        if "_target_" not in (config_overrides or {}):
            check_stored_target(config, str(path))
        return {**architecture_config(config), **(config_overrides or {})}
    return read_encoder_checkpoint(path, format, config_overrides).config


def load_encoder(path: str | os.PathLike, strict: bool = True, format: str = "auto",
                 config_overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the encoder of a checkpoint: pc3d run/checkpoint, pc3d encoder file, or an original
    Point-MAE, MSM or Pointcept SpUNet file.

    Args:
        path: checkpoint file or run directory.
        strict: raise on missing, unexpected or wrongly shaped weights; False loads every
            tensor whose name and shape fit and leaves the rest at their initial values.
        format: ``"auto"`` (detect, see module docstring) or a format name to force.
        config_overrides: see :func:`read_encoder_checkpoint`.
    Returns:
        the encoder (eval mode, on CPU) and its config node as a plain dict.
    Raises:
        CheckpointError: unreadable or unrecognised file, no encoder config, or (``strict``)
            weights that do not fit the architecture, by name.
    """
    checkpoint = read_encoder_checkpoint(path, format, config_overrides)
    try:
        encoder = build_encoder(checkpoint.config)
    except ConfigError as exc:
        if checkpoint.format in (CHECKPOINT_FORMAT, ENCODER_FILE_FORMAT):
            raise
        # an original file: its architecture was read from the weights, plus defaults for what they cannot tell
        raise CheckpointError(f"{checkpoint.file}: the {checkpoint.format} architecture read from its weights "
                              f"does not build ({exc}); pass config_overrides for what the weights cannot tell "
                              f"(e.g. head_dim, window_size, num_heads)") from exc
    load_weights(encoder, checkpoint.weights, strict=strict, source=str(checkpoint.file),
                 target=checkpoint.config["_target_"], what="encoder weights", display=checkpoint.display)
    return encoder.eval(), dict(checkpoint.config)


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, format: str = "auto") -> nn.Module:
    """Copy the encoder weights of a checkpoint (any format :func:`load_encoder` reads) into ``encoder``,
    an encoder of the same class built from its own config (``pc3d pretrain init_encoder=RUN``).

    Settings that carry no weights (a point-ViT's ``num_groups``) may differ from the checkpoint's.
    Raises:
        CheckpointError: unreadable file, another encoder class, or weights that do not fit, by name.
    """
    checkpoint = read_encoder_checkpoint(path, format)
    stored = encoder_class(checkpoint.config)
    if stored is not type(encoder):
        name = stored.__name__ if stored is not None else checkpoint.config["_target_"]
        raise CheckpointError(f"{checkpoint.file}: holds a {name} encoder, not the {type(encoder).__name__} "
                              "being trained (encoder=...)")
    return load_weights(encoder, checkpoint.weights, strict=True, source=str(checkpoint.file),
                        target=checkpoint.config["_target_"], what="encoder weights", display=checkpoint.display)


def encoder_or_random(checkpoint: str | os.PathLike, encoder_config: Mapping[str, Any] | None, *, seed: int,
                      config_overrides: Mapping[str, Any] | None = None
                      ) -> tuple[nn.Module, dict[str, Any], str]:
    """The encoder a downstream run starts from: ``checkpoint="random"`` builds ``encoder_config`` after
    seeding every generator with ``seed``; anything else loads the checkpoint (any format, strict).

    ``config_overrides`` apply to either (e.g. more patch tokens per scene for detection).
    Returns the encoder, its config node and ``"pretrained"`` or ``"random"``.
    """
    from pc3d.utils.config import seed_everything, to_plain

    seed_everything(seed)
    if str(checkpoint) == "random":
        if not encoder_config:
            raise ConfigError("checkpoint=random needs an encoder config (encoder=...)")
        config = {**to_plain(encoder_config), **(config_overrides or {})}
        return build_encoder(config), architecture_config(config), "random"
    encoder, config = load_encoder(checkpoint, config_overrides=config_overrides)
    return encoder, config, "pretrained"



def load_pretraining_model(path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """The whole pretraining model (the encoder and the method's decoder and heads) of a pc3d run directory or
    training checkpoint, or of an original Point-MAE or NeRF-MAE pretraining file; eval mode, on CPU.

    Raises:
        CheckpointError: a missing or unreadable file, a checkpoint without its method and encoder config, a
            file of another format, or (``strict``) weights that do not fit, by name.
    """
    file, obj = _torch_checkpoint(Path(path))
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        config = obj.get("config") or {}
        if not config.get("method") or not config.get("encoder"):
            raise CheckpointError(f"{file}: checkpoint carries no method and encoder config")
        return method_from_weights(dict(config["method"]), architecture_config(config["encoder"]), obj["model"],
                                   strict=strict, source=str(file), what="the run's model")
    if point_mae_state(obj) is not None:
        return import_point_mae_model(file, strict)
    if nerf_mae_checkpoint(obj) is not None:
        return import_nerf_mae_model(file, strict)
    raise CheckpointError(f"{file}: not a pretraining model (expected a pc3d run or training checkpoint, or an "
                          "original Point-MAE or NeRF-MAE pretraining file)")
