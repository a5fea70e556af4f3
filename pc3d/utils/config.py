"""Config helpers: call a Hydra ``_target_`` without Hydra wrapping our errors, and seeding."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import random
import types
import typing
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
    for key, value in kwargs.items():
        check_type(f"{name}.{key}", value, _annotation(fn, key))
    try:
        return fn(**kwargs, **extra)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _annotation(fn: Any, key: str) -> Any:
    """The resolved type annotation of parameter ``key`` of ``fn`` (a function or a class), or None."""
    target = fn.__init__ if isinstance(fn, type) else fn
    target = inspect.unwrap(target)
    try:
        return typing.get_type_hints(target).get(key)
    except Exception:  # an annotation that does not resolve here: not checked
        return None


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
        return f"a list of {plural.get(inner[0], 'values')}" if inner else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation,
                                                                                           str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is None or annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and Ellipsis not in args and len(args) > 1:  # a fixed-length tuple
            return len(value) == len(args) and all(map(_matches, value, args))
        inner = [a for a in args if a is not Ellipsis]
        return not inner or all(_matches(v, inner[0]) for v in value)
    return True  # mappings, classes, ...: the constructor checks them


def check_type(where: str, value: Any, annotation: Any) -> None:
    """A config value must fit its parameter's annotation: one line naming the key otherwise."""
    if not _matches(value, annotation):
        raise ConfigError(f"{where}={value!r}: expected {_describe(annotation)}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one key of a command's settings node must be: its type, range or choices.

    ``kind``: ``int``, ``float``, ``bool``, ``str``, ``list[int]``/``list[float]`` (as ``"ints"`` /
    ``"floats"``); ``low``/``high``: inclusive bounds unless ``open_low`` / ``open_high``;
    ``choices``: allowed values; ``optional``: null allowed.
    """

    kind: Any
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        name = {int: "an integer", float: "a number", bool: "true or false", str: "a string", "ints": "a list of integers",
                "floats": "a list of numbers"}.get(self.kind, "a valid value")
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.open_high else '<='} {self.high:g}")
        return name + (f" {' and '.join(bounds)}" if bounds else "") + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.choices:
            return value in self.choices
        if self.kind in ("ints", "floats"):
            element = int if self.kind == "ints" else float
            return isinstance(value, (list, tuple)) and bool(value) and all(
                Setting(element, self.low, self.high, self.open_low, self.open_high).accepts(v) for v in value)
        if not _matches(value, self.kind):
            return False
        if self.kind in (int, float):
            if not math.isfinite(value):
                return False
            if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
                return False
            if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
                return False
        return True


def check_settings(name: str, node: Mapping[str, Any], schema: Mapping[str, Setting]) -> dict[str, Any]:
    """Every key of ``node`` is known and fits its :class:`Setting`: one line naming ``<name>.<key>``, the value
    and what is expected otherwise. Returns the node as a plain dict."""
    values = to_plain(node)
    unknown = sorted(k for k in values if k not in schema)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; accepted: "
                          f"{', '.join(schema)}")
    for key, setting in schema.items():
        if key in values and not setting.accepts(values[key]):
            raise ConfigError(f"{name}.{key}={values[key]!r}: expected {setting.expected()}")
    return values
