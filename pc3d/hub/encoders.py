"""Encoders from configs and from pc3d training checkpoints.

A training checkpoint stores the resolved run config; its ``encoder`` node
(a Hydra ``_target_`` + arguments) rebuilds the architecture, and the method's
``encoder.*`` weights fill it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from omegaconf import DictConfig
from torch import nn

from pc3d.errors import CheckpointError
from pc3d.train.checkpoint import load_checkpoint, resolve_checkpoint
from pc3d.utils.config import call_target

ENCODER_PREFIX = "encoder."


def build_encoder(config: Mapping[str, Any] | DictConfig) -> nn.Module:
    """Instantiate an encoder from its config node (``_target_`` + constructor arguments)."""
    return call_target(config, "encoder")


def encoder_state_from_checkpoint(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` weights of a method's state dict, prefix removed."""
    model = state["model"]
    return {k[len(ENCODER_PREFIX):]: v for k, v in model.items() if k.startswith(ENCODER_PREFIX)}


def load_encoder(path: str | os.PathLike, strict: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the encoder of a pc3d checkpoint file or run directory.

    Returns:
        the encoder (eval mode, on CPU) and its config node as a plain dict.
    Raises:
        CheckpointError: unreadable file, no encoder config, or weights that do not
            fit the architecture (missing/unexpected keys and shape mismatches by name).
    """
    file = resolve_checkpoint(path)
    state = load_checkpoint(file)
    config = (state.get("config") or {}).get("encoder")
    if not config:
        raise CheckpointError(f"{file}: checkpoint carries no encoder config")
    encoder = build_encoder(config)
    weights = encoder_state_from_checkpoint(state)
    expected = encoder.state_dict()
    problems = []
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in weights and weights[k].shape != v.shape]
    if missing:
        problems.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched[:5]}")
    if problems and strict:
        raise CheckpointError(f"{file}: encoder weights do not fit {config['_target_']}: " + "; ".join(problems))
    usable = {k: v for k, v in weights.items() if k in expected and expected[k].shape == v.shape}
    encoder.load_state_dict(usable, strict=False)
    return encoder.eval(), dict(config)
