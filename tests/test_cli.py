"""End-to-end runs of the `pc3d` command line and its one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pc3d.cli import main

TINY = [
    "encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3", "encoder.num_groups=16",
    "encoder.group_size=16", "method.decoder_depth=1", "method.decoder_num_heads=3",
    "trainer.batch_size=8", "trainer.checkpoint_every=2",
]
TINY_SYNTH = ["data.train_per_class=6", "data.test_per_class=2", "data.num_points=256"]


def run_cli(*args, cwd=None):
    """The CLI in a subprocess (as a user runs it): returns (rc, stdout, stderr)."""
    env = dict(os.environ, PC3D_PROGRESS="0")
    proc = subprocess.run([sys.executable, "-m", "pc3d.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_pretrain_then_probe_on_embedded_synthetic_shapes(tmp_path, capsys):
    run = tmp_path / "run"
    synth = [f"data.root={tmp_path / 'synth'}", *TINY_SYNTH]
    assert main(["pretrain", *TINY, *synth, "trainer.max_steps=4", f"out_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"final_loss", "steps", "wall_s", "samples_per_s"} <= set(metrics) and metrics["steps"] == 4
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "step_00000004.pt").is_file()
    assert len((run / "losses.jsonl").read_text().splitlines()) == 4

    assert main(["probe", f"checkpoint={run}", *synth, f"out_dir={tmp_path / 'probe'}"]) == 0
    probe = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    for key in ("val_accuracy", "test_accuracy", "random_val_accuracy", "random_test_accuracy",
                "val_mean_class_accuracy", "random_val_mean_class_accuracy"):
        assert 0.0 <= probe[key] <= 1.0, key
    assert any(k.startswith("val_accuracy/") for k in probe)
    assert "random init" in capsys.readouterr().out


def test_resume_auto_extends_a_finished_run(tmp_path):
    run = tmp_path / "run"
    common = [*TINY, f"data.root={tmp_path / 'synth'}", *TINY_SYNTH, f"out_dir={run}"]
    assert main(["pretrain", *common, "trainer.max_steps=2"]) == 0
    assert main(["pretrain", *common, "trainer.max_steps=2"]) == 0  # nothing left to do
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


def test_point_mae_end_to_end_on_real_modelnet10(modelnet10_root, tmp_path):
    """Prepare the real ModelNet10 train split, pretrain a small Point-MAE, probe it."""
    run = tmp_path / "run"
    data = ["data=modelnet10", f"data.root={modelnet10_root}", "data.num_points=512"]
    assert main(["pretrain", *TINY, *data, "trainer.max_steps=30", "trainer.batch_size=16", "trainer.lr=2e-3",
                 "trainer.warmup_steps=3", "trainer.checkpoint_every=100", f"out_dir={run}"]) == 0
    losses = [json.loads(x)["loss"] for x in (run / "losses.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert main(["probe", f"checkpoint={run}", *data, f"out_dir={tmp_path / 'probe'}"]) == 0
    probe = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert probe["val_accuracy"] > 0.3 and probe["random_val_accuracy"] > 0.3  # 10 classes: chance 0.1
    assert "test_accuracy" not in probe  # the shared copy has no test split


def test_prep_modelnet_command(modelnet10_root, tmp_path):
    src = tmp_path / "tree"
    for name in ("chair", "toilet"):
        (src / name / "train").mkdir(parents=True)
        for f in sorted((modelnet10_root / name / "train").glob("*.pcd"))[:3]:
            (src / name / "train" / f.name).symlink_to(f)
    rc, out, err = run_cli("prep", "modelnet", f"src={src}", f"dst={tmp_path / 'prepared'}")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["classes"] == ["chair", "toilet"]


def _expect_one_line_error(rc, out, err, *fragments, absent=None):
    assert rc == 2, (rc, out, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("[pc3d]")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    if absent is not None:
        assert not Path(absent).exists(), f"partial output left in {absent}"


@pytest.mark.parametrize("args, fragments", [
    (["pretrain", "trainer.nonsense=1"], ["trainer.nonsense"]),
    (["pretrain", "data=modelnet10"], ["data.root"]),
    (["pretrain", "data=modelnet10", "data.root=/no/such/dir"], ["/no/such/dir", "does not exist"]),
    (["probe"], ["checkpoint"]),
    (["probe", "checkpoint=/no/such/run"], ["/no/such/run"]),
    (["frobnicate"], ["unknown command", "frobnicate"]),
    (["prep", "shapenet", "src=a", "dst=b"], ["unknown dataset", "shapenet"]),
    (["pretrain", "encoder.width=3"], ["encoder.width"]),
    (["pretrain", "method=no_such_method"], ["no_such_method"]),
    (["pretrain", "device=cuda:7"], ["cuda"]),
])
def test_bad_invocations_end_with_one_line(tmp_path, args, fragments):
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(*args, f"out_dir={out_dir}", "data.train_per_class=2", "data.test_per_class=1")\
        if args[0] == "pretrain" and "data=modelnet10" not in args else run_cli(*args, f"out_dir={out_dir}")
    _expect_one_line_error(rc, out, err, *fragments, absent=out_dir / "metrics.json")


def test_empty_dataset_tree_is_a_one_line_error(tmp_path):
    (tmp_path / "empty" / "chair" / "train").mkdir(parents=True)
    out_dir = tmp_path / "out"
    rc, out, err = run_cli("pretrain", "data=modelnet10", f"data.root={tmp_path / 'empty'}", f"out_dir={out_dir}")
    _expect_one_line_error(rc, out, err, str(tmp_path / "empty"), absent=out_dir)


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    rc, out, err = run_cli("probe", f"checkpoint={bad}", f"out_dir={tmp_path / 'out'}")
    _expect_one_line_error(rc, out, err, "bad.pt", absent=tmp_path / "out")


def test_help_lists_commands():
    rc, out, err = run_cli("--help")
    assert rc == 0 and "pretrain" in out and "probe" in out and "prep" in out
    assert "``" not in out and out.splitlines()[0].startswith("pc3d <command>")  # plain text, no reST markup


@pytest.mark.parametrize("args, groups, keys", [
    (["pretrain"], ["data: synthetic_shapes", "encoder: point_vit", "method: point_mae", "trainer: default"],
     ["out_dir: runs/pretrain", "max_steps:", "mask_ratio:"]),
    (["probe", "-h"], ["probe: object_svm", "data: synthetic_shapes"], ["checkpoint: ???", "Cs:"]),
    (["pretrain", "experiment=quickstart", "trainer.max_steps=7"], ["experiment: quickstart"], ["max_steps: 7"]),
    (["finetune"], ["data:"], ["out_dir:"]),
    (["fewshot"], ["data:"], ["out_dir:"]),
    (["export"], [], ["checkpoint: ???", "out: ???"]),
    (["detect", "train"], ["data: synthetic_rooms"], ["checkpoint: ???"]),
    (["viz", "features"], [], ["encoder: point_vit_scene", "checkpoint: ???", "scene: ???", "point_size:"]),
    (["prep", "modelnet"], [], ["src: ???", "num_surface_points:"]),
])
def test_command_help_lists_groups_and_keys(capsys, args, groups, keys):
    flag = [] if "-h" in args else ["--help"]
    assert main([*args, *flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(args[0]) and "``" not in out and f"usage: pc3d {args[0]}" in out
    for text in groups + keys:
        assert text in out, text
    if groups:  # the other options of a group are listed beside the chosen one
        assert "config groups" in out and "modelnet10" in out


def test_command_help_without_a_config_and_its_errors(capsys):
    assert main(["prep", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: pc3d prep NAME" in out and "modelnet" in out and "scannet" in out
    assert main(["detect", "--help"]) == 0
    assert "pc3d detect train|eval" in capsys.readouterr().out
    assert main(["viz", "--help"]) == 0
    assert "usage: pc3d viz features|recon" in capsys.readouterr().out
    for args, fragment in ((["frobnicate", "--help"], "unknown command"), (["prep", "nope", "--help"], "nope"),
                           (["pretrain", "encoder.width=3", "--help"], "encoder.width")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_export_writes_an_encoder_file_that_reproduces_the_checkpoint(tmp_path, capsys):
    import torch

    from pc3d.hub import load_encoder

    run = tmp_path / "run"
    assert main(["pretrain", *TINY, f"data.root={tmp_path / 'synth'}", *TINY_SYNTH, "trainer.max_steps=2",
                 f"out_dir={run}"]) == 0
    out = tmp_path / "enc.safetensors"
    assert main(["export", f"checkpoint={run}", f"out={out}"]) == 0
    assert "export:" in capsys.readouterr().out
    original, config = load_encoder(run)
    exported, exported_config = load_encoder(out)
    assert exported_config == config
    points = torch.randn(2, 256, 3)
    with torch.no_grad():
        assert torch.equal(original(points).global_feature, exported(points).global_feature)
    assert main(["export", f"checkpoint={run}", f"out={out}", "overwrite=true"]) == 0


def test_finetune_and_fewshot_commands_run_from_a_pretraining_run(tmp_path, capsys):
    run = tmp_path / "run"
    synth = [f"data.root={tmp_path / 'synth'}", "data.train_per_class=6", "data.test_per_class=3",
             "data.num_points=256"]
    assert main(["pretrain", *TINY, *synth, "trainer.max_steps=2", f"out_dir={run}"]) == 0
    assert main(["finetune", f"checkpoint={run}", *synth, "trainer.max_steps=3", "trainer.batch_size=8",
                 f"out_dir={tmp_path / 'ft'}"]) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["init"] == "pretrained" and metrics["steps"] == 3 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert main(["fewshot", f"checkpoint={run}", *synth, "fewshot.settings=[[3,2]]", "fewshot.folds=2",
                 "fewshot.queries_per_class=2", "trainer.max_steps=2", f"out_dir={tmp_path / 'fs'}"]) == 0
    fewshot = json.loads((tmp_path / "fs" / "metrics.json").read_text())
    assert {"3w2s_mean", "3w2s_std", "3w2s_fold0", "3w2s_fold1"} <= set(fewshot)
    out = capsys.readouterr().out
    assert "finetune (pretrained, 3 steps)" in out and "fewshot (pretrained, 2 folds" in out


def test_detect_train_then_eval_on_synthetic_rooms(tmp_path, capsys):
    run = tmp_path / "det"
    small = ["data.train_scenes=4", "data.val_scenes=2", "data.num_points=2048", "detect.num_groups=64",
             "detect.group_size=16", "encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3",
             "trainer.batch_size=2"]
    # 100 steps: a detector that finds boxes (mAP@0.25 0.139, @0.5 0.028 here), so eval has something to reproduce
    assert main(["detect", "train", "checkpoint=random", *small, "trainer.max_steps=100", f"out_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mAP25", "mAP50", "recall25", "recall50", "val_scenes", "init"} <= set(metrics)
    assert metrics["steps"] == 100 and metrics["val_scenes"] == 2
    assert metrics["mAP25"] > 0.05 and metrics["recall25"] > 0.05, metrics
    pngs = sorted(run.glob("bev_*.png"))
    assert len(pngs) == 2 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["detect", "eval", f"checkpoint={run}", *small, f"out_dir={tmp_path / 'eval'}"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # every per-class AP and recall, both thresholds: only the training-run fields differ
    trained = {k: v for k, v in metrics.items() if k not in ("wall_s", "train_final_loss")}
    assert {k: v for k, v in again.items() if k != "wall_s"} == trained
    assert main(["detect", "fit"]) == 2
    assert "usage: pc3d detect train|eval" in capsys.readouterr().err


def test_pretrain_on_rooms_then_detect_from_the_checkpoint(tmp_path):
    rooms = ["data=synthetic_rooms", "data.train_scenes=4", "data.val_scenes=1", "data.num_points=2048"]
    encoder = ["encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3"]
    pre = tmp_path / "pre"
    assert main(["pretrain", *rooms, *encoder, "encoder.num_groups=64", "encoder.group_size=32",
                 "method.decoder_depth=1", "method.decoder_num_heads=3", "trainer.batch_size=2",
                 "trainer.max_steps=2", f"out_dir={pre}"]) == 0
    det = tmp_path / "det"
    assert main(["detect", "train", f"checkpoint={pre}", *rooms, "detect.num_groups=96", "detect.group_size=16",
                 "trainer.batch_size=2", "trainer.max_steps=2", f"out_dir={det}"]) == 0
    metrics = json.loads((det / "metrics.json").read_text())
    assert metrics["init"] == "pretrained" and metrics["steps"] == 2


def test_detect_on_the_sparse_unet_train_then_eval(tmp_path):
    run = tmp_path / "det_unet"
    small = ["encoder=sparse_unet", "encoder.channels=[8,16,16,16,16]", "encoder.dec_channels=[16,16,16,8]",
             "encoder.blocks=[1,1,1,1,1]", "encoder.dec_blocks=[1,1,1,1]", "encoder.voxel_size=0.1",
             "encoder.stem_kernel=3", "encoder.window_size=32", "encoder.head_dim=8", "detect.level=2",
             "data.train_scenes=2", "data.val_scenes=1", "data.num_points=2048", "trainer.batch_size=2"]
    assert main(["detect", "train", "checkpoint=random", *small, "trainer.max_steps=2", f"out_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["init"] == "random"
    assert main(["detect", "eval", f"checkpoint={run}", "data.train_scenes=2", "data.val_scenes=1",
                 "data.num_points=2048", f"out_dir={tmp_path / 'eval'}"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mAP25"] == metrics["mAP25"]


def test_resume_extends_a_run_step_for_step(tmp_path, capsys):
    """2 steps, then 4: the first two logged losses and the step-2 checkpoint stay as they were (a resume
    that silently restarted from scratch would rewrite both), four lines, "resumed from" is said."""
    run = tmp_path / "run"
    common = [*TINY, f"data.root={tmp_path / 'synth'}", *TINY_SYNTH, f"out_dir={run}", "trainer.checkpoint_every=1",
              "trainer.keep_last=0", "encoder.drop_path_rate=0.1"]
    assert main(["pretrain", *common, "trainer.max_steps=2"]) == 0
    first = (run / "losses.jsonl").read_text().splitlines()
    step2 = run / "checkpoints" / "step_00000002.pt"
    kept = (step2.read_bytes(), step2.stat().st_mtime_ns)
    capsys.readouterr()
    assert main(["pretrain", *common, "trainer.max_steps=4"]) == 0
    assert f"resumed from {step2} at step 2" in capsys.readouterr().err
    lines = (run / "losses.jsonl").read_text().splitlines()
    assert len(lines) == 4 and lines[:2] == first
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert (step2.read_bytes(), step2.stat().st_mtime_ns) == kept
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4


def test_detection_from_a_pretraining_run_starts_from_its_weights(tmp_path, monkeypatch):
    import torch

    import pc3d.eval.detect as detect
    from pc3d.hub import load_encoder

    rooms = ["data=synthetic_rooms", "data.train_scenes=2", "data.val_scenes=1", "data.num_points=1024"]
    pre = tmp_path / "pre"
    assert main(["pretrain", *rooms, "encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3",
                 "encoder.num_groups=32", "encoder.group_size=16", "method.decoder_depth=1",
                 "method.decoder_num_heads=3", "trainer.batch_size=2", "trainer.max_steps=2",
                 f"out_dir={pre}"]) == 0
    seen = {}
    build = detect.build_detector

    def capture(encoder, data, settings):
        seen["state"] = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        seen["num_groups"] = encoder.num_groups
        return build(encoder, data, settings)

    monkeypatch.setattr(detect, "build_detector", capture)
    assert main(["detect", "train", f"checkpoint={pre}", *rooms, "detect.num_groups=48", "detect.group_size=16",
                 "trainer.batch_size=2", "trainer.max_steps=1", f"out_dir={tmp_path / 'det'}"]) == 0
    pretrained = load_encoder(pre)[0].state_dict()
    assert seen["num_groups"] == 48  # more patch tokens for scenes: a resolution setting, same weights
    assert set(seen["state"]) == set(pretrained)
    assert all(torch.equal(seen["state"][k], pretrained[k]) for k in pretrained)


def test_untrained_run_scores_exactly_its_random_init_baseline(tmp_path, capsys):
    """A pretraining run that learned nothing (one step at lr 1e-12, no weight decay) differs from its
    random-init baseline only in the batch-norm statistics that step left. With the probe's default
    norm_stats=data the two score exactly alike; with the stored statistics the same weights score differently
    (measured at quick-start scale: +11 points test), which is what the probe once credited to pretraining."""
    synth = [f"data.root={tmp_path / 'synth'}", "data.train_per_class=12", "data.test_per_class=4",
             "data.num_points=256"]
    run = tmp_path / "run"
    assert main(["pretrain", *TINY, *synth, "trainer.max_steps=1", "trainer.lr=1e-12", "trainer.warmup_lr_init=1e-12",
                 "trainer.min_lr=1e-12", "trainer.weight_decay=0", f"out_dir={run}"]) == 0
    encoder = [a for a in TINY if a.startswith("encoder.")]
    probes = {}
    for stats in ("data", "stored"):
        assert main(["probe", *encoder, *synth, f"checkpoint={run}", "probe.standardize=true",
                     "probe.labels_per_class=4", "probe.label_draws=3", f"probe.norm_stats={stats}",
                     f"out_dir={tmp_path / stats}"]) == 0
        probes[stats] = json.loads((tmp_path / stats / "metrics.json").read_text())
    same = probes["data"]
    keys = [k for k in same if k.startswith(("val_", "test_"))]
    assert len(keys) > 10 and all(same[k] == same[f"random_{k}"] for k in keys)
    stored = probes["stored"]
    assert any(stored[k] != stored[f"random_{k}"] for k in keys)
    printed = capsys.readouterr().out
    assert "4 labels per class x 3 draws" in printed
    assert "(pc3d.data.synthetic_shapes, 24 val / 48 test shapes" in printed  # 2 val of the 12 train, 4 test per class


def test_probe_random_baseline_is_the_seeded_random_run(tmp_path):
    """The random_* numbers next to a pretrained probe are those of checkpoint=random with the same seed
    and architecture — not of the pretrained encoder."""
    from omegaconf import OmegaConf

    from pc3d.eval import extract_global_features
    from pc3d.train.run import probe_encoders

    run = tmp_path / "run"
    synth = [f"data.root={tmp_path / 'synth'}", *TINY_SYNTH]
    assert main(["pretrain", *TINY, *synth, "trainer.max_steps=3", f"out_dir={run}"]) == 0
    assert main(["probe", f"checkpoint={run}", *synth, "seed=3", f"out_dir={tmp_path / 'with'}"]) == 0
    encoder = [a for a in TINY if a.startswith("encoder.")]
    assert main(["probe", "checkpoint=random", *encoder, *synth, "seed=3", f"out_dir={tmp_path / 'random'}"]) == 0
    both = json.loads((tmp_path / "with" / "metrics.json").read_text())
    alone = json.loads((tmp_path / "random" / "metrics.json").read_text())
    compared = [k for k in alone if k.startswith("random_")]  # a random-only probe reports under random_ too
    assert len(compared) > 5 and all(both[k] == alone[k] for k in compared), compared
    cfg = OmegaConf.create({"checkpoint": str(run), "seed": 3, "probe": {"baseline": True}})
    encoders = probe_encoders(cfg)
    points = np.random.default_rng(0).normal(size=(6, 256, 3)).astype(np.float32)
    assert not np.allclose(extract_global_features(encoders["pretrained"], points),
                           extract_global_features(encoders["random"], points))
