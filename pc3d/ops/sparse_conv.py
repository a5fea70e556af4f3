"""Sparse 3D convolution on voxel grids: submanifold, strided and inverse (transposed) convs.

A :class:`SparseVoxels` is a batch of occupied voxels: ``features (M, C)`` and integer
``coords (M, 4)`` = ``[batch, x, y, z]`` (non-negative), optionally with each sample's grid
``origin`` (where voxel ``(0, 0, 0)`` sits in the input frame) and the conv backend its encoder
resolved for this forward. Three conv kinds cover a sparse UNet:

* ``submanifold`` (odd kernel, stride 1): output voxels = input voxels,
  ``out[p] = Σ_k in[p + k - r] · W[k]`` over occupied neighbours (dense ``conv3d``
  with padding ``r``, read at the occupied voxels).
* ``down`` (kernel = stride = s): ``out[q] = Σ_a in[s·q + a] · W[a]`` over the occupied
  children of ``q`` (dense ``conv3d`` with stride ``s``).
* ``up`` (inverse of a ``down``): back onto the children's voxels,
  ``out[s·q + a] = in[q] · W[a]`` (dense ``conv_transpose3d`` read at the children).

Weights are stored as spconv stores them, ``(C_out, k, k, k, C_in)``, so one set of
parameters runs on either backend:

* ``torch`` — always available: neighbour tables from sorted voxel keys + ``searchsorted``,
  then one gather + GEMM per layer (explicit im2col over the occupied neighbours), in a
  custom autograd function that keeps only the tables for backward.
* ``spconv`` — spconv 2.x when installed, with its algorithm chosen at run time:
  ``ConvAlgo.Native`` on CPU (its implicit-GEMM kernels are CUDA-only), the default
  implicit GEMM on CUDA.

``backend="auto"`` picks spconv for float32 tensors when it is installed (its native CPU
kernels are 3x faster than the torch path at 100k voxels, ``bench/sparse_unet.py``) and
torch otherwise (see :mod:`pc3d.ops.backends`). An encoder resolves the backend once per
forward and passes it along on its :class:`SparseVoxels` (``backend``), so its layers do not
re-resolve it; a layer used alone resolves its own. Kernel maps are cached on the
:class:`SparseVoxels` (shared by every tensor derived from it), so the layers of one
stage build them once. The output row order of ``down`` differs between backends;
rows always travel with their coords.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from pc3d.ops.backends import resolve_backend

COORD_BITS = 16
"""Voxel keys pack each spatial coordinate into 16 bits."""
MAX_COORD = (1 << COORD_BITS) - 4
"""Largest accepted spatial coordinate: spconv 2.3.6 finds wrong neighbours in grids that span
65,534 voxels along every axis, so pc3d stops three short of the key range (1.3 km at 2 cm)."""


class SparseVoxels:
    """A batch of occupied voxels with features.

    Attributes:
        features: ``(M, C)``.
        coords: ``(M, 4)`` int32 ``[batch, x, y, z]``, non-negative, unique.
        batch_size: number of samples (``coords[:, 0] < batch_size``).
        origin: ``(B, 3)`` input-frame position of the corner of voxel ``(0, 0, 0)`` of each sample,
            or None (the frame origin); carried to every tensor derived from these voxels.
        backend: the resolved conv backend (``"torch"`` | ``"spconv"``) for every layer of one
            encoder forward, or None (each layer resolves its own).
        cache: kernel maps keyed by layer key, shared with every tensor made by
            :meth:`replace` (same coords) and carried into ``down``/``up`` outputs so an
            ``up`` finds the map of its ``down``.
    """

    def __init__(self, features: Tensor, coords: Tensor, batch_size: int,
                 cache: dict[str, Any] | None = None, spconv_tensor: Any = None, validate: bool = True,
                 origin: Tensor | None = None, backend: str | None = None) -> None:
        if features.dim() != 2 or coords.dim() != 2 or coords.shape[1] != 4 or len(features) != len(coords):
            raise ValueError(f"SparseVoxels: expected features (M, C) and coords (M, 4), got "
                             f"{tuple(features.shape)} and {tuple(coords.shape)}")
        if validate:  # user input; tensors derived inside the convs skip the check (a device sync)
            check_coords(coords)
            if len(coords) and int(coords[:, 0].max()) >= batch_size:
                raise ValueError(f"coords: batch index {int(coords[:, 0].max())} >= batch_size {batch_size}")
        self.features = features
        self.coords = coords.to(torch.int32)
        self.batch_size = int(batch_size)
        if origin is not None and origin.shape != (self.batch_size, 3):
            raise ValueError(f"SparseVoxels: origin must be (batch_size, 3), got {tuple(origin.shape)}")
        self.cache = {} if cache is None else cache
        self._spconv = spconv_tensor
        self.origin = origin
        self.backend = backend

    @classmethod
    def batch(cls, coords: list[Tensor], features: list[Tensor], origins: list[Tensor] | None = None
              ) -> "SparseVoxels":
        """Concatenate samples' voxels ``coords[b] (V_b, 3)``, ``features[b] (V_b, C)`` with a batch column
        (and their ``origins[b] (3,)``)."""
        batched = torch.cat([torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c.to(torch.int32)], dim=1)
                             for b, c in enumerate(coords)])
        origin = None if origins is None else torch.stack([torch.as_tensor(o, dtype=torch.float32) for o in origins])
        return cls(torch.cat(features), batched, len(coords), origin=origin)

    def derive(self, features: Tensor, coords: Tensor, spconv_tensor: Any = None) -> "SparseVoxels":
        """New voxels computed from these (a conv output): same batch, origin, backend and cache."""
        return SparseVoxels(features, coords, self.batch_size, self.cache, spconv_tensor, validate=False,
                            origin=self.origin, backend=self.backend)

    def replace(self, features: Tensor) -> "SparseVoxels":
        """Same voxels (and kernel-map cache), new ``features (M, C')``."""
        spconv_tensor = None if self._spconv is None else self._spconv.replace_feature(features)
        return self.derive(features, self.coords, spconv_tensor)

    def with_backend(self, backend: str) -> "SparseVoxels":
        """The same voxels, with the backend every layer of this forward uses."""
        out = self.replace(self.features)
        out.backend = backend
        return out

    def __len__(self) -> int:
        return len(self.coords)

    def to(self, device: torch.device | str) -> "SparseVoxels":
        """The same voxels on ``device`` (kernel maps are rebuilt there)."""
        origin = None if self.origin is None else self.origin.to(device)
        return SparseVoxels(self.features.to(device), self.coords.to(device), self.batch_size, validate=False,
                            origin=origin, backend=self.backend)

    def to_spconv(self) -> Any:
        """The spconv ``SparseConvTensor`` view of these voxels (built once, then kept)."""
        if self._spconv is None:
            import spconv.pytorch as spconv

            extent = self.coords[:, 1:].amax(dim=0) + 1 if len(self) else torch.ones(3, dtype=torch.int32)
            self._spconv = spconv.SparseConvTensor(self.features, self.coords.contiguous(),
                                                   [int(v) for v in extent], self.batch_size)
        return self._spconv


def voxel_keys(coords: Tensor) -> Tensor:
    """``(M, 4)`` int ``[b, x, y, z]`` → ``(M,)`` int64 keys, unique per voxel."""
    c = coords.to(torch.int64)
    return ((c[:, 0] << COORD_BITS | c[:, 1]) << COORD_BITS | c[:, 2]) << COORD_BITS | c[:, 3]


def check_coords(coords: Tensor) -> None:
    """Raise ``ValueError`` unless ``coords`` is ``(M, 4)`` integer within the key range."""
    if coords.dim() != 2 or coords.shape[1] != 4 or coords.is_floating_point():
        raise ValueError(f"coords: expected integer (M, 4) [batch, x, y, z], got {coords.dtype} "
                         f"{tuple(coords.shape)}")
    if len(coords) and (int(coords.min()) < 0 or int(coords[:, 1:].max()) > MAX_COORD
                        or int(coords[:, 0].max()) >= 1 << (63 - 3 * COORD_BITS)):
        raise ValueError(f"coords: expected 0 <= x, y, z <= {MAX_COORD} and a batch index below "
                         f"{1 << (63 - 3 * COORD_BITS)}, got range [{int(coords.min())}, {int(coords.max())}]")


def kernel_offsets(kernel_size: int) -> Tensor:
    """``(k³, 3)`` offsets ``a - k//2`` in weight order (x slowest, z fastest)."""
    r = kernel_size // 2
    return torch.tensor(list(itertools.product(range(-r, kernel_size - r), repeat=3)), dtype=torch.int64)


def submanifold_map(coords: Tensor, kernel_size: int) -> Tensor:
    """Neighbour table of a submanifold conv.

    Returns:
        ``(M, k³)`` int64: row ``i``, column ``k`` is the voxel at ``coords[i] + offset[k]``
        (weight order), -1 where that voxel is empty.
    """
    keys = voxel_keys(coords)
    sorted_keys, order = torch.sort(keys)
    offsets = kernel_offsets(kernel_size).to(coords.device)
    query = coords[:, None, 1:].to(torch.int64) + offsets  # (M, k³, 3)
    valid = ((query >= 0) & (query < 1 << COORD_BITS)).all(dim=2)
    batch = coords[:, None, :1].to(torch.int64).expand(-1, len(offsets), 1)
    query_keys = voxel_keys(torch.cat([batch, query.clamp(0, (1 << COORD_BITS) - 1)], dim=2).reshape(-1, 4))
    pos = torch.searchsorted(sorted_keys, query_keys).clamp_max(len(keys) - 1).reshape(len(coords), -1)
    found = valid & (sorted_keys[pos] == query_keys.reshape(pos.shape))
    return torch.where(found, order[pos], -1)


def downsample_map(coords: Tensor, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """Tables of a kernel = stride conv.

    Returns:
        ``out_coords (M', 4)`` (sorted by key); ``children (M', stride³)``: the input voxel at
        child offset ``a`` of each output voxel (weight order), -1 where empty; and
        ``parents (M, stride³)``: each input's output voxel in the column of its child offset,
        -1 elsewhere (the same relation read the other way).
    """
    parent = coords.clone()
    parent[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor")
    child = (coords[:, 1:] - parent[:, 1:] * stride).to(torch.int64)
    offset_index = (child[:, 0] * stride + child[:, 1]) * stride + child[:, 2]
    unique_keys, parent_index = torch.unique(voxel_keys(parent), return_inverse=True)
    out_coords = torch.empty(len(unique_keys), 4, dtype=coords.dtype, device=coords.device)
    out_coords[parent_index] = parent
    arange = torch.arange(len(coords), device=coords.device)
    children = torch.full((len(unique_keys), stride ** 3), -1, dtype=torch.int64, device=coords.device)
    children[parent_index, offset_index] = arange
    parents = torch.full((len(coords), stride ** 3), -1, dtype=torch.int64, device=coords.device)
    parents[arange, offset_index] = parent_index
    return out_coords, children, parents


def _gather_columns(features: Tensor, table: Tensor) -> Tensor:
    """im2col over a neighbour table: ``(M_out, K·C)``, row ``i`` = ``features[table[i, k]]`` for every
    ``k`` (zeros where ``table`` is -1)."""
    padded = torch.cat([features, features.new_zeros(1, features.shape[1])])
    return padded[table].reshape(len(table), -1)


def _gather_matmul(features: Tensor, table: Tensor, weight: Tensor) -> Tensor:
    """``out[i] = Σ_k features[table[i, k]] @ weight[k]`` (-1 entries contribute 0), as one GEMM."""
    return _gather_columns(features, table) @ weight.reshape(-1, weight.shape[-1])


class _TableConv(torch.autograd.Function):
    """Sparse conv as gather + GEMM. ``table`` maps outputs to inputs, ``transposed`` inputs to
    outputs (same pairs, same offsets), so the input gradient is a gather + GEMM as well and
    nothing of size ``M · K · C`` is kept for backward."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, table: Tensor, transposed: Tensor) -> Tensor:
        # weight: (K, C_in, C_out)
        ctx.save_for_backward(features, weight, table, transposed)
        return _gather_matmul(features, table, weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        features, weight, table, transposed = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = _gather_matmul(grad_out, transposed, weight.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_weight = (_gather_columns(features, table).T @ grad_out).reshape(weight.shape)
        return grad_features, grad_weight, None, None


def _spconv_algo(device: torch.device) -> Any:
    from spconv.pytorch import ConvAlgo

    return ConvAlgo.Native if device.type == "cpu" else ConvAlgo.MaskImplicitGemm


class SparseConv3d(nn.Module):
    """One sparse conv layer.

    Args:
        in_channels, out_channels: feature widths.
        kernel_size: odd for ``submanifold``; the stride for ``down``/``up``.
        kind: ``"submanifold"`` | ``"down"`` | ``"up"``.
        key: kernel-map cache key. Submanifold layers at one resolution share a key;
            an ``up`` names the key of the ``down`` it inverts.
        backend: ``"auto"`` | ``"torch"`` | ``"spconv"``.
        bias: add a learned ``(C_out,)`` bias to every output voxel (after the conv, on either
            backend: spconv cannot fuse a bias on CPU).

    Shapes:
        ``SparseVoxels`` with ``features (M, C_in)`` → ``features (M', C_out)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, kind: str, key: str,
                 backend: str = "auto", bias: bool = False) -> None:
        super().__init__()
        if kind not in ("submanifold", "down", "up"):
            raise ValueError(f"kind: expected 'submanifold', 'down' or 'up', got {kind!r}")
        if kind == "submanifold" and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: a submanifold conv needs an odd kernel, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.kind, self.key, self.backend = kind, key, backend
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        fan_in = in_channels * kernel_size ** 3 if kind != "up" else in_channels
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
                                 ) if bias else None
        self._spconv_layer: Any = None  # built on first spconv use, holds no parameters of its own

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, kind={self.kind}, " \
               f"key={self.key!r}, bias={self.bias is not None}"

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f"{self.key}: expected {self.in_channels} input channels, got {x.features.shape[1]}")
        backend = x.backend if x.backend is not None else resolve_backend(self.backend, "sparse_conv", x.features)
        out = self._forward_spconv(x) if backend == "spconv" else self._forward_torch(x)
        return out if self.bias is None else out.replace(out.features + self.bias)

    def _forward_torch(self, x: SparseVoxels) -> SparseVoxels:
        k3 = self.kernel_size ** 3
        # (C_out, k, k, k, C_in) → (k³, C_in, C_out)
        weight = self.weight.reshape(self.out_channels, k3, self.in_channels).permute(1, 2, 0)
        if self.kind == "submanifold":
            cache_key = f"{self.key}/subm{self.kernel_size}"
            if cache_key not in x.cache:
                table = submanifold_map(x.coords, self.kernel_size)
                # offsets come in ± pairs at mirrored columns, so the transposed table is the flipped one
                x.cache[cache_key] = (table, table.flip(1))
            return x.replace(_TableConv.apply(x.features, weight, *x.cache[cache_key]))
        cache_key = f"{self.key}/down{self.kernel_size}"
        if self.kind == "down":
            if cache_key not in x.cache:
                x.cache[cache_key] = (x.coords, *downsample_map(x.coords, self.kernel_size))
            _, out_coords, children, parents = x.cache[cache_key]
            return x.derive(_TableConv.apply(x.features, weight, children, parents), out_coords)
        if cache_key not in x.cache:
            raise ValueError(f"{self.key}: an 'up' conv needs the kernel map of its 'down' conv (same key)")
        fine_coords, coarse_coords, children, parents = x.cache[cache_key]
        if len(coarse_coords) != len(x):
            raise ValueError(f"{self.key}: input has {len(x)} voxels, its 'down' produced {len(coarse_coords)}")
        return x.derive(_TableConv.apply(x.features, weight, parents, children), fine_coords)

    def _forward_spconv(self, x: SparseVoxels) -> SparseVoxels:
        device_type = x.features.device.type
        if self._spconv_layer is None or self._spconv_layer[1] != device_type:
            import spconv.pytorch as spconv

            algo = _spconv_algo(x.features.device)
            cls = {"submanifold": spconv.SubMConv3d, "down": spconv.SparseConv3d,
                   "up": spconv.SparseInverseConv3d}[self.kind]
            kwargs = {"stride": self.kernel_size} if self.kind == "down" else {}
            layer = cls(self.in_channels, self.out_channels, self.kernel_size, bias=False,
                        indice_key=self.key, algo=algo, **kwargs)
            del layer.weight  # pc3d's parameter is the one trained and saved
            self._spconv_layer = (layer, device_type)  # a tuple keeps it out of this module's children
        layer = self._spconv_layer[0]
        layer.weight = self.weight
        tensor = x.to_spconv().replace_feature(x.features)
        if self.kind == "up" and tensor.find_indice_pair(self.key) is None:
            raise ValueError(f"{self.key}: an 'up' conv needs the kernel map of its 'down' conv (same key)")
        shape_key = f"{self.key}/spconv_fine_shape"
        if self.kind == "down":  # spconv drops voxels beyond the last whole stride; pad the extent
            x.cache[shape_key] = list(tensor.spatial_shape)
            tensor.spatial_shape = [-(-int(d) // self.kernel_size) * self.kernel_size for d in tensor.spatial_shape]
        out = layer(tensor)
        if self.kind == "up":  # back on the fine voxels' own extent (not the padded one), so the next up finds it
            out.spatial_shape = x.cache[shape_key]
        return x.derive(out.features, out.indices, out)
