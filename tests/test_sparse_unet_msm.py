"""SparseUNet(style="msm") building blocks against independent references: the sliding-window attention
against a dense banded-mask attention in float64, RMSNorm against its formula, MSM's interpolation
against ``F.grid_sample`` on the dense grid; the style's levels, gradients, training-only randomness and
argument checks on voxelised real ScanNet crops. (That the whole encoder is MSM's release is
tests/test_reference_msm.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pc3d.encoders.base import FeatureLevel
from pc3d.encoders.layers import sliding_window_attention
from pc3d.encoders.sparse_unet import SlidingWindowAttentionBlock, SparseRMSNorm, SparseUNet
from pc3d.eval.scene_probe import sample_level
from pc3d.ops.serialization import serialization_order
from pc3d.ops.sparse_conv import SparseVoxels
from test_sparse_unet import crops, make_batch  # noqa: F401  (the real-scan crops fixture)

MSM_SMALL = dict(style="msm", in_channels=6, channels=(8, 8, 16, 16, 16), blocks=(1, 1, 1, 1, 2),
                 dec_channels=(16, 16, 16, 8, 8), dec_blocks=(1, 1, 1, 1, 1), voxel_size=0.05,
                 attention_stages=(2, 3, 4), attention_depth=(1, 2, 1), decoder_attention_stages=(4, 3),
                 decoder_attention_depth=2, window_size=16, head_dim=8)


def dense_banded_attention(q, k, v, segment, radius):
    """float64 softmax(q kᵀ / √D) v with keys |i - j| <= radius of the query's own segment."""
    q, k, v = q.double(), k.double(), v.double()
    n = len(q)
    i = torch.arange(n)
    allowed = ((i[:, None] - i[None, :]).abs() <= radius) & (segment[:, None] == segment[None, :])
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", weights, v)


@pytest.mark.parametrize("n, radius, block, max_scores", [(300, 8, 128, 1 << 24), (300, 8, 7, 500),
                                                           (61, 40, 16, 1 << 24), (5, 3, 128, 1 << 24)])
