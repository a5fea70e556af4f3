"""``pc3d pretrain``: one encoder, one method, one data node, the one Trainer."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pc3d.errors import ConfigError
from pc3d.methods.base import PretrainingMethod
from pc3d.train.distributed import init_distributed, main_process_first
from pc3d.train.run import check_run, check_run_settings, check_sample, finish_run, report, start_run, trainer_config
from pc3d.train.trainer import Trainer
from pc3d.utils.config import call_target, seed_everything, to_plain


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretraining (``configs/pretrain.yaml``); under ``torchrun`` every process runs this and DDP joins them.

    Metrics: ``final_loss`` (mean of the last 25 step losses), ``steps``, ``wall_s``, ``samples_per_s``.
    """
    check_run_settings(cfg)
    init_distributed(str(cfg.device))
    state = check_run(cfg)  # before anything is built or written: out_dir may take this run
    seed_everything(trainer_config(cfg).seed)
    with main_process_first():
        data = call_target(cfg.data, "data")
    encoder = call_target(cfg.encoder, "encoder")
    if cfg.get("init_encoder"):  # e.g. Gaussian2Scene stage 2 from a stage-1 run
        from pc3d.hub import load_encoder_weights  # the hub reads training checkpoints: imported when used

        load_encoder_weights(encoder, str(cfg.init_encoder))
    model = call_target(cfg.method, "method", encoder=encoder)
    if not isinstance(model, PretrainingMethod):
        raise ConfigError(f"method._target_ builds {type(model).__name__}, not a pc3d pretraining method")
    dataset = model.pretrain_dataset(data, augment=bool(cfg.augment))
    check_sample(encoder, dataset[0])
    trainer = Trainer(model, dataset, trainer_config(cfg), cfg.out_dir, run_config=to_plain(cfg))
    out = start_run(cfg, state, step=trainer.step)  # only once every input has been validated
    metrics = trainer.fit()
    finish_run(out, metrics)
    pictures = out / "artifacts"
    report(f"pretrain: {metrics['steps']} steps, final loss {metrics['final_loss']:.5f}, "
           f"{metrics['samples_per_s']:.1f} samples/s, {metrics['wall_s']:.0f} s → {out}"
           + (f" (pictures: {pictures})" if pictures.is_dir() else ""))
    return metrics
