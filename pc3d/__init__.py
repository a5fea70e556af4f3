"""pc3d: self-supervised pretraining of 3D encoders under one protocol."""

__version__ = "0.1.0"
