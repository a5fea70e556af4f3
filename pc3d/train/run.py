"""The run skeleton every command shares: device, encoder (checkpoint or random), trainer config,
``config.yaml`` at the start, ``metrics.json`` and one summary line at the end.

A command validates everything it was given (building its data, encoder and trainer) before
:func:`start_run` writes the first file, so a bad value leaves no output. Under ``torchrun``
every process runs the command; only the main process writes and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from torch import nn

from pc3d.train.distributed import current_context
from pc3d.train.trainer import TrainerConfig, resolve_device
from pc3d.utils.atomic import atomic_write, atomic_write_json
from pc3d.utils.config import to_plain

__all__ = ["downstream_encoder", "finish_run", "is_main_process", "probe_encoders", "report", "resolve_device",
           "start_run", "trainer_config"]


def is_main_process() -> bool:
    return current_context().is_main


def report(line: str) -> None:
    """Print a run's summary line (the main process of a multi-process run only)."""
    if is_main_process():
        print(line)


def start_run(config: Mapping[str, Any] | DictConfig) -> Path:
    """Write the resolved ``config.yaml`` (what this run is) to ``config["out_dir"]``; returns that folder."""
    node = config if isinstance(config, DictConfig) else OmegaConf.create(to_plain(config))
    out = Path(str(node.out_dir))
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.yaml", "w") as handle:
            handle.write(OmegaConf.to_yaml(node, resolve=True))
    return out


def finish_run(out: Path, metrics: Mapping[str, Any]) -> None:
    """Write the run's flat ``metrics.json``."""
    if is_main_process():
        atomic_write_json(out / "metrics.json", dict(metrics))


def trainer_config(cfg: DictConfig, **overrides: Any) -> TrainerConfig:
    """The command's ``trainer`` node with the run's ``seed``, ``device`` and ``resume``."""
    settings = {**to_plain(cfg.trainer), "seed": int(cfg.seed), "device": str(cfg.device),
                "resume": str(cfg.resume), **overrides}
    return TrainerConfig(**settings)


def downstream_encoder(cfg: DictConfig, config_overrides: Mapping[str, Any] | None = None
                       ) -> tuple[nn.Module, dict[str, Any], str]:
    """The encoder a downstream command starts from: ``cfg.checkpoint`` (any format
    :func:`pc3d.hub.load_encoder` reads) or, for ``checkpoint=random``, ``cfg.encoder`` seeded with
    ``cfg.seed``. Returns the encoder, its config node and ``"pretrained"`` | ``"random"``."""
    from pc3d.hub import encoder_or_random

    return encoder_or_random(cfg.checkpoint, cfg.get("encoder"), seed=int(cfg.seed),
                             config_overrides=config_overrides)


def probe_encoders(cfg: DictConfig) -> dict[str, nn.Module]:
    """``{"pretrained": ..., "random": ...}`` for a frozen-feature probe: the checkpoint's encoder and,
    with ``probe.baseline`` (or ``checkpoint=random``), a random-init encoder of the same architecture
    seeded with ``seed``. ``checkpoint_overrides`` (a mapping, optional) completes the config the
    checkpoint gives (original files whose weights do not say everything)."""
    from pc3d.hub import encoder_or_random

    from pc3d.utils.config import to_plain

    encoders: dict[str, nn.Module] = {}
    config = cfg.get("encoder")
    if str(cfg.checkpoint) != "random":
        overrides = to_plain(cfg.get("checkpoint_overrides") or {})
        encoders["pretrained"], config, _ = encoder_or_random(cfg.checkpoint, None, seed=int(cfg.seed),
                                                              config_overrides=overrides or None)
    if cfg.probe.baseline or not encoders:
        encoders["random"] = encoder_or_random("random", config, seed=int(cfg.seed))[0]
    return encoders
