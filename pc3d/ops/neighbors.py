"""Neighbour search (kNN, ball query) and the one batched gather.

Both searches work on chunks of queries so that at most :data:`CHUNK_FLOATS`
entries of a distance matrix exist at once (about 128 MiB in float32): a
``(B=32, N=8192)`` self-kNN never allocates ``B x N x N``.

Squared distances are always ``dx*dx + dy*dy + dz*dz`` (summed in that order,
float32 for half-precision inputs) from the coordinates; the ``|a|^2 + |b|^2 -
2ab`` matmul form is only used to *pre-select* kNN candidates, and every
selection is checked against its rounding-error bound (see :func:`knn`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from pc3d.ops._checks import check_count, check_pair, without_autocast
from pc3d.ops.backends import ENV_VAR, resolve_checked

if TYPE_CHECKING:
    import numpy as np

#: Largest number of distance-matrix entries alive at once (per op call).
CHUNK_FLOATS = 1 << 25
#: Points per cloud, and queries per cloud, from which ``knn(backend="auto")`` on CPU uses the KD-tree
#: (see :func:`knn`; below either, building the tree costs more than the brute force it saves).
KD_TREE_MIN_POINTS = 2048
KD_TREE_MIN_QUERIES = 128


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather: ``out[b, i..., :] = points[b, idx[b, i...], :]``.

    Args:
        points: ``(B, N, C)`` tensor (any dtype; differentiable).
        idx: ``(B, ...)`` integer indices in ``[0, N)``. Negative indices (such as the
            ``-1`` that :func:`ball_query` puts in empty balls) are an error: mask
            them first.

    Returns:
        ``(B, ..., C)``.
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 3:
        raise ValueError(f"points: expected shape (B, N, C), got "
                         f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() < 1 or idx.shape[0] != points.shape[0]:
        got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx: expected shape (B, ...) with B={points.shape[0]} to match points "
                         f"{tuple(points.shape)}, got {got}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"idx: expected an integer tensor, got {idx.dtype}")
    batch, _, channels = points.shape
    flat = idx.reshape(batch, -1).long()
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, channels))
    return out.view(*idx.shape, channels)


@without_autocast
def knn(query: torch.Tensor, points: torch.Tensor, k: int, backend: str = "auto", *,
        chunk_floats: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest ``points`` of every query point.

    Args:
        query: ``(B, M, 3)`` floating tensor.
        points: ``(B, N, 3)``, same dtype and device.
        k: ``1 <= k <= N``.
        backend: ``"auto"``, ``"torch"``, ``"pytorch3d"``, ``"torch_cluster"`` or
            ``"scipy"`` (see :mod:`pc3d.ops.backends`).
        chunk_floats: distance-matrix budget (entries); default :data:`CHUNK_FLOATS`.

    Returns:
        ``dist2 (B, M, k)``: squared distances, ascending, computed from the
        coordinates (exact, never negative; differentiable w.r.t. both inputs), and
        ``idx (B, M, k)`` int64 indices into ``points``. A query point that is also in
        ``points`` is its own first neighbour (distance 0; an identical point with a
        lower index would come first). Tied distances are ordered by index.

    The pure-torch path pre-selects ``k + max(4, k // 4)`` candidates per query with
    a matmul on centred coordinates, re-ranks them by exact distance, and accepts
    the result only if the k-th exact distance is below every non-candidate's
    matmul distance minus that matmul's rounding-error bound; the (rare) rows that
    fail, e.g. clouds with many duplicate points, are redone by exact brute force.
    So indices equal a brute-force search (stable sort of exact distances), ties
    included. Under a reduced float32 matmul precision (TF32/bf16) the exact form is
    used throughout. ``backend="auto"`` on CPU sends clouds of :data:`KD_TREE_MIN_POINTS` points or more,
    queried by :data:`KD_TREE_MIN_QUERIES` points or more, to scipy's KD-tree (a tree per cloud, built and
    queried in parallel), whose candidates are ranked by the same exact distances and checked the same way:
    the same indices and distances, faster there.
    """
    check_pair("query", query, "points", points)
    k = check_count("k", k, "points", points)
    name = resolve_checked(backend, "knn", points, _knn_agrees)
    if name == "torch" and backend == "auto" and _kd_tree_is_faster(query, points):
        name = "scipy"
    if name == "torch":
        idx = _knn_torch_idx(query, points, k, chunk_floats or CHUNK_FLOATS)
    elif name == "pytorch3d":
        idx = _knn_pytorch3d_idx(query, points, k)
    elif name == "torch_cluster":
        idx = _knn_torch_cluster_idx(query, points, k)
    else:
        idx, dist2 = _knn_scipy(query, points, k, chunk_floats or CHUNK_FLOATS)
        if not (torch.is_grad_enabled() and (query.requires_grad or points.requires_grad)):
            return dist2.to(query.dtype), idx  # the values below, computed once already
    work = _work_dtype(points.dtype)
    dist2 = sqdist_pairs(query.to(work).unsqueeze(2), gather_points(points.to(work), idx))
    if name not in ("torch", "scipy"):
        # accelerators order ties (and float rounding) their own way: re-sort by exact distance
        dist2, order = dist2.sort(dim=-1, stable=True)
        idx = idx.gather(-1, order)
    return dist2.to(query.dtype), idx


