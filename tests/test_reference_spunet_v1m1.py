"""Pointcept SpUNet-v1m1 checkpoints reproduce the original backbone: outputs recorded by running Pointcept's code.

tests/data/spunet_v1m1/ (see its README.md for how it was made) holds a checkpoint as Pointcept's trainer
saves a distributed ``DefaultSegmentor`` (``state_dict`` with ``module.backbone.<key>``, the 5-class head
``final.*`` included) of the original ``SpUNetBase`` in a small configuration of the same code (every
weight, BatchNorm affine and running statistic random), the voxels Pointcept's ScanNet val transform
made from a crop of a real scan, and the original's decoder outputs at strides 1..8 and its bottleneck.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_spconv
from omegaconf import OmegaConf

from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub import export_pointcept_spunet, load_encoder, read_encoder_checkpoint
from pc3d.hub.pointcept import infer_pointcept_config, pointcept_key_table
from pc3d.hub.weights import build_encoder
from pc3d.ops.sparse_conv import SparseVoxels, voxel_keys

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.*:FutureWarning")  # spconv's own imports

DATA = Path(__file__).parent / "data" / "spunet_v1m1"
CONFIGS = Path(__file__).parents[1] / "configs" / "encoder"
# of a level's largest |value| (float32 sums in another order: a few ulps of the largest term).
# Measured: spconv bit-exact (0.0: the same kernels in the same order); torch 6.4e-6 absolute on
# an Intel Xeon and 1.05e-5 on an AMD EPYC, with values up to 15.7 (≤ 6.7e-7 relative)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "outputs.npz"))


def voxels() -> SparseVoxels:
    inputs = np.load(DATA / "inputs.npz")
    grid = torch.from_numpy(inputs["grid_coord"])
    coords = torch.cat([torch.zeros(len(grid), 1, dtype=torch.int32), grid], dim=1)
    return SparseVoxels(torch.from_numpy(inputs["feat"]), coords, 1)


def test_the_trainer_file_is_detected_and_its_architecture_read_from_the_weights():
    checkpoint = read_encoder_checkpoint(DATA / "model.pth")
    assert checkpoint.format == "pointcept-spunet"
    config = checkpoint.config
    # SpUNetBase(base_channels=4, channels=(4, 8, 8, 8, 8, 8, 4, 4), layers=(1, 2, 1, 1, 1, 1, 1, 2))
    assert config["channels"] == [4, 4, 8, 8, 8] and config["blocks"] == [0, 1, 2, 1, 1]
    assert config["dec_channels"] == [8, 8, 4, 4] and config["dec_blocks"] == [1, 1, 1, 2]
    assert config["stem_kernel"] == 5 and config["attention_stages"] == [] and config["style"] == "spunet"
    assert not any(k.startswith("final.") for k in checkpoint.weights)  # the segmentation head is not the encoder


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_levels_match_the_original(reference, backend):
    encoder, _ = load_encoder(DATA / "model.pth")
    with torch.no_grad():
        if backend == "spconv":
            require_spconv()
        encoder.backend = backend
        output = encoder(voxels())
    assert [level.features.shape[-1] for level in output.levels] == [4, 4, 8, 8, 8]
    for i, level in enumerate(output.levels):  # decoder outputs at strides 1, 2, 4, 8, then the bottleneck
        indices = torch.from_numpy(reference[f"level{i}_indices"]).long()
        expected = torch.from_numpy(reference[f"level{i}_features"])[torch.argsort(voxel_keys(indices))]
        actual = level.features[0][level.valid[0]]
        assert actual.shape == expected.shape
        scale = max(1.0, float(expected.abs().max()))
        assert float((actual - expected).abs().max()) <= TOLERANCE * scale, i


def test_export_writes_the_backbone_back_without_its_head(tmp_path):
    encoder, _ = load_encoder(DATA / "model.pth")
    exported = torch.load(export_pointcept_spunet(encoder, tmp_path / "backbone.pth"), weights_only=True)["state_dict"]
    original = torch.load(DATA / "model.pth", weights_only=True)["state_dict"]
    backbone = {k: v for k, v in original.items() if not k.startswith("module.backbone.final.")}
    assert len(backbone) == len(original) - 2  # final.weight, final.bias
    assert list(exported) == list(backbone)  # SpUNetBase(num_classes=0)'s keys, in its state_dict order
    for key, value in backbone.items():
        assert exported[key].shape == value.shape and torch.equal(exported[key], value), key
    with pytest.raises(ConfigError, match="Pointcept's layout"):
        export_pointcept_spunet(build_encoder({"_target_": "pc3d.encoders.SparseUNet", "channels": [8, 8, 8, 8, 8],
                                               "dec_channels": [8, 8, 8, 8], "head_dim": 8}), tmp_path / "no.pth")


def test_the_projection_kernel_is_read_as_spconv_multiplies_it():
    """spconv 2.x runs a 1×1×1 conv as ``features @ weight.view(C_in, C_out)`` on its (C_out, 1, 1, 1, C_in)
    kernel; the decoder's first-block shortcut (16 → 8 here) must be imported as that matrix."""
    encoder, _ = load_encoder(DATA / "model.pth")
    state = torch.load(DATA / "model.pth", weights_only=True)["state_dict"]
    stored = state["module.backbone.dec.3.block0.proj.0.weight"]
    assert stored.shape == (8, 1, 1, 1, 16)
    linear = encoder.decoder[0][0].project[0].weight  # pc3d's decoder starts at the bottleneck: Pointcept's dec.3
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(x @ linear.double().T, x @ stored.double().reshape(-1).view(16, 8))


