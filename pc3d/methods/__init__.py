"""Pretraining methods: one module per method, each a model whose forward returns ``{"loss": ...}``."""

from pc3d.methods.gaussian2scene import Gaussian2Scene, PointImageMAE
from pc3d.methods.msm import MaskedSceneModeling
from pc3d.methods.nerf_mae import NeRFMAE
from pc3d.methods.point_mae import PointMAE

__all__ = ["Gaussian2Scene", "MaskedSceneModeling", "NeRFMAE", "PointImageMAE", "PointMAE"]
