"""Config helpers: call a Hydra ``_target_`` without Hydra wrapping our errors, and seeding."""

from __future__ import annotations

import inspect
import random
from typing import Any, Mapping

import numpy as np
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from pc3d.errors import ConfigError


def to_plain(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def call_target(node: Mapping[str, Any] | DictConfig, name: str, **extra: Any) -> Any:
    """Call ``node._target_`` with the node's other keys (plus ``extra``) as keyword arguments.

    Unlike ``hydra.utils.instantiate`` this lets a :class:`~pc3d.errors.Pc3dError` raised by
    the target reach the CLI unwrapped, and reports unknown keys as ``<name>.<key>``. A
    ``ValueError`` / ``TypeError`` from the call (a constructor refusing an argument, e.g.
    ``mask_ratio=1.5``) becomes a :class:`ConfigError` prefixed with ``<name>``.
    """
    kwargs = to_plain(node)
    target = kwargs.pop("_target_", None)
    if not target:
        raise ConfigError(f"{name}: config has no _target_")
    try:
        fn = get_object(target)
    except Exception as exc:
        raise ConfigError(f"{name}._target_={target!r} cannot be imported ({exc})") from exc
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            raise ConfigError(f"{name}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)} "
                              f"for {target} (accepted: {', '.join(k for k in params if k not in extra)})")
    try:
        return fn(**kwargs, **extra)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
