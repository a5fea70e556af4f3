"""The encoder contract: what every encoder takes, declares and returns.

Every pc3d encoder subclasses :class:`Encoder`. It declares, in :attr:`Encoder.spec`, what it
takes (``points``, ``voxels`` or a dense ``grid``, and which per-point quantities its input
channels hold), the width and spacing of each level it returns and the width of its pooled
feature. Consumers (methods, probes, heads) read only the spec and :class:`EncoderOutput`; the
one input adapter (:mod:`pc3d.encoders.inputs`) turns a sample into the declared input.

Constructor arguments are recorded automatically (``init_config``) — what
:func:`pc3d.hub.save_encoder` stores to rebuild the encoder — except those listed in
``runtime_args``, which choose how an encoder runs (a conv backend), not what it computes.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pc3d.data.features import INPUT_FEATURES

INPUT_KINDS = ("points", "voxels", "grid")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder takes and returns.

    Attributes:
        input: ``"points"`` (``(B, N, 3)`` clouds), ``"voxels"``
            (:class:`~pc3d.ops.sparse_conv.SparseVoxels`) or ``"grid"``
            (:class:`~pc3d.ops.dense_grid.DenseGrid`).
        level_channels: feature width of each level of :class:`EncoderOutput`, in order.
        level_strides: token spacing of each level in input units; 0 for unstructured point tokens.
        global_channels: width of ``EncoderOutput.global_feature``.
        input_features: what the input channels of voxels / grid cells are (keys of
            :data:`INPUT_FEATURES`, concatenated in this order); empty for points.
        voxel_size: edge of one input voxel / grid cell (voxel and grid encoders).
        cls_channels: width of ``EncoderOutput.cls_feature`` (0: the encoder has none).
    """

    input: str
    level_channels: tuple[int, ...]
    level_strides: tuple[float, ...]
    global_channels: int
    input_features: tuple[str, ...] = ()
    voxel_size: float = 0.0
    cls_channels: int = 0

    def __post_init__(self) -> None:
        if self.input not in INPUT_KINDS:
            raise ValueError(f"EncoderSpec.input={self.input!r}: expected one of {', '.join(INPUT_KINDS)}")
        if len(self.level_channels) != len(self.level_strides) or not self.level_channels:
            raise ValueError("EncoderSpec: level_channels and level_strides need one entry per level")
        unknown = [f for f in self.input_features if f not in INPUT_FEATURES]
        if unknown:
            raise ValueError(f"EncoderSpec.input_features: unknown {unknown}; known: {sorted(INPUT_FEATURES)}")
        if self.input != "points" and not self.voxel_size > 0:
            raise ValueError(f"EncoderSpec: a {self.input} encoder needs voxel_size > 0")

    @property
    def in_channels(self) -> int:
        """Channels of a voxel / grid cell (0 for point encoders, which take xyz only)."""
        return sum(INPUT_FEATURES[f] for f in self.input_features)

    @property
    def pooled_channels(self) -> int:
        """Width of the classification feature: ``[cls ‖ max of the last level]`` with a class token,
        else ``global_feature`` (see :func:`pc3d.eval.classifier.pooled_feature`)."""
        return self.cls_channels + self.level_channels[-1] if self.cls_channels else self.global_channels


