"""What the Trainer and the evaluators expect of a dataset beyond ``__len__`` / ``__getitem__``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset, default_collate


class SampleDataset(Dataset):
    """A map-style dataset of sample dicts that declares its epoch hook and its batching.

    ``set_epoch(epoch)`` selects the randomness of an epoch (augmentation draws from
    ``(seed, epoch, index)``); ``collate(samples)`` batches samples (default: torch's
    ``default_collate``). The Trainer calls both on datasets of this type and uses plain
    defaults for any other dataset.
    """

    epoch: int = 0
    seed: int = 0
    augment: bool = False

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (stored as ``self.epoch``; a dataset may ignore it)."""
        self.epoch = int(epoch)

    def sample_rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index``: ``default_rng([seed, epoch, index])``, epoch 0 without
        ``augment`` (so a sample depends only on the seed, the epoch and its index)."""
        return np.random.default_rng([int(self.seed), self.epoch if self.augment else 0, int(index)])

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return default_collate(list(samples))
