"""Small CNNs trained from random initialisation.

``tiny-cnn``: three conv-BN-ReLU-pool stages + average pooling + dropout + Linear (fast tests
and CPU experiments).
"""

from __future__ import annotations

import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import FrameModel, no_pretrained, register
from dfdc.preprocess import InputSpec

TINY_CNN_WIDTHS = (16, 32, 64)  # channels of the three conv stages: ~25k weights, fast on a CPU
TINY_CNN_SIZE = 64  # default input side (profiles set train.size)


class TinyCNN(FrameModel):
    """Three conv-BN-ReLU-pool stages + average pooling + dropout + Linear (tests, CPU runs)."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__(TINY_CNN_WIDTHS[-1], num_classes, dropout)
        layers: list[nn.Module] = []
        channels = 3
        for width in TINY_CNN_WIDTHS:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)).flatten(1)


@register("tiny-cnn", input=InputSpec(TINY_CNN_SIZE))
def tiny_cnn(cfg: ModelConfig) -> nn.Module:
    """A small CNN from random init (``pretrained`` must be ``none``)."""
    no_pretrained(cfg)
    return TinyCNN(cfg.num_classes, cfg.dropout)
