"""What the benchmark scripts record about the machine they ran on."""

from __future__ import annotations

import platform
import resource
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``VmHWM``) to its current RSS, so that a later
    :func:`rss_since_reset_mib` sees only what comes after (building a model can leave a higher
    peak than running it). False where the kernel does not offer it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mib("VmHWM") is not None


def rss_mib() -> float | None:
    """This process's current resident set size in MiB (Linux), else None."""
    return _status_mib("VmRSS")


def rss_since_reset_mib() -> float | None:
    """This process's peak resident set size since :func:`reset_peak_rss`, in MiB (Linux), else None."""
    return _status_mib("VmHWM")
