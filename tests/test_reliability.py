"""Nothing a user wrote is lost, and every mistake is one line with exit status 2 and nothing written.

One test (or a parametrised family) per class of fault found by trying pc3d as a hostile user would:
data loss by prep and by runs into occupied directories, concurrent runs, resumes with changed
settings, metrics after a resume, retyped weights, readers whose header disagrees with their data,
full / read-only disks, names that are not UTF-8, file modes, stale temporaries, and messages. Each
asserts the exit status, the one-line message and that the files present before are byte-identical.
"""

import contextlib
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3", "encoder.num_groups=16",
        "encoder.group_size=16", "encoder.drop_path_rate=0", "method.decoder_depth=1", "method.decoder_num_heads=3",
        "method.decoder_drop_path_rate=0", "trainer.batch_size=4", "device=cpu"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (the lock file excluded: it carries no content)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".pc3d.lock"}


def fails_with(capsys, args: list[str], fragment: str, after_progress: bool = False) -> str:
    """``main(args)`` exits 2 with one error line containing ``fragment``; a run that failed after it
    started (``after_progress``) may have logged its progress lines before that."""
    capsys.readouterr()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    if after_progress:
        assert all(line.startswith("[pc3d] ") for line in lines[:-1]), lines
        lines = lines[-1:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("pc3d: ") and fragment in lines[0], lines
    return lines[0]


@pytest.fixture
def synth(tmp_path):
    return [f"data.root={tmp_path / 'synth'}", "data.train_per_class=2", "data.test_per_class=1",
            "data.num_points=256"]


def pretrain(out: Path, synth: list[str], *extra: str) -> int:
    return main(["pretrain", *TINY, *synth, f"out_dir={out}", "trainer.checkpoint_every=1", "trainer.keep_last=0",
                 *extra])


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- prep never destroys a user's folder
def _user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.txt").write_text("three years of work\n")
    (path / "data.bin").write_bytes(b"\x00\x01" * 100)
    return path


def _object_tree(root: Path) -> Path:
    for cls in ("chair", "table"):
        folder = root / cls / "train"
        folder.mkdir(parents=True)
        for i in range(3):
            np.save(folder / f"{cls}_{i}.npy", np.random.default_rng(i).normal(size=(300, 3)).astype(np.float32))
    return root


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_prep_refuses_a_destination_it_did_not_write(tmp_path, capsys, kind):
    tree = _object_tree(tmp_path / "tree")
    if kind == "folder":
        dst = _user_folder(tmp_path / "dst")
    else:
        dst = tmp_path / "dst.txt"
        dst.write_text("mine\n")
    before = snapshot(tmp_path)
    fails_with(capsys, ["prep", "modelnet", f"src={tree}", f"dst={dst}", "num_points=256"], "pc3d did not prepare"
               if kind == "folder" else "is an existing file")
    assert snapshot(tmp_path) == before
    # its own output is refreshed freely; another folder only with force=true
    own = tmp_path / "own"
    assert main(["prep", "modelnet", f"src={tree}", f"dst={own}", "num_points=256"]) == 0
    assert main(["prep", "modelnet", f"src={tree}", f"dst={own}", "num_points=128"]) == 0
    assert main(["prep", "modelnet", f"src={tree}", f"dst={dst}", "num_points=256", "force=true"]) == 0
    assert (dst / "manifest.json").is_file()


def test_prep_refuses_a_prepared_cache_that_also_holds_a_users_file(tmp_path, capsys):
    """A cache is replaced as a whole: a file the user put into it would go with it, so it is refused by name."""
    from pc3d.data.prepared import write_object_cache

    tree = _object_tree(tmp_path / "tree")
    dst = tmp_path / "cache"
    assert main(["prep", "modelnet", f"src={tree}", f"dst={dst}", "num_points=256"]) == 0
    (dst / "my_notes.txt").write_text("which shapes I removed, and why\n")
    (dst / "figures").mkdir()
    before = snapshot(tmp_path)
    fails_with(capsys, ["prep", "modelnet", f"src={tree}", f"dst={dst}", "num_points=128"],
               f"dst={dst} holds {dst / 'figures'} and 1 more, which pc3d did not prepare")
    from pc3d.errors import ConfigError

    with pytest.raises(ConfigError, match="my_notes.txt, which pc3d did not prepare"):
        (dst / "figures").rmdir()
        write_object_cache(dst, np.zeros((1, 4, 3), np.float32), np.zeros(1), ["train"], ["a"], ["chair"])
    (dst / "figures").mkdir()
    assert snapshot(tmp_path) == before
    assert main(["prep", "modelnet", f"src={tree}", f"dst={dst}", "num_points=128", "force=true"]) == 0


def test_scene_prep_and_generated_data_refuse_a_users_folder(tmp_path, capsys, shared_data):
    dst = _user_folder(tmp_path / "dst")
    before = snapshot(tmp_path)
    fails_with(capsys, ["prep", "scannet", f"src={shared_data / 'scannet'}", f"dst={dst}"], "pc3d did not prepare")
    # the embedded synthetic shapes are generated into data.root: never into someone's folder
    fails_with(capsys, ["pretrain", *TINY, f"data.root={dst}", "data.num_points=256", f"out_dir={tmp_path / 'run'}"],
               "pc3d did not prepare")
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- one run per directory
def test_resume_never_into_another_runs_directory(tmp_path, capsys, synth):
    run = tmp_path / "run"
    assert pretrain(run, synth, "trainer.max_steps=3") == 0
    before = snapshot(run)
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.max_steps=3", "trainer.lr=0.01",
                        "resume=never"], "holds a run with other settings: trainer.lr=0.01")
    assert snapshot(run) == before
    # the same settings started afresh: the old run's files go first, nothing mixes
    assert pretrain(run, synth, "trainer.max_steps=2", "resume=never") == 2  # a different step count is refused
    assert pretrain(run, synth, "trainer.max_steps=3", "resume=never") == 0
    assert len(losses(run)) == 3 and sorted(p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".pt") == \
        ["step_00000001.pt", "step_00000002.pt", "step_00000003.pt"]
    # overwrite=true replaces a run of any settings, removing its files first
    assert pretrain(run, synth, "trainer.max_steps=2", "trainer.lr=0.01", "overwrite=true") == 0
    assert len(losses(run)) == 2 and sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["step_00000001.pt", "step_00000002.pt"]


