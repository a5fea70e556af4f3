"""Backend selection for the geometry ops.

Every op has a pure-torch implementation that always runs. Optional accelerators
are used only when installed:

============== ===================================================== ==============
backend        ops                                                   used by "auto"
============== ===================================================== ==============
torch          farthest_point_sample, knn, ball_query, chamfer_l2    always possible
pytorch3d      farthest_point_sample, knn, ball_query, chamfer_l2    CUDA float32
torch_cluster  farthest_point_sample, knn                            CUDA float32
scipy          knn (cKDTree, CPU only)                               CPU, >= 2,048 points, >= 128 queries
spconv         sparse_conv (spconv 2.x; ConvAlgo.Native on CPU)      float32, CPU too
gsplat         rasterize_gaussians (CUDA kernels only)               CUDA float32
============== ===================================================== ==============

``"auto"`` picks pytorch3d, then torch-cluster (then gsplat for the rasterizer), for CUDA
float32 tensors when installed, else torch. On CPU it picks torch (the accelerators' CPU kernels are
single-threaded), except for ``sparse_conv``: spconv's native CPU algorithm is 3x faster
than the pure-torch gather-GEMM at 100k voxels and tested against it and dense conv3d; and for
``knn`` with 128 queries or more into clouds of 2,048 points or more, where scipy's multi-threaded KD-tree
is faster than the brute force and gives the same indices (its candidates re-ranked by the torch path's exact
distances).
``PC3D_OPS_BACKEND`` (``torch``, ``pytorch3d``, ...) replaces ``"auto"``
everywhere; an op the named backend does not implement falls back to torch, and so does a
CUDA-only backend (gsplat) given CPU tensors. Asking for an uninstalled backend, explicitly or
through the variable, or for gsplat on CPU tensors explicitly, raises
:class:`pc3d.errors.ConfigError`.

pytorch3d and torch-cluster are used by ``"auto"`` only once held to the torch path in this
process: the first automatic use of an (accelerator, op, device) runs both on a small seeded
input (:func:`resolve_checked`); if they disagree, or the accelerator fails, pc3d warns once and
uses torch. (They are not installable from the package registries within pc3d's CI time budget, so
their agreement tests skip in CI; this check makes ``auto`` safe wherever they are installed.)
spconv is tested in CI; gsplat's agreement test runs wherever CUDA is. An explicit
``backend=...`` is used as asked.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable

import torch

from pc3d.errors import ConfigError
from pc3d.utils.progress import get_logger

ENV_VAR = "PC3D_OPS_BACKEND"

BACKENDS: tuple[str, ...] = ("torch", "pytorch3d", "torch_cluster", "scipy", "spconv", "gsplat")

# op name -> backends that implement it (a constant table, not a registry).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "farthest_point_sample": ("torch", "pytorch3d", "torch_cluster"),
    "knn": ("torch", "pytorch3d", "torch_cluster", "scipy"),
    "ball_query": ("torch", "pytorch3d"),
    "chamfer_l2": ("torch", "pytorch3d"),
    "sparse_conv": ("torch", "spconv"),
    "rasterize_gaussians": ("torch", "gsplat"),
}

# Preference order of "auto" among the accelerators (CUDA float32 only).
_AUTO_ORDER: tuple[str, ...] = ("pytorch3d", "torch_cluster", "spconv", "gsplat")

# backends whose kernels exist for CUDA tensors only
_CUDA_ONLY: tuple[str, ...] = ("gsplat",)

_INSTALL_HINT: dict[str, str] = {
    "pytorch3d": "build pytorch3d from its source release against the installed torch/CUDA "
                 "(PyPI has no Linux wheels)",
    "torch_cluster": "pip install torch-cluster (a wheel matching the installed torch/CUDA)",
    "scipy": "pip install scipy",
    "spconv": "pip install spconv-cu120==2.3.6 (Python <= 3.11) or spconv-cu126==2.3.8 (see README, GPU install)",
    "gsplat": "pip install gsplat==1.5.3 (its CUDA kernels compile on first use)",
}

# import name of each optional backend
_MODULE: dict[str, str] = {"pytorch3d": "pytorch3d", "torch_cluster": "torch_cluster", "scipy": "scipy",
                           "spconv": "spconv", "gsplat": "gsplat"}


@functools.lru_cache(maxsize=None)
def is_installed(backend: str) -> bool:
    """Whether ``backend`` can be imported (looked up once, without importing it)."""
    if backend == "torch":
        return True
    module = _MODULE.get(backend)
    if module is None:
        return False
    return importlib.util.find_spec(module) is not None


#: (backend, op, device) → whether that accelerator agreed with torch here
_HELD_TO_TORCH: dict[tuple[str, str, str], bool] = {}
#: accelerators whose automatic use is checked against torch at run time
CHECKED_AT_RUN_TIME = ("pytorch3d", "torch_cluster")


def resolve_checked(requested: str, op: str, tensor: torch.Tensor,
                    agrees: Callable[[str, torch.device], bool]) -> str:
    """:func:`resolve_backend`, and for an automatic choice of an accelerator in
    :data:`CHECKED_AT_RUN_TIME`, ``agrees(backend, device)`` once per (backend, op, device): the
    accelerator is used only if it gives the torch path's result there (see the module docstring)."""
    name = resolve_backend(requested, op, tensor)
    if requested != "auto" or name not in CHECKED_AT_RUN_TIME or os.environ.get(ENV_VAR, "").strip():
        return name
    key = (name, op, str(tensor.device))
    if key not in _HELD_TO_TORCH:
        try:
            ok = bool(agrees(name, tensor.device))
            reason = "its result differs from the torch path's"
        except Exception as exc:  # a broken build: fall back rather than fail a run
            ok = False
            reason = f"it failed ({type(exc).__name__})"
        _HELD_TO_TORCH[key] = ok
        if not ok:
            get_logger(__name__).warning("backend auto: %s is installed but %s for %s on %s; using torch",
                                         name, reason, op, tensor.device)
    return name if _HELD_TO_TORCH[key] else "torch"


