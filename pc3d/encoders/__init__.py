"""Encoders. Every encoder returns :class:`EncoderOutput`."""

from pc3d.encoders.base import EncoderOutput, FeatureLevel, max_mean_pool
from pc3d.encoders.point_vit import PatchEmbed, PointViT, group_points
from pc3d.encoders.sparse_unet import SparseUNet
from pc3d.encoders.swin3d import SWIN3D_PRESETS, Swin3D

__all__ = ["EncoderOutput", "FeatureLevel", "max_mean_pool", "PatchEmbed", "PointViT", "group_points", "SparseUNet",
           "SWIN3D_PRESETS", "Swin3D"]