@without_autocast
def ball_query(query: torch.Tensor, points: torch.Tensor, radius: float, k: int, backend: str = "auto", *,
               chunk_floats: int | None = None) -> torch.Tensor:
    """Up to ``k`` points within ``radius`` of each query, pointnet2_ops semantics.

    The neighbours are the first ``k`` points *in index order* whose squared
    distance is strictly below ``radius**2`` (not the nearest ones). Unused slots
    repeat the first neighbour found. A query with no point in its ball gets ``-1``
    in every slot (pointnet2_ops would leave ``0`` there, silently pointing at
    point 0); mask those rows before :func:`gather_points`. A query that is also in
    ``points`` is never empty.

    Args:
        query: ``(B, M, 3)`` floating tensor.
        points: ``(B, N, 3)``, same dtype and device.
        radius: ball radius (> 0), in the units of the coordinates.
        k: ``1 <= k <= N``, the number of slots.
        backend: ``"auto"``, ``"torch"`` or ``"pytorch3d"``.
        chunk_floats: distance-matrix budget (entries); default :data:`CHUNK_FLOATS`.

    Returns:
        ``(B, M, k)`` int64 indices into ``points`` (``-1`` for empty balls).
    """
    check_pair("query", query, "points", points)
    k = check_count("k", k, "points", points)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not radius > 0:
        raise ValueError(f"radius={radius!r}: expected a positive number")
    name = resolve_checked(backend, "ball_query", points, _ball_query_agrees)
    if name == "pytorch3d":
        return _ball_query_pytorch3d(query, points, float(radius), k)
    return _ball_query_torch(query, points, float(radius), k, chunk_floats or CHUNK_FLOATS)