def resolve_backend(name: str, op: str, tensor: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``tensor`` for the requested ``name``.

    Args:
        name: ``"auto"`` or one of :data:`BACKENDS`.
        op: one of the keys of :data:`SUPPORTED`.
        tensor: the main input (its device and dtype decide ``"auto"``).

    Returns:
        One of :data:`BACKENDS`.

    Raises:
        ConfigError: unknown backend name, a backend explicitly requested for an op it
            does not implement, or a backend that is not installed.
    """
    if op not in SUPPORTED:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(SUPPORTED)}")
    from_env = False
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            name, from_env = env, True
    where = f"{ENV_VAR}={name}" if from_env else f"backend={name!r}"
    if name == "auto":
        if op == "sparse_conv" and tensor.dtype == torch.float32 and is_installed("spconv"):
            # spconv's native CPU kernels beat the pure-torch gather-GEMM 3x (bench/sparse_unet.py)
            return "spconv"
        if tensor.is_cuda and tensor.dtype == torch.float32:
            for candidate in _AUTO_ORDER:
                if candidate in SUPPORTED[op] and is_installed(candidate):
                    return candidate
        return "torch"
    if name not in BACKENDS:
        raise ConfigError(f"{where}: unknown ops backend; expected 'auto' or one of {list(BACKENDS)}")
    if name not in SUPPORTED[op]:
        if from_env:
            return "torch"
        raise ConfigError(f"{where}: {op} is not implemented by {name}; "
                          f"available: {list(SUPPORTED[op])}")
    if name in _CUDA_ONLY and not tensor.is_cuda:
        if from_env:
            return "torch"
        raise ConfigError(f"{where}: {name} runs on CUDA tensors only, got {tensor.device} "
                          "(use backend='torch' or 'auto')")
    if not is_installed(name):
        raise ConfigError(f"{where}: {name} is not installed; to install: "
                          f"{_INSTALL_HINT[name]} (or use backend='torch')")
    return name
