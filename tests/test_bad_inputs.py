"""Bad input across the CLI and the hub: one line on stderr, exit status 2, no partial output.

Each case names the input it breaks; ``expect`` is a fragment of the one-line message that
names the file / key and what was expected. After the failure neither ``out_dir`` nor the
export file may exist.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_shared
from pc3d.cli import main
from pc3d.errors import CheckpointError
from pc3d.hub import load_encoder, save_encoder

TINY = ["encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3", "encoder.num_groups=16",
        "encoder.group_size=16", "method.decoder_depth=1", "method.decoder_num_heads=3", "trainer.batch_size=8"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every broken (and one good) input the cases point at."""
    root = tmp_path_factory.mktemp("inputs")
    f = {}
    synth = root / "synth"
    f["synth"] = [f"data.root={synth}", "data.train_per_class=2", "data.test_per_class=1", "data.num_points=256"]
    run = root / "good_run"
    assert main(["pretrain", *TINY, *f["synth"], "trainer.max_steps=1", f"out_dir={run}"]) == 0
    f["good_run"] = run
    f["good_ckpt"] = run / "checkpoints" / "step_00000001.pt"

    blob = f["good_ckpt"].read_bytes()
    (root / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    f["truncated"] = root / "truncated.pt"
    (root / "notes.txt").write_text("these are not weights\n")
    f["text"] = root / "notes.txt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, root / "pickled.pth")
    f["pickled"] = root / "pickled.pth"
    (root / "empty_run" / "checkpoints").mkdir(parents=True)
    f["empty_run"] = root / "empty_run"
    (root / "torn.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\": {\"format\"")
    f["torn_safetensors"] = root / "torn.safetensors"

    encoder, config = load_encoder(run)
    save_encoder(encoder, root / "evil.safetensors", config)
    _rewrite_target(root / "evil.safetensors", "os.system")
    f["evil_safetensors"] = root / "evil.safetensors"

    # an original Point-MAE file whose norm has the wrong width
    mae = {"MAE_encoder.norm.weight": torch.ones(48), "MAE_encoder.norm.bias": torch.zeros(48),
           "MAE_encoder.pos_embed.2.weight": torch.zeros(40, 128)}
    torch.save({"base_model": mae, "epoch": 1}, root / "pointmae_bad.pth")
    f["pointmae_bad"] = root / "pointmae_bad.pth"

    # raw object trees: empty, a corrupt mesh, NaN coordinates, one shape only
    (root / "empty_tree").mkdir()
    f["empty_tree"] = root / "empty_tree"
    bad_off = root / "corrupt_tree" / "chair" / "train"
    bad_off.mkdir(parents=True)
    (bad_off / "chair_0001.off").write_text("OFF\n3 1 0\n0 0 0\n1 0\n")
    f["corrupt_tree"] = root / "corrupt_tree"
    nan_dir = root / "nan_tree" / "chair" / "train"
    nan_dir.mkdir(parents=True)
    cloud = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    cloud[7, 1] = np.nan
    np.save(nan_dir / "chair_0001.npy", cloud)
    f["nan_tree"] = root / "nan_tree"
    one = root / "one_tree" / "chair" / "train"
    one.mkdir(parents=True)
    np.save(one / "chair_0001.npy", np.random.default_rng(1).normal(size=(300, 3)).astype(np.float32))
    f["one_tree"] = root / "one_tree"

    # a checkpoint of another architecture (wider encoder)
    other = root / "other_run"
    assert main(["pretrain", *TINY, "encoder.embed_dim=96", *f["synth"], "trainer.max_steps=1",
                 f"out_dir={other}"]) == 0
    f["other_ckpt"] = other / "checkpoints" / "step_00000001.pt"
    (root / "exists.safetensors").write_bytes(b"keep me")
    f["existing_out"] = root / "exists.safetensors"
    f["root"] = root
    return f


def _rewrite_target(path: Path, target: str) -> None:
    """Replace the stored encoder _target_ in a pc3d encoder file's safetensors metadata."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    config = json.loads(metadata["pc3d_encoder_config"])
    config["_target_"] = target
    metadata["pc3d_encoder_config"] = json.dumps(config)
    save_file(load_file(str(path)), str(path), metadata=metadata)


def modelnet(f, tree):
    return ["data=modelnet10", f"data.root={f[tree]}"]


# (id, command + args built from the fixture files, fragment of the one-line message)
CASES = [
    # ---- pretrain: config
    ("unknown_key", lambda f: ["pretrain", "trainer.bogus=1"], "trainer.bogus"),
    ("unknown_config_group_option", lambda f: ["pretrain", "method=nope"], "method/nope"),
    ("override_without_value", lambda f: ["pretrain", "trainer.batch_size"], "trainer.batch_size"),
    ("unknown_encoder_argument", lambda f: ["pretrain", "+encoder.width=3", *f["synth"]], "encoder.width"),
    ("mask_ratio_out_of_range", lambda f: ["pretrain", *TINY, "method.mask_ratio=1.5", *f["synth"]],
     "mask_ratio must be in (0, 1)"),
    ("unknown_mask_type", lambda f: ["pretrain", *TINY, "method.mask_type=grid", *f["synth"]], "mask_type"),
    ("negative_steps", lambda f: ["pretrain", *TINY, "trainer.max_steps=-3", *f["synth"]], "need > 0"),
    ("unknown_precision", lambda f: ["pretrain", *TINY, "trainer.precision=fp16", *f["synth"]],
     "trainer.precision='fp16'"),
    ("cuda_without_cuda", lambda f: ["pretrain", *TINY, "device=cuda", *f["synth"]], "CUDA is not available"),
    # ---- every value type- and range-checked before anything is written (one line naming the key)
    ("steps_not_a_number", lambda f: ["pretrain", *TINY, "trainer.max_steps=abc", *f["synth"]],
     "trainer.max_steps='abc': expected an integer"),
    ("batch_size_zero", lambda f: ["pretrain", *TINY, "trainer.batch_size=0", *f["synth"]], "trainer.batch_size=0"),
    ("batch_size_negative", lambda f: ["pretrain", *TINY, "trainer.batch_size=-1", *f["synth"]],
     "trainer.batch_size=-1"),
    ("checkpoint_every_zero", lambda f: ["pretrain", *TINY, "trainer.checkpoint_every=0", *f["synth"]],
     "trainer.checkpoint_every=0"),
    ("log_every_zero", lambda f: ["pretrain", *TINY, "trainer.log_every=0", *f["synth"]], "trainer.log_every=0"),
    ("lr_not_a_number", lambda f: ["pretrain", *TINY, "trainer.lr=abc", *f["synth"]],
     "trainer.lr='abc': expected a number"),
    ("lr_zero", lambda f: ["pretrain", *TINY, "trainer.lr=0", *f["synth"]], "trainer.lr=0"),
    ("seed_not_a_number", lambda f: ["pretrain", *TINY, "seed=abc", *f["synth"]], "seed='abc'"),
    ("num_groups_zero", lambda f: ["pretrain", *TINY, "encoder.num_groups=0", *f["synth"]], "num_groups=0"),
    ("embed_dim_not_a_number", lambda f: ["pretrain", *TINY, "encoder.embed_dim=wide", *f["synth"]],
     "encoder.embed_dim='wide': expected an integer"),
    ("mask_ratio_masks_nothing", lambda f: ["pretrain", *TINY, "method.mask_ratio=0.01", *f["synth"]],
     "masks 0 of the 16 patches"),
    ("points_fewer_than_a_patch", lambda f: ["pretrain", *TINY, "encoder.group_size=300", *f["synth"]],
     "clouds of 256 points are too small"),
    ("device_mps_absent", lambda f: ["pretrain", *TINY, "device=mps", *f["synth"]], "no Apple MPS device"),
    ("misspelt_trainer_key", lambda f: ["pretrain", *TINY, "+trainer.max_step=5", *f["synth"]],
     "trainer.max_step (did you mean trainer.max_steps?)"),
    ("optimizer_unknown", lambda f: ["pretrain", *TINY, "trainer.optimizer=lamb", *f["synth"]],
     "trainer.optimizer='lamb'"),
    ("finetune_steps_not_a_number", lambda f: ["finetune", "checkpoint=random", "trainer.max_steps=x", *f["synth"]],
     "trainer.max_steps='x'"),
    ("probe_batch_zero", lambda f: ["probe", "checkpoint=random", "probe.batch_size=0", *f["synth"]],
     "probe.batch_size=0: expected an integer >= 1"),
    ("probe_seed_text", lambda f: ["probe", "checkpoint=random", "seed=x", *f["synth"]], "seed='x'"),
    ("probe_labels_short_class", lambda f: ["probe", "checkpoint=random", "probe.labels_per_class=5", *f["synth"]],
     "probe.labels_per_class=5: class 'sphere' (label 0) has only"),
    ("probe_misspelt_key", lambda f: ["probe", "checkpoint=random", "+probe.batchsize=3", *f["synth"]],
     "probe.batchsize"),
    ("finetune_vote_passes_text", lambda f: ["finetune", "checkpoint=random", "finetune.vote_passes=many",
                                             *f["synth"]], "finetune.vote_passes='many'"),
    ("fewshot_folds_text", lambda f: ["fewshot", "checkpoint=random", "fewshot.folds=ten", *f["synth"]],
     "fewshot.folds='ten'"),
    ("detect_hidden_dim_text", lambda f: ["detect", "train", "checkpoint=random", "detect.hidden_dim=big",
                                          "data.train_scenes=1", "data.val_scenes=1", "data.num_points=512"],
     "detect.hidden_dim='big'"),
    ("detect_nms_out_of_range", lambda f: ["detect", "train", "checkpoint=random", "detect.nms_iou=0",
                                           "data.train_scenes=1", "data.val_scenes=1", "data.num_points=512"],
     "detect.nms_iou=0"),
    ("overwrite_not_a_flag", lambda f: ["pretrain", *TINY, "overwrite=maybe", *f["synth"]], "overwrite='maybe'"),
    ("detect_batch_zero", lambda f: ["detect", "train", "checkpoint=random", "trainer.batch_size=0",
                                     "data.train_scenes=1", "data.val_scenes=1", "data.num_points=512"],
     "trainer.batch_size=0"),
    ("not_a_device", lambda f: ["pretrain", *TINY, "device=tpu9", *f["synth"]], "device='tpu9'"),
    # ---- pretrain: data
    ("missing_data_root", lambda f: ["pretrain", *TINY, "data=modelnet10", f"data.root={f['root'] / 'nope'}"],
     "nope"),
    ("empty_data_root", lambda f: ["pretrain", *TINY, *modelnet(f, "empty_tree")], "empty_tree"),
    ("corrupt_mesh_file", lambda f: ["pretrain", *TINY, *modelnet(f, "corrupt_tree")], "chair_0001.off"),
    ("nan_in_data", lambda f: ["pretrain", *TINY, *modelnet(f, "nan_tree")], "NaN"),
    ("batch_larger_than_dataset", lambda f: ["pretrain", *TINY, *modelnet(f, "one_tree"), "data.num_points=256"],
     "larger than the dataset"),
    # ---- pretrain: resume
    ("resume_missing_file", lambda f: ["pretrain", *TINY, *f["synth"], f"resume={f['root'] / 'none.pt'}"],
     "none.pt: checkpoint file not found"),
    ("resume_truncated_checkpoint", lambda f: ["pretrain", *TINY, *f["synth"], f"resume={f['truncated']}"],
     "truncated.pt: not a readable torch file"),
    ("resume_other_architecture", lambda f: ["pretrain", *TINY, *f["synth"], f"resume={f['other_ckpt']}"],
     "does not match this model"),
    ("resume_foreign_file", lambda f: ["pretrain", *TINY, *f["synth"], f"resume={f['pointmae_bad']}"],
     "not a pc3d training checkpoint"),
    # ---- probe
    ("probe_without_checkpoint", lambda f: ["probe"], "checkpoint=..."),
    ("probe_text_file", lambda f: ["probe", f"checkpoint={f['text']}", *f["synth"]], "unknown checkpoint format"),
    ("probe_pickled_objects", lambda f: ["probe", f"checkpoint={f['pickled']}", *f["synth"]],
     "pickled Python objects (argparse.Namespace)"),
    ("probe_empty_run_dir", lambda f: ["probe", f"checkpoint={f['empty_run']}", *f["synth"]],
     "no readable checkpoint"),
    ("probe_truncated_checkpoint", lambda f: ["probe", f"checkpoint={f['truncated']}", *f["synth"]],
     "truncated.pt"),
    ("probe_torn_safetensors", lambda f: ["probe", f"checkpoint={f['torn_safetensors']}", *f["synth"]],
     "torn.safetensors"),
    ("probe_untrusted_target", lambda f: ["probe", f"checkpoint={f['evil_safetensors']}", *f["synth"]],
     "_target_='os.system' is not a pc3d encoder class"),
    ("probe_bad_levels", lambda f: ["probe", "checkpoint=random", "probe.levels=middle", *f["synth"]],
     "probe.levels='middle'"),
    ("probe_bad_C", lambda f: ["probe", "checkpoint=random", "probe.Cs=[0.0]", *f["synth"]], "probe.Cs"),
    # ---- finetune / fewshot
    ("finetune_truncated_checkpoint", lambda f: ["finetune", f"checkpoint={f['truncated']}", *f["synth"]],
     "truncated.pt"),
    ("finetune_dropout_out_of_range", lambda f: ["finetune", "checkpoint=random", "finetune.dropout=1.5",
                                                 *f["synth"]], "finetune.dropout must be in [0, 1)"),
    ("fewshot_more_ways_than_classes", lambda f: ["fewshot", "checkpoint=random", "fewshot.settings=[[13,1]]",
                                                  *f["synth"]], "13"),
    # ---- export
    ("export_wrong_suffix", lambda f: ["export", f"checkpoint={f['good_run']}", f"out={f['root'] / 'enc.pt'}"],
     "must end in .safetensors"),
    ("export_would_overwrite", lambda f: ["export", f"checkpoint={f['good_run']}", f"out={f['existing_out']}"],
     "pass overwrite=true"),
    ("export_shape_mismatch", lambda f: ["export", f"checkpoint={f['pointmae_bad']}",
                                         f"out={f['root'] / 'out1.safetensors'}"], "MAE_encoder.pos_embed"),
    ("export_unknown_format", lambda f: ["export", f"checkpoint={f['good_run']}", "format=onnx",
                                         f"out={f['root'] / 'out2.safetensors'}"], "format: unknown value 'onnx'"),
    ("export_forced_wrong_format", lambda f: ["export", f"checkpoint={f['good_ckpt']}", "format=point-mae",
                                              f"out={f['root'] / 'out3.safetensors'}"], "not a Point-MAE checkpoint"),
    ("export_truncated", lambda f: ["export", f"checkpoint={f['truncated']}", f"out={f['root'] / 'out4.safetensors'}"],
     "truncated.pt"),
    ("export_missing_out", lambda f: ["export", f"checkpoint={f['good_run']}"], "out=..."),
    # ---- scenes (issue #4) and detect
    ("msm_on_object_data", lambda f: ["pretrain", "method=msm", "encoder=sparse_unet", *f["synth"]],
     "method=msm needs scans with colour and normals"),
    ("msm_bad_mask_ratio", lambda f: ["pretrain", "method=msm", "encoder=sparse_unet", "method.mask_ratio=1.5",
                                      *f["synth"]], "mask_ratio=1.5"),
    ("msm_on_point_vit", lambda f: ["pretrain", "method=msm", *f["synth"]], "MSM needs a SparseUNet encoder"),
    ("scene_probe_on_object_data", lambda f: ["probe", "probe=scene_linear", "checkpoint=random",
                                              "encoder=sparse_unet", *f["synth"]],
     "the scene probe needs scans with labels"),
    ("scene_probe_train_turns_three", lambda f: ["probe", "probe=scene_linear", "checkpoint=random",
                                                 "encoder=sparse_unet", "probe.train_turns=3", *f["synth"]],
     "probe.train_turns=3"),
    ("scene_probe_unknown_alignment", lambda f: ["probe", "probe=scene_knn", "checkpoint=random",
                                                 "encoder=sparse_unet", "probe.align=gravity", *f["synth"]],
     "probe.align='gravity'"),
    ("detect_axis_aligned_val_turned_45", lambda f: ["detect", "train", "checkpoint=random", "data=scannet",
                                                     f"data.root={require_shared('scannet')}",
                                                     "detect.val_rotation=45", "data.num_points=512"],
     "detect.val_rotation=45: this data's boxes are axis-aligned"),
    ("detect_eval_on_a_pretrain_run", lambda f: ["detect", "eval", f"checkpoint={f['good_run']}",
                                                 "data.train_scenes=1", "data.val_scenes=1", "data.num_points=512"],
     "not a `pc3d detect train` checkpoint"),
    # ---- prep / commands
    ("prep_unknown_dataset", lambda f: ["prep", "shapenet"], "unknown dataset for prep: 'shapenet'"),
    ("prep_bad_num_points", lambda f: ["prep", "modelnet", f"src={f['one_tree']}", f"dst={f['root'] / 'dst0'}",
                                       "num_points=0"], "num_points"),
    ("prep_missing_source", lambda f: ["prep", "modelnet", f"src={f['root'] / 'nope'}", f"dst={f['root'] / 'dst'}"],
     "nope"),
    ("unknown_command", lambda f: ["train"], "unknown command 'train'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(case, files, tmp_path, capsys):
    name, build, expect = case
    args = build(files)
    out_dir = tmp_path / "out"
    if args[0] in ("pretrain", "probe", "finetune", "fewshot", "detect"):
        args = [*args, f"out_dir={out_dir}"]
    if args[0] in ("pretrain", "finetune", "fewshot") and len(args) > 2 and not any("max_steps" in a for a in args):
        # should a case wrongly start, it ends at once
        args = [*args, "trainer.max_steps=1"]
    before = {p for p in files["root"].rglob("*")}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(("pc3d: error:", "pc3d: config error:")), err
    assert expect in err, err
    assert not out_dir.exists()
    created = {p for p in files["root"].rglob("*")} - before
    assert not [p for p in created if p.suffix == ".safetensors" or p.name == "metrics.json"], created
    assert files["existing_out"].read_bytes() == b"keep me"


def test_more_processes_than_samples_is_one_line_error(files, tmp_path):
    """`torchrun --nproc_per_node=2` on a one-shape dataset."""
    out = tmp_path / "out"
    env = dict(os.environ, PC3D_PROGRESS="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pc3d.cli",
           "pretrain", *TINY, "trainer.batch_size=2", *modelnet(files, "one_tree"), "data.num_points=256",
           f"out_dir={out}", "device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("pc3d: error:")]
    assert lines and all("2 processes but the training dataset has only 1 samples" in x for x in lines), proc.stderr
    assert not out.exists()


def test_hub_truncated_checkpoint_raises_checkpoint_error(files):
    with pytest.raises(CheckpointError) as info:
        load_encoder(files["truncated"])
    assert "\n" not in str(info.value) and "truncated.pt" in str(info.value)

