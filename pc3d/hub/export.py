"""``pc3d export``: the encoder of any checkpoint pc3d reads, as one pc3d encoder file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pc3d.errors import ConfigError
from pc3d.hub.encoder_file import save_encoder
from pc3d.hub.encoders import load_encoder


def run_export(cfg) -> dict[str, Any]:
    """``checkpoint`` (any format :func:`pc3d.hub.load_encoder` reads) → ``out`` (a ``.safetensors`` encoder file)."""
    from pc3d.train.run import report

    out = Path(cfg.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"out={cfg.out}: the encoder file must end in .safetensors")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"out={cfg.out}: exists; pass overwrite=true to replace it")
    if out.is_dir():
        raise ConfigError(f"out={cfg.out}: is a directory")
    from pc3d.utils.config import to_plain

    overrides = to_plain(cfg.get("config_overrides") or {})
    encoder, config = load_encoder(cfg.checkpoint, strict=bool(cfg.strict), format=str(cfg.format),
                                   config_overrides=overrides or None)
    save_encoder(encoder, out, config)
    parameters = sum(p.numel() for p in encoder.parameters())
    report(f"export: {cfg.checkpoint} → {out} ({config['_target_'].rsplit('.', 1)[-1]}, "
           f"{parameters / 1e6:.2f} M parameters)")
    return {"out": str(out), "parameters": parameters}
