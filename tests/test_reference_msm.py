"""Original MSM checkpoints reproduce the original encoder: outputs recorded by running the release's code.

tests/data/msm/ (see its README.md for how it was made) holds a checkpoint in the release's layout
(``{"state_dict": {"module.student.<key>": ...}}``) of the release's ``MSM3D_Encoder`` class in a small
configuration of the same code (every weight, RMSNorm scale and layer scale random), the voxels the
release's preprocessor made from a crop of a real ScanNet scan, and what the release computed from
them: every decoder level (``x_list``) and the per-point feature of its interpolation decoder, once
with the release's half-precision attention inputs ("release") and once with them left in float32
("fp32", a one-line patch of the scratch copy). The small configuration's head width and window are
not the release's, so they are passed as overrides (the weights cannot tell them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_spconv
from omegaconf import OmegaConf

from pc3d.errors import CheckpointError
from pc3d.eval.scene_probe import sample_level
from pc3d.hub import export_msm, load_encoder, read_encoder_checkpoint
from pc3d.hub.msm import infer_msm_config, msm_key_table
from pc3d.hub.weights import build_encoder
from pc3d.ops.sparse_conv import SparseVoxels, voxel_keys

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.*:FutureWarning")  # spconv's own imports

DATA = Path(__file__).parent / "data" / "msm"
CONFIGS = Path(__file__).parents[1] / "configs" / "encoder"
OVERRIDES = {"head_dim": 4, "window_size": 16}  # the small config's; the release's are 8 and 1024
VOXEL = 0.02
# pc3d against the original, float32 attention on both sides: measured ≤ 1.7e-6 (spconv), 3e-6 (torch)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "outputs.npz"))


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "inputs.npz"))


def voxels(inputs) -> SparseVoxels:
    grid = torch.from_numpy(inputs["grid_coord"])
    coords = torch.cat([torch.zeros(len(grid), 1, dtype=torch.int32), grid], dim=1)
    return SparseVoxels(torch.from_numpy(inputs["feat"]), coords, 1)


def use_backend(encoder, backend: str):
    if backend == "spconv":
        require_spconv()
    encoder.backend = backend
    return encoder


def reference_level(reference, variant: str, i: int) -> torch.Tensor:
    """The original's level ``i`` in (batch, x, y, z) key order, the order pc3d's levels come in."""
    indices = torch.from_numpy(reference[f"level{i}_indices"]).long()
    return torch.from_numpy(reference[f"{variant}_level{i}_features"])[torch.argsort(voxel_keys(indices))]


def max_level_diff(output, reference, variant: str) -> list[float]:
    return [float((level.features[0][level.valid[0]] - reference_level(reference, variant, i)).abs().max())
            for i, level in enumerate(output.levels)]


def per_point(output, inputs, mode: str) -> torch.Tensor:
    """Every level sampled at the points' input voxel centres (MSM samples at ``sample_grid_coord``)."""
    grid = torch.from_numpy(inputs["sample_grid_coord"]).double()
    positions = ((grid + 0.5) * VOXEL).float()
    batch = torch.zeros(len(grid), dtype=torch.long)
    return torch.cat([sample_level(level, positions, batch, mode, VOXEL) for level in output.levels], dim=1)


