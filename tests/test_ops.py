"""pc3d.ops against brute-force references (loops, numpy, full distance matrices)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import pc3d.ops as ops
from pc3d.errors import ConfigError
from pc3d.ops import backends, neighbors
from pc3d.ops import ball_query, chamfer_l2, farthest_point_sample, gather_points, knn

# --------------------------------------------------------------------------- references


def ref_fps(points: torch.Tensor, num_samples: int) -> np.ndarray:
    """Textbook FPS in numpy, one cloud at a time (first maximum wins, like argmax)."""
    pts = points.numpy()
    out = np.zeros((pts.shape[0], num_samples), dtype=np.int64)
    for b, cloud in enumerate(pts):
        min_d2 = np.full(cloud.shape[0], np.inf, dtype=cloud.dtype)
        current = 0
        for i in range(num_samples):
            out[b, i] = current
            diff = cloud - cloud[current]
            d2 = diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1] + diff[:, 2] * diff[:, 2]
            min_d2 = np.minimum(min_d2, d2)
            current = int(np.argmax(min_d2))
    return out


def ref_sqdist(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Full (B, M, N) matrix, same summation order as pc3d (dx*dx + dy*dy + dz*dz)."""
    diff = q[:, :, None, :] - p[:, None, :, :]
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def ref_knn(q: torch.Tensor, p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d2, idx = ref_sqdist(q, p).sort(dim=-1, stable=True)
    return d2[..., :k], idx[..., :k]


def ref_ball_query(q: torch.Tensor, p: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    out = torch.full(q.shape[:2] + (k,), -1, dtype=torch.long)
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            found = []
            for j in range(p.shape[1]):
                d = q[b, i] - p[b, j]
                if float((d * d).sum()) < radius * radius:
                    found.append(j)
                    if len(found) == k:
                        break
            if found:
                out[b, i] = torch.tensor(found + [found[0]] * (k - len(found)))
    return out


def ref_chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    return d2.min(dim=2).values.mean(dim=1) + d2.min(dim=1).values.mean(dim=1)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


# --------------------------------------------------------------------------- FPS


@pytest.mark.parametrize("shape,num_samples", [((3, 200, 3), 50), ((40, 1024, 3), 16), ((2, 1000, 3), 1000)])
def test_fps_matches_numpy_reference(shape, num_samples):
    points = torch.rand(*shape)
    got = farthest_point_sample(points, num_samples)
    assert got.shape == (shape[0], num_samples) and got.dtype == torch.long
    np.testing.assert_array_equal(got.numpy(), ref_fps(points, num_samples))
    assert (got[:, 0] == 0).all()
    assert torch.equal(got, farthest_point_sample(points, num_samples))  # deterministic


def test_fps_ties_take_first_index_and_full_sample_is_a_permutation():
    # integer grid: many exactly tied distances; duplicates of point 0 as well
    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    points = torch.cat([grid, grid[:, :3]], dim=1).repeat(2, 1, 1)
    got = farthest_point_sample(points, 40)
    np.testing.assert_array_equal(got.numpy(), ref_fps(points, 40))
    perm = farthest_point_sample(torch.rand(2, 77, 3), 77)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(77).expand(2, 77))


def test_fps_float64_and_half():
    p64 = torch.rand(2, 300, 3, dtype=torch.float64)
    np.testing.assert_array_equal(farthest_point_sample(p64, 30).numpy(), ref_fps(p64, 30))
    p16 = torch.rand(2, 300, 3).half()
    np.testing.assert_array_equal(farthest_point_sample(p16, 30).numpy(), ref_fps(p16.float(), 30))


# --------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("k", [1, 5, 32])
@pytest.mark.parametrize("n", [300, 1031])
def test_knn_matches_brute_force(k, n, backend):
    q, p = torch.rand(3, 70, 3), torch.rand(3, n, 3)
    d2, idx = knn(q, p, k, backend=backend)
    ref_d2, ref_idx = ref_knn(q, p, k)
    assert idx.shape == (3, 70, k) and idx.dtype == torch.long
    assert torch.equal(idx, ref_idx)
    assert torch.equal(d2, ref_d2)  # same formula, so bit-identical
    d64, _ = ref_knn(q.double(), p.double(), k)
    torch.testing.assert_close(d2.double(), d64, rtol=1e-5, atol=1e-7)
    assert (d2[..., 1:] >= d2[..., :-1]).all()


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_knn_self_is_nearest(backend):
    p = torch.rand(4, 500, 3)
    for k in (1, 16):
        d2, idx = knn(p, p, k, backend=backend)
        assert torch.equal(idx[..., 0], torch.arange(500).expand(4, 500))
        assert (d2[..., 0] == 0).all()


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_knn_all_points_as_candidates_and_ties_by_index(backend):
    grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    q = torch.tensor([[[1.0, 1.0, 1.0], [0.5, 0.0, 0.0]]])
    d2, idx = knn(q, grid, 27, backend=backend)  # k == N: exact ranking of every point
    ref_d2, ref_idx = ref_knn(q, grid, 27)
    assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2)
    d2, idx = knn(q, grid, 7, backend=backend)  # pre-selection, tied distances -> lower index first
    assert torch.equal(idx, ref_idx[..., :7])


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_knn_far_apart_clusters_need_exact_fallback(backend):
    # two clusters 200 apart, 1e-2 across: the matmul form is off by ~1e-3 here, about
    # the squared neighbour spacing, so only the error bound + exact fallback get it right
    torch.manual_seed(1)
    base = torch.rand(2, 400, 3) * 1e-2
    p = torch.cat([base[:, :200] + 100.0, base[:, 200:] - 100.0], dim=1)
    q = p[:, ::7] + torch.rand(2, 58, 3) * 1e-3
    qa, pa, _ = neighbors.matmul_operands(q, p)  # show the matmul alone would be wrong
    ref_d2, ref_idx = ref_knn(q, p, 4)
    assert not torch.equal(neighbors.approx_sqdist_matrix(qa, pa.transpose(1, 2)).argmin(-1), ref_idx[..., 0])
    for k in (1, 4):
        d2, idx = knn(q, p, k, backend=backend)
        assert torch.equal(idx, ref_idx[..., :k]) and torch.equal(d2, ref_d2[..., :k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matmul_error_bound_holds(dtype):
    """The bound the kNN acceptance test relies on, on clouds of many scales and offsets."""
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        scale = 10 ** float(torch.empty(1).uniform_(-3, 3, generator=g))
        offset = 10 ** float(torch.empty(1).uniform_(-2, 4, generator=g))
        p = (torch.randn(2, 800, 3, generator=g) * scale + offset * torch.randn(1, 1, 3, generator=g)).to(dtype)
        q = torch.cat([p[:, :100] + torch.randn(2, 100, 3, generator=g).to(dtype) * scale * 1e-2,
                       torch.randn(2, 50, 3, generator=g).to(dtype) * scale * 3], dim=1)
        qa, pa, tolerance = neighbors.matmul_operands(q, p)
        error = (neighbors.approx_sqdist_matrix(qa, pa.transpose(1, 2)) - ref_sqdist(q, p)).abs()
        assert (error <= tolerance.unsqueeze(-1)).all()
        # and the bound is not vacuous: within 50x of the worst error seen
        assert float((error.amax(-1) / tolerance).amax()) > 1 / 50


def test_knn_offset_cloud_rarely_needs_fallback(monkeypatch):
    # centring keeps the error bound small far from the origin (scene coordinates)
    rows = []
    real = neighbors._knn_rows_exact
    monkeypatch.setattr(neighbors, "_knn_rows_exact", lambda q, *a: rows.append(len(q)) or real(q, *a))
    p = torch.rand(2, 2000, 3) + torch.tensor([1000.0, -500.0, 20.0])
    for k in (1, 16):
        _, idx = knn(p[:, :300], p, k, backend="torch")
        assert torch.equal(idx[..., 0], torch.arange(300).expand(2, 300))
    assert sum(rows) < 0.05 * 2 * 2 * 300


def test_knn_fallback_path_alone(monkeypatch):
    monkeypatch.setattr(neighbors, "_ERR_FACTOR", 1e12)  # every row "unsure" -> brute force
    q, p = torch.rand(2, 40, 3), torch.rand(2, 600, 3)
    for k in (1, 6):
        d2, idx = knn(q, p, k, backend="torch", chunk_floats=5000)
        ref_d2, ref_idx = ref_knn(q, p, k)
        assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2)


def test_knn_reduced_matmul_precision_uses_exact_distances():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        q, p = torch.rand(2, 50, 3), torch.rand(2, 400, 3)
        d2, idx = knn(q, p, 8, backend="torch")
    finally:
        torch.set_float32_matmul_precision(previous)
    ref_d2, ref_idx = ref_knn(q, p, 8)
    assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2)


