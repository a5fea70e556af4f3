"""Shared fixtures. Real sample data comes from PC3D_SHARED_DATA (default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("PC3D_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def in_ci() -> bool:
    """``CI=true`` (any case): what CI must test may not be skipped."""
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_or_fail(reason: str) -> None:
    """The one way a test steps aside for a missing requirement: fail under CI=true, skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI must provide it)")
    pytest.skip(reason)


def require_shared(relative: str) -> Path:
    """Path to a folder or file of the shared sample data; fail under CI=true, skip elsewhere."""
    path = shared_data_root() / relative
    if not path.exists():
        skip_or_fail(f"shared sample data {path} not found (set PC3D_SHARED_DATA)")
    return path


def require_module(name: str, why: str) -> None:
    """An optional package CI installs (spconv, open3d-cpu): fail under CI=true without it, skip elsewhere."""
    import importlib

    try:
        importlib.import_module(name)
    except (ImportError, OSError) as error:  # OSError: a build whose libraries do not load
        skip_or_fail(f"{name} is not importable ({type(error).__name__}: {error}); {why}")


@pytest.fixture
def shared_data() -> Path:
    return require_shared("")


@pytest.fixture
def modelnet10_root() -> Path:
    return require_shared("modelnet10")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Prepared/generated data goes to PC3D_CACHE (set by .ci/run) or a per-session temp folder."""
    if "PC3D_CACHE" not in os.environ:
        os.environ["PC3D_CACHE"] = str(tmp_path_factory.mktemp("pc3d_cache"))
    os.environ.setdefault("PC3D_PROGRESS", "0")
    yield


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def require_spconv() -> None:
    """spconv importable (skip, or fail under CI=true) and, on a multi-core machine, torch's default threads:
    spconv's multi-threaded CPU path is the one that has gone wrong before (see tests/test_sparse_conv.py)."""
    try:
        import spconv.pytorch  # noqa: F401
    except (ImportError, OSError) as error:  # OSError: a CUDA build whose libraries do not load
        reason = f"spconv is not importable ({type(error).__name__}: {error})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must test the spconv backend (pip install spconv-cu120==2.3.6)")
        pytest.skip(reason)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores >= 2:
        assert torch.get_num_threads() >= 2, f"spconv must be tested with torch's default threads, got " \
                                              f"{torch.get_num_threads()}"
