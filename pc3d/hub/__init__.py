"""Checkpoint import/export.

- :func:`load_encoder` rebuilds an encoder from a pc3d training checkpoint or run directory,
  a pc3d encoder file (``.safetensors``) or an original Point-MAE, NeRF-MAE, MSM or Pointcept
  SpUNet-v1m1 checkpoint (``format="auto"`` detects which); nothing pickled is executed.
- :func:`load_pretraining_model`: the whole pretraining model (encoder + decoder / heads) of a pc3d run,
  or of an original Point-MAE or NeRF-MAE file.
- :func:`load_encoder_weights` fills an encoder built from config with a checkpoint's weights
  (how a pretraining run starts from another's encoder).
- :func:`save_encoder` writes a self-contained, pickle-free encoder file (weights + config).
- :func:`import_point_mae_model` / :func:`export_point_mae`: the whole Point-MAE pretraining
  model from / to the original code's checkpoint layout; :func:`import_point_mae_classifier`: a
  fine-tuned Point-MAE classifier (encoder with class token + head).
- :func:`import_nerf_mae_model` / :func:`export_nerf_mae`: the whole NeRF-MAE pretraining model
  (3D Swin + decoder) from / to the original code's checkpoint layout.
- :func:`export_msm` / :func:`export_pointcept_spunet`: an MSM-style / Pointcept-layout
  :class:`~pc3d.encoders.SparseUNet` back in the original checkpoint layout.
"""

from pc3d.hub.encoder_file import read_encoder_file, save_encoder
from pc3d.hub.encoders import (FORMATS, EncoderCheckpoint, build_encoder, encoder_config_from_checkpoint,
                               encoder_or_random, encoder_state_from_checkpoint, load_encoder,
                               load_encoder_weights, load_pretraining_model, read_encoder_checkpoint)
from pc3d.hub.msm import export_msm
from pc3d.hub.nerf_mae import export_nerf_mae, import_nerf_mae_model
from pc3d.hub.point_mae import export_point_mae, import_point_mae_classifier, import_point_mae_model
from pc3d.hub.pointcept import export_pointcept_spunet

__all__ = ["FORMATS", "EncoderCheckpoint", "build_encoder", "encoder_config_from_checkpoint", "encoder_or_random",
           "encoder_state_from_checkpoint", "export_msm", "export_nerf_mae", "export_point_mae",
           "export_pointcept_spunet", "import_nerf_mae_model",
           "import_point_mae_classifier", "import_point_mae_model", "load_encoder", "load_encoder_weights",
           "load_pretraining_model",
           "read_encoder_checkpoint",
           "read_encoder_file", "save_encoder"]