def _probe_clouds(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded query / point cloud pair for holding an accelerator to the torch path."""
    points = torch.rand(2, 512, 3, generator=torch.Generator().manual_seed(0))
    return points[:, :64].to(device), points.to(device)


def _knn_agrees(backend: str, device: torch.device) -> bool:
    query, points = _probe_clouds(device)
    return torch.equal(knn(query, points, 8, backend=backend)[1], knn(query, points, 8, backend="torch")[1])


def _ball_query_agrees(backend: str, device: torch.device) -> bool:
    query, points = _probe_clouds(device)
    return torch.equal(ball_query(query, points, 0.1, 8, backend=backend),
                       ball_query(query, points, 0.1, 8, backend="torch"))


# --------------------------------------------------------------------------- helpers


def sqdist_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(..., 3), (..., 3) -> (...)`` (broadcasting), as ``dx*dx + dy*dy + dz*dz``.

    The one formula every op uses, so results agree bit for bit across ops and chunks.
    """
    diff = a - b
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def iter_chunks(batch: int, rows: int, cols: int, budget: int, per_entry: int = 1) -> Iterator[tuple[int, int, int, int]]:
    """Split ``(batch, rows)`` into ``(b0, b1, r0, r1)`` blocks whose ``(b1-b0) x (r1-r0) x cols
    x per_entry`` stays within ``budget`` (always at least one row per block)."""
    max_rows = max(1, budget // max(1, cols * per_entry))
    if max_rows >= rows:
        step = max(1, max_rows // max(1, rows))
        for b0 in range(0, batch, step):
            yield b0, min(batch, b0 + step), 0, rows
    else:
        for b in range(batch):
            for r0 in range(0, rows, max_rows):
                yield b, b + 1, r0, min(rows, r0 + max_rows)


def approx_sqdist_matrix(query_aug: torch.Tensor, points_aug_t: torch.Tensor) -> torch.Tensor:
    """``(b, m, 5) @ (b, 5, L) -> (b, m, L)``: ``|q|^2 + |p|^2 - 2 q.p`` in one batched matmul.

    Only for candidate selection: it carries rounding error (bounded in :func:`knn`)."""
    return torch.bmm(query_aug, points_aug_t)


def exact_sqdist_matrix(query: torch.Tensor, points_t: torch.Tensor) -> torch.Tensor:
    """``query (b, m, 3)``, ``points_t (b, 3, N)`` -> ``(b, m, N)`` exact squared distances
    (same values as :func:`sqdist_pairs`); two ``(b, m, N)`` buffers."""
    d2 = torch.sub(query[..., 0:1], points_t[:, 0:1, :])
    d2.mul_(d2)
    tmp = torch.sub(query[..., 1:2], points_t[:, 1:2, :])
    tmp.mul_(tmp)
    d2.add_(tmp)
    torch.sub(query[..., 2:3], points_t[:, 2:3, :], out=tmp)
    tmp.mul_(tmp)
    d2.add_(tmp)
    return d2


#: On CPU the distance blocks of the nearest-only search (Chamfer) and of the ball
#: query are cut further to about this many entries (4 MiB in float32), so a block is
#: still in cache when it is reduced and each op stays big enough to amortise a
#: thread hand-off. Measured, 8x8192 Chamfer on 2 shared cores:
#: 1 thread ~0.9 s for 2^17..2^21 (2.8 s at 2^23); 2 threads 1.3-5 s at 2^21 but
#: 15 s at 2^15 (every op's thread hand-off costs up to a scheduler tick when the
#: other core is busy).
CACHE_ENTRIES = 1 << 20

#: matmul candidate distances are within ``_ERR_FACTOR * eps * (|q'| + max|p'|)^2`` of the
#: exact ones (centring, the 5-term dot product and the norms add up to ~8 eps; 2x margin).
_ERR_FACTOR = 16.0


#: The same for the kNN candidate search (topk dominates there; smaller blocks only
#: save memory and add ops).
TOPK_ENTRIES = 1 << 22


def _sub_budget(budget: int, device: torch.device, entries: int | None = None) -> int:
    return min(budget, entries or CACHE_ENTRIES) if device.type == "cpu" else budget


def matmul_operands(q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Operands of :func:`approx_sqdist_matrix` for ``q (B, M, 3)``, ``p (B, N, 3)``, and its error bound.

    Coordinates are centred on each cloud's mean first (smaller rounding error).

    Returns:
        ``q_aug (B, M, 5)`` = ``[q', |q'|^2, 1]``, ``p_aug (B, N, 5)`` = ``[-2p', 1, |p'|^2]``
        (``bmm(q_aug, p_aug^T)`` is the squared distance), and ``tolerance (B, M)``: for
        every point, ``|matmul distance - exact distance| <= tolerance`` of the query row.
    """
    batch, m, _ = q.shape
    n = p.shape[1]
    centre = p.mean(dim=1, keepdim=True)
    qc, pc = q - centre, p - centre
    q_sq, p_sq = sqdist_pairs(qc, 0.0), sqdist_pairs(pc, 0.0)  # (B, M), (B, N)
    q_aug = torch.cat([qc, q_sq.unsqueeze(-1), q_sq.new_ones(batch, m, 1)], dim=-1)
    p_aug = torch.cat([-2.0 * pc, p_sq.new_ones(batch, n, 1), p_sq.unsqueeze(-1)], dim=-1)
    # _ERR_FACTOR * eps * (|q'| + max|p'|)^2, using (a + b)^2 <= 2 (a^2 + b^2)
    tolerance = (2 * _ERR_FACTOR * torch.finfo(q.dtype).eps) * (q_sq + p_sq.amax(dim=1, keepdim=True))
    return q_aug, p_aug, tolerance


def _matmul_is_full_precision(dtype: torch.dtype) -> bool:
    return dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest"


@torch.no_grad()
def _knn_torch_idx(query: torch.Tensor, points: torch.Tensor, k: int, budget: int) -> torch.Tensor:
    work = _work_dtype(points.dtype)
    q = query.detach().to(work)
    p = points.detach().to(work)
    batch, m, _ = q.shape
    n = p.shape[1]
    num_cand = min(n, k + max(4, k // 4))
    out = torch.empty(batch, m, k, dtype=torch.long, device=q.device)

    if num_cand == n:  # every point is a candidate: rank them all exactly
        every = torch.arange(n, device=q.device)
        for b0, b1, r0, r1 in iter_chunks(batch, m, n, budget, per_entry=8):
            cand = every.expand(b1 - b0, r1 - r0, n)
            out[b0:b1, r0:r1], _ = _rank_exact(q[b0:b1, r0:r1], p[b0:b1], cand, k)
        return out

    if not _matmul_is_full_precision(work):  # TF32/bf16 matmul: exact distances throughout
        p_t = p.transpose(1, 2).contiguous()  # (B, 3, N)
        for b0, b1, r0, r1 in iter_chunks(batch, m, n, budget, per_entry=2):
            q_chunk = q[b0:b1, r0:r1]
            d2 = exact_sqdist_matrix(q_chunk, p_t[b0:b1])
            values, cand = d2.topk(num_cand, dim=-1, largest=False, sorted=False)
            del d2
            idx, exact = _rank_exact(q_chunk, p[b0:b1], cand, k)
            unsure = exact[..., -1] >= values.amax(dim=-1)  # a tie reaching past the candidates
            if bool(unsure.any()):
                bi, ri = unsure.nonzero(as_tuple=True)
                idx[bi, ri] = _knn_rows_exact(q_chunk[bi, ri], p[b0:b1], bi, k, budget)
            out[b0:b1, r0:r1] = idx
        return out

    q_aug, p_aug, tolerance = matmul_operands(q, p)
    block = 0
    if k == 1:
        # nearest only: keep the minimum of each block of `block` points per query (a
        # vectorised reduction, unlike topk), then search the winning block exactly.
        block = min(256, max(32, 1 << round(math.log2(math.sqrt(n)))))
        pad = -n % block
        filler = p_aug.new_zeros(batch, pad, 5)
        filler[..., 4] = torch.finfo(work).max / 8  # matmul distance of padding: huge
        p_aug = torch.cat([p_aug, filler], dim=1)
        far = p.new_full((batch, pad, 3), float("inf"))  # exact distance of padding: inf
        p_blocks = torch.cat([p, far], dim=1).view(batch, -1, block, 3)  # (B, nb, block, 3)
    p_aug_t = p_aug.transpose(1, 2).contiguous()  # (B, 5, L), L = N (+ padding)
    cols = p_aug_t.shape[2]

    for b0, b1, r0, r1 in iter_chunks(batch, m, cols, budget):
        q_chunk, qa_chunk, pa_t = q[b0:b1, r0:r1], q_aug[b0:b1, r0:r1], p_aug_t[b0:b1]
        if block:
            block_min = q.new_empty(b1 - b0, r1 - r0, cols // block)
            for s0, s1, t0, t1 in iter_chunks(b1 - b0, r1 - r0, cols, _sub_budget(budget, q.device)):
                d2 = approx_sqdist_matrix(qa_chunk[s0:s1, t0:t1], pa_t[s0:s1])
                block_min[s0:s1, t0:t1] = d2.view(s1 - s0, t1 - t0, -1, block).amin(dim=-1)
            idx, exact, rest = _nearest_in_best_block(q_chunk, p_blocks[b0:b1], block_min, budget)
        else:
            cand = torch.empty(b1 - b0, r1 - r0, num_cand, dtype=torch.long, device=q.device)
            rest = q.new_empty(b1 - b0, r1 - r0)  # largest candidate matmul distance
            for s0, s1, t0, t1 in iter_chunks(b1 - b0, r1 - r0, cols, _sub_budget(budget, q.device, TOPK_ENTRIES)):
                d2 = approx_sqdist_matrix(qa_chunk[s0:s1, t0:t1], pa_t[s0:s1])
                values, cand[s0:s1, t0:t1] = d2.topk(num_cand, dim=-1, largest=False, sorted=False)
                rest[s0:s1, t0:t1] = values.amax(dim=-1)
            idx, exact = _rank_exact(q_chunk, p[b0:b1], cand, k)
        # `rest` bounds the matmul distance of every point that was not ranked exactly;
        # a row is certain when its k-th exact distance beats that bound minus the error
        unsure = exact[..., -1] > rest - tolerance[b0:b1, r0:r1]
        if bool(unsure.any()):
            bi, ri = unsure.nonzero(as_tuple=True)
            idx[bi, ri] = _knn_rows_exact(q_chunk[bi, ri], p[b0:b1], bi, k, budget)
        out[b0:b1, r0:r1] = idx
    return out


def _nearest_in_best_block(q: torch.Tensor, p_blocks: torch.Tensor, block_min: torch.Tensor,
                           budget: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact nearest point inside each query's best block.

    Args:
        q: ``(b, m, 3)`` queries; p_blocks: ``(b, nb, block, 3)`` points (padding at inf);
        block_min: ``(b, m, nb)`` matmul distance of each block's nearest point (overwritten).

    Returns:
        ``idx (b, m, 1)``, its exact squared distance ``(b, m, 1)`` (ties: lower index) and
        the smallest matmul distance outside the best block ``(b, m)``.
    """
    b, m, _ = q.shape
    block = p_blocks.shape[2]
    best = block_min.argmin(dim=-1)  # (b, m)
    block_min.scatter_(-1, best.unsqueeze(-1), float("inf"))
    rest = block_min.amin(dim=-1)
    rows = b * m
    q_flat, best_flat = q.reshape(rows, 3), best.reshape(rows)
    cloud = torch.arange(b, device=q.device).repeat_interleave(m)
    idx = torch.empty(rows, dtype=torch.long, device=q.device)
    exact = q.new_empty(rows)
    step = max(1, budget // (4 * block))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        pts = p_blocks[cloud[r0:r1], best_flat[r0:r1]]  # (r, block, 3)
        d2 = sqdist_pairs(q_flat[r0:r1].unsqueeze(1), pts)  # (r, block)
        inside = d2.argmin(dim=-1, keepdim=True)  # first minimum (min(dim) is slow on CPU threads)
        exact[r0:r1] = d2.gather(-1, inside).squeeze(-1)
        idx[r0:r1] = best_flat[r0:r1] * block + inside.squeeze(-1)
    return idx.view(b, m, 1), exact.view(b, m, 1), rest


def _rank_exact(q: torch.Tensor, p: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank candidates ``cand (b, m, c)`` by exact distance (ties: lower index), keep ``k``:
    ``idx (b, m, k)``, ``dist2 (b, m, k)``."""
    cand, _ = cand.sort(dim=-1)
    exact = sqdist_pairs(q.unsqueeze(2), gather_points(p, cand))  # (b, m, c)
    exact, order = exact.sort(dim=-1, stable=True)
    return cand.gather(-1, order[..., :k]), exact[..., :k]


def _knn_rows_exact(q_rows: torch.Tensor, p: torch.Tensor, batch_of_row: torch.Tensor, k: int,
                    budget: int) -> torch.Tensor:
    """Brute force for single rows: ``q_rows (R, 3)`` against ``p[batch_of_row[r]]`` -> ``(R, k)``, the stable
    sort of every exact distance (so ties are ordered by index however many points they span)."""
    n = p.shape[1]
    out = []
    step = max(1, budget // (8 * n))
    for r0 in range(0, q_rows.shape[0], step):
        qr = q_rows[r0:r0 + step].unsqueeze(1)  # (r, 1, 3)
        pr = p[batch_of_row[r0:r0 + step]]  # (r, N, 3)
        d2 = exact_sqdist_matrix(qr, pr.transpose(1, 2))[:, 0]  # (r, N)
        out.append(d2.sort(dim=-1, stable=True).indices[:, :k])
    return torch.cat(out)


@torch.no_grad()
def _ball_query_torch(query: torch.Tensor, points: torch.Tensor, radius: float, k: int, budget: int) -> torch.Tensor:
    work = _work_dtype(points.dtype)
    q = query.detach().to(work)
    p_t = points.detach().to(work).transpose(1, 2).contiguous()  # (B, 3, N)
    batch, m, _ = q.shape
    n = p_t.shape[2]
    r2 = torch.tensor(radius * radius, dtype=work).item()  # radius**2 rounded like the distances
    key_dtype = torch.int16 if n < 2 ** 15 else torch.int32
    arange = torch.arange(n, dtype=key_dtype, device=q.device)
    first = torch.empty(batch, m, k, dtype=key_dtype, device=q.device)
    # per entry: two distance buffers, the mask and the integer key
    for b0, b1, r0, r1 in iter_chunks(batch, m, n, _sub_budget(budget, q.device), per_entry=3):
        inside = exact_sqdist_matrix(q[b0:b1, r0:r1], p_t[b0:b1]) < r2
        key = torch.where(inside, arange, n)  # the index of each point inside, n outside
        first[b0:b1, r0:r1] = key.topk(k, dim=-1, largest=False, sorted=True).values  # ascending
    idx = first.long()
    found = idx < n
    idx = torch.where(found, idx, idx[..., :1])  # unused slots repeat the first neighbour
    idx[~found[..., 0]] = -1  # empty ball
    return idx


# --------------------------------------------------------------------------- accelerators
# Documented APIs; exercised by tests/test_ops.py where the packages are installed.


def _knn_pytorch3d_idx(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    from pytorch3d.ops import knn_points

    result = knn_points(query.detach(), points.detach(), K=k, return_nn=False, return_sorted=True)
    return result.idx.long()


def _knn_torch_cluster_idx(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    import torch_cluster

    batch, m, _ = query.shape
    n = points.shape[1]
    device = points.device
    x = points.detach().reshape(batch * n, 3)
    y = query.detach().reshape(batch * m, 3)
    batch_x = torch.arange(batch, device=device).repeat_interleave(n)
    batch_y = torch.arange(batch, device=device).repeat_interleave(m)
    # edge_index[0]: index into y (query), edge_index[1]: index into x (points)
    edge_index = torch_cluster.knn(x, y, k, batch_x, batch_y)
    if edge_index.shape[1] != batch * m * k:
        raise RuntimeError(f"torch_cluster.knn returned {edge_index.shape[1]} pairs, expected {batch * m * k}")
    order = torch.sort(edge_index[0], stable=True).indices  # group by query, keep order
    col = edge_index[1][order].view(batch, m, k)
    return col - (torch.arange(batch, device=device) * n).view(batch, 1, 1)


def _kd_tree_is_faster(query: torch.Tensor, points: torch.Tensor) -> bool:
    """``backend="auto"`` on CPU: :data:`KD_TREE_MIN_QUERIES` or more queries into clouds of
    :data:`KD_TREE_MIN_POINTS` points or more go to scipy's KD-tree (bench/ops.py: 4x faster than the brute
    force at 8 x 512 queries into 8,192, 2x at 8 x 128 into 2,048; on smaller clouds, or a few queries into
    a big one, building the tree dominates), unless ``PC3D_OPS_BACKEND`` names a backend."""
    return (points.device.type == "cpu" and points.shape[1] >= KD_TREE_MIN_POINTS
            and query.shape[1] >= KD_TREE_MIN_QUERIES and not os.environ.get(ENV_VAR, "").strip())


def _candidate_sqdist(q_t: np.ndarray, p_t: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``q_t (3, R)``, ``p_t (3, P)``, ``candidates (R, c)`` columns of ``p_t`` -> ``(R, c)`` squared distances:
    the values of :func:`sqdist_pairs` (the same correctly rounded operations in the same order)."""
    import numpy as np

    d2 = p_t[0][candidates] - q_t[0][:, None]
    d2 *= d2
    tmp = p_t[1][candidates] - q_t[1][:, None]
    tmp *= tmp
    d2 += tmp
    np.subtract(p_t[2][candidates], q_t[2][:, None], out=tmp)
    tmp *= tmp
    d2 += tmp
    return d2


#: The KD-tree path's acceptance margin: its float64 tree distances and the exact distances in the inputs'
#: dtype agree within ``_KD_TREE_ERR_FACTOR * eps`` of the distance (each is within ~2.5 eps of the true one).
_KD_TREE_ERR_FACTOR = 16.0


def _knn_scipy(query: torch.Tensor, points: torch.Tensor, k: int,
               budget: int = CHUNK_FLOATS) -> tuple[torch.Tensor, torch.Tensor]:
    """The brute-force answer through scipy's cKDTree: ``idx (B, M, k)`` and its exact squared distances (in
    the work dtype, detached).

    Each cloud's tree is built and queried in a pool of ``torch.get_num_threads()`` threads (scipy releases
    the GIL; fewer clouds than threads share the threads inside each query). The tree returns ``k + 1``
    candidates in float64; they are ranked by the exact distance in the inputs' dtype (ties by index). A row
    is accepted when its k-th exact distance is below the farthest candidate's tree distance minus the two
    distances' rounding margin, so no point outside the candidates can be as near. The other rows (a tie
    reaching past the candidates: duplicates, lattices) ask the same tree for twice as many candidates, until
    every point is one. Non-finite coordinates take the torch path.

    Around the queries everything is numpy, single-threaded on purpose: a parallel torch op just before a
    query leaves torch's OpenMP threads spinning on the cores the query's threads need (measured: 4.3 ms
    quiet, 7.7 ms after one, at 8 x 128 into 2,048).
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from scipy.spatial import cKDTree

    work = _work_dtype(points.dtype)
    batch, m, _ = query.shape
    n = points.shape[1]
    q_np = query.detach().to("cpu", work).numpy()  # (B, M, 3)
    p_np = points.detach().to("cpu", work).numpy()  # (B, N, 3)
    if not (np.isfinite(q_np).all() and np.isfinite(p_np).all()):
        idx = _knn_torch_idx(query, points, k, budget)
        return idx, sqdist_pairs(query.detach().to(work).unsqueeze(2), gather_points(points.detach().to(work), idx))
    threads = torch.get_num_threads()
    wide = min(n, k + 1)

    def first_search(b: int) -> tuple[cKDTree, np.ndarray, np.ndarray]:
        # an unbalanced tree (sliding midpoint) builds faster, and queries as fast, on point clouds
        tree = cKDTree(p_np[b], balanced_tree=False, compact_nodes=False)
        return (tree, *tree.query(q_np[b], k=wide, workers=max(1, threads // batch)))

    if batch > 1 and threads > 1:
        with ThreadPoolExecutor(min(batch, threads)) as pool:
            searched = list(pool.map(first_search, range(batch)))
    else:
        searched = [first_search(b) for b in range(batch)]
    trees, dists, nearest = zip(*searched)
    tree_dist = np.stack(dists).reshape(batch * m, wide)
    first_row = (np.arange(batch) * n).repeat(m)[:, None]  # (B*M, 1): cloud b's points start at row b*n
    found = np.stack(nearest).reshape(batch * m, wide) + first_row  # rows of p_t
    q_t = np.ascontiguousarray(q_np.reshape(-1, 3).T)  # (3, B*M)
    p_t = np.ascontiguousarray(p_np.reshape(-1, 3).T)  # (3, B*N)
    margin = 1.0 - _KD_TREE_ERR_FACTOR * float(torch.finfo(work).eps)
    rows = np.arange(batch * m)  # rows still to answer
    idx = dist2 = None
    while True:
        exact = _candidate_sqdist(q_t[:, rows], p_t, found)  # (R, wide), in the tree's (float64) order
        # a row whose exact distances rise strictly is ranked already; the others are ranked again, ties by index
        tied = np.flatnonzero((exact[:, 1:] <= exact[:, :-1]).any(axis=1))
        if len(tied):
            by_index = np.sort(found[tied], axis=1)
            again = _candidate_sqdist(q_t[:, rows[tied]], p_t, by_index)
            order = np.argsort(again, axis=1, kind="stable")
            exact[tied] = np.take_along_axis(again, order, axis=1)
            found[tied] = np.take_along_axis(by_index, order, axis=1)
        if wide == n:  # every point was a candidate
            certain = np.ones(len(rows), dtype=bool)
        else:
            certain = exact[:, k - 1] < tree_dist[:, -1] ** 2 * margin
        if idx is None:  # the first round answers every row; later rounds overwrite the uncertain ones
            idx, dist2 = found[:, :k] - first_row, np.ascontiguousarray(exact[:, :k])
        else:
            done = rows[certain]
            idx[done], dist2[done] = found[certain, :k] - first_row[done], exact[certain, :k]
        rows = rows[~certain]
        if not len(rows):
            break
        wide = min(n, 2 * wide)
        tree_dist, found = np.empty((len(rows), wide)), np.empty((len(rows), wide), dtype=np.int64)
        cloud = rows // m
        for b in np.unique(cloud):
            mine = cloud == b
            dist_b, found_b = trees[b].query(q_np[b, rows[mine] % m], k=wide, workers=threads)
            tree_dist[mine], found[mine] = dist_b.reshape(-1, wide), found_b.reshape(-1, wide) + b * n
    device = query.device
    return (torch.from_numpy(idx).view(batch, m, k).to(device),
            torch.from_numpy(dist2).view(batch, m, k).to(device))


def _ball_query_pytorch3d(query: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    from pytorch3d.ops import ball_query as p3d_ball_query

    # pytorch3d: first K in index order with d2 < radius^2, unused slots -1
    _, idx, _ = p3d_ball_query(query.detach(), points.detach(), K=k, radius=radius, return_nn=False)
    idx = idx.long()
    return torch.where(idx >= 0, idx, idx[..., :1])