def test_the_release_file_is_detected_and_its_architecture_read_from_the_weights():
    checkpoint = read_encoder_checkpoint(DATA / "model.pth", config_overrides=OVERRIDES)
    assert checkpoint.format == "msm"
    config = checkpoint.config
    # the scratch config (README): channels (4, 8, 8, 8, 12), resnet_layers (1, 2, 1, 1, 1),
    # att_layers (0, 2, 1, 4, 1), dec_channels (12, 8, 8, 8, 4), dec_resnet_layers (1, 1, 1, 2, 1),
    # dec_att_layers (2, 1, 1, 0, 0) — decoder stage j sits at encoder stage 4 - j
    assert config["style"] == "msm" and config["in_channels"] == 6
    assert config["channels"] == [4, 8, 8, 8, 12] and config["blocks"] == [1, 2, 1, 1, 1]
    assert config["dec_channels"] == [12, 8, 8, 8, 4] and config["dec_blocks"] == [1, 1, 1, 2, 1]
    assert config["attention_stages"] == [1, 2, 3, 4] and config["attention_depth"] == [2, 1, 4, 1]
    assert config["decoder_attention_stages"] == [2, 3, 4] and config["decoder_attention_depth"] == [1, 1, 2]
    assert config["input_features"] == ["color", "normal"] and config["attention_dtype"] == "float16"


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_levels_and_per_point_features_match_the_original(reference, inputs, backend):
    encoder, config = load_encoder(DATA / "model.pth", config_overrides={**OVERRIDES, "attention_dtype": "float32"})
    with torch.no_grad():
        output = use_backend(encoder, backend)(voxels(inputs))
    assert [level.features.shape[-1] for level in output.levels] == [4, 8, 8, 8, 12]
    assert [level.stride for level in output.levels] == pytest.approx([VOXEL * 2 ** i for i in range(5)])
    assert max(max_level_diff(output, reference, "fp32")) <= TOLERANCE
    # MSM's own interpolation decoder, reproduced by the scene probe's interpolation="msm"
    features = per_point(output, inputs, "msm")
    expected = torch.from_numpy(reference["fp32_features"])
    assert features.shape == expected.shape == (len(inputs["sample_grid_coord"]), 40)
    assert float((features - expected).abs().max()) <= TOLERANCE
    # ... which is not the renormalised trilinear interpolation of the probe's default
    assert float((per_point(output, inputs, "trilinear") - expected).abs().mean()) > 0.1


def test_half_precision_attention_tracks_the_release(reference, inputs):
    """The release hands float16 q, k, v to flash-attention; pc3d's default for MSM files rounds them too.

    Rounding near a float16 boundary differs wherever the float32 values differ in their last bits, so
    the match is not 1e-5; measured on this fixture (torch backend): float16 3.9e-4, float32 7.1e-4
    (full size, spconv: 1.2e-4 and 3.4e-4).
    """
    diffs = {}
    for dtype in ("float16", "float32"):
        encoder, _ = load_encoder(DATA / "model.pth", config_overrides={**OVERRIDES, "attention_dtype": dtype})
        with torch.no_grad():
            diffs[dtype] = max(max_level_diff(use_backend(encoder, "torch")(voxels(inputs)), reference, "release"))
    assert diffs["float16"] <= 1e-3
    assert diffs["float16"] < diffs["float32"]


def test_export_writes_the_release_file_back(tmp_path):
    encoder, _ = load_encoder(DATA / "model.pth", config_overrides=OVERRIDES)
    out = export_msm(encoder, tmp_path / "exported.pth")
    exported = torch.load(out, weights_only=True)["state_dict"]
    original = torch.load(DATA / "model.pth", weights_only=True)["state_dict"]
    assert list(exported) == list(original)  # the original's keys, in its state_dict order
    for key, value in original.items():
        assert exported[key].shape == value.shape and torch.equal(exported[key], value), key
    again, _ = load_encoder(out, config_overrides=OVERRIDES)
    for key, value in encoder.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_other_layouts_of_the_same_weights(tmp_path, inputs):
    """A bare encoder state dict under "model", and a pretraining file whose teacher and heads sit beside the
    student: the student is the encoder, the rest is left out."""
    state = torch.load(DATA / "model.pth", weights_only=True)["state_dict"]
    student = {k.removeprefix("module.student."): v for k, v in state.items()}
    bare = tmp_path / "bare.pth"
    torch.save({"model": student}, bare)
    pretraining = tmp_path / "pretraining.pth"
    torch.save({"epoch": 3, "state_dict": {**state, **{f"module.teacher.{k}": v + 1 for k, v in student.items()},
                                           "module.mask_token": torch.zeros(4)}}, pretraining)
    reference, _ = load_encoder(DATA / "model.pth", config_overrides=OVERRIDES)
    for path in (bare, pretraining):
        encoder, config = load_encoder(path, config_overrides=OVERRIDES)
        assert config["channels"] == [4, 8, 8, 8, 12]
        for key, value in reference.state_dict().items():
            assert torch.equal(encoder.state_dict()[key], value), (path.name, key)