def test_knn_reduced_matmul_precision_orders_ties_past_the_candidates_by_index():
    # queries at cell centres of a lattice: 8 corners tie, more than the k + 4 candidates of k = 3
    lattice = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    centres = lattice[:, (lattice[0] < 3).all(dim=1)] + 0.5
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        d2, idx = knn(centres, lattice, 3, backend="torch")
    finally:
        torch.set_float32_matmul_precision(previous)
    ref_d2, ref_idx = ref_knn(centres, lattice, 3)
    assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2)


@pytest.mark.parametrize("k", [1, 8])
def test_knn_chunked_equals_unchunked(k, monkeypatch):
    q, p = torch.rand(5, 90, 3), torch.rand(5, 700, 3)
    full = knn(q, p, k, backend="torch", chunk_floats=1 << 30)
    monkeypatch.setattr(neighbors, "CACHE_ENTRIES", 1 << 30)  # one block per chunk
    for budget in (700, 5000, 90 * 700 + 1, 3 * 90 * 704):
        got = knn(q, p, k, backend="torch", chunk_floats=budget)
        assert torch.equal(got[0], full[0]) and torch.equal(got[1], full[1]), budget


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_knn_dist2_is_differentiable(backend):
    q = torch.rand(2, 30, 3, dtype=torch.float64, requires_grad=True)
    p = torch.rand(2, 200, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 30, 5, dtype=torch.float64)
    d2, idx = knn(q, p, 5, backend=backend)
    (d2 * w).sum().backward()
    gq, gp = q.grad.clone(), p.grad.clone()
    q.grad = p.grad = None
    full = ref_sqdist(q, p)
    (full.gather(-1, idx) * w).sum().backward()
    torch.testing.assert_close(gq, q.grad)
    torch.testing.assert_close(gp, p.grad)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_knn_half_precision(backend):
    q, p = torch.rand(2, 20, 3).half(), torch.rand(2, 100, 3).half()
    d2, idx = knn(q, p, 4, backend=backend)
    assert d2.dtype == torch.float16
    assert torch.equal(idx, ref_knn(q.float(), p.float(), 4)[1])


