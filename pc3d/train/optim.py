"""Optimisers (AdamW, SGD with momentum) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch


def warmup_cosine_lr(step: int, *, base_lr: float, total_steps: int, warmup_steps: int,
                     warmup_lr_init: float = 1e-6, min_lr: float = 1e-6) -> float:
    """Learning rate at ``step`` (0-based).

    Linear warm-up from ``warmup_lr_init`` to ``base_lr`` over ``warmup_steps``, then a
    cosine from ``base_lr`` at step 0 to ``min_lr`` at ``total_steps`` evaluated at the
    absolute step (timm ``CosineLRScheduler`` without warm-up prefix, as Point-MAE uses).
    """
    if step < warmup_steps:
        return warmup_lr_init + step * (base_lr - warmup_lr_init) / warmup_steps
    progress = min(step / max(total_steps, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(groups: list[dict], lr: float, kind: str = "adamw", betas: tuple[float, float] = (0.9, 0.999),
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """``kind="adamw"`` (Point-MAE's) or ``"sgd"`` (Nesterov momentum, Pointcept's sparse-UNet recipes).

    ``groups``: parameter groups (:meth:`pc3d.train.model.TrainableModel.param_groups`); a group's
    ``lr_scale`` sets its learning rate to ``lr · lr_scale`` (the schedule then scales every group alike).
    """
    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * float(g.get("lr_scale", 1.0))}
              for g in groups]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"optimizer={kind!r}: expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, *, base_lr: float, total_steps: int,
                    warmup_steps: int, warmup_lr_init: float, min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimisation step with :func:`warmup_cosine_lr`."""
    def factor(step: int) -> float:
        return warmup_cosine_lr(step, base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                                warmup_lr_init=warmup_lr_init, min_lr=min_lr) / base_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
