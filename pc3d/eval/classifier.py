"""Point-MAE's object classification head on any pc3d encoder (the fine-tuning model).

Head (Pang et al., ``PointTransformer.cls_head_finetune``): the pooled feature →
Linear(·, 256) → BN → ReLU → Dropout(0.5) → Linear(256, 256) → BN → ReLU → Dropout(0.5)
→ Linear(256, C). The pooled feature is ``[cls ‖ max over tokens]`` of the final level when
the encoder has a class token (``PointViT(cls_token=True)``, as in Point-MAE), else the
encoder's ``global_feature`` ([max ‖ mean]); both are 2C wide for a C-wide encoder.
``head`` keeps the original ``nn.Sequential`` indices (0, 1, 4, 5, 8), so fine-tuned
Point-MAE checkpoints map one-to-one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pc3d.encoders.base import EncoderOutput


def pooled_feature(out: EncoderOutput) -> Tensor:
    """``[cls ‖ max]`` of the final level when there is a class token, else ``global_feature``: ``(B, 2C)``."""
    if out.cls_feature is None:
        return out.global_feature
    final = out.levels[-1]
    return torch.cat([out.cls_feature, final.features.amax(dim=1)], dim=-1)


class ObjectClassifier(nn.Module):
    """Encoder + MLP head; ``forward(batch)`` returns ``{"loss", "logits"}`` so the Trainer can fit it.

    Args:
        encoder: any pc3d encoder whose ``embed_dim`` is its token width.
        num_classes: C.
        hidden_dims: widths of the head's hidden layers (Point-MAE: 256, 256).
        dropout: dropout after each hidden layer (Point-MAE: 0.5).
        label_smoothing: cross-entropy label smoothing (Point-MAE: 0).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, hidden_dims: Sequence[int] = (256, 256),
                 dropout: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        layers: list[nn.Module] = []
        width = 2 * int(encoder.embed_dim)
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def logits(self, points: Tensor) -> Tensor:
        """``points (B, N, 3)`` → ``(B, C)`` class scores."""
        return self.head(pooled_feature(self.encoder(points)))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch["points"] (B, N, 3)``, ``batch["label"] (B,)`` → ``{"loss": scalar, "logits": (B, C)}``."""
        logits = self.logits(batch["points"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}