def test_sliding_window_attention_is_a_banded_mask_within_segments(n, radius, block, max_scores):
    g = torch.Generator().manual_seed(n + radius)
    q, k, v = (torch.randn(n, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    segment = torch.sort(torch.randint(0, 3, (n,), generator=g)).values  # contiguous samples, sizes vary
    out = sliding_window_attention(q, k, v, segment, radius, block=block, max_scores=max_scores)
    torch.testing.assert_close(out, dense_banded_attention(q, k, v, segment, radius), atol=1e-12, rtol=1e-12)


def test_rms_norm_adds_eps_to_the_root_mean_square():
    norm = SparseRMSNorm(4, eps=0.5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
    x = torch.tensor([[3.0, 0.0, -4.0, 0.0]])  # ‖x‖ = 5, rms = 5 / 2 = 2.5, + eps = 3
    torch.testing.assert_close(norm(x), torch.tensor([[1.0, 0.0, 4.0 / 3.0, 0.0]]))


def test_msm_interpolation_is_grid_sample_of_the_dense_grid():
    """For a level of cells 2^l voxels wide: grid_sample(align_corners=True) of the zero-filled dense grid at
    ((c + 0.5) / 2^l) / D · 2 − 1, c the input voxel of each position (float32, as MSM's decoder)."""
    g = torch.Generator().manual_seed(3)
    voxel, factor, shape = 0.02, 4, (5, 7, 6)
    occupied = torch.rand(*shape, generator=g) < 0.6
    occupied[-1, -1, -1] = occupied[0, 0, 0] = True
    cells = occupied.nonzero()
    features = torch.randn(len(cells), 3, generator=g)
    origin = torch.tensor([[1.0, -2.0, 0.5]])
    level = FeatureLevel(features[None], (origin + (cells + 0.5) * voxel * factor)[None],
                         torch.ones(1, len(cells), dtype=torch.bool), voxel * factor, origin=origin)
    voxels = torch.stack([torch.randint(0, s * factor, (400,), generator=g) for s in shape], dim=1)
    positions = origin + (voxels + 0.5) * voxel
    sampled = sample_level(level, positions, torch.zeros(400, dtype=torch.long), "msm", voxel)
    dense = torch.zeros(1, 3, *shape)
    dense[0, :, cells[:, 0], cells[:, 1], cells[:, 2]] = features.T
    size = torch.tensor(shape, dtype=torch.float32)
    grid = ((voxels.float() + 0.5) / factor) / size * 2.0 - 1.0
    expected = F.grid_sample(dense, grid.flip(-1).reshape(1, -1, 1, 1, 3), align_corners=True)
    torch.testing.assert_close(sampled, expected.reshape(3, -1).T, atol=1e-6, rtol=1e-6)
    with pytest.raises(Exception, match="voxel size"):
        sample_level(level, positions, torch.zeros(400, dtype=torch.long), "msm")


def test_msm_style_levels_are_its_decoder_stages(crops):  # noqa: F811
    torch.manual_seed(0)
    model = SparseUNet(**MSM_SMALL, backend="torch").eval()
    voxels = make_batch(crops)
    with torch.no_grad():
        out = model(voxels)
    assert model.level_channels == [8, 8, 16, 16, 16] == [level.features.shape[-1] for level in out.levels]
    assert model.spec.level_strides == pytest.approx([0.05 * 2 ** i for i in range(5)])
    assert [len(a) for a in model.encoder_attention] == [0, 0, 1, 2, 1]
    assert [len(a) for a in model.decoder_attention] == [2, 2, 0, 0, 0]  # decoder stage j sits at stage 4 - j
    for i, level in enumerate(out.levels):
        _, centres, batch = level.flatten()
        index = torch.floor(centres / level.stride).long()
        expected = torch.unique(voxels.coords[voxels.coords[:, 0] == 0, 1:].long() >> i, dim=0)
        assert torch.equal(index[batch == 0], expected)
        assert torch.isfinite(level.features).all()
    assert out.global_feature.shape == (2, 32)


def test_msm_style_gradients_and_training_only_randomness(crops):  # noqa: F811
    torch.manual_seed(0)
    model = SparseUNet(**{**MSM_SMALL, "shuffle_orders": True}, backend="torch").train()
    voxels = make_batch(crops)
    token = torch.nn.Parameter(torch.randn(8))
    out = model(voxels, mask=torch.arange(len(voxels)) % 3 == 0, mask_token=token)
    sum(level.features[level.valid].square().mean() for level in out.levels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not missing and float(token.grad.abs().sum()) > 0
    noisy = SparseUNet(**{**MSM_SMALL, "drop_path_rate": 0.3, "attention_dropout": 0.2, "shuffle_orders": True},
                       backend="torch")
    noisy.load_state_dict(model.state_dict())
    with torch.no_grad():
        trained = [noisy.train()(make_batch(crops)).levels[0].features for _ in range(2)]
        evaluated = [noisy.eval()(make_batch(crops)).levels[0].features for _ in range(2)]
        plain = model.eval()(make_batch(crops)).levels[0].features
    assert not torch.equal(trained[0], trained[1])  # drop path, dropout and shuffled orders in training
    assert torch.equal(evaluated[0], evaluated[1]) and torch.equal(evaluated[0], plain)  # none in evaluation


def test_attention_block_orders_and_half_precision():
    """A block is the same computation along any order (it attends within the sample's window either way
    when the window covers the sample), and float16 rounds q, k, v and the attention output only."""
    g = torch.Generator().manual_seed(0)
    coords = torch.cat([torch.zeros(50, 1, dtype=torch.int32), torch.randperm(1000, generator=g)[:50, None].int()
                        .repeat(1, 3) % torch.tensor([7, 11, 13], dtype=torch.int32)], 1)
    coords = torch.unique(coords, dim=0)
    x = SparseVoxels(torch.randn(len(coords), 16, generator=g), coords, 1)
    block = SlidingWindowAttentionBlock(16, 2, window_size=2 * len(coords)).eval()
    outputs = []
    for curve, transpose in [("z", False), ("hilbert", True)]:
        order = serialization_order(coords, curve, transpose)
        outputs.append(block(x, order, torch.argsort(order)).features)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    half = SlidingWindowAttentionBlock(16, 2, window_size=2 * len(coords), attention_dtype="float16").eval()
    half.load_state_dict(block.state_dict())
    order = serialization_order(coords, "z")
    difference = float((half(x, order, torch.argsort(order)).features - outputs[0]).abs().max())
    assert 0 < difference < 1e-2


@pytest.mark.parametrize("overrides, match", [
    (dict(dec_channels=(16, 16, 16, 8)), "dec_channels"),
    (dict(dec_channels=(12, 16, 16, 8, 8)), "bottleneck"),
    (dict(style="unet"), "style"),
    (dict(attention_orders=("z", "peano")), "attention_orders"),
    (dict(attention_depth=(1, 2)), "attention_depth"),
    (dict(decoder_attention_stages=(5,)), "decoder_attention_stages"),
    (dict(attention_dtype="bfloat16"), "attention_dtype"),
])
def test_bad_msm_arguments_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        SparseUNet(**{**MSM_SMALL, **overrides})


def test_decoder_attention_is_msm_only():
    with pytest.raises(ValueError, match="decoder_attention_stages"):
        SparseUNet(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), head_dim=8,
                   decoder_attention_stages=(4,))
