import numpy as np
import pytest
import torch

from pc3d.encoders import PointViT
from pc3d.methods import PointMAE
from pc3d.methods.point_mae import block_patch_mask, random_patch_mask
from pc3d.train import Trainer, TrainerConfig


def small_mae(**kw):
    encoder = PointViT(embed_dim=48, depth=2, num_heads=3, num_groups=16, group_size=16, drop_path_rate=0.0)
    return PointMAE(encoder, decoder_depth=1, decoder_num_heads=3, decoder_drop_path_rate=0.0, **kw)


def test_random_mask_counts_and_randomness():
    mask = random_patch_mask(4, 64, 0.6, "cpu")
    assert mask.shape == (4, 64) and mask.sum(1).tolist() == [38] * 4
    assert not torch.equal(mask[0], mask[1])


def test_block_mask_is_the_nearest_patches_to_one_centre():
    centers = torch.randn(3, 64, 3)
    mask = block_patch_mask(centers, 0.6)
    assert mask.sum(1).tolist() == [38] * 3
    for b in range(3):
        masked = set(mask[b].nonzero().flatten().tolist())
        nearest_sets = [set(torch.cdist(centers[b, i:i + 1], centers[b])[0].argsort()[:38].tolist()) for i in masked]
        assert masked in nearest_sets


def test_forward_loss_and_gradients_reach_encoder_decoder_and_mask_token():
    model = small_mae()
    loss = model({"points": torch.randn(4, 512, 3)})["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_visible_only_embedding_equals_reference_order_in_eval_mode():
    model = small_mae().eval()
    points = torch.randn(2, 512, 3)
    torch.manual_seed(3)
    fast = model({"points": points})["loss"]
    model.embed_visible_only = False
    torch.manual_seed(3)
    reference = model({"points": points})["loss"]
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-5)


def test_invalid_arguments():
    encoder = PointViT(embed_dim=48, depth=1, num_heads=3, num_groups=8, group_size=8)
    with pytest.raises(ValueError, match="mask_ratio"):
        PointMAE(encoder, mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_type"):
        PointMAE(encoder, mask_type="tube")


def test_loss_falls_on_real_modelnet10(modelnet10_root, tmp_path):
    from pc3d.data.io import read_points
    from pc3d.data.object_dataset import ObjectDataset
    from pc3d.data.transforms import normalize_unit_sphere

    files = []
    for folder in sorted(modelnet10_root.iterdir())[:4]:
        files += sorted((folder / "train").glob("*.pcd"))[:8]
    points = np.stack([normalize_unit_sphere(read_points(f).points) for f in files])
    labels = np.zeros(len(points), dtype=np.int64)
    dataset = ObjectDataset(points, labels, num_points=512, augment=False, seed=0)
    torch.manual_seed(0)
    model = small_mae()
    trainer = Trainer(model, dataset, TrainerConfig(max_steps=40, batch_size=8, lr=2e-3, warmup_steps=4,
                                                    checkpoint_every=1000, resume="never", device="cpu"),
                      tmp_path)
    trainer.fit()
    losses = [float(line.split('"loss": ')[1].split(",")[0]) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)
