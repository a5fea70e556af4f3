"""Optimisers (AdamW, SGD with momentum), their parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for weight matrices; none for biases, 1-D params (norms) and tokens.

    Matches Point-MAE's ``add_weight_decay``.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw",
                    betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9) -> torch.optim.Optimizer:
    """``kind="adamw"`` (Point-MAE's) or ``"sgd"`` (Nesterov momentum, Pointcept's sparse-UNet recipes)."""
    groups = param_groups(model, weight_decay)
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