# --------------------------------------------------------------------------- ball query


def test_ball_query_matches_python_loop():
    torch.manual_seed(3)
    p = torch.rand(2, 150, 3)
    q = torch.cat([p[:, :10], torch.rand(2, 10, 3), torch.full((2, 2, 3), 5.0)], dim=1)
    for radius, k in ((0.2, 8), (0.35, 32), (0.05, 3)):
        got = ball_query(q, p, radius, k)
        assert got.shape == (2, 22, k) and got.dtype == torch.long
        assert torch.equal(got, ref_ball_query(q, p, radius, k)), (radius, k)
    got = ball_query(q, p, 0.2, 8)
    assert (got[:, -2:] == -1).all()  # empty balls
    assert (got[:, :10] >= 0).all()  # a query that is a point is never empty


def test_ball_query_boundary_is_strict():
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    q = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.5]]])
    got = ball_query(q, grid, 1.0, 8)  # grid neighbours at distance exactly 1 are outside
    assert torch.equal(got, ref_ball_query(q, grid, 1.0, 8))
    assert torch.equal(got[0, 0], torch.full((8,), 21))  # only the point itself
    assert torch.equal(got[0, 1, :2], torch.tensor([0, 1]))


def test_ball_query_chunked_equals_unchunked():
    q, p = torch.rand(3, 60, 3), torch.rand(3, 500, 3)
    full = ball_query(q, p, 0.2, 16)
    for budget in (1, 3000, 100_000):
        assert torch.equal(ball_query(q, p, 0.2, 16, chunk_floats=budget), full)


