"""The method contract: a pretraining method is a :class:`~pc3d.train.model.TrainableModel` around one encoder.

Besides the Trainer's hooks (parameter groups, ``no_weight_decay_names``, ``on_optimizer_step``,
``log_artifacts``; see :mod:`pc3d.train.model`), a method declares:

* ``encoder``: the :class:`~pc3d.encoders.base.Encoder` it pretrains (its ``encoder.*`` weights
  are what :func:`pc3d.hub.load_encoder` takes from a run);
* ``input_kinds``: the encoder inputs it works with (``EncoderSpec.input``), checked at construction;
* :meth:`PretrainingMethod.pretrain_dataset`: its training samples, built from a data node.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch.utils.data import Dataset

from pc3d.encoders.base import Encoder
from pc3d.errors import ConfigError
from pc3d.train.model import TrainableModel


class PretrainingMethod(TrainableModel):
    """Base of every pretraining method (see the module docstring)."""

    input_kinds: ClassVar[tuple[str, ...]] = ("points", "voxels", "grid")
    encoder: Encoder

    def check_encoder(self, encoder: Any) -> Encoder:
        """``encoder`` if this method can pretrain it, else a one-line ConfigError."""
        name = type(self).__name__
        if not isinstance(encoder, Encoder):
            raise ConfigError(f"{name} pretrains pc3d encoders, got {type(encoder).__name__}")
        if encoder.spec.input not in self.input_kinds:
            raise ConfigError(f"{name} needs an encoder that takes {' or '.join(self.input_kinds)}; "
                              f"{type(encoder).__name__} takes {encoder.spec.input}")
        return encoder

    def pretrain_dataset(self, data: Any, augment: bool = True) -> Dataset:
        """The training samples from a data node (default: the node's own ``pretrain_dataset``)."""
        return data.pretrain_dataset(augment=augment)
