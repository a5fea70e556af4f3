"""``pc3d <command> key=value ...`` — the Hydra command line.

Commands:
    pretrain   self-supervised pretraining (configs/pretrain.yaml)
    probe      frozen-feature probe + random-init baseline (configs/probe.yaml)
    finetune   fine-tune encoder + Point-MAE head, optional voting (configs/finetune.yaml)
    fewshot    N-way K-shot classification over seeded folds (configs/fewshot.yaml)
    detect train|eval   3D detection head + mAP@0.25/0.5 (configs/detect.yaml)
    export     a checkpoint's encoder as one .safetensors file (configs/export.yaml)
    prep NAME  dataset preparation, e.g. ``pc3d prep modelnet src=DIR dst=DIR`` (configs/prep/NAME.yaml)

Every run writes the resolved ``config.yaml`` and a flat ``metrics.json`` to
``out_dir``. Metric keys (stable):
    pretrain: final_loss (mean of the last 25 step losses), steps, wall_s, samples_per_s
    finetune / fewshot: see pc3d.eval.finetune / pc3d.eval.fewshot
    probe:    val_accuracy, val_mean_class_accuracy, val_accuracy/<class>, svm_C,
              test_accuracy, test_mean_class_accuracy, test_accuracy/<class> (when a test
              split exists), and the same keys prefixed random_ for the random-init baseline.
Bad input (unknown keys, missing data, corrupt files) ends with one line on stderr
and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pc3d.errors import ConfigError, Pc3dError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
USAGE = __doc__.split("Every run")[0].strip()


def config_dir() -> Path:
    """``$PC3D_CONFIG_DIR`` or the repository's ``configs/``."""
    path = Path(os.environ.get("PC3D_CONFIG_DIR", REPO_CONFIGS))
    if not (path / "pretrain.yaml").is_file():
        raise ConfigError(f"config directory {path} not found (install pc3d with `pip install -e .` from the "
                          "repository, or set PC3D_CONFIG_DIR)")
    return path


def compose(name: str, overrides: Sequence[str]):
    """The composed config ``name`` with command-line ``overrides``, struct mode on."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=list(overrides))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(f'{k}=...' for k in missing)}")
    OmegaConf.set_struct(cfg, True)
    return cfg


def _is_main_process() -> bool:
    from pc3d.train.distributed import current_context

    return current_context().is_main


def start_run(cfg) -> Path:
    """Write the resolved ``config.yaml`` to ``out_dir`` (rank 0 of a multi-process run only)."""
    from omegaconf import OmegaConf

    from pc3d.utils.atomic import atomic_write

    out = Path(cfg.out_dir)
    if _is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.yaml", "w") as handle:
            handle.write(OmegaConf.to_yaml(cfg, resolve=True))
    return out


def finish_run(out: Path, metrics: dict[str, Any]) -> None:
    from pc3d.utils.atomic import atomic_write_json

    if _is_main_process():
        atomic_write_json(out / "metrics.json", metrics)


def report(line: str) -> None:
    """Print a run's summary line (rank 0 of a multi-process run only)."""
    if _is_main_process():
        print(line)


def run_pretrain(cfg) -> dict[str, Any]:
    """Pretraining; under ``torchrun`` every process runs this and DDP joins them."""
    from pc3d.train import Trainer, TrainerConfig
    from pc3d.train.distributed import init_distributed
    from pc3d.utils.config import call_target, seed_everything, to_plain

    init_distributed(str(cfg.device))
    seed_everything(cfg.seed)
    data = call_target(cfg.data, "data")
    encoder = call_target(cfg.encoder, "encoder")
    model = call_target(cfg.method, "method", encoder=encoder)
    trainer_cfg = TrainerConfig(**to_plain(cfg.trainer), seed=cfg.seed, device=cfg.device, resume=str(cfg.resume))
    # a method that needs its own sample format (MSM's paired voxel views) builds it from the data node
    if hasattr(model, "pretrain_dataset"):
        dataset = model.pretrain_dataset(data, augment=cfg.augment)
    else:
        dataset = data.pretrain_dataset(augment=cfg.augment)
    trainer = Trainer(model, dataset, trainer_cfg, cfg.out_dir,
                      run_config=to_plain(cfg))
    out = start_run(cfg)  # only once every input has been validated: a failed start leaves no output
    metrics = trainer.fit()
    finish_run(out, metrics)
    report(f"pretrain: {metrics['steps']} steps, final loss {metrics['final_loss']:.5f}, "
            f"{metrics['samples_per_s']:.1f} samples/s, {metrics['wall_s']:.0f} s → {out}")
    return metrics