# --------------------------------------------------------------------------- Chamfer


@pytest.mark.parametrize("n,m", [(64, 64), (100, 37)])
def test_chamfer_values_and_gradients_match_cdist(n, m):
    a = torch.rand(3, n, 3, requires_grad=True)
    b = torch.rand(3, m, 3, requires_grad=True)
    got = chamfer_l2(a, b, reduction="none")
    ref = ref_chamfer(a, b)
    assert got.shape == (3,)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(chamfer_l2(a, b), ref.mean(), rtol=0, atol=1e-5)
    w = torch.rand(3)
    ga, gb = torch.autograd.grad((got * w).sum(), (a, b))
    ra, rb = torch.autograd.grad((ref * w).sum(), (a, b))
    torch.testing.assert_close(ga, ra, rtol=0, atol=1e-5)
    torch.testing.assert_close(gb, rb, rtol=0, atol=1e-5)


def test_chamfer_gradcheck_float64():
    a = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: chamfer_l2(x, y, reduction="none"), (a, b))


def test_chamfer_identical_clouds_is_zero_and_chunking_is_invisible():
    a = torch.rand(2, 300, 3)
    assert float(chamfer_l2(a, a[:, torch.randperm(300)])) == 0.0
    b = torch.rand(2, 250, 3)
    assert torch.equal(chamfer_l2(a, b, "none", chunk_floats=2000), chamfer_l2(a, b, "none"))


