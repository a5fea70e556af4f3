"""The run skeleton every command shares: device, encoder (checkpoint or random), trainer config,
``config.yaml`` at the start, ``metrics.json`` and one summary line at the end.

A command validates everything it was given (building its data, encoder and trainer, and
:func:`check_run` on its ``out_dir``) before :func:`start_run` writes the first file, so a bad value
leaves no output. ``start_run`` takes the run directory (one writer, never another run's files;
:mod:`pc3d.train.rundir`). Under ``torchrun`` every process runs the command; only the main
process writes and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from torch import nn

from pc3d.errors import ConfigError
from pc3d.train.distributed import broadcast_object, current_context
from pc3d.train.rundir import RunDirState, check_run_dir, open_run_dir, release_run_dir
from pc3d.train.trainer import TrainerConfig, resolve_device
from pc3d.utils.atomic import atomic_write, atomic_write_json
from pc3d.utils.config import to_plain

__all__ = ["check_run", "check_run_settings", "check_sample", "downstream_encoder", "finish_run", "is_main_process", "probe_encoders", "report",
           "resolve_device", "start_run", "trainer_config"]


def is_main_process() -> bool:
    return current_context().is_main


def report(line: str) -> None:
    """Print a run's summary line (the main process of a multi-process run only)."""
    if is_main_process():
        print(line)


def _plain_config(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    return to_plain(config) if isinstance(config, DictConfig) else dict(config)


def check_run(config: Mapping[str, Any] | DictConfig, *, resumable: bool = True) -> RunDirState:
    """Read-only check that ``config["out_dir"]`` may take this run (:func:`pc3d.train.rundir.check_run_dir`);
    every process calls it, so all fail alike."""
    return check_run_dir(_plain_config(config), resumable=resumable)


def start_run(config: Mapping[str, Any] | DictConfig, state: RunDirState | None = None, *,
              resumable: bool = True, step: int | None = None) -> Path:
    """Take ``config["out_dir"]`` (lock, overwrite, stale temporaries) and write the resolved ``config.yaml``
    (what this run is); returns the folder. ``state``: from an earlier :func:`check_run`."""
    node = config if isinstance(config, DictConfig) else OmegaConf.create(_plain_config(config))
    if state is None:
        state = check_run(node, resumable=resumable)
    error = None
    if is_main_process():
        try:
            open_run_dir(state, step)
            with atomic_write(state.out_dir / "config.yaml", "w") as handle:
                handle.write(OmegaConf.to_yaml(node, resolve=True))
        except ConfigError as exc:
            error = str(exc)
    error = broadcast_object(error)  # every process stops when the main one could not take out_dir
    if error is not None:
        raise ConfigError(error)
    return state.out_dir


def finish_run(out: Path, metrics: Mapping[str, Any]) -> None:
    """Write the run's flat ``metrics.json``."""
    if is_main_process():
        atomic_write_json(out / "metrics.json", dict(metrics))
        release_run_dir(out)  # the run is complete: the directory is free for the next command


def trainer_config(cfg: DictConfig, **overrides: Any) -> TrainerConfig:
    """The command's ``trainer`` node with the run's ``seed``, ``device`` and ``resume``."""
    resume = "never" if cfg.get("overwrite", False) else str(cfg.resume)  # an overwrite starts afresh
    settings = {**to_plain(cfg.trainer), "seed": cfg.seed, "device": str(cfg.device), "resume": resume,
                **overrides}
    return TrainerConfig.from_settings(settings)


def check_run_settings(cfg: DictConfig) -> None:
    """The settings every command shares: ``seed``, ``device``, ``overwrite``, ``augment``, ``resume``."""
    from pc3d.utils.config import Setting

    for key, setting in (("seed", Setting(int, 0)), ("overwrite", Setting(bool)), ("augment", Setting(bool)),
                         ("resume", Setting(str)), ("device", Setting(str))):
        if key in cfg and not setting.accepts(cfg[key]):
            raise ConfigError(f"{key}={cfg[key]!r}: expected {setting.expected()}")
    resolve_device(str(cfg.device))


def check_sample(encoder: nn.Module, sample: Mapping[str, Any]) -> None:
    """The data fits the encoder (the input kind it declares, its ``validate_sample``) on one sample, before
    anything is written."""
    from pc3d.encoders.base import Encoder
    from pc3d.encoders.inputs import check_input_kind

    if isinstance(encoder, Encoder):
        try:
            check_input_kind(encoder.spec, sample)
            encoder.validate_sample(dict(sample))
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from exc


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
