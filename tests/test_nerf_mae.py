"""NeRF-MAE: the 3D Swin encoder, the pretraining method and the original checkpoint layouts.

tests/data/nerf_mae/ holds a small-configuration pretraining and fine-tuned checkpoint written by
the original code and every stage output it computed (README.md there says how). The float64
comparisons hold pc3d to the original at 1e-10 (relative to the largest value of each array);
float32 at 1e-5, the original's own float32 noise being ~1e-6. tests/data/nerf_mae_keys.json
lists the original Swin-S state dicts (names, shapes, dtypes; no weights).
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pc3d.data.base import SampleDataset
from pc3d.encoders import Swin3D
from pc3d.encoders.inputs import collate_input, encoder_input
from pc3d.encoders.swin3d import (PatchMerging3D, relative_position_index, sincos_position_embedding, window_attention,
                                  window_layout)
from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub import export_nerf_mae, import_nerf_mae_model, load_encoder
from pc3d.hub.nerf_mae import rename_key
from pc3d.methods import NeRFMAE
from pc3d.methods.nerf_mae import cube_token_mask
from pc3d.ops.dense_grid import DenseGrid

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "nerf_mae"
PRETRAIN = FIXTURE / "pretrain_ckpt.pt"


@pytest.fixture(scope="module")
def finetune_file(tmp_path_factory):
    """The original fine-tuned checkpoint, assembled as the original saved it: its backbone is the pretraining
    file's Swin under ``base.`` (asserted by the original run), plus the FPN / FCOS parameters and the key order
    stored in ``finetune_new_params.pt`` (the fixture keeps the Swin once, not twice)."""
    stored = torch.load(FIXTURE / "finetune_new_params.pt", weights_only=True)
    encoder = torch.load(PRETRAIN, weights_only=True)["state_dict"]
    backbone = {k: encoder[k[len("base."):]] if k.startswith("base.") else stored["backbone_extra"][k]
                for k in stored["backbone_keys"]}
    path = tmp_path_factory.mktemp("nerf_mae") / "finetune_ckpt.pt"
    torch.save({"epoch": stored["epoch"], "backbone_state_dict": backbone,
                "fcos_state_dict": stored["fcos_state_dict"], "train_args": stored["train_args"]}, path)
    return path
SMALL = {"embed_dim": 6, "depths": [2, 2, 1, 1], "num_heads": [2, 3, 4, 6]}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE / "reference.npz"))


def rel_error(got: torch.Tensor, expected: np.ndarray) -> float:
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(got.detach().double().numpy() - expected).max() / max(np.abs(expected).max(), 1e-300))


def fixture_grid(reference, dtype=torch.float64) -> DenseGrid:
    """The two fixture grids batched by the input adapter (zero-padded to the largest, then to 32³)."""
    samples = [{"grid": torch.from_numpy(reference[f"input_u8_{i}"]).to(dtype) / 255.0, "grid_origin": torch.zeros(3),
                "grid_cell_size": 1.0} for i in range(2)]
    grid = collate_input(Swin3D(**SMALL).spec, samples).pad_to(32)
    assert grid.values.dtype == dtype and grid.shape == (32, 32, 32)
    return grid


def small_model(width=12, grid_size=32, **kw) -> NeRFMAE:
    torch.manual_seed(0)
    encoder = Swin3D(embed_dim=width, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)
    return NeRFMAE(encoder, grid_size=grid_size, **kw)


# ------------------------------------------------------------------ fidelity to the original
def test_imported_encoder_reproduces_every_stage_in_float64(reference, finetune_file):
    encoder, config = load_encoder(PRETRAIN)
    assert config["depths"] == SMALL["depths"] and config["num_heads"] == SMALL["num_heads"]
    encoder = encoder.double()
    grid = fixture_grid(reference)
    mask_token = torch.load(PRETRAIN, weights_only=True)["state_dict"]["mask_token"].double()
    with torch.no_grad():
        plain = encoder(grid)
        masked = encoder(grid, mask=torch.from_numpy(reference["token_mask"]), mask_token=mask_token)
        # sample 0 alone, padded to 40³: token grids 10, 5, 3, 2 (padding in windows and merging)
        values = F.pad(grid.values[:1, :, :28, :32, :24], (0, 16, 0, 8, 0, 12))
        valid = F.pad(grid.valid[:1, :28, :32, :24], (0, 16, 0, 8, 0, 12))
        padded = encoder(DenseGrid(values, valid, grid.origin[:1], 1.0))
    for s in range(4):
        assert rel_error(plain.levels[s].to_dense()[0], reference[f"feat{s}_f64"]) < 1e-10
        assert rel_error(masked.levels[s].to_dense()[0], reference[f"masked_stage{s}_f64"]) < 1e-10
        assert rel_error(padded.levels[s].to_dense()[0], reference[f"res40_feat{s}_f64"]) < 1e-10
    assert [level.grid_shape for level in padded.levels] == [(10, 10, 10), (5, 5, 5), (3, 3, 3), (2, 2, 2)]
    # the fine-tuned file holds the same Swin under base.: the same features
    finetuned, _ = load_encoder(finetune_file)
    with torch.no_grad():
        for s, level in enumerate(finetuned.double()(grid).levels):
            assert rel_error(level.to_dense()[0], reference[f"feat{s}_f64"]) < 1e-10


def test_float32_outputs_within_the_originals_own_noise(reference):
    encoder, _ = load_encoder(PRETRAIN)
    model = import_nerf_mae_model(PRETRAIN)
    grid = fixture_grid(reference, torch.float32)
    mask = torch.from_numpy(reference["token_mask"])
    with torch.no_grad():
        for s, level in enumerate(encoder(grid).levels):
            assert rel_error(level.to_dense()[0], reference[f"feat{s}_f32"]) < 1e-5
        prediction = model.predict(grid, mask)
        losses = model.losses(grid, prediction, mask)
    for name in ("loss", "loss_rgb", "loss_alpha"):
        assert abs(float(losses[name]) - float(reference[f"{name}_f32"])) < 1e-5 * float(reference[f"{name}_f32"])


def test_decoder_output_and_loss_match_the_original_in_float64(reference):
    model = import_nerf_mae_model(PRETRAIN).double()
    assert model.grid_size == 32 and model.mask_ratio == 0.75  # from train_args
    grid = fixture_grid(reference)
    mask = torch.from_numpy(reference["token_mask"])
    with torch.no_grad():
        prediction = model.predict(grid, mask)
        losses = model.losses(grid, prediction, mask)
    index = torch.from_numpy(reference["pred_sample_idx"].astype(np.int64))
    samples = torch.stack([prediction[b][:, index[b, :, 0], index[b, :, 1], index[b, :, 2]] for b in range(2)])
    assert rel_error(samples, reference["pred_sample_f64"]) < 1e-10
    assert rel_error(prediction.sum((2, 3, 4)), reference["pred_sum_f64"]) < 1e-10
    assert rel_error(prediction.square().sum((2, 3, 4)), reference["pred_sumsq_f64"]) < 1e-10
    for name in ("loss", "loss_rgb", "loss_alpha"):
        assert abs(float(losses[name]) - float(reference[f"{name}_f64"])) < 1e-12
    # PSNR as the original's evaluation: mean squared RGB error over the cells with alpha > 0.01
    alpha = grid.values[:, 3]
    colored = (alpha > 0.01)[:, None].expand(-1, 3, -1, -1, -1)
    mse = (prediction[:, :3] - grid.values[:, :3])[colored].square().mean()
    assert float(losses["psnr"]) == pytest.approx(float(-10 * torch.log10(mse)), abs=1e-10)


def test_forward_draws_the_mask_from_the_sample_seeds_and_matches_a_given_mask(reference):
    model = import_nerf_mae_model(PRETRAIN).double()
    grid = fixture_grid(reference)
    seeds = torch.tensor([11, 12])
    with torch.no_grad():
        out = model({"input": grid, "sample_seed": seeds})
        mask = cube_token_mask(seeds, (8, 8, 8), 4, 0.75)
        expected = model.losses(grid, model.predict(grid, mask), mask)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key])


# ------------------------------------------------------------------ pieces against independent references
def test_position_embedding_formula_and_the_stored_table():
    stored = torch.load(PRETRAIN, weights_only=True)["state_dict"]["pos_embed"][0]
    assert torch.equal(sincos_position_embedding((8, 8, 8), 6), stored)
    # dim 6: one frequency (1.0) per third; thirds encode axis 2, axis 1, axis 3
    i, j, k = 1, 2, 3
    expected = torch.tensor([np.sin(j), np.cos(j), np.sin(i), np.cos(i), np.sin(k), np.cos(k)], dtype=torch.float32)
    torch.testing.assert_close(sincos_position_embedding((2, 4, 5), 6)[i, j, k], expected)
    large = sincos_position_embedding((10, 12, 9), 96)
    assert torch.equal(sincos_position_embedding((4, 7, 3), 96), large[:4, :7, :3])
    with pytest.raises(ValueError, match="divisible by 6"):
        Swin3D(embed_dim=128)
    with pytest.raises(ValueError, match="swin_b"):
        Swin3D.from_preset("swin_b")


def test_relative_position_index_by_hand():
    index = relative_position_index(4)
    # tokens in C order: (0,0,0) = 0, (0,0,1) = 1, (1,0,0) = 16
    # index = (Δ1+3)·49 + (Δ2+3)·7 + (Δ3+3), Δ = query − key
    assert index[0, 0] == 3 * 49 + 3 * 7 + 3
    assert index[16, 0] == 4 * 49 + 3 * 7 + 3
    assert index[0, 1] == 3 * 49 + 3 * 7 + 2
    assert index[63, 0] == 6 * 49 + 6 * 7 + 6 and index[0, 63] == 0
    stored = torch.load(PRETRAIN, weights_only=True)["state_dict"]["stages.0.0.attn.relative_position_index"]
    assert torch.equal(index.reshape(-1), stored)


@pytest.mark.parametrize("shape,shift", [((8, 8, 8), 2), ((10, 5, 12), 2), ((5, 4, 3), 2), ((6, 9, 7), 0),
                                         ((8, 4, 4), 0), ((8, 4, 4), 2)])
def test_window_layout_matches_pad_roll_partition_and_the_region_slices(shape, shift):
    w = 4
    layout = window_layout(shape, w, shift, torch.device("cpu"), torch.float64)
    ids = torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape)
    padded = F.pad(ids, [0, (-shape[2]) % w, 0, (-shape[1]) % w, 0, (-shape[0]) % w], value=-1.0)
    sizes = padded.shape
    shifts = [shift if p > w else 0 for p in sizes]
    rolled = torch.roll(padded, [-s for s in shifts], dims=(0, 1, 2))
    n = [p // w for p in sizes]
    windows = rolled.reshape(n[0], w, n[1], w, n[2], w).permute(0, 2, 4, 1, 3, 5).reshape(-1)
    gathered = layout.gather.to(torch.float64)
    gathered[layout.gather == ids.numel()] = -1.0
    assert torch.equal(gathered, windows)
    assert torch.equal(layout.gather[layout.scatter], torch.arange(ids.numel()))
    assert layout.identity == torch.equal(layout.gather, torch.arange(ids.numel()))
    assert layout.identity == (shape == (8, 4, 4) and shift == 0)
    if not any(shifts):
        assert layout.shift_mask is None
        return
    regions = torch.zeros(sizes)
    count = 0
    slices = [((0, -w), (-w, -s), (-s, None)) if s else ((0, None),) * 3 for s in shifts]
    for a in slices[0]:  # the region assignment of the original (later slices win)
        for b in slices[1]:
            for c in slices[2]:
                regions[a[0]:a[1], b[0]:b[1], c[0]:c[1]] = count
                count += 1
    labels = regions.reshape(n[0], w, n[1], w, n[2], w).permute(0, 2, 4, 1, 3, 5).reshape(-1, w ** 3)
    expected = (labels[:, :, None] != labels[:, None, :]).double() * -100.0
    assert torch.equal(layout.shift_mask, expected)
    # below float64 the separation is an exact zero weight (see SHIFT_MASK_VALUE)
    low = window_layout(shape, w, shift, torch.device("cpu"), torch.float32).shift_mask
    assert torch.equal(low, (expected * 100.0).float())


def test_patch_merging_order_first_axis_fastest():
    torch.manual_seed(0)
    merge = PatchMerging3D(3).double()
    x = torch.randn(2, 5, 4, 3, 3, dtype=torch.float64)
    padded = F.pad(x, (0, 0, 0, 1, 0, 0, 0, 1))
    parts = [padded[:, a::2, b::2, c::2] for (a, b, c) in
             [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]]
    expected = merge.reduction(merge.norm(torch.cat(parts, dim=-1)))
    torch.testing.assert_close(merge(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("windows", [1, 3])
def test_window_attention_gradients_against_finite_differences(windows):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 8, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.randn(windows, 2, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(window_attention, (q, k, v, mask if windows == 3 else mask[:1]))
    with torch.no_grad():
        weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + mask, dim=-1)
        torch.testing.assert_close(window_attention(q, k, v, mask), weights @ v)


# ------------------------------------------------------------------ method behaviour
def test_gradients_reach_every_parameter():
    model = small_model().train()
    gen = torch.Generator().manual_seed(1)
    values = torch.rand(2, 4, 32, 32, 32, generator=gen)
    grid = DenseGrid(values, torch.ones(2, 32, 32, 32, dtype=torch.bool), torch.zeros(2, 3), 0.05)
    out = model({"input": grid, "sample_seed": torch.tensor([3, 4])})
    out["loss"].backward()
    inert = [n for n, _ in model.named_parameters()  # biases right before an InstanceNorm cancel out
             if n.startswith("decoder.blocks.") and n.endswith((".conv1.bias", ".conv2.bias", ".shortcut.bias"))]
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        scale = float(param.grad.abs().max())
        if name in inert:
            assert scale < 1e-5, name
        else:
            assert scale > 0, name
    assert model.encoder.stages[0].blocks[0].attn.relative_position_bias_table.grad.abs().sum() > 0


def test_masks_are_per_sample_and_a_function_of_the_seed_only():
    seeds = torch.tensor([7, 8, 7])
    masks = cube_token_mask(seeds, (40, 40, 40), 4, 0.75)
    assert torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[1])
    assert torch.equal(cube_token_mask(torch.tensor([8]), (40, 40, 40), 4, 0.75)[0], masks[1])
    cubes = masks[:, ::4, ::4, ::4]  # constant inside every 4³ cube
    assert torch.equal(masks, cubes.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert abs(float(cubes.float().mean()) - 0.75) < 0.05  # 3 × 1000 Bernoulli(0.75) draws
    odd = cube_token_mask(torch.tensor([5]), (10, 9, 13), 4, 1.0)
    assert not odd[:, 8:].any() and not odd[:, :, 8:].any() and not odd[:, :, :, 12:].any()
    assert odd[:, :8, :8, :12].all()
    # in the method: the same seed gives the same loss wherever the sample sits in the batch
    model = small_model().eval()
    values = torch.rand(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    one = DenseGrid(values[:1], torch.ones(1, 32, 32, 32, dtype=torch.bool), torch.zeros(1, 3), 0.05)
    with torch.no_grad():
        first = model({"input": one, "sample_seed": torch.tensor([21])})
        again = model({"input": one, "sample_seed": torch.tensor([21])})
        other = model({"input": one, "sample_seed": torch.tensor([22])})
    assert float(first["loss"]) == float(again["loss"]) and float(first["loss"]) != float(other["loss"])


class SyntheticGrids(SampleDataset):
    """Radiance-grid samples: a few coloured opaque boxes in an empty 32³ grid, fixed per index."""

    def __init__(self, count: int = 8, size: int = 32) -> None:
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(index)
        grid = torch.zeros(4, self.size, self.size, self.size)
        for _ in range(3):
            low = torch.randint(0, self.size - 12, (3,), generator=gen)
            high = low + torch.randint(6, 12, (3,), generator=gen)
            color = torch.rand(3, generator=gen)
            grid[:3, low[0]:high[0], low[1]:high[1], low[2]:high[2]] = color[:, None, None, None]
            grid[3, low[0]:high[0], low[1]:high[1], low[2]:high[2]] = 1.0
        return {"grid": grid, "grid_origin": torch.zeros(3), "grid_cell_size": 0.1}


class GridData:
    """A data node that offers radiance grids (what method=nerf_mae asks of data)."""

    def grid_dataset(self, augment: bool = True) -> SyntheticGrids:
        return SyntheticGrids()


def test_loss_falls_with_the_trainer(tmp_path):
    from pc3d.train import Trainer, TrainerConfig

    model = small_model()
    dataset = model.pretrain_dataset(GridData())
    batch = dataset.collate([dataset[0], dataset[1]])
    assert isinstance(batch["input"], DenseGrid) and batch["input"].values.shape == (2, 4, 32, 32, 32)
    config = TrainerConfig(max_steps=50, batch_size=2, lr=2e-3, weight_decay=1e-3, warmup_steps=3, grad_clip=1.0,
                           checkpoint_every=100, device="cpu")
    Trainer(model, dataset, config, tmp_path).fit()
    lines = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines]
    assert len(losses) == 50 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert {"loss_rgb", "loss_alpha", "psnr", "psnr_masked", "masked_fraction"} <= set(lines[-1])
    assert lines[-1]["psnr"] > lines[0]["psnr"]
    with pytest.raises(ConfigError, match="grid_dataset"):
        model.pretrain_dataset(object())


def test_any_grid_size_runs_with_padding_and_validity():
    encoder = small_model().encoder.eval()
    gen = torch.Generator().manual_seed(3)
    samples = [{"grid": torch.rand(4, 37, 21, 45, generator=gen), "grid_origin": torch.tensor([1.0, 2.0, 3.0]),
                "grid_cell_size": 0.5},
               {"grid": torch.rand(4, 9, 30, 6, generator=gen), "grid_origin": torch.zeros(3), "grid_cell_size": 0.5}]
    grid = encoder_input(encoder.spec, samples)
    with torch.no_grad():
        out = encoder(grid)
    shapes = [(10, 8, 12), (5, 4, 6), (3, 2, 3), (2, 1, 2)]
    assert [level.grid_shape for level in out.levels] == shapes
    for s, level in enumerate(out.levels):
        stride = 4 * 2 ** s
        assert level.stride == 0.5 * stride and level.features.shape[-1] == encoder.level_channels[s]
        for b, (x, y, z) in enumerate([(37, 21, 45), (9, 30, 6)]):
            expected = torch.zeros(shapes[s], dtype=torch.bool)
            expected[:-(-x // stride), :-(-y // stride), :-(-z // stride)] = True
            assert torch.equal(level.valid[b].reshape(shapes[s]), expected), (s, b)
    # token (0, 0, 1) of sample 0 at level 1 sits at origin + (index + 0.5) · stride
    torch.testing.assert_close(out.levels[1].coords[0, 1], torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([2.0, 2.0, 6.0]))
    last = out.levels[-1]
    expected_global = torch.cat([last.features[1][last.valid[1]].amax(0), last.features[1][last.valid[1]].mean(0)])
    torch.testing.assert_close(out.global_feature[1], expected_global)
    assert out.global_feature.shape == (2, encoder.spec.global_channels)
    # the method pads to the decoder's multiple (grid_size None) and trains on it
    model = small_model(grid_size=None).eval()
    with torch.no_grad():
        result = model({"input": grid, "sample_seed": torch.tensor([1, 2])})
    assert torch.isfinite(result["loss"]) and model.pad_grid(grid).shape == (64, 32, 64)
    # point clouds go through the adapter's gridding at voxel_size
    points = {"points": torch.rand(500, 3, generator=gen) * 2.0, "colors": torch.rand(500, 3, generator=gen)}
    pointgrid = encoder_input(Swin3D(embed_dim=12, depths=(1, 1), num_heads=(1, 2), voxel_size=0.1).spec, [points])
    assert pointgrid.values.shape[1] == 4 and pointgrid.cell_size == 0.1


def test_weight_decay_groups():
    model = small_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = model.param_groups(0.001)
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "mask_token" in undecayed and "encoder.stages.2.blocks.0.attn.relative_position_bias_table" in undecayed
    assert "encoder.stages.0.blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    everything = small_model(decay_everything=True).param_groups(0.001)
    assert len(everything) == 1 and len(everything[0]["params"]) == len(list(model.parameters()))


# ------------------------------------------------------------------ checkpoint layouts
def test_key_table_covers_the_original_swin_s_layouts():
    listing = json.loads((DATA / "nerf_mae_keys.json").read_text())
    with torch.device("meta"):
        model = NeRFMAE(Swin3D.from_preset("swin_s"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {}
    for key, spec in listing["pretrain_state_dict"].items():
        if key == "pos_embed" or key.endswith("relative_position_index"):
            continue
        mapped[rename_key(key, "pc3d")] = tuple(spec["shape"])
        assert rename_key(rename_key(key, "pc3d"), "original") == key
    assert mapped == ours
    assert listing["pretrain_state_dict"]["pos_embed"]["shape"] == [1, 40, 40, 40, 96]
    backbone = {k[len("base."):]: tuple(v["shape"]) for k, v in listing["finetune_backbone_state_dict"].items()
                if k.startswith("base.") and k != "base.pos_embed" and not k.endswith("relative_position_index")}
    encoder = {rename_key(k, "pc3d")[len("encoder."):]: v for k, v in backbone.items()}
    assert encoder == {k: tuple(v.shape) for k, v in model.encoder.state_dict().items()}


def test_export_writes_the_original_layout(tmp_path):
    model = import_nerf_mae_model(PRETRAIN)
    path = export_nerf_mae(model, tmp_path / "exported.pt", epoch=5)
    written, original = torch.load(path, weights_only=True), torch.load(PRETRAIN, weights_only=True)
    assert set(written) == {"epoch", "state_dict", "train_args"} and written["epoch"] == 5
    assert written["train_args"]["resolution"] == 32 and written["train_args"]["masking_prob"] == 0.75
    assert set(written["state_dict"]) == set(original["state_dict"])
    for key, value in original["state_dict"].items():
        assert written["state_dict"][key].dtype == value.dtype and torch.equal(written["state_dict"][key], value), key
    again = import_nerf_mae_model(path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="resolution"):
        export_nerf_mae(small_model(grid_size=None), tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_checkpoints_give_one_line_errors(tmp_path, finetune_file):
    original = torch.load(PRETRAIN, weights_only=True)
    state = original["state_dict"]
    point_mae = tmp_path / "point_mae.pt"
    torch.save({"base_model": {"MAE_encoder.norm.weight": torch.ones(8)}, "epoch": 1}, point_mae)
    with pytest.raises(CheckpointError) as found:
        import_nerf_mae_model(point_mae)
    assert "not a NeRF-MAE checkpoint" in _one_line(found)
    with pytest.raises(CheckpointError) as found:
        load_encoder(point_mae, format="nerf-mae")
    assert "not a NeRF-MAE checkpoint" in _one_line(found)

    wrong = dict(state)
    wrong["stages.1.1.attn.qkv.weight"] = torch.zeros(36, 13)
    del wrong["stages.2.1.norm2.weight"]
    path = tmp_path / "other_architecture.pt"
    torch.save({**original, "state_dict": wrong}, path)
    with pytest.raises(CheckpointError) as found:
        load_encoder(path)
    message = _one_line(found)
    assert "stages.1.1.attn.qkv.weight (36, 13) vs (36, 12)" in message and "stages.2.1.norm2.weight" in message

    trained = dict(state, pos_embed=state["pos_embed"] + 0.01)
    torch.save({**original, "state_dict": trained}, path)
    with pytest.raises(CheckpointError) as found:
        import_nerf_mae_model(path)
    assert "pos_embed differs" in _one_line(found)

    with pytest.raises(CheckpointError) as found:
        import_nerf_mae_model(finetune_file)
    assert "fine-tuned" in _one_line(found)


def test_train_args_saved_as_an_argparse_namespace_load_weights_only(tmp_path):
    original = torch.load(PRETRAIN, weights_only=True)
    path = tmp_path / "namespace.pt"
    torch.save({**original, "train_args": argparse.Namespace(**{**original["train_args"], "masking_prob": 0.5})}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what the plain loader does with it
    model = import_nerf_mae_model(path)
    assert model.mask_ratio == 0.5
    encoder, _ = load_encoder(path)  # auto-detection reads it too
    assert isinstance(encoder, Swin3D)
    other = tmp_path / "other.pt"  # any other file holding a Namespace is still refused, naming the class
    torch.save({"args": argparse.Namespace(lr=1.0)}, other)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        load_encoder(other)


SWIN_S = os.environ.get("PC3D_NERF_MAE_SWIN_S")


@pytest.mark.skipif(not SWIN_S, reason="set PC3D_NERF_MAE_SWIN_S to the original's Swin-S fixture folder "
                                       "(pretrain_ckpt.pt, finetune_ckpt.pt, reference_64.npz; 627 MB, not in the repo)")
def test_swin_s_checkpoint_at_64_cubed():
    folder = Path(SWIN_S)
    reference = np.load(folder / "reference_64.npz")
    model = import_nerf_mae_model(folder / "pretrain_ckpt.pt", method_overrides={"grid_size": 64}).double()
    values = torch.from_numpy(reference["input_u8_0"]).double()[None] / 255.0
    grid = DenseGrid(values, torch.ones(1, *values.shape[2:], dtype=torch.bool), torch.zeros(1, 3), 1.0)
    grid = model.pad_grid(grid)
    assert np.array_equal(grid.valid.numpy(), reference["valid"])
    mask = torch.from_numpy(reference["token_mask"])
    with torch.no_grad():
        for s, level in enumerate(model.encoder(grid).levels):
            assert rel_error(level.to_dense()[0], reference[f"feat{s}_f64"]) < 1e-10
        prediction = model.predict(grid, mask)
        losses = model.losses(grid, prediction, mask)
    assert rel_error(prediction, reference["pred_f64"]) < 1e-10
    assert abs(float(losses["loss"]) - float(reference["loss_f64"])) < 1e-10
    encoder, _ = load_encoder(folder / "finetune_ckpt.pt")
    with torch.no_grad():
        for s, level in enumerate(encoder.double()(grid).levels):
            assert rel_error(level.to_dense()[0], reference[f"feat{s}_f64"]) < 1e-10