def test_resume_with_changed_settings_names_each_and_writes_nothing(tmp_path, capsys, synth):
    run = tmp_path / "run"
    assert pretrain(run, synth, "trainer.max_steps=2") == 0
    before = snapshot(run)
    err = fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.max_steps=2", "seed=5",
                              "trainer.lr=0.002"], "holds a run with other settings")
    assert "seed=5 (the run has 0)" in err and "trainer.lr=0.002 (the run has 0.001)" in err
    assert snapshot(run) == before  # config.yaml still says what ran
    # extending the run is allowed, printed and recorded; config.yaml then says what ran
    capsys.readouterr()
    assert pretrain(run, synth, "trainer.max_steps=4") == 0
    assert "trainer.max_steps 2 → 4" in capsys.readouterr().err
    history = [json.loads(x) for x in (run / "run_history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {"trainer.max_steps": [2, 4]} and history[-1]["resumed_at_step"] == 2
    assert "max_steps: 4" in (run / "config.yaml").read_text() and len(losses(run)) == 4
    # shortening a run is not an extension
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.checkpoint_every=1",
                        "trainer.keep_last=0", "trainer.max_steps=3"], "trainer.max_steps=3 (the run has 4)")


def test_resume_with_a_key_added_or_removed_names_it(tmp_path, capsys, synth):
    """``~key`` / ``+key=…`` change what a run computes as surely as a changed value: refused, named."""
    run = tmp_path / "run"
    assert pretrain(run, synth, "trainer.max_steps=2") == 0
    before = snapshot(run)
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.max_steps=3", "~method.mask_ratio"],
               "holds a run with other settings: method.mask_ratio removed (the run has 0.6)")
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.max_steps=3", "+encoder.cls_token=true"],
               "encoder.cls_token=true (the run has no encoder.cls_token)")
    assert snapshot(run) == before


@pytest.mark.parametrize("content", ["- my\n- list\n", "name: [unclosed\n", "name: my project\nlr: 3\n"],
                         ids=["list", "not_yaml", "other_keys"])
def test_a_config_yaml_pc3d_did_not_write_is_never_overwritten(tmp_path, capsys, synth, content):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text(content)
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={folder}", "trainer.max_steps=1"],
               f"out_dir={folder} holds a config.yaml that is not a pc3d run config")
    fails_with(capsys, ["probe", "checkpoint=random", *synth, f"out_dir={folder}"], "is not a pc3d run config")
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["config.yaml", "notes.txt"]


