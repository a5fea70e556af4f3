import math

import pytest
import torch
import torch.nn.functional as F

from pc3d.encoders import EncoderOutput, FeatureLevel, PatchEmbed, PointViT, group_points, max_mean_pool
from pc3d.encoders.layers import Attention, DropPath, PositionalBlocks


def small_vit(**kw):
    args = dict(embed_dim=48, depth=2, num_heads=3, num_groups=8, group_size=8, drop_path_rate=0.0)
    args.update(kw)
    return PointViT(**args)


def test_patch_embed_split_weight_equals_concat_reference():
    embed = PatchEmbed(embed_dim=32).eval()
    with torch.no_grad():
        for bn in (embed.bn1, embed.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    patches = torch.randn(2, 5, 7, 3)
    x = patches.reshape(-1, 3)
    local = embed.conv1b(F.relu(embed.bn1(embed.conv1a(x)))).reshape(10, 7, 256)
    pooled = local.amax(1, keepdim=True).expand(-1, 7, -1)
    joined = torch.cat([pooled, local], dim=-1).reshape(-1, 512)  # reference order: [global ‖ local]
    y = embed.conv2b(F.relu(embed.bn2(embed.conv2a(joined)))).reshape(10, 7, -1).amax(1).reshape(2, 5, -1)
    torch.testing.assert_close(embed(patches), y, atol=1e-5, rtol=1e-5)


def test_group_points_patches_are_centred_and_contain_their_centre():
    points = torch.randn(2, 200, 3)
    neighborhoods, centers = group_points(points, num_groups=10, group_size=6)
    assert neighborhoods.shape == (2, 10, 6, 3) and centers.shape == (2, 10, 3)
    assert torch.equal(centers[:, 0], points[:, 0])  # FPS starts at index 0
    # the centre is a cloud point, hence its own nearest neighbour at offset 0
    assert neighborhoods[:, :, 0].abs().max() == 0
    # every patch point + centre is a point of the cloud
    absolute = (neighborhoods + centers.unsqueeze(2)).reshape(2, -1, 3)
    d = (absolute.unsqueeze(2) - points.unsqueeze(1)).norm(dim=-1).amin(-1)
    assert d.max() < 1e-6


def test_point_vit_output_interface_and_levels():
    encoder = small_vit(feature_layers=[0]).eval()
    points = torch.randn(3, 128, 3)
    out = encoder(points)
    assert isinstance(out, EncoderOutput)
    assert len(out.levels) == 2
    for level in out.levels:
        assert level.features.shape == (3, 8, 48) and level.coords.shape == (3, 8, 3) and level.valid is None
    torch.testing.assert_close(out.global_feature, max_mean_pool(out.levels[-1].features))
    assert out.global_feature.shape == (3, 96)


def test_point_vit_gradients_reach_every_parameter():
    encoder = small_vit().train()
    out = encoder(torch.randn(4, 128, 3))
    out.global_feature.square().sum().backward()
    dead = [n for n, p in encoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_point_vit_rejects_bad_shapes():
    encoder = small_vit()
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        encoder(torch.randn(2, 128, 4))
    with pytest.raises(ValueError, match="group_size"):
        encoder(torch.randn(2, 4, 3))


def test_attention_matches_explicit_softmax():
    attn = Attention(dim=12, num_heads=3, qkv_bias=True)
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_positional_blocks_add_position_before_every_block():
    blocks = PositionalBlocks(dim=8, depth=2, num_heads=2).eval()
    x, pos = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    expected = blocks.blocks[1](blocks.blocks[0](x + pos) + pos)
    out, kept = blocks(x, pos, return_layers=(0,))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(kept[0], blocks.blocks[0](x + pos))


def test_drop_path_identity_in_eval_and_unbiased_in_train():
    layer = DropPath(0.5)
    x = torch.ones(20000, 1)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert abs(y.mean().item() - 1.0) < 0.05


def test_feature_level_flatten_and_masked_pool():
    features = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    coords = torch.randn(2, 3, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    flat, flat_coords, batch_index = FeatureLevel(features, coords, mask).flatten()
    assert flat.shape == (3, 2) and batch_index.tolist() == [0, 0, 1]
    torch.testing.assert_close(flat_coords, coords[mask])
    pooled = max_mean_pool(features, mask)
    torch.testing.assert_close(pooled[0], max_mean_pool(features[:1, :2])[0])
    torch.testing.assert_close(pooled[1], max_mean_pool(features[1:, :1])[0])
