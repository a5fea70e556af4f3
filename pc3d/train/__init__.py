"""Training: the one loop, the training contract (hooks a model declares), optimiser/schedule and checkpoints.

The run skeleton every command shares is :mod:`pc3d.train.run` (imported on use: it builds encoders
through :mod:`pc3d.hub`, which itself reads training checkpoints).
"""

from pc3d.train.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from pc3d.train.model import TrainableModel, param_groups
from pc3d.train.optim import build_optimizer, build_scheduler, warmup_cosine_lr
from pc3d.train.trainer import Trainer, TrainerConfig, epoch_batches, resolve_device

__all__ = [
    "Trainer", "TrainerConfig", "TrainableModel", "epoch_batches", "resolve_device", "latest_checkpoint",
    "load_checkpoint", "resolve_checkpoint", "save_checkpoint", "build_optimizer", "build_scheduler", "param_groups",
    "warmup_cosine_lr",
]
