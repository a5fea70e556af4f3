"""Chamfer-L2 distance (Point-MAE's ``ChamferDistanceL2``)."""

from __future__ import annotations

import torch

from pc3d.ops._checks import check_pair, without_autocast
from pc3d.ops.backends import resolve_checked
from pc3d.ops.neighbors import _work_dtype, gather_points, knn, sqdist_pairs

_REDUCTIONS = ("mean", "none")


@without_autocast
def chamfer_l2(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean", backend: str = "auto", *,
               chunk_floats: int | None = None) -> torch.Tensor:
    """Squared-L2 Chamfer distance, summed over the two directions.

    Per sample: ``mean_i min_j |a_i - b_j|^2 + mean_j min_i |a_i - b_j|^2`` (Point-MAE's
    ``ChamferDistanceL2``: ``mean(dist1) + mean(dist2)``).

    Nearest neighbours are found under ``torch.no_grad()`` by :func:`pc3d.ops.knn`
    (``k=1``, chunked), then the squared distances of those pairs are recomputed
    with autograd, so forward and backward use O(B (N + M)) memory beyond the
    chunked search. Gradients flow to both ``a`` and ``b``.

    Args:
        a: ``(B, N, 3)`` floating tensor.
        b: ``(B, M, 3)``, same dtype and device.
        reduction: ``"mean"`` (scalar, mean over the batch) or ``"none"`` (``(B,)``).
        backend: ``"auto"``, ``"torch"`` or ``"pytorch3d"`` (see :mod:`pc3d.ops.backends`).
        chunk_floats: distance-matrix budget of the search; default
            :data:`pc3d.ops.neighbors.CHUNK_FLOATS`.

    Returns:
        ``()`` for ``"mean"``, ``(B,)`` for ``"none"``; dtype of ``a``.
    """
    check_pair("a", a, "b", b)
    for name, cloud in (("a", a), ("b", b)):
        if cloud.shape[1] == 0:
            raise ValueError(f"{name}: expected at least one point, got shape {tuple(cloud.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {list(_REDUCTIONS)}")
    name = resolve_checked(backend, "chamfer_l2", a, _chamfer_agrees)
    if name == "pytorch3d":
        from pytorch3d.loss import chamfer_distance

        per_sample, _ = chamfer_distance(a, b, batch_reduction=None, point_reduction="mean")
    else:
        with torch.no_grad():
            _, a_to_b = knn(a, b, 1, backend="torch", chunk_floats=chunk_floats)  # (B, N, 1)
            _, b_to_a = knn(b, a, 1, backend="torch", chunk_floats=chunk_floats)  # (B, M, 1)
        work = _work_dtype(a.dtype)
        aw, bw = a.to(work), b.to(work)
        d_ab = sqdist_pairs(aw, gather_points(bw, a_to_b[..., 0]))  # (B, N)
        d_ba = sqdist_pairs(bw, gather_points(aw, b_to_a[..., 0]))  # (B, M)
        per_sample = (d_ab.mean(dim=1) + d_ba.mean(dim=1)).to(a.dtype)
    return per_sample.mean() if reduction == "mean" else per_sample


def _chamfer_agrees(backend: str, device: torch.device) -> bool:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 256, 3, generator=generator).to(device) for _ in range(2))
    return torch.allclose(chamfer_l2(a, b, backend=backend), chamfer_l2(a, b, backend="torch"), rtol=1e-5, atol=1e-7)
