"""Space-filling-curve codes of voxel coordinates (serialized attention orders voxels by them).

``z_order`` interleaves the coordinate bits (Morton order); ``hilbert`` is the 3D Hilbert
curve (Skilling's transposed-axes algorithm), whose consecutive codes are face
neighbours. Both take non-negative integer ``(M, 3)`` coordinates below
``2**bits`` and return ``(M,)`` int64 codes below ``2**(3·bits)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_BITS = 16


def _check(xyz: Tensor, bits: int) -> Tensor:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected 1..{MAX_BITS}, got {bits}")
    if xyz.dim() != 2 or xyz.shape[1] != 3 or xyz.is_floating_point():
        raise ValueError(f"xyz: expected integer (M, 3), got {xyz.dtype} {tuple(xyz.shape)}")
    xyz = xyz.to(torch.int64)
    if len(xyz) and (int(xyz.min()) < 0 or int(xyz.max()) >= 1 << bits):
        raise ValueError(f"xyz: expected coordinates in [0, {1 << bits}), got [{int(xyz.min())}, {int(xyz.max())}]")
    return xyz


def _interleave(x: Tensor, y: Tensor, z: Tensor, bits: int) -> Tensor:
    """Bits ``x_b y_b z_b ... x_0 y_0 z_0`` (x most significant within each triple)."""
    code = torch.zeros_like(x)
    for b in range(bits):
        code |= ((x >> b) & 1) << (3 * b + 2) | ((y >> b) & 1) << (3 * b + 1) | ((z >> b) & 1) << (3 * b)
    return code


def z_order(xyz: Tensor, bits: int = MAX_BITS) -> Tensor:
    """Morton code of ``xyz (M, 3)`` → ``(M,)`` int64."""
    xyz = _check(xyz, bits)
    return _interleave(xyz[:, 0], xyz[:, 1], xyz[:, 2], bits)


def hilbert(xyz: Tensor, bits: int = MAX_BITS) -> Tensor:
    """3D Hilbert index of ``xyz (M, 3)`` → ``(M,)`` int64."""
    xyz = _check(xyz, bits)
    x = [xyz[:, 0].clone(), xyz[:, 1].clone(), xyz[:, 2].clone()]
    q = 1 << (bits - 1)
    while q > 1:  # undo excess work: per bit plane, invert or exchange the lower bits
        p = q - 1
        x[0] = torch.where((x[0] & q) != 0, x[0] ^ p, x[0])
        for i in (1, 2):
            set_bit = (x[i] & q) != 0
            swap = (x[0] ^ x[i]) & p
            x[0], x[i] = torch.where(set_bit, x[0] ^ p, x[0] ^ swap), torch.where(set_bit, x[i], x[i] ^ swap)
        q >>= 1
    x[1] ^= x[0]  # Gray encode
    x[2] ^= x[1]
    t = torch.zeros_like(x[0])
    q = 1 << (bits - 1)
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    return _interleave(x[0] ^ t, x[1] ^ t, x[2] ^ t, bits)


CURVES = {"z": z_order, "hilbert": hilbert}


def serialization_order(coords: Tensor, curve: str, transpose: bool = False, bits: int = MAX_BITS) -> Tensor:
    """Permutation that sorts voxels by ``(batch, curve code)``.

    Args:
        coords: ``(M, 4)`` int ``[batch, x, y, z]``.
        curve: ``"z"`` | ``"hilbert"``.
        transpose: swap x and y first (a second order of the same curve).
    Returns:
        ``(M,)`` int64 indices.
    """
    if curve not in CURVES:
        raise ValueError(f"curve: expected one of {sorted(CURVES)}, got {curve!r}")
    xyz = coords[:, [2, 1, 3]] if transpose else coords[:, 1:]
    code = CURVES[curve](xyz, bits)
    return torch.argsort(coords[:, 0].to(torch.int64) << (3 * bits) | code)