def _probe_encoders(cfg) -> dict[str, Any]:
    """``{"pretrained": ..., "random": ...}``: the checkpoint's encoder and, with ``probe.baseline``
    (or ``checkpoint=random``), a random-init encoder of the same architecture seeded with ``seed``."""
    from pc3d.hub import build_encoder, load_encoder
    from pc3d.utils.config import seed_everything, to_plain

    encoders: dict[str, Any] = {}
    if str(cfg.checkpoint) == "random":
        encoder_cfg = to_plain(cfg.encoder)
    else:
        encoders["pretrained"], encoder_cfg = load_encoder(cfg.checkpoint)
    if cfg.probe.baseline or not encoders:
        seed_everything(cfg.seed)
        encoders["random"] = build_encoder(encoder_cfg)
    return encoders


def run_probe(cfg) -> dict[str, Any]:
    import numpy as np

    from pc3d.eval import ProbeSplits, extract_global_features, svm_probe
    from pc3d.train import resolve_device
    from pc3d.utils.config import call_target

    started = time.perf_counter()
    if cfg.probe.get("task") == "scene":
        return run_scene_probe(cfg)
    if cfg.probe.levels not in ("last", "all"):
        raise ConfigError(f"probe.levels={cfg.probe.levels!r}: expected 'last' or 'all'")
    if not cfg.probe.Cs or any(float(c) <= 0 for c in cfg.probe.Cs):
        raise ConfigError(f"probe.Cs={list(cfg.probe.Cs)}: expected a non-empty list of positive values")
    device = resolve_device(cfg.device)
    data = call_target(cfg.data, "data")
    encoders = _probe_encoders(cfg)

    out = start_run(cfg)
    order = np.concatenate([data.fit, data.val, data.test])
    bounds = np.cumsum([0, len(data.fit), len(data.val), len(data.test)])
    labels = data.labels(order)
    results: dict[str, dict[str, Any]] = {}
    for name, encoder in encoders.items():
        features = extract_global_features(encoder, data.points(order), batch_size=cfg.probe.batch_size,
                                           device=device, levels=cfg.probe.levels)
        parts = [(features[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        splits = ProbeSplits(*parts[0], *parts[1], *(parts[2] if len(data.test) else (None, None)))
        results[name] = svm_probe(splits, data.class_names, Cs=list(cfg.probe.Cs),
                                  standardize=cfg.probe.standardize, seed=cfg.seed)
    main = results["pretrained"] if "pretrained" in results else results["random"]
    metrics = dict(main)
    if "random" in results:
        metrics.update({f"random_{k}": v for k, v in results["random"].items()})
    metrics["feature_dim"] = int(features.shape[1])
    metrics["wall_s"] = time.perf_counter() - started
    finish_run(out, metrics)
    source = str(data.cache.manifest.get("source", "data")).split(" ")[0]
    line = f"probe ({Path(source).name}, {len(data.val)} val shapes): "
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            line += f"{split} accuracy {'pretrained' if 'pretrained' in results else 'random'} " \
                    f"{metrics[f'{split}_accuracy']:.4f}"
            if "pretrained" in results and "random" in results:
                line += f" | random init {metrics[f'random_{split}_accuracy']:.4f}"
            line += "; "
    report(line.rstrip("; ") + f" → {out}")
    return metrics


def run_scene_probe(cfg) -> dict[str, Any]:
    """``probe=scene_linear|scene_knn``: frozen multi-level point features → mIoU, beside random init."""
    from pc3d.eval.scene_probe import run_scene_probe as probe
    from pc3d.train import resolve_device
    from pc3d.utils.config import call_target, to_plain

    started = time.perf_counter()
    device = resolve_device(cfg.device)
    data = call_target(cfg.data, "data")
    if not hasattr(data, "scenes"):
        raise ConfigError(f"probe={cfg.probe.kind}: the scene probe needs scans with labels (data=scannet), "
                          f"got {type(data).__name__}")
    options = {k: v for k, v in to_plain(cfg.probe).items() if k not in ("task", "kind", "interpolation", "baseline")}
    train, val = data.scenes(data.probe_train), data.scenes(data.probe_val)
    encoders = _probe_encoders(cfg)
    out = start_run(cfg)
    results = {name: probe(encoder, train, val, data.class_names, str(cfg.probe.kind), device=device,
                           interpolation=str(cfg.probe.interpolation), seed=int(cfg.seed), **options)
               for name, encoder in encoders.items()}
    metrics = dict(results["pretrained"] if "pretrained" in results else results["random"])
    if "pretrained" in results and "random" in results:
        metrics.update({f"random_{k}": v for k, v in results["random"].items()})
    metrics.update({"probe": f"scene_{cfg.probe.kind}", "train_scans": [s.name for s in train],
                    "val_scans": [s.name for s in val], "wall_s": time.perf_counter() - started})
    finish_run(out, metrics)
    line = f"probe scene_{cfg.probe.kind} ({len(train)} train / {len(val)} val scans): "
    line += f"mIoU {'pretrained' if 'pretrained' in results else 'random'} {metrics['miou']:.4f}"
    if "pretrained" in results and "random" in results:
        line += f" | random init {metrics['random_miou']:.4f}"
    report(line + f" → {out}")
    return metrics


def run_finetune(cfg) -> dict[str, Any]:
    from pc3d.eval.finetune import run_finetune as finetune

    return finetune(cfg)


def run_fewshot(cfg) -> dict[str, Any]:
    from pc3d.eval.fewshot import run_fewshot as fewshot

    return fewshot(cfg)


def run_export(cfg) -> dict[str, Any]:
    """``checkpoint`` (any format :func:`pc3d.hub.load_encoder` reads) → ``out`` (a pc3d encoder file)."""
    from pc3d.hub import load_encoder, save_encoder

    out = Path(cfg.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"out={cfg.out}: the encoder file must end in .safetensors")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"out={cfg.out}: exists; pass overwrite=true to replace it")
    if out.is_dir():
        raise ConfigError(f"out={cfg.out}: is a directory")
    encoder, config = load_encoder(cfg.checkpoint, strict=bool(cfg.strict), format=str(cfg.format))
    save_encoder(encoder, out, config)
    parameters = sum(p.numel() for p in encoder.parameters())
    report(f"export: {cfg.checkpoint} → {out} ({config['_target_'].rsplit('.', 1)[-1]}, "
            f"{parameters / 1e6:.2f} M parameters)")
    return {"out": str(out), "parameters": parameters}


def run_prep(name: str, cfg) -> dict[str, Any]:
    if name == "modelnet":
        from data_prep.modelnet import prepare_modelnet

        manifest = prepare_modelnet(cfg.src, cfg.dst, num_points=cfg.num_points,
                                    num_surface_points=cfg.num_surface_points, seed=cfg.seed, force=cfg.force)
        counts = manifest.get("counts", {})
        print(f"prepared {cfg.src} → {cfg.dst}: {len(manifest.get('classes', []))} classes, "
              f"{sum(sum(v.values()) if isinstance(v, dict) else v for v in counts.values())} shapes")
        return manifest
    if name == "scannet":
        from data_prep.scannet import prepare_scannet

        manifest = prepare_scannet(cfg.src, cfg.dst, cfg.force, labels_tsv=cfg.labels_tsv, normals_k=cfg.normals_k,
                                   axis_align=cfg.axis_align)
    elif name == "s3dis":
        from data_prep.s3dis import prepare_s3dis

        manifest = prepare_s3dis(cfg.src, cfg.dst, cfg.force, val_area=cfg.val_area, normals_k=cfg.normals_k)
    else:
        raise ConfigError(f"unknown dataset for prep: {name!r} (available: {', '.join(PREP)})")
    scenes = manifest["scenes"]
    print(f"prepared {cfg.src} → {cfg.dst}: {len(scenes)} scenes, {sum(s['points'] for s in scenes.values())} "
          f"points, {len(manifest['class_names'])} classes")
    return manifest


COMMANDS: dict[str, Callable[[Any], dict[str, Any]]] = {"pretrain": run_pretrain, "probe": run_probe,
                                                       "finetune": run_finetune, "fewshot": run_fewshot,
                                                       "export": run_export}
PREP = ("modelnet", "scannet", "s3dis")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = args[0], args[1:]
    from pc3d.train.distributed import shutdown_distributed

    try:
        if command == "prep":
            if not overrides or "=" in overrides[0]:
                raise ConfigError(f"usage: pc3d prep NAME key=value ... (NAME: {', '.join(PREP)})")
            name, overrides = overrides[0], overrides[1:]
            if name not in PREP:
                raise ConfigError(f"unknown dataset for prep: {name!r} (available: {', '.join(PREP)})")
            run_prep(name, compose(f"prep/{name}", overrides))
        elif command == "detect":
            if not overrides or overrides[0] not in ("train", "eval"):
                raise ConfigError("usage: pc3d detect train|eval key=value ...")
            from pc3d.eval.detect import run_detect

            run_detect(overrides[0], compose("detect", overrides[1:]))
        elif command in COMMANDS:
            COMMANDS[command](compose(command, overrides))
        else:
            raise ConfigError(f"unknown command {command!r} (commands: {', '.join([*COMMANDS, 'detect', 'prep'])})")
    except Pc3dError as exc:
        print(f"pc3d: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"pc3d: config error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pc3d: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
