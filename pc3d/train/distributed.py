"""Multi-process training on torchrun + PyTorch DDP (gloo on CPU, NCCL on CUDA).

pc3d has no launcher of its own: ``torchrun`` starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; :func:`init_distributed`
reads them (single process when ``WORLD_SIZE`` is unset or 1). Multi-node runs use
torchrun's rendezvous flags, e.g. on each of two nodes::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        -m pc3d.cli pretrain ...

Batch norm under DDP: :class:`SyncBatchNorm` normalises with statistics of the whole
global batch (``trainer.sync_batchnorm``). It is plain torch (two autograd-aware
all-reduces), so it works on gloo/CPU, where ``torch.nn.SyncBatchNorm`` refuses to run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from pc3d.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job; ``world_size == 1`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_context() -> DistributedContext:
    """The context of the initialised process group, or the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from exc


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the torchrun job described by the environment (no-op for a single process).

    The backend is NCCL when the run uses CUDA (``device`` is ``auto`` with CUDA present, or
    ``cuda``), else gloo; each process then uses ``cuda:LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistributedContext()
    if dist.is_initialized():
        return current_context()
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} requested but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return current_context()


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over ranks (a detached copy; the input is left alone)."""
    context = current_context()
    if not context.enabled:
        return value.detach()
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / context.world_size


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects only: paths, small dicts)."""
    if not current_context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    context = current_context()
    if not context.enabled:
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if current_context().enabled:
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on the main process first, then on the others: data a command prepares on first use
    (generated or converted caches) is written once, never by two processes at the same time."""
    main = current_context().is_main
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the global batch of all ranks.

    Input ``(N, C)`` or ``(N, C, L...)``. Outside a process group, or in eval mode, it is
    ``nn.BatchNorm``. Mean and variance are computed in two passes (sum, then the sum of
    squared deviations), each all-reduced with autograd, so gradients flow through the
    statistics exactly as in a single-process batch norm over the concatenated batch.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and current_context().enabled):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        shape = (1, channels) + (1,) * (x.ndim - 2)
        local_count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        sums = dist_fn.all_reduce(torch.cat([x.sum(dims), local_count]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean.reshape(shape)
        var = dist_fn.all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm*d`` in ``module`` by :class:`SyncBatchNorm` (parameters and buffers kept)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
