"""The one training loop for every pretraining method.

A method is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, ...}``;
the trainer owns everything else: AdamW + warm-up/cosine, gradient clipping, the
seeded per-epoch batch order, progress, TensorBoard, atomic checkpoints and
``resume``. Given the same seed, a run on CPU is deterministic, and a resumed run
replays the same batches: batch order depends only on ``(seed, epoch)`` and data
augmentation only on ``(seed, epoch, index)`` (see ``ObjectDataset``), and the RNG
state that methods use (masking, drop-path) is restored from the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pc3d.errors import CheckpointError, ConfigError, Pc3dError
from pc3d.train.checkpoint import latest_checkpoint, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from pc3d.train.optim import build_optimizer, build_scheduler
from pc3d.utils.atomic import atomic_write
from pc3d.utils.progress import get_logger, progress

log = get_logger(__name__)
FINAL_LOSS_WINDOW = 25


@dataclass
class TrainerConfig:
    """Optimisation settings (defaults: Point-MAE pretraining).

    ``max_steps`` overrides ``epochs``; warm-up is ``warmup_steps`` when given, else
    ``warmup_epochs`` worth of steps, scaled by ``max_steps / (epochs × steps_per_epoch)``
    when ``max_steps`` shortens the run.
    """

    epochs: int = 300
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 10.0
    warmup_steps: int | None = None
    warmup_lr_init: float = 1e-6
    min_lr: float = 1e-6
    grad_clip: float | None = 10.0
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_last: int = 2
    seed: int = 0
    device: str = "auto"
    resume: str = "auto"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but CUDA is not available on this machine")
    return device


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled, full batches of one epoch; depends only on ``(seed, epoch)``."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    usable = (num_samples // batch_size) * batch_size
    return order[:usable].reshape(-1, batch_size).tolist()


class Trainer:
    """Train ``model`` on ``dataset`` into ``run_dir``.

    Args:
        model: a method module; ``forward(batch) -> {"loss": ...}``.
        dataset: a map-style dataset of dicts of tensors; may define ``set_epoch(epoch)``.
        config: :class:`TrainerConfig`.
        run_dir: where checkpoints, ``losses.jsonl`` and TensorBoard logs go.
        run_config: the resolved run configuration, stored in every checkpoint so
            encoders can be rebuilt from it.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, config: TrainerConfig, run_dir: str | os.PathLike,
                 run_config: dict[str, Any] | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_config = run_config or {}
        self.dataset = dataset
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        num_samples = len(dataset)  # type: ignore[arg-type]
        if num_samples == 0:
            raise Pc3dError("the training dataset is empty")
        self.steps_per_epoch = num_samples // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"trainer.batch_size={config.batch_size} is larger than the dataset "
                              f"({num_samples} samples); lower it")
        planned = config.epochs * self.steps_per_epoch
        self.total_steps = int(config.max_steps) if config.max_steps else planned
        if self.total_steps <= 0:
            raise ConfigError(f"trainer.max_steps / trainer.epochs give {self.total_steps} steps; need > 0")
        if config.warmup_steps is not None:
            self.warmup_steps = int(config.warmup_steps)
        else:
            self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch * self.total_steps / max(planned, 1))
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, base_lr=config.lr, total_steps=self.total_steps,
                                         warmup_steps=self.warmup_steps, warmup_lr_init=config.warmup_lr_init,
                                         min_lr=config.min_lr)
        self.step = 0

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "trainer": asdict(self.config),
            "config": self.run_config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match this model/optimizer: {exc}") from exc
        restore_rng_state(state["rng"])
        self.step = int(state["step"])

    def maybe_resume(self) -> None:
        """Apply ``config.resume``: ``auto`` (newest checkpoint in run_dir, if any), ``never``, or a path."""
        mode = self.config.resume
        if mode in (None, "never", "false", False):
            return
        if mode == "auto":
            found = latest_checkpoint(self.run_dir)
            if found is None:
                return
            path, state = found
        else:
            path, state = Path(mode), load_checkpoint(mode)
        self.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- loop
    def _batches_from(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from ``step`` on, epoch after epoch, in the seeded order."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            batches = epoch_batches(len(self.dataset), self.config.batch_size, self.config.seed, epoch)[offset:]
            # A dedicated generator: a loader otherwise draws its worker base seed from the global
            # RNG, which would shift the methods' random stream (masks, drop-path) after a resume.
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.config.seed, epoch])
                                                          .generate_state(1)[0]))
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.config.num_workers,
                                generator=generator)
            yield from loader
            epoch, offset = epoch + 1, 0

    def _truncate_loss_log(self) -> Path:
        path = self.run_dir / "losses.jsonl"
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip() and json.loads(line)["step"] <= self.step:
                    kept.append(line)
        with atomic_write(path, "w") as handle:
            handle.write("".join(f"{line}\n" for line in kept))
        return path

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns ``final_loss, steps, wall_s, samples_per_s``."""
        from torch.utils.tensorboard import SummaryWriter

        started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.maybe_resume()
        loss_log_path = self._truncate_loss_log()
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1)
        cfg = self.config
        recent: list[float] = []
        samples = 0
        loop_started = time.perf_counter()
        bar = progress(total=self.total_steps, initial=self.step, desc="train")
        try:
            with open(loss_log_path, "a") as loss_log:
                batches = self._batches_from(self.step)
                while self.step < self.total_steps:
                    batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                    self.model.train()
                    loss = self.model(batch)["loss"]
                    if not torch.isfinite(loss):
                        raise Pc3dError(f"loss became {loss.item()} at step {self.step + 1}; the last good "
                                        f"checkpoint is in {self.run_dir / 'checkpoints'}")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1

                    value = loss.item()
                    batch_size = next(iter(batch.values())).shape[0]
                    samples += batch_size
                    recent = (recent + [value])[-FINAL_LOSS_WINDOW:]
                    loss_log.write(json.dumps({"step": self.step, "loss": value, "lr": lr}) + "\n")
                    throughput = samples / max(time.perf_counter() - loop_started, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{throughput:.1f}")
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        writer.add_scalar("train/loss", value, self.step)
                        writer.add_scalar("train/lr", lr, self.step)
                        writer.add_scalar("train/samples_per_s", throughput, self.step)
                        if bar.disable:
                            log.info("step %d/%d loss %.5f lr %.2e %.1f samples/s", self.step, self.total_steps,
                                     value, lr, throughput)
                    if self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps:
                        loss_log.flush()
                        save_checkpoint(self.run_dir, self.step, self.state_dict(), cfg.keep_last)
        finally:
            bar.close()
            writer.close()
        loop_s = time.perf_counter() - loop_started
        if not recent:  # resumed a finished run: report from the log
            lines = [json.loads(x) for x in loss_log_path.read_text().splitlines() if x.strip()]
            recent = [x["loss"] for x in lines[-FINAL_LOSS_WINDOW:]]
        return {
            "final_loss": float(np.mean(recent)) if recent else math.nan,
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "samples_per_s": samples / loop_s if samples else 0.0,
        }
