"""The GPU recipes (experiment=point_mae_shapenet55, msm_scannet): they hold the documented settings and run,
shrunk to one CPU step, on files in their datasets' layouts (the full runs need a GPU)."""

from __future__ import annotations

import json

import numpy as np

from conftest import require_shared
from pc3d.cli import compose, main
from test_paper_datasets import shapenet_tree  # noqa: F401 (a fixture)

CPU = ["device=cpu", "trainer.num_workers=0", "trainer.max_steps=1", "trainer.log_every=1"]


def test_point_mae_shapenet55_is_the_paper_recipe_and_runs(shapenet_tree, tmp_path):  # noqa: F811
    cfg = compose("pretrain", ["experiment=point_mae_shapenet55", f"data.root={shapenet_tree}"])
    assert cfg.data._target_.endswith("shapenet_data") and cfg.data.benchmark == "shapenet55"
    assert (cfg.encoder.embed_dim, cfg.encoder.depth, cfg.encoder.num_heads, cfg.encoder.num_groups,
            cfg.encoder.group_size) == (384, 12, 6, 64, 32)
    assert (cfg.method.mask_ratio, cfg.method.decoder_depth, cfg.trainer.batch_size, cfg.trainer.epochs,
            cfg.trainer.warmup_epochs, cfg.trainer.lr, cfg.trainer.weight_decay) == (0.6, 4, 128, 300, 10, 1e-3, 0.05)
    assert cfg.device == "cuda"
    run = tmp_path / "run"
    assert main(["pretrain", "experiment=point_mae_shapenet55", f"data.root={shapenet_tree}",
                 f"data.cache_dir={tmp_path / 'cache'}", *CPU, "trainer.batch_size=4", "encoder.embed_dim=48",
                 "encoder.depth=1", "encoder.num_heads=3", "method.decoder_depth=1", "method.decoder_num_heads=3",
                 f"out_dir={run}"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1


def test_msm_scannet_holds_its_settings_and_runs(tmp_path):
    root = require_shared("scannet")
    cfg = compose("pretrain", ["method=msm", "experiment=msm_scannet", f"data.root={root}"])
    assert cfg.encoder.voxel_size == 0.02 and list(cfg.encoder.channels) == [32, 64, 128, 256, 384]
    assert (cfg.data.crop_points, cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.precision) == \
        (102400, 16, 200, "bf16")
    assert compose("probe", ["probe=scene_linear", "experiment=msm_scannet", "checkpoint=random",
                             f"data.root={root}"]).encoder.voxel_size == 0.02  # the probe takes the same node
    run = tmp_path / "run"
    assert main(["pretrain", "method=msm", "experiment=msm_scannet", f"data.root={root}", *CPU,
                 "trainer.batch_size=2", "trainer.precision=fp32", "data.crop_points=4000",
                 "encoder.channels=[8,16,16,16,16]", "encoder.dec_channels=[16,16,16,16]", "encoder.blocks=[1,1,1,1,1]",
                 "encoder.dec_blocks=[1,1,1,1]", "encoder.voxel_size=0.08", "encoder.stem_kernel=3",
                 "encoder.window_size=64", "encoder.head_dim=8", "trainer.artifact_every=1", f"out_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 1 and np.isfinite(metrics["final_loss"])
    from PIL import Image

    # the artifact: per camera, the masked (orange) and visible (blue) voxels, then student and teacher features
    with Image.open(run / "artifacts" / "features_00000001.png") as picture:
        pixels = np.asarray(picture, dtype=np.float32) / 255
    assert pixels.shape == (480, 720, 3)
    mask_panel = pixels[:240, :240].reshape(-1, 3)
    orange = (np.abs(mask_panel - [1.0, 0.55, 0.1]).max(axis=1) < 0.1).mean()
    blue = (np.abs(mask_panel - [0.25, 0.55, 1.0]).max(axis=1) < 0.1).mean()
    assert orange > 0.01 and blue > 0.01, (orange, blue)
    assert pixels[:240, 240:].reshape(-1, 3).std(axis=0).min() > 0.02  # PCA colours, not one colour
