"""Point-MAE's object classification head on any pc3d encoder (the fine-tuning model).

Head (Pang et al., ``PointTransformer.cls_head_finetune``): the pooled feature →
Linear(·, 256) → BN → ReLU → Dropout(0.5) → Linear(256, 256) → BN → ReLU → Dropout(0.5)
→ Linear(256, C). The pooled feature is ``[cls ‖ max over tokens]`` of the final level when
the encoder has a class token (``PointViT(cls_token=True)``, as in Point-MAE), else the
encoder's ``global_feature``; its width is the encoder's ``spec.pooled_channels``.
``head`` keeps the original ``nn.Sequential`` indices (0, 1, 4, 5, 8), so fine-tuned
Point-MAE checkpoints map one-to-one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.encoders.base import Encoder, EncoderOutput
from pc3d.train.model import TrainableModel


def pooled_feature(out: EncoderOutput) -> Tensor:
    """``[cls ‖ max]`` of the final level when there is a class token, else ``global_feature``:
    ``(B, spec.pooled_channels)``."""
    if out.cls_feature is None:
        return out.global_feature
    final = out.levels[-1]
    tokens = final.features if final.valid is None else final.features.masked_fill(~final.valid[..., None],
                                                                                    float("-inf"))
    return torch.cat([out.cls_feature, tokens.amax(dim=1)], dim=-1)


class ObjectClassifier(TrainableModel):
    """Encoder + MLP head; ``forward(batch)`` returns ``{"loss", "logits"}`` so the Trainer can fit it.

    Args:
        encoder: any pc3d encoder; the head's input width is its ``spec.pooled_channels``.
        num_classes: C.
        hidden_dims: widths of the head's hidden layers (Point-MAE: 256, 256).
        dropout: dropout after each hidden layer (Point-MAE: 0.5).
        label_smoothing: cross-entropy label smoothing (Point-MAE: 0).
    """

    def __init__(self, encoder: Encoder, num_classes: int, hidden_dims: Sequence[int] = (256, 256),
                 dropout: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        layers: list[nn.Module] = []
        width = encoder.spec.pooled_channels
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def logits(self, inputs: Any) -> Tensor:
        """The encoder's input of a batch (``points (B, N, 3)`` for point encoders) → ``(B, C)`` class scores."""
        return self.head(pooled_feature(self.encoder(inputs)))

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``batch["input"]`` (:class:`~pc3d.encoders.inputs.EncoderInputDataset`), ``batch["label"] (B,)``
        → ``{"loss": scalar, "logits": (B, C)}``."""
        logits = self.logits(batch["input"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}
