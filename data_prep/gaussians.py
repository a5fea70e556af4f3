"""3D Gaussian scenes for Gaussian2Scene: fit them to posed images, or import 3DGS ``.ply`` scenes.

``pc3d prep gaussians src=SRC dst=DST`` (``configs/prep/gaussians.yaml``):

* ``SRC`` a capture in any posed-image format pc3d reads (Blender ``transforms_*.json``, instant-ngp,
  LLFF, COLMAP, ScanNet frames, SUN RGB-D; :func:`pc3d.data.cameras.read_posed_images`): the built-in
  3DGS fitter (:mod:`pc3d.data.gaussian_fitter`) makes one scene, named ``name`` (default: the folder's
  name), and records its held-out PSNR;
* ``SRC`` a 3DGS ``.ply`` or a folder of them (``format=ply``; what the original 3DGS code, gsplat,
  nerfstudio's splatfacto export and common splat editors write): each is read and checked, all of them
  before the first is written, and written again in the standard layout (``fit.*`` does not apply).

``DST`` gets ``<name>.ply`` (the standard 3DGS layout, which splat viewers open), ``manifest.json``
(Gaussian count, SH degree, bounds, PSNR, every fitter setting) and ``splits.json``; a re-run with
unchanged inputs and settings rewrites nothing, and a folder pc3d did not prepare is refused unless
``force=true``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from data_prep import capture_source, fitter_config
from pc3d.data.cameras import capture_files, read_posed_images
from pc3d.data.folders import FolderItem
from pc3d.data.gaussian_fitter import GaussianFitConfig, config_dict, fit_gaussians
from pc3d.data.gaussians import GaussianCloud, read_gaussian_ply, write_gaussian_folder
from pc3d.errors import ConfigError, DataFormatError
from pc3d.utils.progress import get_logger, progress

_log = get_logger("pc3d.data")


def _fit_source(src: Path, name: str, fmt: str, config: GaussianFitConfig) -> FolderItem:
    posed = read_posed_images(src, format=fmt)
    if len(posed) == 0:
        raise DataFormatError(f"{src}: the capture has no views (expected posed images)")

    def convert() -> tuple[GaussianCloud, dict[str, Any]]:
        started = time.perf_counter()
        with progress(total=config.steps, desc=f"fit {name}") as bar:
            def on_step(step: int, train_psnr: float, gaussians: int) -> None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(psnr=f"{train_psnr:.2f}", gaussians=gaussians)

            fitted = fit_gaussians(posed, config, on_step)
        _log.info("fitted %s: %d Gaussians, held-out PSNR %s dB, %.0f s", name, len(fitted.cloud),
                  "-" if fitted.heldout_psnr is None else f"{fitted.heldout_psnr:.2f}", fitted.seconds)
        extra = {"source_format": posed.source, "views": len(posed), "init": fitted.init,
                 "init_gaussians": fitted.init_gaussians, "scene_scale": fitted.scene_scale,
                 "heldout_psnr": fitted.heldout_psnr, "heldout_psnr_full": fitted.heldout_psnr_full,
                 "train_psnr": fitted.train_psnr, "fit_seconds": round(fitted.seconds, 1),
                 "wall_seconds": round(time.perf_counter() - started, 1),
                 "psnr_history": [[s, round(t, 1), round(p, 3), n] for s, t, p, n in fitted.history]}
        return fitted.cloud, extra

    return FolderItem(name, capture_files(src, posed), convert)


def _ply_sources(src: Path) -> list[FolderItem]:
    files = [src] if src.is_file() else sorted(src.glob("*.ply"))
    if not files:
        raise DataFormatError(f"{src}: no .ply Gaussian scene found")

    def source(path: Path) -> FolderItem:
        def convert() -> tuple[GaussianCloud, dict[str, Any]]:
            return read_gaussian_ply(path), {"source_format": "ply"}

        return FolderItem(path.stem, [path], convert)

    for path in progress(files, desc="check Gaussians"):
        cloud = read_gaussian_ply(path)  # every file is checked before the first is written
        if len(cloud) == 0:
            raise DataFormatError(f"{path}: the PLY holds no Gaussians (expected at least one vertex)")
    return [source(f) for f in files]


def prepare_gaussians(src: str, dst: str, *, fmt: str = "auto", name: str | None = None,
                      fit: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """Fit or import 3D Gaussian scenes from ``src`` into the prepared folder ``dst`` (module docstring).

    Every argument is checked before anything is written.
    """
    src_p, dst_p, is_ply = capture_source(src, dst, fmt, "ply", ".ply")
    if is_ply:
        sources, params = _ply_sources(src_p), {"format": "ply"}
    else:
        config = fitter_config(GaussianFitConfig, dict(fit or {}))
        scene_name = name or src_p.resolve().name
        if not scene_name or "/" in scene_name or scene_name.startswith("."):
            raise ConfigError(f"name={scene_name!r} must be a plain file name")
        sources, params = [_fit_source(src_p, scene_name, fmt, config)], {"fit": config_dict(config), "format": fmt}
    return write_gaussian_folder(dst_p, sources, dataset="gaussians", source=src_p if src_p.is_dir() else src_p.parent,
                                 params=params, force=force)


def prep_command(cfg) -> dict:
    """``pc3d prep gaussians`` (``configs/prep/gaussians.yaml``)."""
    from omegaconf import OmegaConf

    fit = OmegaConf.to_container(cfg.fit, resolve=True) if cfg.get("fit") is not None else {}
    manifest = prepare_gaussians(str(cfg.src), str(cfg.dst), fmt=str(cfg.format), name=cfg.name, fit=fit,
                                 force=bool(cfg.force))
    for scene, entry in manifest["scenes"].items():
        score = entry.get("heldout_psnr")
        print(f"prepared {scene}: {entry['gaussians']} Gaussians (SH degree {entry['sh_degree']})"
              f"{'' if score is None else f', held-out PSNR {score:.2f} dB'} -> {Path(cfg.dst) / entry['file']}")
    return manifest
