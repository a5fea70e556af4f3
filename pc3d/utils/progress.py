"""The one progress-bar and logging path.

Progress bars go to stderr through tqdm and disappear when stderr is not a
terminal or ``PC3D_PROGRESS=0`` (CI logs stay readable); log lines go through
the ``pc3d`` logger.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _progress_enabled() -> bool:
    flag = os.environ.get("PC3D_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "False", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             initial: int = 0, disable: bool = False) -> tqdm:
    """A tqdm bar on stderr (disabled when not a terminal unless ``PC3D_PROGRESS=1``, or by ``disable``)."""
    return tqdm(iterable, total=total, desc=desc, initial=initial, dynamic_ncols=True,
                disable=disable or not _progress_enabled(), file=sys.stderr, leave=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced after the handler
    was made: by a test's capture, a notebook, a redirect)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # set by StreamHandler.__init__; the live sys.stderr is used instead
        pass


def get_logger(name: str = "pc3d") -> logging.Logger:
    """The pc3d logger; configures a plain stderr handler once."""
    root = logging.getLogger("pc3d")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[pc3d] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name)
