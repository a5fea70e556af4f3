"""pc3d.ops.sparse_conv against dense torch convolutions and brute-force tables.

Every conv kind (submanifold k=3/5, down, up) is checked on both backends against the
dense reference: ``conv3d`` (padding ``k//2``) read at the occupied voxels for
submanifold, ``conv3d`` with stride 2 for down, ``conv_transpose3d`` with stride 2 of the
coarse voxels read at the fine voxels for up — forward, input gradient and weight
gradient. The references are read at the sparse output's own coords, so outputs whose
row order differs between backends (``down``) are compared row by row without sorting.

spconv runs with torch's default thread count: its CPU (Native) kernels are known to have
gone wrong with 2 threads in some builds, so the spconv tests insist on >= 2 threads where
the machine has them.
"""

from __future__ import annotations

import itertools
import os

import pytest
from conftest import require_module
import torch
import torch.nn.functional as F

from pc3d.ops.sparse_conv import (COORD_BITS, MAX_COORD, SparseConv3d, SparseVoxels, check_coords, downsample_map,
                                  kernel_offsets, submanifold_map, voxel_keys)

BATCH = 2
SHAPE = (9, 8, 7)  # odd extents: the strided conv must keep voxels beyond the last whole stride
TOL = {"torch": 1e-10, "spconv": 1e-4}  # relative to the largest reference value (float64 / float32)
DTYPE = {"torch": torch.float64, "spconv": torch.float32}
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.*:FutureWarning")  # spconv's own imports


def _spconv_problem() -> str | None:
    try:
        import spconv.pytorch  # noqa: F401
    except (ImportError, OSError) as error:  # OSError: a CUDA build whose libraries do not load
        return f"spconv is not importable ({type(error).__name__}: {error})"
    return None


def require_spconv() -> None:
    """Skip without spconv; under CI=true spconv must be installed, so fail instead."""
    require_module("spconv.pytorch", "CI must test the spconv backend (pip install spconv-cu120==2.3.6)")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.fixture(params=["torch", "spconv"])
def backend(request) -> str:
    if request.param == "spconv":
        require_spconv()
        if _cores() >= 2:  # cover the multi-threaded CPU path that has gone wrong before
            assert torch.get_num_threads() >= 2, \
                f"spconv must be tested with torch's default threads, got {torch.get_num_threads()}"
    return request.param


# --------------------------------------------------------------------------- helpers


def random_grid(shape=SHAPE, batch=BATCH, density=0.3, seed=0) -> torch.Tensor:
    """``(M, 4)`` int32 coords of random occupied voxels, rows shuffled (no sorted input assumed)."""
    g = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, *shape, generator=g) < density
    coords = occupied.nonzero().to(torch.int32)
    return coords[torch.randperm(len(coords), generator=g)]


def to_dense(features: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
    """``(M, C)`` at ``coords`` → ``(B, C, X, Y, Z)``, zeros elsewhere (differentiable)."""
    c = coords.long()
    dense = features.new_zeros(BATCH, *shape, features.shape[1])
    dense = dense.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), features)
    return dense.permute(0, 4, 1, 2, 3)


def read_dense(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]


