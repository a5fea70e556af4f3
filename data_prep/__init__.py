"""Dataset converters into the pc3d prepared object cache (``python -m data_prep.<name>``)."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from pc3d.errors import Pc3dError

Result = TypeVar("Result")


def run_converter(prepare: Callable[[], Result], summary: Callable[[Result], str]) -> int:
    """The exit path every ``python -m data_prep.<name>`` shares: run ``prepare``; a :class:`Pc3dError`
    becomes one ``error: ...`` line on stderr and exit status 2, success prints ``summary(result)``."""
    try:
        result = prepare()
    except Pc3dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def scene_summary(src: object, dst: object, manifest: dict) -> str:
    """The line ``pc3d prep`` prints after a scene conversion."""
    scenes = manifest["scenes"]
    return (f"prepared {src} → {dst}: {len(scenes)} scenes, {sum(s['points'] for s in scenes.values())} points, "
            f"{len(manifest['class_names'])} classes")


def object_summary(result: tuple[dict, bool], dst: object) -> str:
    """The line ``pc3d prep`` prints after an object-cache conversion (``result``: ``(manifest, rebuilt)``)."""
    manifest, rebuilt = result
    return (f"{'prepared' if rebuilt else 'up to date:'} {manifest['num_shapes']} shapes, "
            f"{len(manifest['classes'])} classes, {manifest['num_points']} points each -> {dst}")
