"""Shared pieces of the hub: build an encoder from its config node, vet a ``_target_`` read from a
file, read a torch file without running pickle code, and fit a state dict into a module with every
problem reported by name."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from torch import nn

from pc3d.encoders.base import Encoder
from pc3d.errors import CheckpointError, ConfigError
from pc3d.train.checkpoint import check_tensor_types, one_line, read_torch_file  # noqa: F401  (re-exported)

from pc3d.utils.config import call_target, to_plain

TRUSTED_TARGET_MODULES = ("pc3d.encoders.",)


def build_encoder(config: Mapping[str, Any] | DictConfig) -> nn.Module:
    """Instantiate an encoder from its config node (``_target_`` + constructor arguments)."""
    return call_target(config, "encoder")


def encoder_class(config: Mapping[str, Any] | DictConfig) -> type | None:
    """The class a config node's ``_target_`` names (None when it cannot be imported: building reports why)."""
    target = to_plain(config).get("_target_")
    try:
        obj = get_object(target)
    except Exception:
        return None
    return obj if isinstance(obj, type) else None


def architecture_config(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A config node without the run-time choices its encoder class declares (``runtime_args``: a conv
    backend), so a stored encoder rebuilds as the same architecture on any machine."""
    node = to_plain(config)
    cls = encoder_class(node)
    if cls is not None and issubclass(cls, Encoder):
        for name in cls.runtime_args:
            node.pop(name, None)
    return node


def check_stored_target(config: Mapping[str, Any], source: str) -> None:
    """A ``_target_`` read from a file must be an encoder class of pc3d.

    Building calls ``_target_`` with the stored arguments, so an unchecked target would make a
    weights-only file run arbitrary functions (``os.system``, a file writer, ...). Accepted:
    ``nn.Module`` subclasses defined in a module under ``pc3d.encoders``. A caller who wants
    another class passes it explicitly (``config_overrides={"_target_": ...}``).
    """
    target = config.get("_target_")
    refused = CheckpointError(f"{source}: stored encoder _target_={target!r} is not a pc3d encoder class "
                              "(refused: building it would run it); pass config_overrides={'_target_': ...} "
                              "to choose the class yourself")
    if not isinstance(target, str) or not target.startswith(TRUSTED_TARGET_MODULES):
        raise refused
    try:
        obj = get_object(target)
    except Exception:  # unimportable: call_target reports it as a ConfigError with the reason
        return
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)
            and obj.__module__.startswith(TRUSTED_TARGET_MODULES)):
        raise refused


def _listed(names: list[str], limit: int = 5) -> str:
    return f"{names[:limit]}{'...' if len(names) > limit else ''}"


def load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor], *, strict: bool, source: str,
                 target: str, what: str = "weights", display: Callable[[str], str] | None = None) -> nn.Module:
    """Copy ``weights`` into ``module``; report missing, unexpected and wrongly shaped keys by name.

    Args:
        weights: state dict in ``module``'s key names.
        strict: raise on any problem; otherwise load every tensor whose name and shape fit.
        source: file name for the message; target: what is being filled (``_target_``);
            what: what the weights are (``"encoder weights"``).
        display: how a key is shown in messages (importers show the key as the file spells it).
    Raises:
        CheckpointError: ``strict`` and the weights do not fit.
    """
    show = display or (lambda key: key)
    expected = module.state_dict()
    missing = sorted(show(k) for k in set(expected) - set(weights))
    unexpected = sorted(show(k) for k in set(weights) - set(expected))
    mismatched = [f"{show(k)} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in weights and weights[k].shape != v.shape]
    check_tensor_types(expected, weights, source, what, show)
    problems = []
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_listed(mismatched)}")
    if problems and strict:
        raise CheckpointError(f"{source}: {what} do not fit {target}: " + "; ".join(problems))
    usable = {k: v for k, v in weights.items() if k in expected and expected[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return module


#: How a tensor differs between an original layout and pc3d's (``KeyTable`` entries):
#: ``row``: a per-channel vector stored as ``(1, C)`` originally, ``(C,)`` in pc3d;
#: ``spconv_1x1``: the kernel ``(O, 1, 1, 1, I)`` of a 1×1×1 spconv 2.x conv, a linear weight ``(O, I)``
#: in pc3d. spconv 2.x computes such a conv as ``features @ weight.view(I, O)`` (its memory read as an
#: ``(I, O)`` matrix, not transposed: github.com/traveller59/spconv/issues/450), so the weights a
#: model learnt with it are that matrix: pc3d's weight is ``stored.view(I, O).T``.
SHAPE_KINDS = ("row", "spconv_1x1")


class KeyTable:
    """One table of ``(original key, pc3d key, shape kind or None)`` entries, read in both directions.

    Importers build it for the architecture at hand (stage and block counts come from the
    weights), so the same entries rename a file into pc3d's names and an encoder back into the
    original layout; no key is renamed by a second rule.
    """

    def __init__(self, entries: list[tuple[str, str, str | None]]) -> None:
        self.entries = list(entries)
        self.to_pc3d_names = {original: (pc3d, kind) for original, pc3d, kind in self.entries}
        self.to_original_names = {pc3d: (original, kind) for original, pc3d, kind in self.entries}
        if len(self.to_pc3d_names) != len(self.entries) or len(self.to_original_names) != len(self.entries):
            raise ValueError("KeyTable: a key appears twice")

    def to_pc3d(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Original state dict → pc3d names; keys the table does not know keep their own name
        (so a strict load reports them as unexpected, by the file's spelling)."""
        out = {}
        for key, value in state.items():
            if key not in self.to_pc3d_names:
                out[key] = value
                continue
            name, kind = self.to_pc3d_names[key]
            if kind == "row" and value.dim() == 2 and value.shape[0] == 1:
                value = value.reshape(-1)
            elif kind == "spconv_1x1" and value.dim() == 5 and value.shape[1:4] == (1, 1, 1):
                value = value.reshape(value.shape[4], value.shape[0]).T.contiguous()
            out[name] = value
        return out

    def to_original(self, state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        """pc3d state dict → original names and shapes, in the table's order (the original's)."""
        unknown = sorted(set(state) - set(self.to_original_names))
        missing = sorted(set(self.to_original_names) - set(state))
        if unknown or missing:
            raise ConfigError(f"{what}: the encoder does not match the original layout "
                              f"(no counterpart for {_listed(unknown)}; missing {_listed(missing)})")
        out = {}
        for original, name, kind in self.entries:
            value = state[name].detach().to("cpu")
            if kind == "row":
                value = value.reshape(1, -1)
            elif kind == "spconv_1x1":
                value = value.T.contiguous().reshape(value.shape[0], 1, 1, 1, value.shape[1])
            out[original] = value.contiguous()
        return out

    def display(self, key: str) -> str:
        """A pc3d key as the original spells it (unknown keys as they are)."""
        return self.to_original_names.get(key, (key, None))[0]


def prefixed_state(obj: Any, prefixes: tuple[str, ...], markers: tuple[str, ...]
                   ) -> tuple[dict[str, torch.Tensor], str] | None:
    """The state dict of one module inside a loaded file, its prefix removed, and that prefix; None if absent.

    ``obj`` is the file's object: a state dict, or a mapping holding one under ``state_dict`` or
    ``model``. The module's keys are under the first of ``prefixes`` for which every one of
    ``markers`` (key names without the prefix) is present; all its values must be tensors.
    """
    if not isinstance(obj, Mapping):
        return None
    state = obj
    for name in ("state_dict", "model"):
        if isinstance(obj.get(name), Mapping):
            state = obj[name]
            break
    for prefix in prefixes:
        if all(f"{prefix}{marker}" in state for marker in markers):
            found = {str(k)[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
            if not all(isinstance(v, torch.Tensor) for v in found.values()):
                return None
            return found, prefix
    return None


def count_blocks(state: Mapping[str, Any], pattern: str) -> dict[int, int]:
    """``{stage: number of distinct blocks}`` of the keys of ``state`` that fully match ``pattern``
    (two groups: the stage index, the block index)."""
    found: dict[int, set[int]] = {}
    for key in state:
        match = re.fullmatch(pattern, key)
        if match:
            found.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return {stage: len(ids) for stage, ids in found.items()}


def method_from_weights(method_config: Mapping[str, Any], encoder_config: Mapping[str, Any],
                        weights: Mapping[str, torch.Tensor], *, strict: bool, source: str, what: str,
                        display: Callable[[str], str] | None = None) -> nn.Module:
    """The pretraining method of ``method_config`` around a new encoder of ``encoder_config``, filled with
    ``weights`` (pc3d key names; see :func:`load_weights`), in eval mode: how an original pretraining
    checkpoint becomes a pc3d model."""
    model = call_target(method_config, "method", encoder=build_encoder(encoder_config))
    load_weights(model, weights, strict=strict, source=source, target=method_config["_target_"], what=what,
                 display=display)
    return model.eval()


#: what the input channels of an original sparse UNet hold, by their number (MSM, Pointcept SpUNet)
INPUT_FEATURES_BY_WIDTH = {6: ["color", "normal"], 3: ["color"]}


def input_features_of_width(in_channels: int, what: str) -> list[str]:
    """The ``input_features`` of an original sparse-UNet file's ``in_channels`` input channels; for another
    width a CheckpointError: ``what`` (the file and the network) says which."""
    if in_channels not in INPUT_FEATURES_BY_WIDTH:
        raise CheckpointError(f"{what} takes {in_channels} input channels; pass "
                              "config_overrides={'input_features': [...]} to say what they hold")
    return list(INPUT_FEATURES_BY_WIDTH[in_channels])


def read_module_file(path: str | os.PathLike, find: Callable[[Any], Any], refusal: str) -> Any:
    """What ``find`` takes from the (weights-only) loaded file ``path``; where it finds nothing (None), a
    CheckpointError ``path: refusal``."""
    found = find(read_torch_file(path))
    if found is None:
        raise CheckpointError(f"{path}: {refusal}")
    return found