def test_msm_large_is_the_released_architecture():
    """configs/encoder/msm_large.yaml builds an encoder whose original-layout keys and shapes are those of the
    released model (listed from the original class at full size, keys_full.json), and inferring the
    architecture from those shapes gives msm_large back."""
    listing = json.loads((DATA / "keys_full.json").read_text())
    large = OmegaConf.to_container(OmegaConf.load(CONFIGS / "msm_large.yaml"))
    encoder = build_encoder({**large, "backend": "torch"})
    original = msm_key_table(encoder.init_config).to_original(encoder.state_dict(), "test")
    listed = [(k.removeprefix("module.student."), shape) for k, shape, _ in listing["tensors"]]
    assert [(k, list(v.shape)) for k, v in original.items()] == listed
    assert sum(v.numel() for v in original.values()) == sum(int(np.prod(s)) for _, s in listed)
    shapes = {k: torch.empty(shape, device="meta") for k, shape in listed}
    inferred = infer_msm_config(shapes)
    assert {k: inferred[k] for k in large if k != "backend"} == {k: v for k, v in large.items() if k != "backend"}
    assert encoder.spec.level_channels == (64, 96, 128, 256, 384) and sum(encoder.spec.level_channels) == 928


def test_bad_files_are_one_line_checkpoint_errors(tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((DATA / "model.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth") as error:
        load_encoder(truncated)
    assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match=r"model.pth: the msm architecture read from its weights does not build "
                                              r"\(encoder: stage 4: width 12 is not divisible by head_dim=8\)"):
        load_encoder(DATA / "model.pth")  # the release's 8 channels per head do not fit this small file
    spunet = Path(__file__).parent / "data" / "spunet_v1m1" / "model.pth"
    with pytest.raises(CheckpointError, match="model.pth: not an MSM checkpoint") as error:
        load_encoder(spunet, format="msm")
    assert "\n" not in str(error.value)
    state = torch.load(DATA / "model.pth", weights_only=True)
    del state["state_dict"]["module.student.att_enc.3.2.mlp_lin_1.weight"]
    missing = tmp_path / "missing.pth"
    torch.save(state, missing)
    with pytest.raises(CheckpointError, match=r"missing.pth: .*missing \['module\.student\.att_enc\.3\.2\.mlp_lin_1"
                                              r"\.weight'\]") as error:
        load_encoder(missing, config_overrides=OVERRIDES)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_cli_scene_probe_on_the_release_file(shared_data, tmp_path):
    """``pc3d probe probe=scene_linear checkpoint=<the release's layout>``: every level at every point, sampled
    as MSM samples them (interpolation=msm), beside the random-init encoder of the same (overridden) config."""
    from pc3d.cli import main

    out = tmp_path / "probe"
    assert main(["probe", "probe=scene_linear", f"checkpoint={DATA / 'model.pth'}",
                 "checkpoint_overrides={head_dim:4,window_size:16}", "data=scannet",
                 f"data.root={shared_data / 'scannet'}", "probe.steps=30", "probe.interpolation=msm",
                 f"out_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["feature_dim"] == 4 + 8 + 8 + 8 + 12
    assert metrics["train_scans"] == ["scene0000_00"] and metrics["val_scans"] == ["scene0000_01"]
    for key in ("miou", "overall_accuracy", "random_miou", "random_overall_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert all(f"effective_rank/level{i}" in metrics for i in range(5))


def test_cli_export_takes_config_overrides(tmp_path):
    from pc3d.cli import main

    out = tmp_path / "msm.safetensors"
    assert main(["export", f"checkpoint={DATA / 'model.pth'}", "config_overrides={head_dim:4,window_size:16}",
                 f"out={out}"]) == 0
    encoder, config = load_encoder(out)
    reference, _ = load_encoder(DATA / "model.pth", config_overrides=OVERRIDES)
    assert config["style"] == "msm" and config["head_dim"] == 4 and config["window_size"] == 16
    for key, value in reference.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    assert main(["export", f"checkpoint={DATA / 'model.pth'}", f"out={tmp_path / 'default.safetensors'}"]) == 2
