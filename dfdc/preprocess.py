"""The ONE preprocessing path of a face crop, shared by training, validation, prediction,
embedding and the Kaggle kernel -- with numpy, OpenCV and torch only (no albumentations,
so the kernel needs nothing more from Kaggle's image).

A crop (RGB ``uint8`` H x W x 3, any size) becomes the network input in two steps:

1. ``resize_pad(image, size)`` on the CPU: isotropic resize of the longest side to ``size``
   (``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging) and zero padding to a
   centred square -- pixel for pixel what albumentations' ``LongestMaxSize`` +
   ``PadIfNeeded`` did before (tested), so nothing moved when albumentations left this path.
   ``to_chw`` turns it into a ``uint8`` 3 x S x S array: 4x fewer bytes than float32 between
   loader or predictor worker processes and the model.
2. Normalisation (``(x - mean * 255) / (std * 255)``) happens inside the model, on its
   device (``dfdc.models.FrameModel.normalize``), with the mean and std of the backbone's
   pretrained weights. They travel in the checkpoint (``InputSpec``), so the predictor and
   the kernel use exactly what training used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# The ImageNet statistics most pretrained backbones were trained with (efficientnet-pytorch,
# torchvision, most timm weights); a timm backbone declares its own in its pretrained config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_FILL = 0  # black padding around a non-square crop (the 1st place padded with zeros too)
MAX_PIXEL = 255.0  # uint8 images: mean and std are given on the 0-1 scale, pixels are 0-255


@dataclass(frozen=True)
class InputSpec:
    """What a model wants as input: the square side and the normalisation of its weights."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return {"size": int(self.size), "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(int(data["size"]), tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))

    def with_size(self, size: int) -> InputSpec:
        return InputSpec(int(size), self.mean, self.std) if size else self


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", type(image).__name__)
        dtype = getattr(image, "dtype", "")
        raise ValueError(f"expected an RGB uint8 image H x W x 3, got {shape} {dtype}")


INTER_DOWN, INTER_UP = cv2.INTER_AREA, cv2.INTER_CUBIC  # the inference path's resize interpolations


def resize_pad(image: np.ndarray, size: int, down: int = INTER_DOWN, up: int = INTER_UP) -> np.ndarray:
    """Longest side to ``size`` (aspect kept: an isotropic resize, ``down`` / ``up`` the OpenCV
    interpolations when shrinking / enlarging), then zero-padded to a centred square."""
    _check_image(image)
    if size <= 0:
        raise ValueError(f"input size must be positive, got {size}")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale != 1.0:
        new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        interp = down if scale < 1.0 else up
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
        h, w = new_h, new_w
    if h == w == size:
        return image
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(image, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT,
                              value=(PAD_FILL,) * 3)


def to_chw(image: np.ndarray) -> np.ndarray:
    """H x W x 3 -> a contiguous 3 x H x W array of the same dtype (uint8 stays uint8)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def prepare(image: np.ndarray, size: int) -> np.ndarray:
    """A crop as the network reads it before normalisation: ``uint8`` 3 x size x size."""
    return to_chw(resize_pad(image, size))


class Prepare:
    """``prepare`` with albumentations' call convention (``t(image=x)["image"]``, a uint8
    torch tensor), so a dataset takes it wherever it takes a training augmentation."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, *, image: np.ndarray) -> dict[str, Any]:
        import torch

        return {"image": torch.from_numpy(prepare(image, self.size))}
