"""Real multi-process and kill/resume runs: torchrun (gloo, CPU) and SIGKILL'd subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
# What "DDP equals one process" may differ by follows from the numerics, not from one CPU: the two
# runs sum the same per-sample terms in another order (another reduction tree, another machine's
# kernels). Where a max-pool (the patch embedding's mini-PointNet) has near-ties, rounding flips
# which point wins and moves single gradient components by O(their size), so per-component
# maxima are not a safe measure (on an AMD EPYC the first conv's step-1 gradient differed by 7e-4
# of its largest component, 100x the Intel Xeon figure). Norms over the whole model are: measured,
# DDP vs 1 process, step-1 gradients ||Δg|| / ||g|| = 2.6e-4 (AMD EPYC), parameters after 6 SGD
# steps 6.5e-6 of how far training moved them (SGD steps are lr x gradient, so noise is not
# amplified as Adam's 1/sqrt(v) does on ~0 gradients), the trained encoder's tokens on a fixed
# batch 3.1e-4 of their largest value (Intel Xeon; both pass on the AMD machine). A real DDP bug
# — a skipped gradient all-reduce, ranks training on the wrong part of the batch — moves the same
# figures to 1.23 / 0.45, 2.6e-2 / 8.1e-3 and tokens apart by 2.7 / 1.1 (AMD, 6 steps; the test
# test_equivalence_check_catches_ddp_bugs runs 2).
# Each tolerance sits between the two, >= 10x from either side where the measurements allow.
GRAD_RTOL = 1e-2                     # ||g_one - g_ddp|| / ||g_one|| over all parameters at step 1
PARAM_RTOL = 5e-4                    # ||θ_one - θ_ddp|| / ||θ_one - θ_initial|| over all float tensors
TOKEN_RTOL = 1e-2                    # max |Δ tokens| / max |tokens|
LOSS_RTOL = 1e-5

def _env(tmp_path: Path) -> dict:
    return dict(os.environ, PC3D_PROGRESS="0", OMP_NUM_THREADS="1", PC3D_CACHE=str(tmp_path / "cache"))


def _torchrun(nproc: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]


def _worker(tmp_path: Path, name: str, steps: int, nproc: int = 1, fault: str = "none") -> Path:
    out = tmp_path / name
    args = [str(WORKER), str(out), str(steps), "sgd", fault]
    env = _env(tmp_path)
    if nproc == 1:
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300,
                              cwd=REPO)
    else:
        proc = _torchrun(nproc, *args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _scale(tensors: dict[str, torch.Tensor]) -> float:
    return max(t.double().abs().max().item() for t in tensors.values() if t.numel())


def ddp_differences(single: Path, ddp: Path) -> list[str]:
    """Everything by which the 2-process run at ``ddp`` is not the 1-process run at ``single``."""
    one = torch.load(single / "state_rank0.pt")
    two = torch.load(ddp / "state_rank0.pt")
    problems = []
    grads_one, grads_two = one["first_grads"], two["first_grads"]
    grad_apart = sum((g.double() - grads_two[k].double()).square().sum() for k, g in grads_one.items()).sqrt()
    grad_norm = sum(g.double().square().sum() for g in grads_one.values()).sqrt()
    if grad_apart > GRAD_RTOL * grad_norm:
        worst = max(grads_one, key=lambda k: (grads_one[k].double() - grads_two[k].double()).norm().item())
        problems.append(f"step-1 gradients differ by {grad_apart / grad_norm:.2e} of their norm "
                        f"(most in {worst})")
    keys = [k for k, v in one["initial"].items() if v.is_floating_point()]
    moved = sum((one["final"][k].double() - one["initial"][k].double()).square().sum() for k in keys).sqrt()
    apart = sum((one["final"][k].double() - two["final"][k].double()).square().sum() for k in keys).sqrt()
    if apart > PARAM_RTOL * moved:
        problems.append(f"parameters after training differ by {apart:.2e} (training moved them {moved:.2e})")
    tokens = (one["tokens"].double() - two["tokens"].double()).abs().max().item()
    if tokens > TOKEN_RTOL * one["tokens"].abs().max().item():
        problems.append(f"trained encoder's tokens differ by {tokens:.2e}")
    one_losses, two_losses = _losses(single / "run"), _losses(ddp / "run")
    for step, (a, b) in enumerate(zip(one_losses, two_losses), 1):
        if abs(a - b) > LOSS_RTOL * abs(a):
            problems.append(f"loss of step {step} differs: {a} vs {b}")
    return problems


def test_two_process_gloo_ranks_stay_in_sync_and_equal_one_process(tmp_path):
    """Same global batch (8): 2 x 4 under DDP vs 1 x 8, 6 SGD steps of Point-MAE with batch norm."""
    single = _worker(tmp_path, "one", 6)
    ddp = _worker(tmp_path, "two", 6, nproc=2)

    rank0, rank1 = torch.load(ddp / "state_rank0.pt"), torch.load(ddp / "state_rank1.pt")
    assert all(torch.equal(rank0["final"][k], rank1["final"][k]) for k in rank0["final"]), "ranks diverged"
    assert ddp_differences(single, ddp) == []
    one = torch.load(single / "state_rank0.pt")
    assert any(not torch.equal(one["final"][k], one["initial"][k]) for k in one["final"] if k.endswith("weight"))
    one_losses, two_losses = _losses(single / "run"), _losses(ddp / "run")
    assert len(one_losses) == len(two_losses) == 6
    assert one_losses[-1] < one_losses[0]
    # rank 0 alone wrote the run: one checkpoint set, one loss log
    assert [p.name for p in list_checkpoints(ddp / "run")] == ["step_00000004.pt", "step_00000006.pt"]
    state = latest_checkpoint(ddp / "run")[1]
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2


@pytest.mark.parametrize("fault", ["skip_allreduce", "duplicate_split"])
def test_equivalence_check_catches_ddp_bugs(tmp_path, fault):
    """The tolerances above are loose enough for any CPU, and tight enough to see a broken DDP run."""
    single = _worker(tmp_path, "one", 2)
    broken = _worker(tmp_path, fault, 2, nproc=2, fault=fault)
    problems = ddp_differences(single, broken)
    assert any("step-1 gradient" in p for p in problems), problems
    assert any("parameters after training" in p for p in problems), problems
    assert any("tokens differ" in p for p in problems), problems


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


def test_sigkill_of_a_two_process_run_then_resume_reproduces_its_losses(tmp_path):
    """Exact resume under DDP: a 2-process torchrun run killed between checkpoints (every process of it)
    and resumed gives, step for step, the losses of the uninterrupted 2-process run (drop-path on: each
    rank's random stream is restored from the checkpoint)."""
    env, synth, steps = _env(tmp_path), tmp_path / "synth", 24
    args = ["-m", "pc3d.cli", "pretrain", *TINY, "encoder.drop_path_rate=0.1", f"data.root={synth}",
            "data.train_per_class=4", "data.test_per_class=1", "data.num_points=256", f"trainer.max_steps={steps}",
            "trainer.checkpoint_every=5", "trainer.keep_last=0", "device=cpu"]
    full = _torchrun(2, *args, f"out_dir={tmp_path / 'full'}", env=env)
    assert full.returncode == 0, full.stderr[-2000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
           f"out_dir={killed}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
                            start_new_session=True)
    target = killed / "checkpoints" / "step_00000010.pt"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers at once
    proc.wait(timeout=60)
    assert not (killed / "metrics.json").exists()
    assert list_checkpoints(killed)[-1].name < f"step_{steps:08d}.pt", "killed too late"
    before = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(killed)}

    resumed = _torchrun(2, *args, f"out_dir={killed}", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert _losses(killed) == _losses(tmp_path / "full")
    # it continued from the checkpoint: the steps before it were not trained (and written) again
    assert all((killed / "checkpoints" / name).stat().st_mtime_ns == t for name, t in before.items())