def test_spunet_v1m1_is_the_released_architecture():
    """configs/encoder/spunet_v1m1.yaml's original-layout keys and shapes are those of Pointcept's
    semseg-spunet-v1m1 model (keys_full.json, listed from the original class with its 20-class head)."""
    listing = json.loads((DATA / "keys_full.json").read_text())
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "spunet_v1m1.yaml"))
    encoder = build_encoder({**config, "backend": "torch"})
    original = pointcept_key_table(encoder.init_config).to_original(encoder.state_dict(), "test")
    listed = [(k.removeprefix("module.backbone."), shape) for k, shape, _ in listing["tensors"]]
    head = [entry for entry in listed if entry[0].startswith("final.")]
    assert head == [("final.weight", [20, 1, 1, 1, 96]), ("final.bias", [20])]
    assert [(k, list(v.shape)) for k, v in original.items()] == [e for e in listed if not e[0].startswith("final.")]
    inferred = infer_pointcept_config({k: torch.empty(s, device="meta") for k, s in listed})
    assert {k: inferred[k] for k in config if k != "backend"} == {k: v for k, v in config.items() if k != "backend"}
    assert encoder.spec.level_channels == (96, 96, 128, 256, 256)
    assert encoder.spec.level_strides == pytest.approx((0.02, 0.04, 0.08, 0.16, 0.32))


def test_bad_files_are_one_line_checkpoint_errors(tmp_path):
    msm = Path(__file__).parent / "data" / "msm" / "model.pth"
    with pytest.raises(CheckpointError, match="model.pth: not a Pointcept SpUNet checkpoint") as error:
        load_encoder(msm, format="pointcept-spunet")
    assert "\n" not in str(error.value)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes((DATA / "model.pth").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cut.pth") as error:
        load_encoder(truncated)
    assert "\n" not in str(error.value)
    state = torch.load(DATA / "model.pth", weights_only=True)
    state["state_dict"]["module.backbone.dec.0.block1.bn2.weight"] = torch.ones(5)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match=r"wrong.pth: .*shape mismatch \['module\.backbone\.dec\.0\.block1\.bn2"
                                              r"\.weight \(5,\) vs \(4,\)'\]"):
        load_encoder(wrong)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"module.backbone.stem.weight": torch.zeros(3)}}, other)
    with pytest.raises(CheckpointError, match="other.pth: unknown checkpoint format"):
        load_encoder(other)


@pytest.mark.slow
def test_cli_scene_probe_on_the_trainer_file(shared_data, tmp_path):
    """``pc3d probe probe=scene_linear checkpoint=<a Pointcept checkpoint>``: the four decoder levels and the
    bottleneck, trilinear at every point of the scans."""
    from pc3d.cli import main

    out = tmp_path / "probe"
    assert main(["probe", "probe=scene_linear", f"checkpoint={DATA / 'model.pth'}", "data=scannet",
                 f"data.root={shared_data / 'scannet'}", "probe.steps=30", "probe.baseline=false",
                 f"out_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["feature_dim"] == 4 + 4 + 8 + 8 + 8 and "random_miou" not in metrics
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["num_classes_present"] > 5
