"""Weightless pixel features: the crop itself, area-downscaled, is the feature vector.

One class, ``PixelFeatures(side, grey, detrend)``, registered twice:

- ``pixels`` (studies 000 / 002's "downscaled pixels" baseline, ``baseline.features=pixels``):
  the crop area-averaged to ``PIXELS_SIDE`` x ``PIXELS_SIDE``, RGB, normalised: 768 values. As a
  frame classifier on its own it is a logistic regression on pixels.
- ``grey-pixels`` (the identity embedding of ``dfdc embed`` / identity folds, the "eigenfaces"
  baseline): ``GREY_PIXELS_SIDE`` x ``GREY_PIXELS_SIDE`` grey values, each image's lighting
  plane removed and standardised: 1,024 values. Lighting (a gain, an offset and a linear
  gradient across the face: the plane a + b x + c y, removed by least squares) cancels out, so
  it separates faces that are the same photo under another lamp -- the mini DFDC's repeated
  actors -- where random-init CNN features do not (docs/folds.md: identity folds).

No weights but the classifier head (``model.pretrained`` must be ``none``). Any input side
works: the (normalised) image is area-averaged to ``side`` first.
"""

from __future__ import annotations

import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import FrameModel, no_pretrained, register
from dfdc.preprocess import InputSpec

PIXELS_SIDE = 16  # `pixels`: 16 x 16 x 3 = 768 values (the baselines' pixel features)
GREY_PIXELS_SIDE = 32  # `grey-pixels`: 1,024 features; 16 and 32 px recovered the mini DFDC's identities
# equally well (measured: nearest other original of the same identity 0.86 at both)
# ITU-R BT.601 luma weights (OpenCV's RGB -> grey), applied to the model's *normalised* channels
# (x - mean) / std. That is not luma itself: per raw pixel the weights become 0.299 / 0.229,
# 0.587 / 0.224, 0.114 / 0.225 (ImageNet stds), i.e. (0.2945, 0.5911, 0.1143) after rescaling --
# within 0.005 of luma's -- plus a constant offset; the plane removal takes the offset away and the
# standardisation the scale, so the features are those of (nearly) luma with these statistics.
GREY_WEIGHTS = (0.299, 0.587, 0.114)
STD_EPS = 1e-6  # keeps a flat (constant) image's standardisation finite


class PixelFeatures(FrameModel):
    """The normalised crop area-averaged to ``side`` x ``side`` as features: RGB (``3 side^2``
    values) or ``grey`` (``side^2``, ``GREY_WEIGHTS``); ``detrend``: each channel's
    least-squares plane a + b x + c y removed, then the image standardised (unit std)."""

    def __init__(self, side: int, grey: bool, detrend: bool, num_classes: int, dropout: float) -> None:
        super().__init__((1 if grey else 3) * side * side, num_classes, dropout)
        self.side, self.grey, self.detrend = int(side), bool(grey), bool(detrend)
        self.register_buffer("grey_weights", torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1), persistent=False)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
        basis = torch.stack([torch.ones(side * side), xs.flatten(), ys.flatten()], 1)  # (S*S, 3)
        self.register_buffer("plane", basis @ torch.linalg.pinv(basis), persistent=False)  # projector onto planes

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.side, self.side):  # any input side: area-averaged to ``side``
            x = nn.functional.adaptive_avg_pool2d(x, self.side)
        if self.grey:
            x = (x * self.grey_weights.to(x.dtype)).sum(1, keepdim=True)
        x = x.flatten(2)  # N x C x S*S
        if self.detrend:  # a lamp to one side is a brightness plane a + b x + c y: remove its fit
            x = x - x @ self.plane.to(x.dtype)
        x = x.flatten(1)
        if self.detrend:
            x = x / (x.std(1, keepdim=True) + STD_EPS)
        return x


@register("pixels", input=InputSpec(PIXELS_SIDE))
def pixels(cfg: ModelConfig) -> nn.Module:
    """The crop's 16 x 16 RGB pixels (``pretrained`` must be ``none``)."""
    no_pretrained(cfg)
    return PixelFeatures(PIXELS_SIDE, grey=False, detrend=False, num_classes=cfg.num_classes, dropout=cfg.dropout)


@register("grey-pixels", input=InputSpec(GREY_PIXELS_SIDE))
def grey_pixels(cfg: ModelConfig) -> nn.Module:
    """Standardised grey pixels at 32 px, lighting plane removed (``pretrained`` must be ``none``)."""
    no_pretrained(cfg)
    return PixelFeatures(GREY_PIXELS_SIDE, grey=True, detrend=True, num_classes=cfg.num_classes, dropout=cfg.dropout)
