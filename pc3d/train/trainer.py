"""The one training loop for every pretraining method (and for fine-tuning).

A method is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, ...}``,
optionally a :class:`~pc3d.train.model.TrainableModel` declaring hooks (parameter groups,
``on_optimizer_step``, ``log_artifacts``); the trainer owns everything else: AdamW/SGD +
warm-up/cosine, gradient clipping, the seeded per-epoch batch order, moving nested batches to
the device, progress, TensorBoard, atomic checkpoints, ``resume``, DDP, bf16 autocast and
``torch.compile``. Datasets may declare ``set_epoch`` and ``collate``
(:class:`~pc3d.data.base.SampleDataset`).

Determinism. Given the same seed, a run on CPU is deterministic, and a resumed run
replays the same batches: batch order depends only on ``(seed, epoch)``, data
augmentation only on ``(seed, epoch, index)`` (see ``ObjectDataset``), and every
batch carries ``batch["sample_seed"]`` ``(B,)`` int64, a function of ``(seed, step,
position in the global batch)`` only, from which methods draw per-sample randomness
(Point-MAE's masks). The RNG state that the rest uses (drop-path) is restored from
the checkpoint.

Distributed (``torchrun``; see :mod:`pc3d.train.distributed`). ``batch_size`` is the
global batch; each of the W processes takes its contiguous 1/W slice of every global
batch (a distributed sampler seeded per epoch), so data, sample seeds and — with
``sync_batchnorm`` — batch-norm statistics are those of the single-process run with
the same global batch; DDP averages the gradients, which equals the single-process
gradient of the batch-mean loss. What is not shared is each rank's own torch RNG
stream (drop-path). Rank 0 alone logs, writes ``losses.jsonl`` (the loss averaged over
ranks, then the model's other scalar outputs — e.g. MSM's per-level terms — as rank 0 saw
them) and checkpoints; every rank's RNG state is stored in the checkpoint.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pc3d.data.base import SampleDataset
from pc3d.errors import CheckpointError, ConfigError, Pc3dError, StorageError
from pc3d.train.checkpoint import (check_tensor_types, latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng_state,
                                   rng_state, save_checkpoint)
from pc3d.train.distributed import (DistributedContext, all_reduce_mean, barrier, broadcast_object,
                                    convert_sync_batchnorm, current_context, gather_objects)
from pc3d.train.model import TrainableModel, param_groups
from pc3d.train.optim import OPTIMIZERS, build_optimizer, build_scheduler
from pc3d.utils.atomic import WRITE_ERRNOS, atomic_write, storage_error
from pc3d.utils.config import seed_everything
from pc3d.utils.device import move_to
from pc3d.utils.progress import get_logger, progress

log = get_logger(__name__)
FINAL_LOSS_WINDOW = 25


@dataclass
class TrainerConfig:
    """Optimisation settings (defaults: Point-MAE pretraining).

    ``precision``: ``fp32`` or ``bf16`` (autocast of the forward pass; the geometry ops
    and the losses stay float32). ``compile``: ``False``, ``True`` (``torch.compile``
    with inductor) or the name of another ``torch.compile`` backend.
    ``sync_batchnorm`` / ``find_unused_parameters``: multi-process runs only.
    ``artifact_every``: call the model's ``log_artifacts`` every N steps (0: never).

    ``optimizer``: ``adamw`` or ``sgd`` (``momentum``, Nesterov; see :func:`~pc3d.train.optim.build_optimizer`).
    ``max_steps`` overrides ``epochs``; warm-up is ``warmup_steps`` when given, else
    ``warmup_epochs`` worth of steps, scaled by ``max_steps / (epochs × steps_per_epoch)``
    when ``max_steps`` shortens the run.
    """

    epochs: int = 300
    max_steps: int | None = None
    batch_size: int = 128
    optimizer: str = "adamw"
    momentum: float = 0.9
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
    artifact_every: int = 0
    precision: str = "fp32"
    compile: bool | str = False
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False
    seed: int = 0
    device: str = "auto"
    resume: str = "auto"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "TrainerConfig":
        """A validated config from a ``trainer`` node (+ ``seed``, ``device``, ``resume``): an unknown key, a
        value of the wrong type or out of range is a one-line :class:`ConfigError` naming it."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(k for k in settings if k not in names)
        if unknown:
            hints = [f"trainer.{k}" + (f" (did you mean trainer.{close[0]}?)" if (close := difflib.get_close_matches(
                k, names, 1)) else "") for k in unknown]
            raise ConfigError(f"unknown key(s) {', '.join(hints)}; accepted: {', '.join(names)}")
        config = cls(**settings)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every value's type and range (before anything is written)."""
        def where(name: str) -> str:
            return name if name in ("seed", "device", "resume") else f"trainer.{name}"

        def integer(name: str, low: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where(name)}={value!r}: expected an integer >= {low}"
                                  + (" or null" if optional else ""))
            if value < low:
                unit = " steps (or null: trainer.epochs decides)" if name == "max_steps" else ""
                raise ConfigError(f"{where(name)}={value}: need >= {low}{unit}" if name != "max_steps"
                                  else f"{where(name)}={value}: need > 0{unit}")

        def number(name: str, low: float, strict: bool, high: float | None = None, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where(name)}={value!r}: expected a number {'>' if strict else '>='} {low:g}")
            if value < low or (strict and value == low) or (high is not None and value >= high):
                bound = f"{'>' if strict else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
                raise ConfigError(f"{where(name)}={value}: expected a number {bound}")

        for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 0), ("log_every", 1),
                          ("checkpoint_every", 1), ("keep_last", 0), ("artifact_every", 0), ("seed", 0)):
            integer(name, low)
        integer("max_steps", 1, optional=True)
        integer("warmup_steps", 0, optional=True)
        number("lr", 0.0, strict=True)
        number("momentum", 0.0, strict=False, high=1.0)
        for name in ("weight_decay", "warmup_epochs", "warmup_lr_init", "min_lr"):
            number(name, 0.0, strict=False)
        number("grad_clip", 0.0, strict=True, optional=True)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"trainer.optimizer={self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        for name in ("sync_batchnorm", "find_unused_parameters"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"trainer.{name}={getattr(self, name)!r}: expected true or false")
        if not isinstance(self.compile, (bool, str)):
            raise ConfigError(f"trainer.compile={self.compile!r}: expected true, false or a torch.compile backend")
        if not isinstance(self.device, str) or not isinstance(self.resume, str):
            raise ConfigError(f"device={self.device!r} / resume={self.resume!r}: expected names")


PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``.

    In a multi-process CUDA run, ``auto``/``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} requested but this machine has no Apple MPS device; use device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={name!r}: pc3d runs on cpu, cuda[:N] or mps")
    if device.type == "cuda" and device.index is None and current_context().enabled:
        device = torch.device("cuda", current_context().local_rank)
    return device


def sample_seeds(seed: int, step: int, batch_size: int) -> np.ndarray:
    """``(batch_size,)`` int64 seeds of the samples of global batch ``step`` (0-based); depend on nothing else."""
    return (np.random.SeedSequence([seed, step]).generate_state(batch_size, np.uint64) >> np.uint64(1)).astype(np.int64)


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
        self.context: DistributedContext = current_context()
        world = self.context.world_size
        config.validate()
        self.device = resolve_device(config.device)
        num_samples = len(dataset)  # type: ignore[arg-type]
        if num_samples == 0:
            raise Pc3dError("the training dataset is empty")
        if world > num_samples:
            raise ConfigError(f"{world} processes but the training dataset has only {num_samples} samples; "
                              "use fewer processes (torchrun --nproc_per_node)")
        if config.batch_size % world:
            raise ConfigError(f"trainer.batch_size={config.batch_size} (the global batch) must be divisible by "
                              f"the number of processes ({world})")
        self.local_batch_size = config.batch_size // world
        if self.context.enabled and config.sync_batchnorm:
            model = convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.forward_model: nn.Module = self.model
        if self.context.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters)
            # Each rank its own stream for what is not keyed by sample_seed (drop-path).
            seed_rank_streams(config.seed, self.context.rank)
        if config.compile:  # true → inductor; a string names another torch.compile backend
            backend = config.compile if isinstance(config.compile, str) else "inductor"
            self.forward_model = torch.compile(self.forward_model, backend=backend)
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
        self.hooks = self.model if isinstance(self.model, TrainableModel) else TrainableModel()
        groups = (self.model.param_groups(config.weight_decay) if isinstance(self.model, TrainableModel)
                  else param_groups(self.model, config.weight_decay))
        self.optimizer = build_optimizer(groups, config.lr, config.optimizer, momentum=config.momentum)
        self.scheduler = build_scheduler(self.optimizer, base_lr=config.lr, total_steps=self.total_steps,
                                         warmup_steps=self.warmup_steps, warmup_lr_init=config.warmup_lr_init,
                                         min_lr=config.min_lr)
        self.step = 0
        # Here, not in fit(): a bad resume checkpoint fails before the run writes anything.
        self.maybe_resume()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload. Collective under DDP (every rank's RNG state is gathered)."""
        rng_per_rank = gather_objects(rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_per_rank[0],
            "rng_per_rank": rng_per_rank,
            "world_size": self.context.world_size,
            "trainer": asdict(self.config),
            "config": self.run_config,
        }

    def load_state_dict(self, state: dict[str, Any], source: str | os.PathLike = "checkpoint") -> None:
        if isinstance(state.get("model"), Mapping):
            check_tensor_types(self.model.state_dict(), state["model"], str(source), "model weights")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{source}: does not match this model/optimizer ({mismatch_summary(self.model, state)})"
                                  ) from exc
        self.step = int(state["step"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.context.world_size:
            restore_rng_state(per_rank[self.context.rank])
        else:  # resumed on another number of processes: data and masks still replay, drop-path cannot
            log.warning("checkpoint was written by %d process(es), resuming on %d: per-rank random streams "
                        "are re-seeded", len(per_rank), self.context.world_size)
            seed_rank_streams(self.config.seed, self.context.rank, self.step)

    def maybe_resume(self) -> None:
        """Apply ``config.resume``: ``auto`` (newest checkpoint in run_dir, if any), ``never``, or a path."""
        mode = self.config.resume
        if mode in (None, "never", "false", False):
            return
        if mode == "auto":
            # Rank 0 chooses, so every rank resumes from the same file.
            found = latest_checkpoint(self.run_dir) if self.context.is_main else None
            chosen = broadcast_object(str(found[0]) if found else None)
            if chosen is None:
                return
            path = Path(chosen)
            state = found[1] if found else load_checkpoint(path)
        else:
            path, state = Path(mode), load_checkpoint(mode)
        self.load_state_dict(state, path)
        log.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- loop
    def _batches_from(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's part of the global batches from ``step`` on, epoch after epoch, in the seeded order."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        part = slice(self.context.rank * self.local_batch_size, (self.context.rank + 1) * self.local_batch_size)
        while True:
            if isinstance(self.dataset, SampleDataset):
                self.dataset.set_epoch(epoch)
            batches = epoch_batches(len(self.dataset), self.config.batch_size, self.config.seed, epoch)[offset:]
            # A dedicated generator: a loader otherwise draws its worker base seed from the global
            # RNG, which would shift the methods' random stream (drop-path) after a resume.
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.config.seed, epoch])
                                                          .generate_state(1)[0]))
            loader = DataLoader(self.dataset, batch_sampler=[b[part] for b in batches],
                                num_workers=self.config.num_workers, generator=generator,
                                collate_fn=self.dataset.collate if isinstance(self.dataset, SampleDataset) else None)
            for position, batch in enumerate(loader):
                global_step = epoch * self.steps_per_epoch + offset + position
                seeds = sample_seeds(self.config.seed, global_step, self.config.batch_size)[part]
                yield {**batch, "sample_seed": torch.from_numpy(seeds)}
            epoch, offset = epoch + 1, 0

    def _truncate_loss_log(self) -> Path:
        """Keep the logged steps up to the resumed step (a kill can leave a half-written last line)."""
        path = self.run_dir / "losses.jsonl"
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    continue
                if step <= self.step:
                    kept.append(line)
        with atomic_write(path, "w") as handle:
            handle.write("".join(f"{line}\n" for line in kept))
        return path

    def _train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float, dict[str, float]]:
        """One optimisation step; returns the loss averaged over ranks, the learning rate used and this
        rank's other scalar model outputs."""
        self.forward_model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            outputs = self.forward_model(batch)
        loss = outputs["loss"]
        terms = {key: float(value) for key, value in outputs.items()
                 if key != "loss" and isinstance(value, torch.Tensor) and value.numel() == 1}
        value = float(all_reduce_mean(loss.float()))
        if not math.isfinite(value):  # every rank sees the same mean, so all stop together
            raise Pc3dError(f"loss became {value} at step {self.step + 1}; the last good "
                            f"checkpoint is in {self.run_dir / 'checkpoints'}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.hooks.on_optimizer_step(self.step, self.total_steps)
        return value, lr, terms

    def _storage_failure(self, exc: OSError) -> StorageError:
        what = str(exc) if isinstance(exc, StorageError) else str(storage_error(exc, Path(exc.filename or
                                                                                           self.run_dir)))
        found = list_checkpoints(self.run_dir)
        last = f"the last complete checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
        return StorageError(f"{what} at step {self.step}; {last}")

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns ``final_loss, steps, wall_s, samples_per_s`` (global samples)."""
        from torch.utils.tensorboard import SummaryWriter

        started = time.perf_counter()
        main = self.context.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        cfg = self.config
        loss_log_path = self.run_dir / "losses.jsonl"
        writer = loss_log = None
        if main:
            loss_log_path = self._truncate_loss_log()
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1)
            loss_log = open(loss_log_path, "a")
        recent: list[float] = []
        samples = 0
        loop_started = time.perf_counter()
        bar = progress(total=self.total_steps, initial=self.step, desc="train", disable=not main)
        try:
            batches = self._batches_from(self.step)
            while self.step < self.total_steps:
                batch = move_to(next(batches), self.device, keep_on_cpu=("sample_seed",))
                value, lr, terms = self._train_step(batch)
                samples += cfg.batch_size
                recent = (recent + [value])[-FINAL_LOSS_WINDOW:]
                throughput = samples / max(time.perf_counter() - loop_started, 1e-9)
                last = self.step == self.total_steps
                if main:
                    loss_log.write(json.dumps({"step": self.step, "loss": value, "lr": lr, **terms}) + "\n")
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{throughput:.1f}")
                    if self.step % cfg.log_every == 0 or last:
                        writer.add_scalar("train/loss", value, self.step)
                        writer.add_scalar("train/lr", lr, self.step)
                        writer.add_scalar("train/samples_per_s", throughput, self.step)
                        for key, term in terms.items():
                            writer.add_scalar(f"train/{key}", term, self.step)
                        if bar.disable:
                            log.info("step %d/%d loss %.5f lr %.2e %.1f samples/s", self.step, self.total_steps,
                                     value, lr, throughput)
                    if cfg.artifact_every and (self.step % cfg.artifact_every == 0 or last):
                        self.hooks.log_artifacts(self.step, self.run_dir / "artifacts", writer)
                if self.step % cfg.checkpoint_every == 0 or last:
                    state = self.state_dict()  # collective: every rank takes part
                    if main:
                        loss_log.flush()
                        save_checkpoint(self.run_dir, self.step, state, cfg.keep_last)
        except OSError as exc:  # a full or read-only disk: say so, and where the last good state is
            if isinstance(exc, StorageError) or exc.errno in WRITE_ERRNOS:
                raise self._storage_failure(exc) from exc
            raise
        finally:
            bar.close()
            if main:
                writer.close()
                try:
                    loss_log.close()
                except OSError:
                    pass  # the write that failed was reported above
        barrier()  # the final checkpoint exists before any rank returns
        loop_s = time.perf_counter() - loop_started
        if main and loss_log_path.exists():  # the whole run's last steps, also across resumes
            lines = [json.loads(x) for x in loss_log_path.read_text().splitlines() if x.strip()]
            recent = [x["loss"] for x in lines[-FINAL_LOSS_WINDOW:]]
        metrics = {
            "final_loss": float(np.mean(recent)) if recent else math.nan,
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "samples_per_s": samples / loop_s if samples else 0.0,
        }
        if main and not samples:  # the run was complete already: keep the time and throughput it reported
            metrics.update(self._reported_timing())
        return metrics

    def _reported_timing(self) -> dict[str, float]:
        """``wall_s`` / ``samples_per_s`` of the run's ``metrics.json`` (a re-run that trains no step reports
        those, not 0 samples/s); empty when there is none."""
        try:
            reported = json.loads((self.run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(reported, dict):
            return {}
        return {key: float(reported[key]) for key in ("wall_s", "samples_per_s")
                if isinstance(reported.get(key), (int, float)) and not isinstance(reported.get(key), bool)}



def mismatch_summary(model: nn.Module, state: Mapping[str, Any]) -> str:
    """A short account of why ``state["model"]`` does not fit ``model``: counts and the first names."""
    stored = state.get("model") if isinstance(state.get("model"), Mapping) else {}
    own = model.state_dict()
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    shapes = [k for k in own if k in stored and hasattr(stored[k], "shape") and tuple(stored[k].shape)
              != tuple(own[k].shape)]
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)):
        if names:
            parts.append(f"{len(names)} {label}, e.g. {names[0]}")
    return "; ".join(parts) or "optimizer or schedule state of another model"


def seed_rank_streams(seed: int, rank: int, step: int = 0) -> None:
    """Seed python, numpy and torch for ``rank`` of a multi-process run (distinct per rank)."""
    seed_everything(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))
