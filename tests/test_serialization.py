"""pc3d.ops.serialization: space-filling-curve codes against exhaustive and bitwise references."""

from __future__ import annotations

import itertools

import pytest
import torch

from pc3d.ops.serialization import MAX_BITS, hilbert, serialization_order, z_order


def full_grid(bits: int) -> torch.Tensor:
    side = 1 << bits
    return torch.tensor(list(itertools.product(range(side), repeat=3)), dtype=torch.int64)


def ref_morton(x: int, y: int, z: int, bits: int) -> int:
    """Bit-interleave, x most significant in each triple: x_{b-1} y_{b-1} z_{b-1} ... x_0 y_0 z_0."""
    code = 0
    for b in reversed(range(bits)):
        code = (code << 3) | (((x >> b) & 1) << 2) | (((y >> b) & 1) << 1) | ((z >> b) & 1)
    return code


@pytest.mark.parametrize("curve", [z_order, hilbert])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_codes_are_a_bijection_onto_the_code_range(curve, bits):
    codes = curve(full_grid(bits), bits)
    assert codes.dtype == torch.int64
    assert torch.equal(torch.sort(codes).values, torch.arange(1 << (3 * bits)))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_consecutive_hilbert_codes_are_face_neighbours(bits):
    grid = full_grid(bits)
    path = grid[torch.argsort(hilbert(grid, bits))]
    steps = (path[1:] - path[:-1]).abs().sum(dim=1)
    assert torch.all(steps == 1), f"{int((steps != 1).sum())} jumps along the {bits}-bit Hilbert curve"
    assert path[0].tolist() == [0, 0, 0]  # the curve starts at the origin


def test_hilbert_is_local_at_16_bits():
    """Random walks of face steps: codes of neighbours differ, and the 16-bit curve on a small
    cube agrees with the coarse curve's order (a Hilbert curve visits each sub-cube in one run)."""
    g = torch.Generator().manual_seed(0)
    xyz = torch.randint(0, 1 << 16, (2000, 3), generator=g)
    codes = hilbert(xyz, 16)
    assert len(torch.unique(codes)) == len(torch.unique(xyz, dim=0))
    assert int(codes.min()) >= 0 and int(codes.max()) < 1 << 48
    # a block of 2^k aligned voxels occupies one contiguous code range of length 8^k
    corner = torch.tensor([4096 * 3, 4096 * 7, 4096 * 1])
    block = full_grid(2) + corner
    block_codes = hilbert(block, 16)
    assert int(block_codes.max() - block_codes.min()) == 63
    block_path = block[torch.argsort(block_codes)]
    assert torch.all((block_path[1:] - block_path[:-1]).abs().sum(1) == 1)


def test_z_order_matches_bit_interleave_at_16_bits():
    g = torch.Generator().manual_seed(1)
    xyz = torch.randint(0, 1 << 16, (500, 3), generator=g)
    xyz[0] = torch.tensor([(1 << 16) - 1] * 3)
    xyz[1] = torch.tensor([0, 0, 0])
    xyz[2] = torch.tensor([1, 0, 0])  # x is the most significant bit of each triple
    codes = z_order(xyz.to(torch.int32))
    expected = torch.tensor([ref_morton(*row, 16) for row in xyz.tolist()])
    assert torch.equal(codes, expected)
    assert int(codes[0]) == (1 << 48) - 1 and int(codes[2]) == 4


def test_z_order_with_fewer_bits():
    xyz = torch.tensor([[1, 2, 3], [7, 0, 5]])
    assert z_order(xyz, 3).tolist() == [ref_morton(1, 2, 3, 3), ref_morton(7, 0, 5, 3)]


@pytest.mark.parametrize("curve", ["z", "hilbert"])
@pytest.mark.parametrize("transpose", [False, True])
def test_serialization_order_groups_by_batch_first(curve, transpose):
    g = torch.Generator().manual_seed(2)
    coords = torch.cat([torch.randint(0, 3, (300, 1), generator=g), torch.randint(0, 64, (300, 3), generator=g)], 1)
    coords = torch.unique(coords, dim=0)[torch.randperm(len(torch.unique(coords, dim=0)), generator=g)]
    order = serialization_order(coords, curve, transpose)
    assert torch.equal(torch.sort(order).values, torch.arange(len(coords)))  # a permutation
    batch = coords[order, 0]
    assert torch.all(batch[1:] >= batch[:-1])
    xyz = coords[:, [2, 1, 3]] if transpose else coords[:, 1:]
    code = (z_order if curve == "z" else hilbert)(xyz)
    ordered = code[order]
    for b in range(3):
        within = ordered[batch == b]
        assert torch.all(within[1:] > within[:-1]), f"sample {b} not in curve order"
    # a sample whose coordinates are all larger still comes after sample 0
    far = torch.tensor([[0, 63, 63, 63], [1, 0, 0, 0]])
    assert serialization_order(far, curve, transpose).tolist() == [0, 1]


def test_transpose_swaps_x_and_y():
    coords = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0]])
    assert serialization_order(coords, "z").tolist() == [1, 0]  # y bit below x bit
    assert serialization_order(coords, "z", transpose=True).tolist() == [0, 1]


@pytest.mark.parametrize("call, match", [
    (lambda: z_order(torch.tensor([[0, -1, 0]])), "xyz"),
    (lambda: z_order(torch.tensor([[0, 16, 0]]), bits=4), "xyz"),
    (lambda: hilbert(torch.tensor([[0, 0, 1 << MAX_BITS]])), "xyz"),
    (lambda: hilbert(torch.tensor([[0.5, 0.0, 0.0]])), "integer"),
    (lambda: z_order(torch.tensor([[0, 0]])), "xyz"),
    (lambda: z_order(torch.tensor([[0, 0, 0]]), bits=0), "bits"),
    (lambda: hilbert(torch.tensor([[0, 0, 0]]), bits=17), "bits"),
    (lambda: serialization_order(torch.tensor([[0, 0, 0, 0]]), "peano"), "curve"),
    (lambda: serialization_order(torch.tensor([[0, -2, 0, 0]]), "z"), "xyz"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_empty_input():
    assert z_order(torch.zeros(0, 3, dtype=torch.int64)).shape == (0,)
    assert hilbert(torch.zeros(0, 3, dtype=torch.int64)).shape == (0,)
