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


PIXELS_SIZE = 32  # default side of ``pixels``: 1,024 features; 16 and 32 px recovered the mini DFDC's
# identities equally well (measured: nearest other original of the same identity 0.86 at both)


class GreyPixels(FrameModel):
    """Per-image standardised grey pixels as features (the "eigenfaces" baseline): no
    weights but the classifier head. Lighting (a gain, an offset and a linear gradient across
    the face: the plane a + b x + c y is removed by least squares) cancels out, so it
    separates faces that are the same photo under another lamp -- the mini DFDC's repeated
    actors -- where random-init CNN features do not (README: identity folds)."""

    GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights (OpenCV's RGB -> grey)

    def __init__(self, size: int, num_classes: int, dropout: float) -> None:
        super().__init__(size * size, num_classes, dropout)
        self.side = size
        self.register_buffer("grey", torch.tensor(self.GREY).view(1, 3, 1, 1), persistent=False)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        basis = torch.stack([torch.ones(size * size), xs.flatten(), ys.flatten()], 1)  # (S*S, 3)
        self.register_buffer("plane", basis @ torch.linalg.pinv(basis), persistent=False)  # projector

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.side, self.side):  # any input side: area-averaged to ``side``
            x = nn.functional.adaptive_avg_pool2d(x, self.side)
        grey = (x * self.grey.to(x.dtype)).sum(1).flatten(1)
        # a lamp to one side is a brightness plane a + b x + c y: remove its least-squares fit
        grey = grey - grey @ self.plane.to(grey.dtype)
        return grey / (grey.std(1, keepdim=True) + 1e-6)


@register("pixels", input=InputSpec(PIXELS_SIZE))
def pixels(cfg: ModelConfig) -> nn.Module:
    """Standardised grey pixels at 32 px (``pretrained`` must be ``none``)."""
    no_pretrained(cfg)
    return GreyPixels(PIXELS_SIZE, cfg.num_classes, cfg.dropout)
