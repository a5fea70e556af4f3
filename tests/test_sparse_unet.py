"""SparseUNet (MSM's backbone) on voxelised real ScanNet crops: levels, gradients, backends, masking,
serialized window attention."""

from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module
import torch

from pc3d.encoders.layers import Attention
from pc3d.encoders.sparse_unet import (ResidualBlock, SerializedAttentionBlock, SparseUNet, to_feature_level,
                                       window_partition)
from pc3d.ops.serialization import serialization_order
from pc3d.ops.sparse_conv import SparseVoxels, voxel_keys
from pc3d.ops.voxelize import voxel_mean, voxelize

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.*:FutureWarning")  # spconv's own imports

VOXEL = 0.05
CROPS = [(-1.0, -1.0), (1.0, -2.0)]  # 2 m x 2 m (x, y) crops of scene0000_00, full height; one per sample
SMALL = dict(in_channels=6, channels=(8, 16, 16, 16, 16), blocks=(1, 1, 1, 1, 1), dec_channels=(16, 16, 16, 8),
             dec_blocks=(1, 1, 1, 1), voxel_size=VOXEL, stem_kernel=3, attention_stages=(3, 4), window_size=16,
             head_dim=8)
ORDERS = [("z", False), ("hilbert", False), ("z", True), ("hilbert", True)]


