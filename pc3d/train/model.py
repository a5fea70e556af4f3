"""The training contract: what the one Trainer fits, and the hooks a model may declare.

A model is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, ...}`` (other
0-d tensors are logged beside the loss). A :class:`TrainableModel` declares its optional hooks
by overriding them; the Trainer calls them on such models and uses the defaults for any other
module:

* :meth:`~TrainableModel.param_groups`: optimiser groups; a group may carry ``lr_scale`` (its
  learning rate is ``lr · lr_scale`` throughout the schedule) and its own ``weight_decay``;
* ``no_weight_decay_names``: parameters (relative names) never decayed besides biases and 1-D
  parameters — declared by models and by encoders (:class:`pc3d.encoders.base.Encoder`);
* :meth:`~TrainableModel.on_optimizer_step`: after every optimiser step (an EMA teacher);
* :meth:`~TrainableModel.log_artifacts`: pictures / files of the current state, every
  ``trainer.artifact_every`` steps (0: never), on the main process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from pc3d.encoders.base import Encoder


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that the models and encoders inside ``model`` declare as not decayed."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, (TrainableModel, Encoder)):
            names.update(f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay_names)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decay for weight matrices; none for biases, 1-D parameters (norms) and declared names.

    Matches Point-MAE's ``add_weight_decay`` (which excludes the tokens by name).
    """
    excluded = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in excluded:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainableModel(nn.Module):
    """Base of the models the Trainer fits (methods, fine-tuning and detection models); see the module docstring."""

    no_weight_decay_names: ClassVar[tuple[str, ...]] = ()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return param_groups(self, weight_decay)

    def on_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` (1-based) of ``total_steps``."""

    def log_artifacts(self, step: int, out_dir: Path, writer: Any) -> None:
        """Write pictures of the current state under ``out_dir`` and to TensorBoard ``writer`` (a
        ``SummaryWriter``); called every ``trainer.artifact_every`` steps on the main process."""
