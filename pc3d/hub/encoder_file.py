"""The pc3d encoder file: one ``.safetensors`` file, weights + architecture, no pickle.

Layout (format ``pc3d-encoder``, version 1):
- tensors: the encoder's ``state_dict()`` (same key names, contiguous, CPU, dtype as saved);
- safetensors metadata (``str → str``), the single source of truth for the architecture:
  ``format = "pc3d-encoder"``, ``version = "1"``, ``pc3d_encoder_config`` = JSON of the
  encoder's config node ``{"_target_": "pc3d.encoders.PointViT", ...constructor args}``
  (the node :func:`~pc3d.hub.build_encoder` takes).

There is no sidecar file: the file alone rebuilds the encoder. Any safetensors tool shows
the config (``safetensors.safe_open(path, "pt").metadata()``). Reading never calls
``torch.load``/pickle; writing is atomic (:func:`pc3d.utils.atomic.atomic_write`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch
import torch
from omegaconf import DictConfig
from torch import nn

from pc3d.encoders.base import Encoder
from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub.weights import architecture_config, build_encoder, one_line
from pc3d.utils.atomic import atomic_write
from pc3d.utils.config import to_plain

ENCODER_FILE_FORMAT = "pc3d-encoder"
ENCODER_FILE_VERSION = "1"
CONFIG_KEY = "pc3d_encoder_config"


def looks_like_safetensors(path: str | os.PathLike) -> bool:
    """True when the file starts like a safetensors file (u64 header length, then a JSON object)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_len <= size


def _check_config_fits(encoder: nn.Module, config: dict[str, Any]) -> None:
    """The config must rebuild an encoder with ``encoder``'s class, keys and shapes."""
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the caller's RNG stream
        rebuilt = build_encoder(config)
    if type(rebuilt) is not type(encoder):
        raise ConfigError(f"save_encoder: config builds {type(rebuilt).__name__}, "
                          f"the encoder is {type(encoder).__name__}")
    want = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ConfigError(f"save_encoder: config does not describe this encoder "
                          f"(keys/shapes differ: {diff[:5]}{'...' if len(diff) > 5 else ''})")


def save_encoder(encoder: nn.Module, path: str | os.PathLike,
                 config: Mapping[str, Any] | DictConfig | None = None) -> Path:
    """Write ``encoder`` as a self-contained pc3d encoder file (``.safetensors``), atomically.

    Args:
        encoder: the encoder module (any device/dtype; tensors are stored on CPU as they are).
        path: output file; ``.safetensors`` is the conventional suffix (auto-detection also
            reads the content, so another suffix still loads).
        config: its config node, ``{"_target_": ..., **constructor args}`` (e.g. the ``encoder``
            node of a run config). It is checked by rebuilding: a config that builds another
            class or other keys/shapes is a :class:`ConfigError`, so a written file always loads.
            Loading accepts only ``_target_`` classes under ``pc3d.encoders`` (a file must not
            choose what pc3d calls); another class loads with ``config_overrides={"_target_": ...}``.
            None: the encoder's own ``init_config`` (pc3d encoders record their constructor
            arguments) under its class's ``_target_``. Run-time arguments (``runtime_args``, e.g.
            a conv backend) are never stored.
    Returns:
        the path written.
    """
    if config is None:
        if not isinstance(encoder, Encoder):
            raise ConfigError(f"save_encoder: {type(encoder).__name__} is not a pc3d Encoder (which records its "
                              "constructor arguments); pass config={'_target_': ..., ...}")
        cls = type(encoder)
        config = {"_target_": f"{cls.__module__}.{cls.__qualname__}", **encoder.init_config}
    node = to_plain(config)
    if not node.get("_target_"):
        raise ConfigError("save_encoder: config has no _target_")
    node = architecture_config(node)  # a run-time choice (a conv backend) is not architecture
    try:
        config_json = json.dumps(node, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"save_encoder: config is not JSON-serialisable ({exc})") from exc
    node = json.loads(config_json)  # what a reader will see (tuples become lists)
    _check_config_fits(encoder, node)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    metadata = {"format": ENCODER_FILE_FORMAT, "version": ENCODER_FILE_VERSION, CONFIG_KEY: config_json}
    payload = safetensors.torch.save(tensors, metadata=metadata)
    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(payload)
    return path


def read_encoder_file(path: str | os.PathLike, weights: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config node and weights of a pc3d encoder file (no pickle, no ``torch.load``).

    Args:
        weights: False reads only the header (config), returning an empty weight dict.
    Raises:
        CheckpointError: missing, truncated or corrupt file, or a safetensors file that is not a
            pc3d encoder file (no or malformed ``pc3d_encoder_config`` metadata, newer version).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder file not found")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            config = _config_from_metadata(path, metadata)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()} if weights else {}
    except CheckpointError:
        raise
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt "
                              f"({one_line(exc)})") from exc
    return config, tensors


def _config_from_metadata(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    if metadata.get("format") != ENCODER_FILE_FORMAT:
        raise CheckpointError(f"{path}: safetensors file is not a pc3d encoder file "
                              f"(metadata format={metadata.get('format')!r}, expected '{ENCODER_FILE_FORMAT}')")
    if metadata.get("version") != ENCODER_FILE_VERSION:
        raise CheckpointError(f"{path}: pc3d encoder file version {metadata.get('version')!r}; "
                              f"this pc3d reads version {ENCODER_FILE_VERSION}")
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: missing or malformed '{CONFIG_KEY}' metadata ({one_line(exc)})") from exc
    if not isinstance(config, dict) or not config.get("_target_"):
        raise CheckpointError(f"{path}: '{CONFIG_KEY}' metadata is not a config node with a _target_")
    return config