@functools.lru_cache(maxsize=2)
def _crops(path: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Per crop: ``grid (V, 3)`` int32 and ``features (V, 6)`` float32 (mean colour in [-1, 1], mean offset
    of the points from the crop's corner, in metres)."""
    vertices = np.load(path)
    out = []
    for x0, y0 in CROPS:
        keep = (vertices[:, 0] >= x0) & (vertices[:, 0] < x0 + 2) & (vertices[:, 1] >= y0) & (vertices[:, 1] < y0 + 2)
        xyz = torch.from_numpy(vertices[keep, :3]).double()
        grid, inverse = voxelize(xyz, VOXEL)
        point_features = torch.cat([torch.from_numpy(vertices[keep, 3:6]) / 127.5 - 1.0,
                                    (xyz - xyz.amin(0)).float()], dim=1)
        out.append((grid.to(torch.int32), voxel_mean(point_features, inverse, len(grid))))
    return tuple(out)


def make_batch(crops, samples=(0, 1)) -> SparseVoxels:
    coords = torch.cat([torch.cat([torch.full((len(crops[s][0]), 1), b, dtype=torch.int32), crops[s][0]], 1)
                        for b, s in enumerate(samples)])
    features = torch.cat([crops[s][1] for s in samples])
    return SparseVoxels(features, coords, len(samples))


@pytest.fixture
def crops(shared_data: Path):
    return _crops(str(shared_data / "scannet" / "scene0000_00_vert_all.npy"))


def small_unet(backend: str = "torch", **overrides) -> SparseUNet:
    torch.manual_seed(0)
    model = SparseUNet(**{**SMALL, **overrides, "backend": backend})
    with torch.no_grad():  # non-trivial BatchNorm statistics for eval mode
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def _require_spconv() -> None:
    require_module("spconv.pytorch", "CI must test the spconv backend")


# --------------------------------------------------------------------------- levels


def test_levels_strides_coords_and_masks(crops):
    voxels = make_batch(crops)
    model = small_unet().eval()
    with torch.no_grad():
        out = model(voxels)
    assert len(out.levels) == 5
    assert [level.features.shape[-1] for level in out.levels] == [8, 16, 16, 16, 16] == model.level_channels
    assert sum(model.level_channels) == model.out_channels == 72
    assert out.global_feature.shape == (2, 2 * 16)
    previous = None
    for i, level in enumerate(out.levels):
        stride = VOXEL * 2 ** i
        assert level.stride == pytest.approx(stride)
        assert level.valid is not None and level.valid.shape == level.features.shape[:2]
        feats, centres, batch = level.flatten()
        assert torch.all(torch.isfinite(feats)) and float(feats.abs().max()) > 0
        assert torch.all(level.features[~level.valid] == 0) and torch.all(level.coords[~level.valid] == 0)
        # coords are (index + 0.5) * stride of exactly the parents of the input voxels, in key order per sample
        index = torch.floor(centres / stride).to(torch.int64)
        assert torch.allclose(centres, (index.to(centres.dtype) + 0.5) * stride, atol=1e-6)
        for b in range(2):
            expected = torch.unique(voxels.coords[voxels.coords[:, 0] == b, 1:].to(torch.int64) >> i, dim=0)
            got = index[batch == b]
            assert int(level.valid[b].sum()) == len(expected)
            assert torch.equal(got, expected), f"level {i} sample {b}"
            assert torch.all(level.valid[b, :len(expected)])  # padding only at the end
        # every finer voxel's parent exists in this level
        if previous is not None:
            fine_index, fine_batch = previous
            parents = {(int(bb), *row) for bb, row in zip(fine_batch, (fine_index >> 1).tolist())}
            here = {(int(bb), *row) for bb, row in zip(batch, index.tolist())}
            assert parents == here
        previous = (index, batch)
    pooled = out.levels[-1]
    mask = pooled.valid[..., None]
    expected_max = pooled.features.masked_fill(~mask, float("-inf")).amax(1)
    assert torch.allclose(out.global_feature[:, :16], expected_max)


def test_to_feature_level_pads_in_key_order():
    coords = torch.tensor([[1, 0, 0, 1], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 3, 0]], dtype=torch.int32)
    features = torch.arange(4, dtype=torch.float32)[:, None]
    level = to_feature_level(SparseVoxels(features, coords, 3), 0.5)
    assert level.features[..., 0].tolist() == [[3.0, 1.0], [2.0, 0.0], [0.0, 0.0]]
    assert level.valid.tolist() == [[True, True], [True, True], [False, False]]
    assert level.coords[0, 0].tolist() == [0.25, 1.75, 0.25] and level.coords[1, 1].tolist() == [0.25, 0.25, 0.75]


def test_gradients_reach_every_parameter(crops):
    voxels = make_batch(crops)
    model = small_unet().train()
    token = torch.nn.Parameter(torch.randn(8))
    mask = torch.rand(len(voxels), generator=torch.Generator().manual_seed(0)) < 0.3
    out = model(voxels, mask=mask, mask_token=token)
    loss = sum(level.features[level.valid].square().mean() for level in out.levels) + out.global_feature.sum()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not missing, f"no gradient: {missing}"
    assert float(token.grad.abs().sum()) > 0
    assert any(isinstance(m, SerializedAttentionBlock) for m in model.modules())


# --------------------------------------------------------------------------- backends


def test_torch_and_spconv_backends_agree(crops):
    _require_spconv()
    voxels = make_batch(crops)
    reference = small_unet("torch").eval()
    other = small_unet("spconv").eval()
    other.load_state_dict(reference.state_dict())
    assert all(conv.backend == "spconv" for conv in other.modules() if hasattr(conv, "kind"))
    with torch.no_grad():
        expected = reference(voxels)
        actual = other(make_batch(crops))
    for i, (a, e) in enumerate(zip(actual.levels, expected.levels)):
        assert torch.equal(a.valid, e.valid) and torch.equal(a.coords, e.coords)
        scale = max(float(e.features.abs().max()), 1.0)
        error = float((a.features - e.features).abs().max())
        # float32 rounding through ~20 layers: measured <= 2.9e-7 of the scale (1 or 2 threads); 1e-4 leaves 300x
        assert error <= 1e-4 * scale, f"level {i}: spconv vs torch max |error| {error:.3g} (scale {scale:.3g})"
    assert torch.allclose(actual.global_feature, expected.global_feature, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- masking and independence


def _level_rows(level, b):
    return level.features[b, level.valid[b]]


def test_mask_token_changes_masked_voxels_only_in_their_sample(crops):
    voxels = make_batch(crops)
    model = small_unet().eval()
    token = torch.randn(8)
    n0 = int((voxels.coords[:, 0] == 0).sum())
    mask = torch.zeros(len(voxels), dtype=torch.bool)
    masked = torch.randperm(n0, generator=torch.Generator().manual_seed(1))[:n0 // 3]
    mask[masked] = True  # sample 0 only
    with torch.no_grad():
        clean = model(voxels)
        hidden = model(make_batch(crops), mask=mask, mask_token=token)
        alone = model(make_batch(crops, samples=(1,)))
    # masked voxels' finest outputs change (level 0 rows are in key order; map the mask into it)
    order0 = torch.argsort(voxel_keys(voxels.coords[:n0]))
    masked_rows = mask[:n0][order0]
    diff = (_level_rows(hidden.levels[0], 0) - _level_rows(clean.levels[0], 0)).abs().amax(1)
    assert bool(torch.all(diff[masked_rows] > 1e-4)), "some masked voxels kept their output"
    for i in range(5):
        # sample 1 sees no mask: identical whether sample 0 is masked, and whether it runs alone
        assert torch.allclose(_level_rows(hidden.levels[i], 1), _level_rows(clean.levels[i], 1), atol=1e-6)
        assert torch.allclose(_level_rows(alone.levels[i], 0), _level_rows(clean.levels[i], 1), atol=1e-5), \
            f"level {i}: sample 1 depends on sample 0"
    # masking replaces the input: a masked voxel's stem input is zero, so its colour cannot leak
    recoloured = make_batch(crops)
    recoloured.features[mask] = torch.randn(int(mask.sum()), 6)
    with torch.no_grad():
        hidden_again = model(recoloured, mask=mask, mask_token=token)
    for i in range(5):
        assert torch.allclose(hidden_again.levels[i].features, hidden.levels[i].features, atol=1e-6)


def test_mask_needs_a_token(crops):
    voxels = make_batch(crops)
    with pytest.raises(ValueError, match="mask_token"):
        small_unet()(voxels, mask=torch.zeros(len(voxels), dtype=torch.bool))


# --------------------------------------------------------------------------- windows and attention


@pytest.mark.parametrize("curve, transpose", ORDERS)
def test_window_partition_covers_each_voxel_once_per_sample(crops, curve, transpose):
    voxels = make_batch(crops)
    coords = torch.cat([voxels.coords, voxels.coords[:37] + torch.tensor([2, 0, 0, 0], dtype=torch.int32)])  # 3 samples
    for window in (16, 100, 5000):
        index = window_partition(coords, window, curve, transpose)
        assert index.shape[1] == window
        valid = index[index >= 0]
        assert torch.equal(torch.sort(valid).values, torch.arange(len(coords)))
        counts = torch.bincount(coords[:, 0].long())
        assert len(index) == int(((counts + window - 1) // window).sum())
        order = serialization_order(coords, curve, transpose)
        assert torch.equal(valid, order), "windows must follow the curve order"
        for row in index:
            members = row[row >= 0]
            assert len(torch.unique(coords[members, 0])) == 1, "a window mixes samples"
            assert torch.all(row[:len(members)] >= 0)  # padding only at the end of a window
        # only a sample's last window may be short
        sample_of = coords[index[:, 0], 0]
        short = (index < 0).any(1)
        last = torch.ones(len(index), dtype=torch.bool)
        last[:-1] = sample_of[1:] != sample_of[:-1]
        assert not torch.any(short & ~last)


def test_window_partition_with_an_empty_sample():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [2, 0, 0, 0], [2, 0, 0, 1], [2, 3, 3, 3]], dtype=torch.int32)
    index = window_partition(coords, 2, "hilbert", False)
    assert index.shape == (3, 2)
    assert sorted(index[index >= 0].tolist()) == [0, 1, 2, 3, 4]
    assert [len(torch.unique(coords[r[r >= 0], 0])) for r in index] == [1, 1, 1]


def _reference_block(block: SerializedAttentionBlock, x: SparseVoxels, sample_sizes) -> torch.Tensor:
    """The block with plain full attention (pc3d.encoders.layers.Attention) over each sample's voxels, sorted
    along the block's curve."""
    features = x.features + block.cpe(block.cpe_conv(x).features)
    order = serialization_order(x.coords, block.curve, block.transpose)
    plain = Attention(features.shape[1], block.attn.num_heads, qkv_bias=True).to(features.dtype)
    plain.load_state_dict(block.attn.state_dict())
    update = torch.zeros_like(features)
    start = 0
    for size in sample_sizes:
        rows = order[start:start + size]
        update[rows] = plain(block.norm1(features)[rows][None])[0]
        start += size
    features = features + update
    return features + block.mlp(block.norm2(features))


def test_one_window_per_sample_is_full_attention(crops):
    torch.manual_seed(0)
    sizes = [300, 170]
    # subsets of the two crops: a contiguous run along x keeps the neighbourhoods of the position encoding
    parts = []
    for b, (grid, _) in enumerate(crops):
        keep = torch.argsort(grid[:, 0] * 10_000 + grid[:, 1] * 100 + grid[:, 2])[:sizes[b]]
        parts.append(torch.cat([torch.full((sizes[b], 1), b, dtype=torch.int32), grid[keep]], 1))
    coords = torch.cat(parts)
    perm = torch.randperm(len(coords))
    coords = coords[perm]  # rows not in any particular order
    features = torch.randn(len(coords), 16, dtype=torch.float64)
    x = SparseVoxels(features, coords, 2)
    for curve, transpose in ORDERS:
        block = SerializedAttentionBlock(16, 2, window_size=max(sizes) + 7, curve=curve, transpose=transpose,
                                         key="s", backend="torch").double().eval()
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.1 * torch.randn_like(p))
            actual = block(x).features
            expected = _reference_block(block, x, [int((coords[:, 0] == b).sum()) for b in range(2)])
        assert torch.allclose(actual, expected, atol=1e-10), f"{curve} transpose={transpose}"
        # small windows are not full attention (the comparison above can fail)
        small = copy.deepcopy(block)
        small.window_size = 16
        with torch.no_grad():
            assert float((small(x).features - expected).abs().max()) > 1e-3


def test_residual_block_projects_when_widths_differ():
    coords = torch.tensor(list(itertools.product(range(3), repeat=3)), dtype=torch.int32)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    block = ResidualBlock(4, 6, "s", "torch").eval()
    out = block(SparseVoxels(torch.randn(len(coords), 4), coords, 1))
    assert out.features.shape == (27, 6) and torch.all(out.features >= 0)
    assert block.project is not None and ResidualBlock(6, 6, "s", "torch").project is None


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize("overrides, match", [
    (dict(blocks=(1, 1, 1)), "blocks"),
    (dict(dec_channels=(16, 16, 8)), "dec_channels"),
    (dict(dec_blocks=(1, 1)), "dec_blocks"),
    (dict(attention_stages=(5,)), "attention_stages"),
    (dict(attention_stages=(-1,)), "attention_stages"),
    (dict(voxel_size=0.0), "voxel_size"),
    (dict(voxel_size=-0.02), "voxel_size"),
    (dict(channels=(8, 16, 16, 16, 20)), "head_dim"),
])
def test_bad_constructor_arguments_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        SparseUNet(**{**SMALL, **overrides})


def test_wrong_input_width_raises():
    coords = torch.zeros(1, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="6 input channels"):
        small_unet()(SparseVoxels(torch.zeros(1, 5), coords, 1))
