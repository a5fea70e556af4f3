"""Checkpoint import/export: rebuild an encoder from what pc3d saved."""

from pc3d.hub.encoders import build_encoder, encoder_state_from_checkpoint, load_encoder

__all__ = ["build_encoder", "encoder_state_from_checkpoint", "load_encoder"]
