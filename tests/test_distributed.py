"""Real multi-process and kill/resume runs: torchrun (gloo, CPU) and SIGKILL'd subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from pc3d.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from pc3d.train.distributed import SyncBatchNorm, convert_sync_batchnorm

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "helpers" / "ddp_worker.py"
TINY = [
    "encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3", "encoder.num_groups=16",
    "encoder.group_size=16", "encoder.drop_path_rate=0", "method.decoder_depth=1", "method.decoder_num_heads=3",
    "method.decoder_drop_path_rate=0", "trainer.batch_size=8",
]
# Biases directly followed by BatchNorm (through a max-pool for conv1b): their true gradient is 0,
# so Adam turns float noise of ~1e-9 into ±lr steps that differ between any two summation
# orders; the running means absorb them. Everything else must agree to PARAM_TOL: a tenth of
# one Adam step at lr 1e-3 (measured: 3.2e-5 after 6 steps; the losses agree to 7e-7 relative).
BN_INVARIANT = ("encoder.patch_embed.conv1a.bias", "encoder.patch_embed.conv1b.bias",
                "encoder.patch_embed.conv2a.bias", "encoder.patch_embed.bn1.running_mean",
                "encoder.patch_embed.bn2.running_mean")
PARAM_TOL = 1e-4
LOSS_RTOL = 1e-5


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, PC3D_PROGRESS="0", OMP_NUM_THREADS="1", PC3D_CACHE=str(tmp_path / "cache"))


def _torchrun(nproc: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]


def test_two_process_gloo_ranks_stay_in_sync_and_equal_one_process(tmp_path):
    """Same global batch (8): 2 × 4 under DDP vs 1 × 8, 6 steps of Point-MAE with batch norm."""
    env = _env(tmp_path)
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one"), "6"], capture_output=True,
                            text=True, env=env, timeout=300, cwd=REPO)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _torchrun(2, str(WORKER), str(tmp_path / "two"), "6", env=env)
    assert ddp.returncode == 0, ddp.stderr[-2000:]

    rank0 = torch.load(tmp_path / "two" / "params_rank0.pt")
    rank1 = torch.load(tmp_path / "two" / "params_rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"

    one = torch.load(tmp_path / "one" / "params_rank0.pt")
    diffs = {k: (one[k].double() - rank0[k].double()).abs().max().item() for k in one if k not in BN_INVARIANT}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= PARAM_TOL, f"{worst} differs by {diffs[worst]:.2e}"
    assert any(one[k].ne(0).any() and k.endswith("weight") for k in one)  # trained something

    one_losses, two_losses = _losses(tmp_path / "one" / "run"), _losses(tmp_path / "two" / "run")
    assert len(one_losses) == len(two_losses) == 6
    assert one_losses[-1] < one_losses[0]
    for a, b in zip(one_losses, two_losses):
        assert abs(a - b) <= LOSS_RTOL * abs(a)
    # rank 0 alone wrote the run: one checkpoint set, one loss log
    assert [p.name for p in list_checkpoints(tmp_path / "two" / "run")] == ["step_00000004.pt", "step_00000006.pt"]
    state = latest_checkpoint(tmp_path / "two" / "run")[1]
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2


def test_torchrun_cli_pretrain_writes_one_run(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "pc3d.cli", "pretrain", *TINY, f"data.root={tmp_path / 'synth'}", "data.train_per_class=4",
            "data.test_per_class=1", "data.num_points=256", "trainer.max_steps=3", f"out_dir={out}", "device=cpu"]
    proc = _torchrun(2, *args, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("pretrain: 3 steps") == 1  # rank 0 reports
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert len(_losses(out)) == 3


def test_torchrun_batch_not_divisible_by_processes_is_one_line_error(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "pc3d.cli", "pretrain", *TINY, "trainer.batch_size=5", f"data.root={tmp_path / 'synth'}",
            "data.train_per_class=4", "data.test_per_class=1", "data.num_points=256", f"out_dir={out}"]
    proc = _torchrun(2, *args, env=_env(tmp_path))
    assert proc.returncode != 0
    assert "must be divisible by the number of processes (2)" in proc.stderr
    assert not out.exists()


def test_sync_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4), nn.BatchNorm1d(4))
    reference = nn.Sequential(*[m for m in model])  # same modules before conversion
    x = torch.randn(16, 3)
    expected = reference(x)
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], SyncBatchNorm) and isinstance(converted[4], SyncBatchNorm)
    assert torch.allclose(converted(x), expected, atol=1e-6)
    assert set(converted.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                           "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias",
                                           "4.weight", "4.bias", "4.running_mean", "4.running_var",
                                           "4.num_batches_tracked"}


# ------------------------------------------------------------------ SIGKILL + resume
def _pretrain_cmd(out: Path, synth: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "pc3d.cli", "pretrain", *TINY, "encoder.drop_path_rate=0.1",
            f"data.root={synth}", "data.train_per_class=4", "data.test_per_class=1", "data.num_points=256",
            f"trainer.max_steps={steps}", "trainer.checkpoint_every=5", "trainer.keep_last=0",
            f"out_dir={out}", "device=cpu"]


def test_sigkill_between_checkpoints_then_resume_reproduces_the_losses(tmp_path):
    env, synth, steps = _env(tmp_path), tmp_path / "synth", 40
    full = subprocess.run(_pretrain_cmd(tmp_path / "full", synth, steps), capture_output=True, text=True,
                          env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_pretrain_cmd(killed_dir, synth, steps), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    target = killed_dir / "checkpoints" / "step_00000010.pt"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "metrics.json").exists()
    last = list_checkpoints(killed_dir)[-1].name
    assert last < f"step_{steps:08d}.pt", "killed too late: the run had finished its last checkpoint"

    resumed = subprocess.run(_pretrain_cmd(killed_dir, synth, steps), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert _losses(killed_dir) == _losses(tmp_path / "full")  # exact, step by step


_KILL_DURING_WRITE = r"""
import os, signal, sys, torch
from pc3d.train.checkpoint import save_checkpoint
run = sys.argv[1]
save_checkpoint(run, 1, {"model": {"w": torch.ones(3)}}, keep_last=0)
real_save = torch.save
def half_then_die(obj, handle, *args, **kwargs):
    handle.write(b"PK\x03\x04" + b"\0" * 4096)  # a torch zip header and then nothing
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half_then_die
save_checkpoint(run, 2, {"model": {"w": torch.zeros(3)}}, keep_last=0)
"""


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_latest(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_WRITE, str(run)], env=_env(tmp_path), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (run / "checkpoints").iterdir()]
    assert any(name.endswith(".tmp") for name in leftovers)  # the torn write stayed a temp file
    path, state = latest_checkpoint(run)
    assert path.name == "step_00000001.pt" and torch.equal(state["model"]["w"], torch.ones(3))
    # and the next save goes through next to the leftover
    save_checkpoint(run, 2, {"model": {"w": torch.zeros(3)}}, keep_last=0)
    assert latest_checkpoint(run)[0].name == "step_00000002.pt"


def test_no_hard_coded_cuda_calls():
    """Devices come from config/auto (`resolve_device`), never from `.cuda()`."""
    files = sorted((REPO / "pc3d").rglob("*.py"))
    assert len(files) > 20
    offenders = [str(p.relative_to(REPO)) for p in files if ".cuda(" in p.read_text()]
    assert offenders == []
