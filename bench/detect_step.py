"""Training speed of ``pc3d detect train`` on the sparse UNet, for one or more checkouts of pc3d, side by side.

    python bench/detect_step.py [--repos .,/path/to/other/checkout] [--steps 30] [--rounds 2]
                                [--threads 2] [--extra key=value ...]

Each checkout runs, in a subprocess with its own code (``python -m pc3d.cli`` with that checkout
first on ``PYTHONPATH``), the same command::

    pc3d detect train checkpoint=random encoder=sparse_unet data=synthetic_rooms data.train_scenes=8
        data.val_scenes=1 trainer.batch_size=4 trainer.max_steps=STEPS trainer.log_every=STEPS ...

and the table reports the training throughput the Trainer records at its last step (samples/s over
the whole loop, data loading included; read at full precision from the run's TensorBoard scalar
``train/samples_per_s``, since the log line rounds it to 0.1) as steps/s. Rounds alternate between the checkouts
(A B A B ...), so a change of machine load hits every checkout alike; the table gives the median
and the spread. Written for the contracts change: before it, every training forward voxelised
the scene and estimated PCA normals on the CPU inside the model; after it, the data loader does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

def run_once(repo: Path, steps: int, threads: int, extra: list[str], out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(repo), PC3D_PROGRESS="0", OMP_NUM_THREADS=str(threads),
               PC3D_CACHE=str(out / "cache"))
    cmd = [sys.executable, "-m", "pc3d.cli", "detect", "train", "checkpoint=random", "encoder=sparse_unet",
           "data=synthetic_rooms", "data.train_scenes=8", "data.val_scenes=1", "trainer.batch_size=4",
           f"trainer.max_steps={steps}", f"trainer.log_every={steps}", "trainer.checkpoint_every=100000",
           "detect.bev_scenes=0", "device=cpu", f"out_dir={out / 'run'}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    if proc.returncode != 0:
        raise SystemExit(f"{repo}: detect train failed:\n{proc.stderr[-3000:]}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "run" / "tb"))
    events.Reload()
    found = [e for e in events.Scalars("train/samples_per_s") if e.step == steps] \
        if "train/samples_per_s" in events.Tags().get("scalars", []) else []
    if not found:
        raise SystemExit(f"{repo}: no train/samples_per_s scalar at step {steps} under {out / 'run' / 'tb'}")
    return found[-1].value / 4  # samples/s → steps/s at batch 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", default=".", help="comma-separated pc3d checkouts")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value overrides")
    args = parser.parse_args()
    repos = [Path(r).resolve() for r in args.repos.split(",")]
    results: dict[Path, list[float]] = {r: [] for r in repos}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, repo in enumerate(repos):
                results[repo].append(run_once(repo, args.steps, args.threads, args.extra,
                                              Path(tmp) / f"{round_}_{i}"))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; load average "
          f"{os.getloadavg()[0]:.2f}; {args.steps} steps x {args.rounds} rounds, batch 4, synthetic rooms, "
          f"encoder=sparse_unet (defaults), CPU")
    print("| checkout | commit | steps/s (median) | runs |")
    print("|---|---|---|---|")
    for repo, values in results.items():
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "?"
        print(f"| {repo.name} | {commit} | {statistics.median(values):.3f} | "
              f"{', '.join(f'{v:.3f}' for v in values)} |")


if __name__ == "__main__":
    main()
