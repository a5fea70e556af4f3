"""Encoders. Every encoder returns :class:`EncoderOutput`."""

from pc3d.encoders.base import EncoderOutput, FeatureLevel, max_mean_pool
from pc3d.encoders.point_vit import PatchEmbed, PointViT, group_points
from pc3d.encoders.sparse_unet import SparseUNet

__all__ = ["EncoderOutput", "FeatureLevel", "max_mean_pool", "PatchEmbed", "PointViT", "group_points", "SparseUNet"]