@pytest.fixture
def one_thread():
    """This test checks memory, not speed; one thread keeps its time steady (~1 s) on
    shared CI cores, where each multi-threaded op can wait milliseconds for a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_chamfer_large_is_memory_bounded(monkeypatch, one_thread):
    """B=8, N=M=8192 forward+backward: no distance block above the budget (cdist: 2^29)."""
    largest = []
    real = neighbors.approx_sqdist_matrix

    def recording(qa, pa):
        out = real(qa, pa)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(neighbors, "approx_sqdist_matrix", recording)
    a = torch.rand(8, 8192, 3, requires_grad=True)
    b = torch.rand(8, 8192, 3, requires_grad=True)
    loss = chamfer_l2(a, b)
    loss.backward()
    assert largest and max(largest) <= min(ops.CHUNK_FLOATS, neighbors.CACHE_ENTRIES)
    assert a.grad.shape == a.shape and torch.isfinite(a.grad).all()
    # spot-check the value on a subset against the brute-force formula
    sub = ref_chamfer(a[:1, :1000].detach(), b[:1, :1000].detach())
    torch.testing.assert_close(chamfer_l2(a[:1, :1000].detach(), b[:1, :1000].detach(), "none"), sub,
                               rtol=0, atol=1e-5)


def test_knn_b32_n8192_blocks_stay_under_budget(monkeypatch):
    """Point-MAE-like grouping on big clouds; and the chunk plan for a full B=32 self-kNN."""
    shapes = []
    real = neighbors.approx_sqdist_matrix
    monkeypatch.setattr(neighbors, "approx_sqdist_matrix",
                        lambda qa, pa: shapes.append((qa.shape[0], qa.shape[1], pa.shape[2])) or real(qa, pa))
    p = torch.rand(32, 8192, 3)
    centres = p[:, :64]
    _, idx = knn(centres, p, 32, backend="torch", chunk_floats=1 << 22)
    assert torch.equal(idx[..., 0], torch.arange(64).expand(32, 64))
    assert len(shapes) == 4 and max(b * m * n for b, m, n in shapes) <= 1 << 22
    # the plan of a full self-kNN (never run here): covers every row once, within budget
    seen = np.zeros((32, 8192), dtype=np.int64)
    for b0, b1, r0, r1 in neighbors.iter_chunks(32, 8192, 8192, ops.CHUNK_FLOATS):
        assert (b1 - b0) * (r1 - r0) * 8192 <= ops.CHUNK_FLOATS
        seen[b0:b1, r0:r1] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize("batch,rows,cols,budget,per_entry",
                         [(3, 10, 7, 1, 1), (3, 10, 7, 70, 1), (3, 10, 7, 1000, 2), (4, 5, 100, 250, 1), (2, 9, 4, 40, 3)])
def test_iter_chunks_covers_once_within_budget(batch, rows, cols, budget, per_entry):
    seen = np.zeros((batch, rows), dtype=np.int64)
    for b0, b1, r0, r1 in neighbors.iter_chunks(batch, rows, cols, budget, per_entry):
        assert (b1 - b0) * (r1 - r0) * cols * per_entry <= max(budget, cols * per_entry)
        seen[b0:b1, r0:r1] += 1
    assert (seen == 1).all()


# --------------------------------------------------------------------------- gather


def test_gather_points_matches_indexing_and_backprops():
    points = torch.rand(3, 50, 4, requires_grad=True)
    idx = torch.randint(0, 50, (3, 7, 5))
    got = gather_points(points, idx)
    assert got.shape == (3, 7, 5, 4)
    ref = torch.stack([points[b][idx[b]] for b in range(3)])
    assert torch.equal(got, ref)
    got.sum().backward()
    counts = torch.stack([torch.bincount(idx[b].flatten(), minlength=50) for b in range(3)]).float()
    torch.testing.assert_close(points.grad, counts.unsqueeze(-1).expand(3, 50, 4))
    with pytest.raises((RuntimeError, IndexError)):
        gather_points(points.detach(), torch.full((3, 2), -1))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("call,match", [
    (lambda: farthest_point_sample(torch.rand(10, 3), 2), r"points: expected shape \(B, N, 3\), got \(10, 3\)"),
    (lambda: farthest_point_sample(torch.rand(2, 10, 2), 2), r"points: .*got \(2, 10, 2\)"),
    (lambda: farthest_point_sample(torch.rand(2, 10, 3), 11), r"num_samples=11.*N=10.*\(2, 10, 3\)"),
    (lambda: farthest_point_sample(torch.rand(2, 10, 3), 0), r"num_samples=0"),
    (lambda: farthest_point_sample(torch.zeros(2, 10, 3, dtype=torch.long), 2), r"points: expected a floating"),
    (lambda: knn(torch.rand(2, 5, 3), torch.rand(2, 10, 3), 11), r"k=11.*N=10.*\(2, 10, 3\)"),
    (lambda: knn(torch.rand(2, 5, 4), torch.rand(2, 10, 3), 1), r"query: .*\(2, 5, 4\)"),
    (lambda: knn(torch.rand(3, 5, 3), torch.rand(2, 10, 3), 1), r"query \(3, 5, 3\) and points \(2, 10, 3\)"),
    (lambda: knn(torch.rand(2, 5, 3), torch.rand(2, 10, 3).double(), 1), r"dtype/device differ"),
    (lambda: ball_query(torch.rand(2, 5, 3), torch.rand(2, 10, 3), 0.1, 11), r"k=11"),
    (lambda: ball_query(torch.rand(2, 5, 3), torch.rand(2, 10, 3), -1.0, 2), r"radius=-1.0"),
    (lambda: chamfer_l2(torch.rand(2, 5, 3), torch.rand(2, 10), "mean"), r"b: .*\(2, 10\)"),
    (lambda: chamfer_l2(torch.rand(2, 5, 3), torch.rand(2, 10, 3), "sum"), r"reduction='sum'"),
    (lambda: gather_points(torch.rand(2, 10, 3), torch.zeros(3, 4, dtype=torch.long)), r"idx: .*B=2"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- backends


def test_env_var_overrides_auto(monkeypatch):
    t = torch.rand(1, 4, 3)
    assert backends.resolve_backend("auto", "knn", t) == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "scipy")
    assert backends.resolve_backend("auto", "knn", t) == "scipy"
    assert backends.resolve_backend("auto", "chamfer_l2", t) == "torch"  # not implemented there
    assert backends.resolve_backend("torch", "knn", t) == "torch"  # explicit wins over the env
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ConfigError, match="PC3D_OPS_BACKEND=bogus"):
        backends.resolve_backend("auto", "knn", t)


def test_env_var_routes_knn_to_scipy_with_same_result(monkeypatch):
    q, p = torch.rand(2, 40, 3), torch.rand(2, 300, 3)
    calls = []
    real = neighbors._knn_scipy
    monkeypatch.setattr(neighbors, "_knn_scipy", lambda *a: calls.append(1) or real(*a))
    for k in (1, 6):
        expected = knn(q, p, k)
        monkeypatch.setenv(backends.ENV_VAR, "scipy")
        got = knn(q, p, k)
        monkeypatch.delenv(backends.ENV_VAR)
        assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])
    assert len(calls) == 2


def test_auto_knn_on_big_cpu_clouds_is_the_kd_tree_with_the_torch_answer(monkeypatch):
    """From KD_TREE_MIN_QUERIES queries into KD_TREE_MIN_POINTS points per cloud, auto on CPU goes through
    scipy: the same indices (ties by index, duplicates included) and distances as the brute force; smaller
    clouds, fewer queries and PC3D_OPS_BACKEND stay as asked."""
    calls = []
    real = neighbors._knn_scipy
    monkeypatch.setattr(neighbors, "_knn_scipy", lambda *a: calls.append(a[1].shape) or real(*a))
    generator = torch.Generator().manual_seed(4)
    big = torch.rand(3, neighbors.KD_TREE_MIN_POINTS, 3, generator=generator)
    big[:, 100:140] = big[:, 60:100]  # exact duplicates: tied distances
    extra = neighbors.KD_TREE_MIN_QUERIES - 60
    query = torch.cat([big[:, 50:110], torch.rand(3, extra, 3, generator=generator)], dim=1).requires_grad_()
    for k in (1, 16, 45):
        dist2, idx = knn(query, big, k)
        want_dist2, want_idx = knn(query, big, k, backend="torch")
        assert torch.equal(idx, want_idx) and torch.equal(dist2, want_dist2), k
    assert len(calls) == 3
    dist2.sum().backward()  # the distances stay differentiable
    assert query.grad is not None and query.grad.abs().sum() > 0
    knn(query.detach(), big[:, :neighbors.KD_TREE_MIN_POINTS - 1], 8)
    knn(query.detach()[:, 1:], big, 8)
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    knn(query.detach(), big, 8)
    assert len(calls) == 3  # a smaller cloud, fewer queries, and the variable kept the torch path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kd_tree_knn_is_the_brute_force_on_hard_clouds(dtype):
    """Clouds far from the origin and of different scales, a lattice (every distance tied many times) and
    exact duplicates: indices and distances equal the stable brute force."""
    g = torch.Generator().manual_seed(7)
    lattice = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing="ij"), -1).reshape(-1, 3)  # 512
    clouds = torch.stack([torch.rand(512, 3, generator=g) * 1e-3,
                          torch.rand(512, 3, generator=g) * 50 + torch.tensor([1e4, -3e3, 7.0]),
                          lattice,
                          torch.cat([lattice[:256] * 0.1, lattice[:256] * 0.1])]).to(dtype)  # each point twice
    query = torch.cat([clouds[:, ::5], clouds[:, :40] + 0.25 * clouds[:, 40:80].std()], dim=1)
    threads = torch.get_num_threads()
    try:
        for workers in (1, 2):  # one thread: the trees one after the other; more: a pool
            torch.set_num_threads(workers)
            for k in (1, 6, 27, 64):
                d2, idx = knn(query, clouds, k, backend="scipy")
                ref_d2, ref_idx = ref_knn(query, clouds, k)
                assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2), (workers, k)
                assert d2.dtype == dtype
    finally:
        torch.set_num_threads(threads)


def test_kd_tree_knn_widens_unsure_rows_and_sends_non_finite_clouds_to_torch(monkeypatch):
    """k + 1 candidates suffice for distinct distances; a tie reaching past them (a lattice: six neighbours at
    distance 1) asks the tree again with twice as many, and an impossible margin ends with every point."""
    import scipy.spatial

    asked = []

    class CountingTree(scipy.spatial.cKDTree):
        def query(self, x, k, **kwargs):
            asked.append((len(x), k))
            return super().query(x, k=k, **kwargs)

    monkeypatch.setattr(scipy.spatial, "cKDTree", CountingTree)
    q, p = torch.rand(2, 50, 3), torch.rand(2, 700, 3)
    for k in (1, 9):
        assert torch.equal(knn(q, p, k, backend="scipy")[1], ref_knn(q, p, k)[1])
    assert asked == [(50, 2), (50, 2), (50, 10), (50, 10)]  # one tree per cloud
    lattice = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    inner = lattice[:, ((lattice[0] > 0) & (lattice[0] < 5)).all(dim=1)]  # 64 points with six neighbours each
    asked.clear()
    d2, idx = knn(inner, lattice, 3, backend="scipy")
    ref_d2, ref_idx = ref_knn(inner, lattice, 3)
    assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2)
    assert asked == [(64, 4), (64, 8)]  # self + 6 tied at distance 1: four candidates cannot decide, eight can
    monkeypatch.setattr(neighbors, "_KD_TREE_ERR_FACTOR", 1e12)  # no row is ever "certain"
    asked.clear()
    d2, idx = knn(q, p, 9, backend="scipy")
    ref_d2, ref_idx = ref_knn(q, p, 9)
    assert torch.equal(idx, ref_idx) and torch.equal(d2, ref_d2)
    assert asked == [(50, wide) for wide in (10, 20, 40, 80, 160, 320, 640, 700) for _ in range(2)]
    bad = p.clone()
    bad[1, 3] = float("nan")
    asked.clear()
    torch.testing.assert_close(knn(q, bad, 4, backend="scipy"), knn(q, bad, 4, backend="torch"), equal_nan=True)
    assert asked == []


def test_uninstalled_backend_raises_config_error(monkeypatch):
    monkeypatch.setattr(backends, "is_installed", lambda name: name == "torch")
    q, p = torch.rand(1, 4, 3), torch.rand(1, 8, 3)
    with pytest.raises(ConfigError, match=r"backend='pytorch3d': pytorch3d is not installed; to install: "):
        knn(q, p, 2, backend="pytorch3d")
    with pytest.raises(ConfigError, match="torch_cluster is not installed"):
        farthest_point_sample(p, 2, backend="torch_cluster")
    monkeypatch.setenv(backends.ENV_VAR, "pytorch3d")
    with pytest.raises(ConfigError, match="PC3D_OPS_BACKEND=pytorch3d"):
        chamfer_l2(q, p)
    with pytest.raises(ConfigError, match="not implemented by torch_cluster"):
        chamfer_l2(q, p, backend="torch_cluster")
    with pytest.raises(ConfigError, match="unknown ops backend"):
        knn(q, p, 2, backend="cuda")


def test_auto_prefers_installed_accelerators_only_for_cuda_float32(monkeypatch):
    monkeypatch.setattr(backends, "is_installed", lambda name: True)
    fake_cuda = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)
    assert backends.resolve_backend("auto", "knn", fake_cuda) == "pytorch3d"
    assert backends.resolve_backend("auto", "knn", types.SimpleNamespace(is_cuda=True, dtype=torch.float64)) == "torch"
    assert backends.resolve_backend("auto", "knn", torch.rand(1, 2, 3)) == "torch"
    monkeypatch.setattr(backends, "is_installed", lambda name: name != "pytorch3d")
    assert backends.resolve_backend("auto", "farthest_point_sample", fake_cuda) == "torch_cluster"
    assert backends.resolve_backend("auto", "chamfer_l2", fake_cuda) == "torch"


def test_auto_uses_an_accelerator_only_once_it_agreed_with_torch_here(monkeypatch, capsys):
    monkeypatch.setattr(backends, "resolve_backend", lambda name, op, tensor: "torch_cluster" if name == "auto" else name)
    monkeypatch.setattr(backends, "_HELD_TO_TORCH", {})
    calls = []

    def agrees(result):
        def check(backend, device):
            calls.append((backend, str(device)))
            if isinstance(result, Exception):
                raise result
            return result
        return check

    x = torch.rand(1, 4, 3)
    assert backends.resolve_checked("auto", "knn", x, agrees(True)) == "torch_cluster"
    assert backends.resolve_checked("auto", "knn", x, agrees(False)) == "torch_cluster"  # checked once per op/device
    assert calls == [("torch_cluster", "cpu")]
    assert backends.resolve_checked("auto", "farthest_point_sample", x, agrees(False)) == "torch"
    assert "torch_cluster is installed but its result differs" in capsys.readouterr().err
    assert backends.resolve_checked("auto", "ball_query", x, agrees(ImportError("no kernels"))) == "torch"
    assert backends.resolve_checked("torch_cluster", "chamfer_l2", x, agrees(False)) == "torch_cluster"  # as asked
    assert len(calls) == 3


def _accel_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend", ["pytorch3d", "torch_cluster"])
def test_accelerator_backends_agree_with_torch(backend):
    pytest.importorskip(backend, reason=f"{backend} not installed: this check runs on machines with the "
                                        "accelerator packages (e.g. the GPU CI); pure torch is tested above")
    device = _accel_device()
    points = torch.rand(4, 2048, 3, device=device)
    query = points[:, :128]
    assert torch.equal(farthest_point_sample(points, 64, backend=backend),
                       farthest_point_sample(points, 64, backend="torch"))
    d_acc, i_acc = knn(query, points, 16, backend=backend)
    d_ref, i_ref = knn(query, points, 16, backend="torch")
    torch.testing.assert_close(d_acc, d_ref)
    assert (i_acc == i_ref).float().mean() > 0.999  # equal up to float ties
    if backend in backends.SUPPORTED["ball_query"]:
        assert torch.equal(ball_query(query, points, 0.1, 16, backend=backend),
                           ball_query(query, points, 0.1, 16, backend="torch"))
    if backend in backends.SUPPORTED["chamfer_l2"]:
        a = torch.rand(4, 1000, 3, device=device)
        torch.testing.assert_close(chamfer_l2(a, points, "none", backend=backend),
                                   chamfer_l2(a, points, "none", backend="torch"))


def test_geometry_ops_keep_float32_under_bf16_autocast():
    """The claim behind trainer.precision=bf16: FPS / kNN / Chamfer give the float32 result inside autocast."""
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2, 1024, 3, generator=generator) * 10 + 100  # far from the origin: bf16 would lose it
    query = points[:, :200] + 0.001
    other = torch.rand(2, 700, 3, generator=generator) * 10 + 100
    expected = (farthest_point_sample(points, 64), knn(query, points, 8), chamfer_l2(points, other))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (farthest_point_sample(points, 64), knn(query, points, 8), chamfer_l2(points, other))
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1][1], expected[1][1]) and got[1][0].dtype == torch.float32
    assert torch.equal(got[1][0], expected[1][0])
    assert got[2].dtype == torch.float32 and torch.equal(got[2], expected[2])
