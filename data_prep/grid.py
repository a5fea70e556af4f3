"""Radiance grids for NeRF-MAE: fit one to posed images, or import released NeRF-MAE / NeRF-RPN grids.

``pc3d prep grid src=SRC dst=DST`` (``configs/prep/grid.yaml``):

* ``SRC`` a capture in any posed-image format pc3d reads (Blender ``transforms_*.json``, instant-ngp,
  LLFF, COLMAP, ScanNet frames; :func:`pc3d.data.cameras.read_posed_images`): the built-in fitter
  (:mod:`pc3d.data.grid_fitter`) makes one grid, named ``name`` (default: the folder's name), and
  records its held-out PSNR;
* ``SRC`` a ``.npz`` grid or a folder of them (``format=npz``, the layout NeRF-MAE's extraction writes):
  each is read with the explicit ``density=`` convention and written in pc3d's (alpha);
* ``SRC`` coloured scans with labels (``format=scannet_scans``: ScanNet's numpy layout, every
  ``<scene>_vert_all.npy`` or those of ``scan.scenes``; ``format=sunrgbd_scans``: SUN RGB-D's ``lidar/`` +
  ``label/``, every frame or ``scan.scenes``): each becomes a grid with per-cell classes and boxes
  (:mod:`pc3d.data.scan_grids`; ``scan.cell``, ``scan.max_cells``, ``scan.occupied_alpha``).

``DST`` gets ``<name>.npz`` (NeRF-MAE's layout, density as alpha), ``manifest.json`` (box, shape,
density convention, PSNR, every fitter setting) and ``splits.json``; a re-run with unchanged inputs and
settings rewrites nothing, and a folder pc3d did not prepare is refused unless ``force=true``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from data_prep import capture_source, fitter_config, source_and_destination
from pc3d.data.cameras import capture_files, read_posed_images
from pc3d.data.folders import FolderItem
from pc3d.data.grid_fitter import GridFitConfig, config_dict, fit_radiance_grid
from pc3d.data.radiance_grid import DENSITY_CONVENTIONS, RadianceGrid, read_radiance_grid, write_grid_folder
from pc3d.data.scan_grids import SCAN_GRID_CLASSES, scannet_scan_grid, sunrgbd_scan_grid
from pc3d.data.scenes import find_scannet_numpy_scenes
from pc3d.utils.config import Setting, check_settings
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger, progress

_log = get_logger("pc3d.data")


def _fit_source(src: Path, name: str, fmt: str, config: GridFitConfig) -> FolderItem:
    posed = read_posed_images(src, format=fmt)

    def convert() -> tuple[RadianceGrid, dict[str, Any]]:
        started = time.perf_counter()
        with progress(total=config.steps, desc=f"fit {name}") as bar:
            def on_step(step: int, train_psnr: float) -> None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(psnr=f"{train_psnr:.2f}")

            fitted = fit_radiance_grid(posed, config, on_step)
        _log.info("fitted %s: %s cells, held-out PSNR %s dB, %.0f s", name, "x".join(map(str, fitted.rgb.shape[:3])),
                  "-" if fitted.heldout_psnr is None else f"{fitted.heldout_psnr:.2f}", fitted.seconds)
        extra = {"source_format": posed.source, "views": len(posed), "heldout_psnr": fitted.heldout_psnr,
                 "heldout_psnr_full": fitted.heldout_psnr_full,
                 "train_psnr": fitted.train_psnr, "fit_seconds": round(fitted.seconds, 1),
                 "wall_seconds": round(time.perf_counter() - started, 1),
                 "psnr_history": [[s, round(t, 1), round(p, 3)] for s, t, p in fitted.history]}
        return RadianceGrid(rgb=fitted.rgb, alpha=fitted.alpha, box=fitted.box), extra

    return FolderItem(name, capture_files(src, posed), convert)


def _npz_sources(src: Path, density: str) -> list[FolderItem]:
    files = [src] if src.is_file() else sorted(src.glob("*.npz"))
    files = [f for f in files if not f.name.endswith("_split.npz")]  # NeRF-MAE's split lists, not grids
    if not files:
        raise DataFormatError(f"{src}: no .npz radiance grid found")

    def source(path: Path) -> FolderItem:
        def convert() -> tuple[RadianceGrid, dict[str, Any]]:
            return read_radiance_grid(path, density=density), {"source_format": "npz", "source_density": density}

        return FolderItem(path.stem, [path], convert)

    for path in progress(files, desc="check grids"):
        read_radiance_grid(path, density=density)  # every file is checked before the first is written
    return [source(f) for f in files]


SCAN_SETTINGS = {"cell": Setting(float, 0.0, open_low=True), "max_cells": Setting(int, 1),
                 "occupied_alpha": Setting(float, 0.0, 1.0, open_low=True)}


def _scan_sources(src: Path, fmt: str, scan: dict[str, Any]) -> list[FolderItem]:
    """The scans of ``src`` as grid sources; every scan is converted once here (checked) before the first write."""
    scan = dict(scan)
    scenes = scan.pop("scenes", None)
    settings = check_settings("scan", scan, SCAN_SETTINGS)
    if scenes is not None and (not isinstance(scenes, (list, tuple))
                               or not all(isinstance(n, (str, int)) for n in scenes)):
        raise ConfigError(f"scan.scenes={scenes!r}: expected a list of scene names or null")
    if not src.is_dir():
        raise DataFormatError(f"{src}: expected a folder of scans (format={fmt})")
    if fmt == "scannet_scans":
        found = {p.name: p for p in find_scannet_numpy_scenes(src)}
        where = "no <scene>_vert_all.npy"
    else:
        found = {p.stem: p for p in sorted((src / "lidar").glob("*.npz"))}
        where = "no lidar/<frame>.npz"
    if not found:
        raise DataFormatError(f"{src}: {where} (format={fmt})")
    names = list(found) if scenes is None else [str(n) for n in scenes]
    missing = [n for n in names if n not in found]
    if missing or not names:
        raise DataFormatError(f"{src}: no scan {missing or names} (found {sorted(found)[:10]})")
    classes = {k: list(v) for k, v in SCAN_GRID_CLASSES[fmt].items()}

    def convert(name: str) -> RadianceGrid:
        if fmt == "scannet_scans":
            return scannet_scan_grid(found[name], **settings)
        return sunrgbd_scan_grid(src, name, **settings)

    grids = {name: convert(name) for name in progress(names, desc="grid scans")}

    def source(name: str) -> FolderItem:
        files = sorted(src.glob(f"{name}_*.npy")) if fmt == "scannet_scans" else \
            [src / "lidar" / f"{name}.npz", src / "label" / f"{name}.txt"]
        grid = grids[name]
        extra = {"source_format": fmt, "semantic_classes": classes["semantic"], "box_classes": classes["boxes"],
                 "boxes": 0 if grid.boxes is None else len(grid.boxes), "cell": float(grid.cell_size[0])}
        return FolderItem(name, files, lambda: (grid, extra))

    return [source(name) for name in names]


def prepare_grids(src: str, dst: str, *, fmt: str = "auto", density: str | None = None, name: str | None = None,
                  fit: dict[str, Any] | None = None, scan: dict[str, Any] | None = None,
                  force: bool = False) -> dict[str, Any]:
    """Fit or import radiance grids from ``src`` into the prepared grid folder ``dst`` (module docstring).

    Every argument is checked before anything is written.
    """
    if fmt in SCAN_GRID_CLASSES:
        src_p, dst_p = source_and_destination(src, dst)
        if density is not None:
            raise ConfigError("density= applies to importing .npz grids only; a scan grid's density is alpha")
        settings = dict(scan or {})
        sources = _scan_sources(src_p, fmt, settings)
        return write_grid_folder(dst_p, sources, dataset="grid", source=src_p, params={"format": fmt, "scan": settings},
                                 force=force)
    src_p, dst_p, is_npz = capture_source(src, dst, fmt, "npz", ".npz")
    if is_npz:
        if density is None:
            raise ConfigError(f"density=... is required to import {src_p} (one of {', '.join(DENSITY_CONVENTIONS)}; "
                              "the grids' release says which)")
        if density not in DENSITY_CONVENTIONS:
            raise ConfigError(f"density={density!r} is unknown (expected one of {', '.join(DENSITY_CONVENTIONS)})")
        sources, params = _npz_sources(src_p, density), {"density": density}
    else:
        if density is not None:
            raise ConfigError("density= applies to importing .npz grids only; a fitted grid's density is alpha")
        config = fitter_config(GridFitConfig, dict(fit or {}))
        grid_name = name or src_p.resolve().name
        if not grid_name or "/" in grid_name or grid_name.startswith("."):
            raise ConfigError(f"name={grid_name!r} must be a plain file name")
        sources, params = [_fit_source(src_p, grid_name, fmt, config)], {"fit": config_dict(config), "format": fmt}
    return write_grid_folder(dst_p, sources, dataset="grid", source=src_p if src_p.is_dir() else src_p.parent,
                             params=params, force=force)


def prep_command(cfg) -> dict:
    """``pc3d prep grid`` (``configs/prep/grid.yaml``)."""
    from omegaconf import OmegaConf

    fit = OmegaConf.to_container(cfg.fit, resolve=True) if cfg.get("fit") is not None else {}
    scan = OmegaConf.to_container(cfg.scan, resolve=True) if cfg.get("scan") is not None else {}
    manifest = prepare_grids(str(cfg.src), str(cfg.dst), fmt=str(cfg.format), density=cfg.density, name=cfg.name,
                             fit=fit, scan=scan, force=bool(cfg.force))
    for grid_name, entry in manifest["scenes"].items():
        psnr = entry.get("heldout_psnr")
        print(f"prepared {grid_name}: {'x'.join(map(str, entry['shape']))} cells"
              f"{'' if psnr is None else f', held-out PSNR {psnr:.2f} dB'} -> {Path(cfg.dst) / entry['file']}")
    return manifest