def _plain(value: Any) -> Any:
    """Constructor arguments as JSON-like values (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Encoder(nn.Module):
    """Base class of every pc3d encoder (see the module docstring).

    Subclasses implement :attr:`spec` and ``forward(input) -> EncoderOutput`` and may declare:

    * ``runtime_args``: constructor arguments that are not architecture (not recorded);
    * ``resolution_args``: constructor arguments that set how many tokens an input gets without
      changing any weight (a consumer may change them after pretraining, e.g. more patches per
      scene for detection);
    * ``no_weight_decay_names``: parameter names (relative to the encoder) that the optimiser
      must not decay besides biases and 1-D parameters;
    * ``supports_cls_token``: whether the constructor takes ``cls_token`` (a learnable class token).
    """

    runtime_args: ClassVar[tuple[str, ...]] = ()
    resolution_args: ClassVar[tuple[str, ...]] = ()
    no_weight_decay_names: ClassVar[tuple[str, ...]] = ()
    supports_cls_token: ClassVar[bool] = False
    init_config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        constructor = cls.__dict__["__init__"]
        signature = inspect.signature(constructor)

        @functools.wraps(constructor)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            constructor(self, *args, **kw)
            if type(self) is cls:  # the most derived constructor records the arguments
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self.init_config = {name: _plain(value) for name, value in list(bound.arguments.items())[1:]
                                    if name not in cls.runtime_args}

        cls.__init__ = recording_init  # type: ignore[method-assign]

    @property
    def spec(self) -> EncoderSpec:
        raise NotImplementedError(f"{type(self).__name__} must declare its spec")

    def validate_sample(self, sample: dict[str, Any]) -> None:
        """Raise ``ValueError`` if a data sample cannot be this encoder's input (checked on the first
        sample before a run writes anything; e.g. a cloud smaller than a patch)."""


@dataclass
class FeatureLevel:
    """One resolution level of an encoder's output.

    Attributes:
        features: ``(B, T, C)`` token / voxel / cell features.
        coords: ``(B, T, 3)`` position of each token in the input frame.
        valid: ``(B, T)`` bool, True where a token is real (False: padding of a sample with fewer
            tokens); ``None`` means all are real.
        stride: token spacing in input units (voxel size × 2^level); 0 for unstructured point tokens.
        origin: ``(B, 3)`` input-frame position of the corner of cell ``(0, 0, 0)`` of a strided level
            (a token at cell ``i`` sits at ``origin + (i + 0.5) · stride``); None = the frame origin.
        grid_shape: ``(X, Y, Z)`` of a dense level, whose tokens are the grid's cells in C order
            (x slowest, z fastest, ``T = X·Y·Z``); None for point and sparse levels.
    """

    features: Tensor
    coords: Tensor
    valid: Tensor | None = None
    stride: float = 0.0
    origin: Tensor | None = None
    grid_shape: tuple[int, int, int] | None = None

    @classmethod
    def from_dense(cls, features: Tensor, valid: Tensor | None, stride: float, origin: Tensor | None = None
                   ) -> "FeatureLevel":
        """A dense level from ``features (B, C, X, Y, Z)`` and ``valid (B, X, Y, Z)`` (None: all cells real),
        cells at ``origin (B, 3) + (index + 0.5) · stride``."""
        batch, channels, x, y, z = features.shape
        axes = [torch.arange(n, device=features.device, dtype=features.dtype) for n in (x, y, z)]
        index = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)
        coords = (index + 0.5) * stride
        coords = coords.expand(batch, -1, -1) if origin is None else coords + origin.to(features)[:, None, :]
        tokens = features.reshape(batch, channels, -1).transpose(1, 2)
        return cls(tokens, coords.contiguous(), None if valid is None else valid.reshape(batch, -1), float(stride),
                   origin, (x, y, z))

    def flatten(self) -> tuple[Tensor, Tensor, Tensor]:
        """Real tokens only: ``features (M, C)``, ``coords (M, 3)``, ``batch_index (M,)``."""
        batch, tokens, _ = self.features.shape
        batch_index = torch.arange(batch, device=self.features.device).repeat_interleave(tokens)
        features = self.features.reshape(batch * tokens, -1)
        coords = self.coords.reshape(batch * tokens, 3)
        if self.valid is None:
            return features, coords, batch_index
        keep = self.valid.reshape(-1)
        return features[keep], coords[keep], batch_index[keep]

    def cell_index(self, positions: Tensor, batch_index: Tensor) -> Tensor:
        """``(N, 3)`` int64 cell of a strided level that holds each input-frame position ``(N, 3)``."""
        if self.stride <= 0:
            raise ValueError("cell_index: point-token levels have no cells (stride 0)")
        if self.origin is not None:
            positions = positions - self.origin.to(positions)[batch_index]
        return torch.floor(positions / self.stride).to(torch.int64)

    def to_dense(self) -> tuple[Tensor, Tensor]:
        """A dense level as ``features (B, C, X, Y, Z)`` and ``valid (B, X, Y, Z)``."""
        if self.grid_shape is None:
            raise ValueError("to_dense: this level has no grid shape (point or sparse tokens)")
        batch, tokens, channels = self.features.shape
        x, y, z = self.grid_shape
        if tokens != x * y * z:
            raise ValueError(f"to_dense: {tokens} tokens do not fill a {self.grid_shape} grid")
        dense = self.features.transpose(1, 2).reshape(batch, channels, x, y, z)
        valid = (torch.ones(batch, x, y, z, dtype=torch.bool, device=dense.device) if self.valid is None
                 else self.valid.reshape(batch, x, y, z))
        return dense, valid


@dataclass
class EncoderOutput:
    """What every pc3d encoder returns.

    Attributes:
        levels: feature levels, finest (or earliest layer) first; ``levels[-1]`` is
            the encoder's final representation (widths and strides as the spec declares).
        global_feature: ``(B, spec.global_channels)`` pooled feature of the whole input.
        cls_feature: ``(B, spec.cls_channels)`` final class-token output of encoders that have one, else None.
    """

    levels: list[FeatureLevel]
    global_feature: Tensor
    cls_feature: Tensor | None = None


def max_mean_pool(features: Tensor, valid: Tensor | None = None) -> Tensor:
    """Concatenate max- and mean-pooling over tokens.

    Args:
        features: ``(B, T, C)``.
        valid: ``(B, T)`` bool (False = padding) or None.
    Returns:
        ``(B, 2C)`` = [max ‖ mean].
    """
    if valid is None:
        return torch.cat([features.amax(dim=1), features.mean(dim=1)], dim=-1)
    weights = valid.unsqueeze(-1).to(features.dtype)
    masked = features.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    mean = (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return torch.cat([masked.amax(dim=1), mean], dim=-1)
