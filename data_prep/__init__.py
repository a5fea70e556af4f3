"""Dataset converters into the pc3d prepared object cache (``python -m data_prep.<name>``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from pc3d.errors import ConfigError, DataFormatError, Pc3dError

Result = TypeVar("Result")
Config = TypeVar("Config")


def fitter_config(kind: Callable[..., Config], values: dict[str, Any]) -> Config:
    """A fitter's config dataclass from ``fit.*`` values, validated; an unknown key names itself."""
    known = set(kind.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"fit.{unknown[0]} is not a fitter setting (known: {', '.join(sorted(known))})")
    config = kind(**values)
    config.validate()  # type: ignore[attr-defined]
    return config


def source_and_destination(src: str, dst: str) -> tuple[Path, Path]:
    """``src`` exists and ``dst`` is another path."""
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.exists():
        raise DataFormatError(f"{src_p}: source not found")
    if src_p.resolve() == dst_p.resolve():
        raise ConfigError(f"dst {dst} must differ from src {src}")
    return src_p, dst_p


def capture_source(src: str, dst: str, fmt: str, import_format: str, suffix: str) -> tuple[Path, Path, bool]:
    """Check a capture prep's ``src``, ``dst`` and ``format``; return them and whether ``src`` is to be
    imported (``format=<import_format>``, or ``auto`` with a ``*<suffix>`` file or a folder of them that
    is not a posed-image capture) rather than fitted."""
    from pc3d.data.cameras import POSED_IMAGE_FORMATS, is_posed_capture

    src_p, dst_p = source_and_destination(src, dst)
    formats = ("auto", import_format, *POSED_IMAGE_FORMATS)
    if fmt not in formats:
        raise ConfigError(f"format={fmt!r} is unknown (expected one of {', '.join(formats)})")
    imported = fmt == import_format or (fmt == "auto" and (
        src_p.suffix == suffix or src_p.is_dir() and any(src_p.glob(f"*{suffix}")) and not is_posed_capture(src_p)))
    return src_p, dst_p, imported


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