def ref_submanifold(features, coords, weight):
    """Dense conv3d, padding k//2, read at the occupied voxels. weight (C_out, k, k, k, C_in)."""
    k = weight.shape[1]
    out = F.conv3d(to_dense(features, coords, SHAPE), weight.permute(0, 4, 1, 2, 3), padding=k // 2)
    return read_dense(out, coords)


def _ceil_shape(shape, s):
    return tuple(-(-d // s) * s for d in shape)


def ref_down(features, coords, weight, out_coords):
    """Dense conv3d with stride = kernel, read at ``out_coords``."""
    s = weight.shape[1]
    dense = to_dense(features, coords, _ceil_shape(SHAPE, s))
    return read_dense(F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), stride=s), out_coords)


def ref_up(features, coarse_coords, weight, fine_coords):
    """Dense conv_transpose3d (stride = kernel) of the coarse voxels, read at ``fine_coords``."""
    s = weight.shape[1]
    coarse_shape = tuple(d // s for d in _ceil_shape(SHAPE, s))
    dense = to_dense(features, coarse_coords, coarse_shape)
    return read_dense(F.conv_transpose3d(dense, weight.permute(4, 0, 1, 2, 3), stride=s), fine_coords)


def expected_parents(coords: torch.Tensor, stride: int) -> set:
    return {(b, x // stride, y // stride, z // stride) for b, x, y, z in coords.tolist()}


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), 1.0)
    error = float((actual.double() - expected.double()).abs().max())
    assert error <= tol * scale, f"{what}: max |error| {error:.3g} > {tol:g} x {scale:.3g}"


def check_conv(conv: SparseConv3d, make_input, reference, backend: str, in_features: torch.Tensor):
    """Forward, input gradient and weight gradient of ``conv`` against a dense reference.

    ``make_input(features)`` builds the SparseVoxels; ``reference(features, weight, out_coords)``
    evaluates the dense reference at the sparse output's coords (any row order).
    """
    dtype, tol = DTYPE[backend], TOL[backend]
    conv = conv.to(dtype)
    features = in_features.to(dtype).requires_grad_()
    out = conv(make_input(features))
    assert out.features.dtype == dtype
    ref_features = in_features.double().requires_grad_()
    ref_weight = conv.weight.detach().double().requires_grad_()
    expected = reference(ref_features, ref_weight, out.coords)
    assert float(expected.detach().abs().max()) > 0.1  # a real signal, not all zeros
    assert_rel_close(out.features, expected, tol, f"{backend} {conv.kind} forward")
    upstream = torch.randn(out.features.shape, dtype=torch.float64)
    (out.features * upstream.to(dtype)).sum().backward()
    (expected * upstream).sum().backward()
    assert_rel_close(features.grad, ref_features.grad, tol, f"{backend} {conv.kind} input gradient")
    assert_rel_close(conv.weight.grad, ref_weight.grad, tol, f"{backend} {conv.kind} weight gradient")
    return out


# --------------------------------------------------------------------------- convs vs dense references


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_matches_dense_conv(backend, kernel_size):
    coords = random_grid()
    features = torch.randn(len(coords), 5, dtype=torch.float64)
    conv = SparseConv3d(5, 7, kernel_size, "submanifold", "s0", backend=backend)
    out = check_conv(conv, lambda f: SparseVoxels(f, coords, BATCH),
                     lambda f, w, out_coords: ref_submanifold(f, coords, w)[_rows_of(out_coords, coords)],
                     backend, features)
    assert torch.equal(out.coords, coords), "submanifold output voxels must be the input voxels, same order"


def _rows_of(query: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Row index in ``coords`` of each row of ``query`` (every query row must exist)."""
    lookup = {tuple(row): i for i, row in enumerate(coords.tolist())}
    return torch.tensor([lookup[tuple(row)] for row in query.tolist()], dtype=torch.int64)


def test_down_matches_strided_dense_conv(backend):
    coords = random_grid()
    features = torch.randn(len(coords), 5, dtype=torch.float64)
    conv = SparseConv3d(5, 6, 2, "down", "d1", backend=backend)
    out = check_conv(conv, lambda f: SparseVoxels(f, coords, BATCH),
                     lambda f, w, out_coords: ref_down(f, coords, w, out_coords), backend, features)
    rows = [tuple(r) for r in out.coords.tolist()]
    assert len(set(rows)) == len(rows), "down produced duplicate voxels"
    assert set(rows) == expected_parents(coords, 2)
    assert out.batch_size == BATCH


def test_up_matches_transposed_dense_conv(backend):
    coords = random_grid()
    dtype = DTYPE[backend]
    down = SparseConv3d(5, 6, 2, "down", "d1", backend=backend).to(dtype)
    with torch.no_grad():
        coarse = down(SparseVoxels(torch.randn(len(coords), 5, dtype=dtype), coords, BATCH))
    features = torch.randn(len(coarse), 6, dtype=torch.float64)
    conv = SparseConv3d(6, 4, 2, "up", "d1", backend=backend)
    out = check_conv(conv, lambda f: coarse.replace(f),
                     lambda f, w, out_coords: ref_up(f, coarse.coords, w, out_coords), backend, features)
    # the decoder concatenates the skip's rows with the up output's: same voxels, same order
    assert torch.equal(out.coords, coords)


def test_spconv_is_repeatable_on_a_larger_grid():
    """Three fresh spconv runs (new kernel maps each time) agree with each other and with torch."""
    require_spconv()
    if _cores() >= 2:
        assert torch.get_num_threads() >= 2
    coords = random_grid(shape=(24, 20, 16), density=0.35, seed=3)  # ~5k voxels per sample
    features = torch.randn(len(coords), 16)
    sub_t = SparseConv3d(16, 16, 3, "submanifold", "s0", backend="torch").double()
    down_t = SparseConv3d(16, 16, 2, "down", "d1", backend="torch").double()
    up_t = SparseConv3d(16, 16, 2, "up", "d1", backend="torch").double()
    x = SparseVoxels(features.double(), coords, BATCH)
    y_t = sub_t(x)
    z_t = down_t(y_t)
    u_t = up_t(z_t)
    sub_s, down_s, up_s = (SparseConv3d(16, 16, k, kind, key, backend="spconv")
                           for k, kind, key in [(3, "submanifold", "s0"), (2, "down", "d1"), (2, "up", "d1")])
    for src, dst in [(sub_t, sub_s), (down_t, down_s), (up_t, up_s)]:
        dst.weight.data.copy_(src.weight.data.float())
    runs = []
    with torch.no_grad():
        for _ in range(3):
            y = sub_s(SparseVoxels(features.clone(), coords, BATCH))
            z = down_s(y)
            u = up_s(z)
            assert_rel_close(y.features, y_t.features, 1e-4, "spconv submanifold vs torch")
            order_s, order_t = torch.argsort(voxel_keys(z.coords)), torch.argsort(voxel_keys(z_t.coords))
            assert torch.equal(z.coords[order_s], z_t.coords[order_t])
            assert_rel_close(z.features[order_s], z_t.features[order_t], 1e-4, "spconv down vs torch")
            assert torch.equal(u.coords, coords)
            assert_rel_close(u.features, u_t.features, 1e-4, "spconv up vs torch")
            runs.append((y.features, z.features[order_s], u.features))
    for later in runs[1:]:
        for first, again in zip(runs[0], later):
            assert_rel_close(again, first, 1e-6, "spconv run-to-run")


def test_torch_and_spconv_agree_on_a_conv_chain():
    """subm → down → subm → up with the same weights: same outputs and input gradients."""
    require_spconv()
    coords = random_grid(seed=1)
    features = torch.randn(len(coords), 5)
    torch.manual_seed(0)
    layers = {be: [SparseConv3d(5, 8, 3, "submanifold", "s0", backend=be),
                   SparseConv3d(8, 12, 2, "down", "d1", backend=be),
                   SparseConv3d(12, 12, 3, "submanifold", "s1", backend=be),
                   SparseConv3d(12, 6, 2, "up", "d1", backend=be)] for be in ("torch", "spconv")}
    for src, dst in zip(layers["torch"], layers["spconv"]):
        dst.weight.data.copy_(src.weight.data)
    results = {}
    for be, chain in layers.items():
        f = features.clone().requires_grad_()
        x = SparseVoxels(f, coords, BATCH)
        y = chain[0](x)
        z = chain[2](chain[1](y))
        u = chain[3](z)
        u.features.square().sum().backward()
        order = torch.argsort(voxel_keys(z.coords))
        results[be] = (u, z.coords[order], z.features[order], f.grad, [c.weight.grad for c in chain])
    (u_t, zc_t, zf_t, g_t, w_t), (u_s, zc_s, zf_s, g_s, w_s) = results["torch"], results["spconv"]
    assert torch.equal(u_t.coords, coords) and torch.equal(u_s.coords, coords)
    assert torch.equal(zc_t, zc_s)
    assert_rel_close(zf_s, zf_t, 1e-4, "coarse features")
    assert_rel_close(u_s.features, u_t.features, 1e-4, "chain output")
    assert_rel_close(g_s, g_t, 1e-4, "chain input gradient")
    for i, (a, b) in enumerate(zip(w_s, w_t)):
        assert_rel_close(a, b, 1e-4, f"chain weight gradient {i}")


def test_two_downs_and_two_ups_on_odd_extents_with_biases():
    """down → down → up → up where every extent is odd (9 → 5 → 3 voxels): each up lands back on its own
    fine voxels (spconv pads the extent of a down; its up must restore the unpadded one for the next up),
    and a layer's bias is added to every output voxel, the same on both backends."""
    coords = random_grid(seed=4)
    features = torch.randn(len(coords), 3, dtype=torch.float64)
    torch.manual_seed(0)
    chain = [SparseConv3d(3, 4, 2, "down", "d1", bias=True), SparseConv3d(4, 5, 2, "down", "d2", bias=True),
             SparseConv3d(5, 4, 2, "up", "d2", bias=True), SparseConv3d(4, 2, 2, "up", "d1", bias=True)]
    outputs = {}
    for be in ("torch", "spconv"):
        if be == "spconv":
            require_spconv()
        for layer in chain:
            layer.backend = be
        dtype = DTYPE[be]
        x = SparseVoxels(features.to(dtype), coords, BATCH)
        with torch.no_grad():
            for layer in chain:
                layer.to(dtype)
            a = chain[0](x)
            b = chain[1](a)
            c = chain[2](b)
            outputs[be] = (a, b, c, chain[3](c))
    torch_outputs = outputs["torch"]
    a, b, c, d = torch_outputs
    assert torch.equal(c.coords, a.coords) and torch.equal(d.coords, coords)
    # the bias of each layer, checked against the dense reference of the bias-free conv
    weights = [layer.weight.double() for layer in chain]
    expected_a = ref_down(features, coords, weights[0], a.coords) + chain[0].bias.double()
    assert_rel_close(a.features, expected_a, TOL["torch"], "down with bias")
    expected_d = ref_up(c.features, c.coords, weights[3], coords) + chain[3].bias.double()
    assert_rel_close(d.features, expected_d, TOL["torch"], "up with bias")
    for spconv_out, torch_out in zip(outputs["spconv"], torch_outputs):
        order = torch.argsort(voxel_keys(spconv_out.coords))
        assert torch.equal(spconv_out.coords[order], torch_out.coords[torch.argsort(voxel_keys(torch_out.coords))])
        assert_rel_close(spconv_out.features[order].double(),
                         torch_out.features[torch.argsort(voxel_keys(torch_out.coords))], TOL["spconv"], "spconv chain")


# --------------------------------------------------------------------------- tables


def brute_force_neighbours(coords: torch.Tensor, kernel_size: int) -> torch.Tensor:
    r = kernel_size // 2
    offsets = list(itertools.product(range(-r, r + 1), repeat=3))  # x slowest, z fastest
    lookup = {tuple(row): i for i, row in enumerate(coords.tolist())}
    limit = 1 << COORD_BITS
    table = []
    for b, x, y, z in coords.tolist():
        row = []
        for dx, dy, dz in offsets:
            q = (x + dx, y + dy, z + dz)
            inside = all(0 <= v < limit for v in q)
            row.append(lookup.get((b, *q), -1) if inside else -1)
        table.append(row)
    return torch.tensor(table, dtype=torch.int64)


def test_kernel_offsets_are_in_weight_order():
    assert kernel_offsets(3).tolist() == [list(o) for o in itertools.product((-1, 0, 1), repeat=3)]
    assert kernel_offsets(2).tolist() == [list(o) for o in itertools.product((-1, 0), repeat=3)]
    assert kernel_offsets(5).shape == (125, 3) and kernel_offsets(5)[62].tolist() == [0, 0, 0]


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_map_matches_brute_force(kernel_size):
    coords = random_grid(shape=(6, 5, 4), density=0.4, seed=2)
    table = submanifold_map(coords, kernel_size)
    expected = brute_force_neighbours(coords, kernel_size)
    assert torch.equal(table, expected)
    centre = kernel_size ** 3 // 2
    assert torch.equal(table[:, centre], torch.arange(len(coords)))
    assert (table >= 0).sum() > 3 * len(coords)  # real neighbours were found, not only the centre


@pytest.mark.parametrize("stride", [2, 3])
def test_downsample_map_children_and_parents_agree(stride):
    coords = random_grid(shape=(8, 7, 6), density=0.3, seed=4)
    out_coords, children, parents = downsample_map(coords, stride)
    assert children.shape == (len(out_coords), stride ** 3) and parents.shape == (len(coords), stride ** 3)
    rows = [tuple(r) for r in out_coords.tolist()]
    assert set(rows) == expected_parents(coords, stride) and len(set(rows)) == len(rows)
    keys = voxel_keys(out_coords)
    assert torch.all(keys[1:] > keys[:-1]), "out_coords must be sorted by key"
    # every input is the child of exactly one output, in the column of its offset
    assert torch.equal((parents >= 0).sum(1), torch.ones(len(coords), dtype=torch.int64))
    assert torch.equal(torch.sort(children[children >= 0]).values, torch.arange(len(coords)))
    offsets = list(itertools.product(range(stride), repeat=3))  # child offset a, x slowest (weight order)
    for q, row in enumerate(children.tolist()):
        for a, i in enumerate(row):
            if i < 0:
                continue
            b, x, y, z = coords[i].tolist()
            ob, ox, oy, oz = out_coords[q].tolist()
            dx, dy, dz = offsets[a]
            assert (b, x, y, z) == (ob, stride * ox + dx, stride * oy + dy, stride * oz + dz)
            assert parents[i, a] == q
    for i, row in enumerate(parents.tolist()):
        for a, q in enumerate(row):
            if q >= 0:
                assert children[q, a] == i


def test_tables_do_not_wrap_at_the_key_bounds():
    top = (1 << COORD_BITS) - 1
    coords = torch.tensor([
        [0, 5, 0, top],      # +z would wrap onto (0, 5, 1, 0) if unchecked
        [0, 5, 1, 0],        # -z would wrap onto (0, 5, 0, top)
        [0, 5, 0, top - 1],  # a real neighbour of the first
        [0, top, top, top],  # +x/+y/+z would carry into batch 1 at (1, 0, 0, 0)
        [1, 0, 0, 0],
        [1, 0, 0, 1],        # a real neighbour of the previous one
        [1, top, 0, 7],
        [0, 0, 0, 0],
        [1, top, 0, 8],
    ], dtype=torch.int32)
    keys = voxel_keys(coords)  # the tables handle the whole key range; check_coords stops at MAX_COORD
    assert len(torch.unique(keys)) == len(coords)
    assert torch.equal(torch.argsort(keys), torch.tensor(sorted(range(len(coords)), key=lambda i: coords[i].tolist())))
    for k in (3, 5):
        table = submanifold_map(coords, k)
        assert torch.equal(table, brute_force_neighbours(coords, k)), f"kernel {k}"
    table = submanifold_map(coords, 3)
    # explicit: the neighbours that exist, and none across a bound
    assert set(table[0][table[0] >= 0].tolist()) == {0, 2}
    assert set(table[1][table[1] >= 0].tolist()) == {1}
    assert set(table[3][table[3] >= 0].tolist()) == {3}
    assert set(table[4][table[4] >= 0].tolist()) == {4, 5}
    out_coords, children, parents = downsample_map(coords, 2)
    half = top // 2
    assert set(map(tuple, out_coords.tolist())) == {(0, 2, 0, half), (0, 2, 0, 0), (0, half, half, half),
                                                    (1, 0, 0, 0), (1, half, 0, 3), (1, half, 0, 4), (0, 0, 0, 0)}
    assert int(out_coords[:, 1:].max()) == half and int(out_coords.min()) == 0
    # torch conv at the bound: voxel 1 has no neighbours, so its output is its centre tap only
    conv = SparseConv3d(3, 2, 3, "submanifold", "s", backend="torch").double()
    features = torch.randn(len(coords), 3, dtype=torch.float64)
    out = conv(SparseVoxels(features, coords, 2, validate=False)).features
    assert torch.allclose(out[1], conv.weight[:, 1, 1, 1, :] @ features[1], atol=1e-12)


def test_spconv_submanifold_at_the_coordinate_bound():
    """spconv 2.3.6 (CPU, Native) finds wrong neighbours in grids spanning ~65,534 voxels along every
    axis; check_coords stops at MAX_COORD, where it still agrees with the torch path."""
    require_spconv()
    top = MAX_COORD
    coords = torch.tensor([[0, 5, 0, top], [0, 5, 1, 0], [0, 5, 0, top - 1], [0, top, top, top], [1, 0, 0, 0],
                           [1, top, 0, 7]], dtype=torch.int32)
    features = torch.randn(len(coords), 4)
    conv_t = SparseConv3d(4, 3, 3, "submanifold", "s", backend="torch")
    conv_s = SparseConv3d(4, 3, 3, "submanifold", "s", backend="spconv")
    conv_s.weight.data.copy_(conv_t.weight.data)
    with torch.no_grad():
        expected = conv_t(SparseVoxels(features, coords, 2)).features
        actual = conv_s(SparseVoxels(features, coords, 2)).features
    assert_rel_close(actual, expected, 1e-4, "spconv at the key bound")


@pytest.mark.parametrize("coords, what", [
    (torch.tensor([[0, -1, 0, 0]]), "negative"),
    (torch.tensor([[0, 0, 1 << COORD_BITS, 0]]), "too large"),
    (torch.tensor([[-1, 0, 0, 0]]), "negative batch"),
    (torch.tensor([[1 << 15, 0, 0, 0]]), "batch too large for the key"),
    (torch.tensor([[0.0, 1.0, 2.0, 3.0]]), "float"),
    (torch.tensor([[0, 1, 2]]), "3 columns"),
])
def test_check_coords_rejects(coords, what):
    with pytest.raises(ValueError, match="coords"):
        check_coords(coords)


def test_check_coords_accepts_the_full_range():
    top = MAX_COORD
    with pytest.raises(ValueError, match="coords"):
        check_coords(torch.tensor([[0, 0, top + 1, 0]]))
    check_coords(torch.tensor([[0, 0, 0, 0], [(1 << 15) - 1, top, top, top]], dtype=torch.int64))
    check_coords(torch.zeros(0, 4, dtype=torch.int32))


@pytest.mark.parametrize("backend_name", [
    "torch",
    "spconv",
])
def test_up_without_its_down_names_the_key(backend_name):
    if backend_name == "spconv":
        require_spconv()
    coords = random_grid()
    up = SparseConv3d(4, 4, 2, "up", "d_missing", backend=backend_name)
    with pytest.raises(ValueError, match="d_missing"):
        up(SparseVoxels(torch.randn(len(coords), 4), coords, BATCH))


def test_up_with_the_wrong_voxel_count_raises():
    coords = random_grid()
    down = SparseConv3d(4, 4, 2, "down", "d1", backend="torch")
    up = SparseConv3d(4, 4, 2, "up", "d1", backend="torch")
    coarse = down(SparseVoxels(torch.randn(len(coords), 4), coords, BATCH))
    fewer = SparseVoxels(coarse.features[:-1], coarse.coords[:-1], BATCH, coarse.cache)
    with pytest.raises(ValueError, match="d1"):
        up(fewer)


def test_bad_layer_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        SparseConv3d(4, 4, 3, "dilated", "k")
    with pytest.raises(ValueError, match="odd"):
        SparseConv3d(4, 4, 2, "submanifold", "k")
    conv = SparseConv3d(4, 4, 3, "submanifold", "k", backend="torch")
    coords = random_grid()
    with pytest.raises(ValueError, match="input channels"):
        conv(SparseVoxels(torch.randn(len(coords), 5), coords, BATCH))
    with pytest.raises(ValueError, match="SparseVoxels"):
        SparseVoxels(torch.randn(3, 4), torch.zeros(3, 3, dtype=torch.int32), 1)


def test_auto_backend_prefers_spconv_for_float32(monkeypatch):
    """spconv's native CPU kernels are 3x faster (BENCHMARKS.md), so auto picks them when installed."""
    from pc3d.ops import backends

    require_spconv()
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.resolve_backend("auto", "sparse_conv", torch.zeros(2, 3)) == "spconv"
    assert backends.resolve_backend("auto", "sparse_conv", torch.zeros(2, 3, dtype=torch.float64)) == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert backends.resolve_backend("auto", "sparse_conv", torch.zeros(2, 3)) == "torch"
    assert backends.resolve_backend("auto", "knn", torch.zeros(1, 2, 3)) == "torch"  # other ops keep torch on CPU


def test_sparse_voxels_to_moves_the_voxels_with_a_fresh_kernel_map_cache():
    coords = torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6], [1, 0, 0, 0]], dtype=torch.int32)
    voxels = SparseVoxels(torch.randn(3, 5), coords, 2)
    voxels.cache["s0/subm3"] = "a map built for the old device"
    moved = voxels.to("cpu")
    assert torch.equal(moved.features, voxels.features) and torch.equal(moved.coords, voxels.coords)
    assert moved.batch_size == 2 and moved.cache == {}
