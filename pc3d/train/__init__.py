"""Training: the one loop, optimiser/schedule and checkpoints."""

from pc3d.train.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from pc3d.train.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine_lr
from pc3d.train.trainer import Trainer, TrainerConfig, epoch_batches, resolve_device

__all__ = [
    "Trainer", "TrainerConfig", "epoch_batches", "resolve_device", "latest_checkpoint", "load_checkpoint",
    "resolve_checkpoint", "save_checkpoint", "build_optimizer", "build_scheduler", "param_groups",
    "warmup_cosine_lr",
]