def test_a_rerun_of_a_complete_run_changes_nothing(tmp_path, synth):
    """Running a finished command again trains no step and keeps the metrics it reported (not 0 samples/s)."""
    run = tmp_path / "run"
    assert pretrain(run, synth, "trainer.max_steps=2") == 0
    kept = {k: v for k, v in snapshot(run).items() if not k.startswith("tb/")}
    assert pretrain(run, synth, "trainer.max_steps=2") == 0
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("tb/")} == kept
    assert json.loads((run / "metrics.json").read_text())["samples_per_s"] > 0


def test_final_loss_after_a_resume_is_the_uninterrupted_runs(tmp_path, synth):
    """A run stopped after step 3 of 6 (as a kill leaves it: checkpoints and log up to 3) and resumed reports
    the final loss of the whole run, not of the steps since the resume."""
    import shutil

    assert pretrain(tmp_path / "full", synth, "trainer.max_steps=6") == 0
    shutil.copytree(tmp_path / "full", tmp_path / "parts")
    for late in (4, 5, 6):
        (tmp_path / "parts" / "checkpoints" / f"step_{late:08d}.pt").unlink()
    log = (tmp_path / "parts" / "losses.jsonl").read_text().splitlines()[:3]
    (tmp_path / "parts" / "losses.jsonl").write_text("\n".join(log) + "\n")
    (tmp_path / "parts" / "metrics.json").unlink()
    assert pretrain(tmp_path / "parts", synth, "trainer.max_steps=6") == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    parts = json.loads((tmp_path / "parts" / "metrics.json").read_text())
    assert losses(tmp_path / "parts") == losses(tmp_path / "full")
    assert parts["final_loss"] == full["final_loss"] == pytest.approx(np.mean(losses(tmp_path / "full")))


