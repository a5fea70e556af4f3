"""Farthest point sampling."""

from __future__ import annotations

import math

import torch

from pc3d.ops._checks import check_count, check_points, without_autocast
from pc3d.ops.backends import resolve_checked
from pc3d.ops.neighbors import _work_dtype


@without_autocast
def farthest_point_sample(points: torch.Tensor, num_samples: int, backend: str = "auto") -> torch.Tensor:
    """Deterministic farthest point sampling, starting from index 0.

    Step ``i`` picks the point whose squared distance to the already chosen set is
    largest (ties: the lowest index, like ``argmax``). Same result as pytorch3d
    ``sample_farthest_points(..., random_start_point=False)``, and as pointnet2_ops
    ``furthest_point_sample`` (Point-MAE's) except where that kernel departs: it never
    picks a point with ``x*x + y*y + z*z <= 1e-3`` after the first, and it breaks exact
    ties by CUDA thread order. Squared distances are ``dx*dx + dy*dy + dz*dz`` summed in
    that order, in float32 for half-precision inputs.

    Args:
        points: ``(B, N, 3)`` floating tensor.
        num_samples: ``S``, with ``1 <= S <= N``.
        backend: ``"auto"``, ``"torch"``, ``"pytorch3d"`` or ``"torch_cluster"``
            (see :mod:`pc3d.ops.backends`).

    Returns:
        ``(B, S)`` int64 indices into ``points``; ``[:, 0]`` is 0. Not differentiable
        (gather the coordinates with :func:`pc3d.ops.gather_points`).
    """
    check_points("points", points)
    num_samples = check_count("num_samples", num_samples, "points", points)
    name = resolve_checked(backend, "farthest_point_sample", points, _fps_agrees)
    if name == "pytorch3d":
        return _fps_pytorch3d(points, num_samples)
    if name == "torch_cluster":
        return _fps_torch_cluster(points, num_samples)
    return _fps_torch(points, num_samples)


def _fps_agrees(backend: str, device: torch.device) -> bool:
    points = torch.rand(2, 512, 3, generator=torch.Generator().manual_seed(0)).to(device)
    return torch.equal(farthest_point_sample(points, 32, backend=backend),
                       farthest_point_sample(points, 32, backend="torch"))


# ATen runs an elementwise op on one thread when it has at most this many elements,
# a reduction when it has fewer (at::internal::GRAIN_SIZE). FPS is a long chain of
# small ops; on CPU each op is kept that small, because a thread hand-off costs far
# more than the op itself when the cores are shared with other processes (measured
# on 2 busy cores, 2 torch threads, 32x1024->64: 6-10 ms this way vs 460-500 ms with
# ops over the whole batch: each parallel op waited ~8 ms for the second core).
_SERIAL_NUMEL = 32768


@torch.no_grad()
def _fps_torch(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    batch, n, _ = points.shape
    device = points.device
    work = points.detach().to(_work_dtype(points.dtype))
    chosen = torch.zeros(batch, num_samples, dtype=torch.long, device=device)
    group = batch if device.type != "cpu" else max(1, _SERIAL_NUMEL // n)
    for start in range(0, batch, group):
        stop = min(batch, start + group)
        # coordinate-major copy (3, G, N), one plane at a time (each copy stays serial)
        xyz = torch.empty(3, stop - start, n, dtype=work.dtype, device=device)
        for c in range(3):
            xyz[c].copy_(work[start:stop, :, c])
        _fps_group(xyz, chosen[start:stop], num_samples)
    return chosen


def _fps_group(xyz: torch.Tensor, chosen: torch.Tensor, num_samples: int) -> None:
    """FPS on the clouds ``xyz (3, G, N)``; fills ``chosen (G, S)`` (column 0 stays 0)."""
    _, g, n = xyz.shape
    device, dtype = xyz.device, xyz.dtype
    flat = xyz.view(3, g * n)
    x, y, z = xyz[0], xyz[1], xyz[2]  # (G, N) each
    offsets = torch.arange(0, g * n, n, device=device)  # start of each cloud in `flat`
    # argmax over N is a scalar loop in ATen; a two-level search (vectorised max per
    # block, argmax over block maxima, argmax inside the winning block) is ~2x faster
    # and returns the same first maximum. Padding (-1) never wins: distances are >= 0.
    block = 1 << max(3, round(math.log2(math.sqrt(n))))
    num_blocks = -(-n // block)
    store = torch.full((g, num_blocks * block), -1.0, dtype=dtype, device=device)
    min_d2 = store[:, :n]  # running squared distance to the chosen set, (G, N)
    blocks = store.view(g, num_blocks, block)
    block_rows = store.view(g * num_blocks, block)
    block_offsets = torch.arange(0, g * num_blocks, num_blocks, device=device)
    block_max = torch.empty(g, num_blocks, dtype=dtype, device=device)
    # reductions (unlike elementwise ops) go parallel from _SERIAL_NUMEL elements on
    pieces = -(-(g * num_blocks * block) // (_SERIAL_NUMEL - 1)) if device.type == "cpu" else 1
    rows_per_piece = -(-g // pieces)
    d2 = torch.empty(g, n, dtype=dtype, device=device)
    tmp = torch.empty_like(d2)
    flat_idx = offsets.clone()  # flat index of the newest centre (index 0 of each cloud)
    for step in range(1, num_samples):
        centre = flat.index_select(1, flat_idx).unsqueeze(-1)  # (3, G, 1)
        torch.sub(x, centre[0], out=d2)
        d2.mul_(d2)
        torch.sub(y, centre[1], out=tmp)
        tmp.mul_(tmp)
        d2.add_(tmp)
        torch.sub(z, centre[2], out=tmp)
        tmp.mul_(tmp)
        d2.add_(tmp)
        if step == 1:
            min_d2.copy_(d2)
        else:
            torch.minimum(min_d2, d2, out=min_d2)
        for r0 in range(0, g, rows_per_piece):
            torch.amax(blocks[r0:r0 + rows_per_piece], dim=2, out=block_max[r0:r0 + rows_per_piece])
        best_block = block_max.argmax(1)  # (G,) first block holding the maximum
        in_block = block_rows.index_select(0, best_block + block_offsets).argmax(1)
        farthest = in_block.add_(best_block * block)  # (G,) first index of the maximum
        chosen[:, step] = farthest
        torch.add(farthest, offsets, out=flat_idx)


def _fps_pytorch3d(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    from pytorch3d.ops import sample_farthest_points

    _, idx = sample_farthest_points(points.detach(), K=num_samples, random_start_point=False)
    return idx.long()


def _fps_torch_cluster(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    import torch_cluster

    batch, n, _ = points.shape
    src = points.detach().reshape(batch * n, 3)
    batch_vec = torch.arange(batch, device=points.device).repeat_interleave(n)
    # torch_cluster samples ceil(ratio * n) per cloud; FPS orders are prefixes of each
    # other, so a rounding surplus is cut off below.
    ratio = min(1.0, num_samples / n)
    flat = torch_cluster.fps(src, batch_vec, ratio=ratio, random_start=False)
    per_cloud = flat.numel() // batch
    if per_cloud < num_samples or per_cloud * batch != flat.numel():
        raise RuntimeError(f"torch_cluster.fps returned {flat.numel()} indices for {batch} clouds "
                           f"of {n} points at ratio {ratio}; expected {num_samples} each")
    local = flat.view(batch, per_cloud) - torch.arange(batch, device=points.device).unsqueeze(1) * n
    return local[:, :num_samples].contiguous()
