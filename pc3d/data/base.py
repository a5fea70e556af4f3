"""What the Trainer and the evaluators expect of a dataset beyond ``__len__`` / ``__getitem__``."""

from __future__ import annotations

from typing import Any, Sequence

from torch.utils.data import Dataset, default_collate


class SampleDataset(Dataset):
    """A map-style dataset of sample dicts that declares its epoch hook and its batching.

    ``set_epoch(epoch)`` selects the randomness of an epoch (augmentation draws from
    ``(seed, epoch, index)``); ``collate(samples)`` batches samples (default: torch's
    ``default_collate``). The Trainer calls both on datasets of this type and uses plain
    defaults for any other dataset.
    """

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (default: no per-epoch randomness)."""

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return default_collate(list(samples))