def test_a_second_process_on_a_running_directory_fails_at_once(tmp_path, synth):
    run = tmp_path / "run"
    env = dict(os.environ, PC3D_PROGRESS="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pc3d.cli", "pretrain", *TINY, *synth, f"out_dir={run}",
           "trainer.checkpoint_every=1", "trainer.keep_last=2"]
    first = subprocess.Popen([*cmd, "trainer.max_steps=100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not list((run / "checkpoints").glob("step_*.pt")) and time.monotonic() < deadline:
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.05)
        second = subprocess.run([*cmd, "trainer.max_steps=100000"], capture_output=True, text=True, env=env,
                                cwd=REPO, timeout=240)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"pc3d: error: out_dir={run} is in use by another running pc3d process; wait for it to finish or "
            "choose another out_dir"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # SIGKILL leaves no stale lock: the next run takes the directory and continues the run
    third = subprocess.run([*cmd, "trainer.max_steps=100000", "trainer.max_steps=3", "overwrite=true"],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert third.returncode == 0, third.stderr[-2000:]


def test_out_dir_that_is_a_file(tmp_path, capsys, synth):
    target = tmp_path / "results.txt"
    target.write_text("mine\n")
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={target}", "trainer.max_steps=1"], "is a file")
    assert target.read_text() == "mine\n"


def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path, synth):
    run = tmp_path / "run"
    assert pretrain(run, synth, "trainer.max_steps=2") == 0
    torn = run / "checkpoints" / ".step_00000003.pt.x7f2.tmp"
    torn.write_bytes(b"PK\x03\x04")
    (run / ".metrics.json.ab12.tmp").write_text("{")
    assert pretrain(run, synth, "trainer.max_steps=3") == 0
    assert not torn.exists() and not (run / ".metrics.json.ab12.tmp").exists()


# ----------------------------------------------------------------------------- weights of the wrong type
def test_retyped_or_non_finite_weights_are_refused_by_name(tmp_path, capsys, synth):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pc3d.errors import CheckpointError
    from pc3d.hub import load_encoder, save_encoder

    assert pretrain(tmp_path / "run", synth, "trainer.max_steps=1") == 0
    encoder, config = load_encoder(tmp_path / "run")
    good = save_encoder(encoder, tmp_path / "enc.safetensors", config)
    with safe_open(str(good), "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    retyped = dict(tensors, **{"norm.weight": tensors["norm.weight"].view(torch.int32)})  # same bytes, int type
    save_file(retyped, str(tmp_path / "retyped.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"retyped.safetensors: encoder weights have the wrong type: "
                                              r"\['norm.weight is torch.int32, expected torch.float32'\]"):
        load_encoder(tmp_path / "retyped.safetensors")
    nan = dict(tensors, **{"norm.bias": torch.full_like(tensors["norm.bias"], float("nan"))})
    save_file(nan, str(tmp_path / "nan.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="nan.safetensors: encoder weights hold NaN/inf values"):
        load_encoder(tmp_path / "nan.safetensors")
    before = snapshot(tmp_path)
    fails_with(capsys, ["probe", f"checkpoint={tmp_path / 'retyped.safetensors'}", *synth,
                        f"out_dir={tmp_path / 'probe'}"], "norm.weight is torch.int32")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- readers: header and data agree
def _pcd(header_points: int, data_points: int) -> bytes:
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
              f"WIDTH {header_points}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {header_points}\nDATA binary\n")
    return header.encode() + np.arange(data_points * 3, dtype="<f4").tobytes()


def _ply(declared: int, stored: int, binary: bool) -> bytes:
    kind = "binary_little_endian" if binary else "ascii"
    header = (f"ply\nformat {kind} 1.0\nelement vertex {declared}\nproperty float x\nproperty float y\n"
              "property float z\nend_header\n").encode()
    if binary:
        return header + struct.pack(f"<{3 * stored}f", *range(3 * stored))
    return header + "".join(f"{i} {i + 1} {i + 2}\n" for i in range(stored)).encode()


@pytest.mark.parametrize("name, content, fragment", [
    ("undercount.pcd", _pcd(5, 10), "header says POINTS 5"),
    ("truncated.pcd", _pcd(10, 5), "truncated binary PCD"),
    ("undercount_binary.ply", _ply(5, 10, True), "beyond the 5 elements"),
    ("undercount_ascii.ply", _ply(5, 10, False), "beyond the 5 elements"),
    ("undercount.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n9 9 9\n", "header count mismatch"),
])
def test_a_header_that_disagrees_with_its_data_is_an_error(tmp_path, capsys, name, content, fragment):
    from pc3d.data.io import read_points
    from pc3d.errors import DataFormatError

    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataFormatError, match=fragment) as info:
        read_points(tmp_path / name)
    assert name in str(info.value) and "\n" not in str(info.value)
    tree = tmp_path / "tree" / "chair" / "train"
    tree.mkdir(parents=True)
    (tree / name).write_bytes(content)
    fails_with(capsys, ["prep", "modelnet", f"src={tmp_path / 'tree'}", f"dst={tmp_path / 'dst'}"], name)
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------- full and read-only disks
@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only); skipped where this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()}); the simulated "
                    "full-disk test covers the same path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, synth):
    with small_disk(tmp_path / "disk", "40m") as disk:
        run = disk / "run"
        assert pretrain(run, synth, "trainer.max_steps=2") == 0
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * max(free - 200_000, 0))  # room for logs, not for a checkpoint
        before = {k: v for k, v in snapshot(run).items()}
        err = fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.checkpoint_every=1",
                                  "trainer.keep_last=0", "trainer.max_steps=3"], "No space left on device",
                         after_progress=True)
        assert "at step 3; the last complete checkpoint is" in err and "step_00000002.pt" in err
        after = snapshot(run)
        # what the run had completed is intact (config.yaml already says the run now aims at 3 steps)
        for name in ("checkpoints/step_00000001.pt", "checkpoints/step_00000002.pt", "metrics.json"):
            assert after[name] == before[name], name
        assert not [p for p in run.rglob("*.tmp")]
        # export onto the full disk: one line, no partial file
        filler.write_bytes(b"\0" * max(free - 20_000, 0))
        fails_with(capsys, ["export", f"checkpoint={run}", f"out={disk / 'enc.safetensors'}"],
                   "No space left on device")
        assert not (disk / "enc.safetensors").exists()


def test_a_read_only_disk_is_one_line(tmp_path, capsys, synth):
    with small_disk(tmp_path / "disk", "40m") as disk:
        run = disk / "run"
        assert pretrain(run, synth, "trainer.max_steps=2") == 0
        before = snapshot(run)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.checkpoint_every=1",
                            "trainer.keep_last=0", "trainer.max_steps=3"], "Read-only file system", after_progress=True)
        fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={disk / 'new'}", "trainer.max_steps=1"],
                   "Read-only file system")
        assert snapshot(run) == before


def test_a_failing_write_keeps_the_previous_file_simulated(tmp_path, capsys, synth, monkeypatch):
    """The same fault without a small disk: the checkpoint writer's torch.save fails as a full disk makes it."""
    import pc3d.train.checkpoint as checkpoint

    run = tmp_path / "run"
    assert pretrain(run, synth, "trainer.max_steps=2") == 0
    before = snapshot(run)

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04" + b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    err = fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.checkpoint_every=1",
                              "trainer.keep_last=0", "trainer.max_steps=3"], "step_00000003.pt", after_progress=True)
    assert "the last complete checkpoint is" in err and "inline_container" not in err
    after = snapshot(run)
    kept = [k for k in before if k not in ("losses.jsonl", "config.yaml")]  # the log grew by step 3
    assert kept and all(after[k] == before[k] for k in kept)
    assert not [p for p in run.rglob("*.tmp")]


# ----------------------------------------------------------------------------- names, modes, messages
def test_names_that_are_not_utf8_work(tmp_path):
    root = os.fsencode(tmp_path / "tree")
    for cls in (b"chair", b"t\xe9ble"):
        folder = root + b"/" + cls + b"/train"
        os.makedirs(folder)
        for i in range(3):
            np.save(os.fsdecode(folder + b"/sh\xffape_%d.npy" % i),
                    np.random.default_rng(i).normal(size=(300, 3)).astype(np.float32))
    dst = tmp_path / "dst"
    assert main(["prep", "modelnet", f"src={tmp_path / 'tree'}", f"dst={dst}", "num_points=256"]) == 0
    names = np.load(dst / "names.npy")
    assert os.fsencode(str(names[0])).endswith(b"sh\xffape_0.npy")
    assert main(["pretrain", *TINY, "data=modelnet10", f"data.root={dst}", "data.num_points=256",
                 "trainer.batch_size=2", "trainer.max_steps=1", f"out_dir={tmp_path / 'run'}"]) == 0


def test_names_outside_ascii_on_the_command_line(tmp_path, capsys, synth):
    """Hydra's grammar reads non-ASCII only inside quotes: pc3d quotes such a value, so ``out_dir=/…/modèle``
    works as typed; an out_dir whose name is not UTF-8 (which TensorBoard cannot write to) is one line."""
    run = tmp_path / "modèle"
    assert main(["pretrain", *TINY, *synth, f"out_dir={run}", "trainer.max_steps=1"]) == 0
    assert (run / "checkpoints" / "step_00000001.pt").is_file()
    assert main(["export", f"checkpoint={run}", f"out={tmp_path / 'écrit.safetensors'}"]) == 0
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/r\xffn")
    before = snapshot(tmp_path)
    fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={bad}", "trainer.max_steps=1"],
               "r\\xffn: the name is not valid UTF-8")
    assert snapshot(tmp_path) == before and not os.path.exists(bad)


def test_written_files_respect_the_umask(tmp_path):
    from pc3d.utils.atomic import atomic_replace_dir, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_replace_dir(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
        os.umask(0o002)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o664


def test_messages_are_short_name_the_file_and_never_advise_the_unsafe_load(tmp_path, capsys, synth):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    err = fails_with(capsys, ["probe", f"checkpoint={tmp_path / 'evil.pt'}", *synth, f"out_dir={tmp_path / 'p1'}"],
                     "evil.pt: holds pickled Python objects (posix.system)")
    assert "weights_only" not in err
    # a checkpoint of another architecture: the file and a short reason
    assert pretrain(tmp_path / "wide", synth, "trainer.max_steps=1", "encoder.embed_dim=96") == 0
    err = fails_with(capsys, ["pretrain", *TINY, *synth, f"out_dir={tmp_path / 'narrow'}", "trainer.max_steps=2",
                              f"resume={tmp_path / 'wide' / 'checkpoints' / 'step_00000001.pt'}"],
                     "step_00000001.pt: does not match this model")
    assert len(err) < 400, err
    # a run whose only checkpoint is truncated: one line
    blob = (tmp_path / "wide" / "checkpoints" / "step_00000001.pt").read_bytes()
    (tmp_path / "wide" / "checkpoints" / "step_00000001.pt").write_bytes(blob[: len(blob) // 3])
    fails_with(capsys, ["probe", f"checkpoint={tmp_path / 'wide'}", *synth, f"out_dir={tmp_path / 'p2'}"],
               "no readable checkpoint")
