"""Image transforms (albumentations 2.x): the training augmentation and the ONE inference path.

``inference_transform(size)`` is the single preprocessing path shared by validation during
training and by the predictor / Kaggle kernel: isotropic resize (longest side to ``size``,
aspect kept) + zero padding to a square + ImageNet normalisation + CHW float tensor. The
predictor imports it from here; keep its name and behaviour stable (a change here changes
every prediction of every trained model).

``train_transform(size)`` is the seed study's recipe (the DFDC notes, "The recipe of
the study this kit follows") around the same resize + pad: JPEG compression, Gaussian noise,
colour jitter, grey, a small affine jitter and a horizontal flip.

Both take and return numpy images in RGB ``uint8`` HWC (as read from the crop PNGs).
"""

from __future__ import annotations

import math

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

# --- normalisation: the ImageNet statistics the EfficientNet weights were trained with ---
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_FILL = 0  # black padding around a non-square crop (the 1st place padded with zeros too)

# --- the seed recipe (DFDC.md: augmentation) ---
JPEG_QUALITY = (60, 100)  # ImageCompression quality 60-100 ...
JPEG_P = 0.5  # ... with p=0.5
# GaussNoise p=0.1 with albumentations 1.x's default var_limit=(10, 50) on the 0-255 scale;
# 2.x takes the standard deviation as a fraction of 255: sqrt(10)/255 .. sqrt(50)/255.
NOISE_STD = (math.sqrt(10.0) / 255.0, math.sqrt(50.0) / 255.0)
NOISE_P = 0.1
COLOR_P = 0.7  # OneOf(RandomBrightnessContrast, FancyPCA, HueSaturationValue) p=0.7
GRAY_P = 0.2  # ToGray p=0.2
# ShiftScaleRotate(shift 0.1, scale 0.2, rotate 10) p=0.5; in albumentations 2.x it is a
# deprecated special case of Affine, so Affine is used with the same ranges.
AFFINE_SHIFT = 0.1  # fraction of the side
AFFINE_SCALE = 0.2  # scale in [1 - 0.2, 1 + 0.2]
AFFINE_ROTATE = 10.0  # degrees
AFFINE_P = 0.5
FLIP_P = 0.5  # HorizontalFlip (albumentations default, used by the 1st place)


def _resize_and_pad(size: int) -> list[A.BasicTransform]:
    """Longest side to ``size`` (area interpolation when shrinking), then pad to a square."""
    return [
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_CUBIC, area_for_downscale="image", p=1.0),
        A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=PAD_FILL, p=1.0),
    ]


def _to_tensor() -> list[A.BasicTransform]:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0), ToTensorV2()]


def inference_transform(size: int) -> A.Compose:
    """The deterministic preprocessing shared by validation and prediction.

    RGB uint8 HxWx3 of any size -> float32 tensor 3 x size x size (isotropic resize, zero pad,
    ImageNet normalisation).
    """
    return A.Compose(_resize_and_pad(size) + _to_tensor())


AUGMENTATIONS = ("recipe", "light", "none")


def train_transform(size: int, strength: str = "recipe") -> A.Compose:
    """The seed recipe's training augmentation, ending in the same resize/pad/normalise.

    RGB uint8 HxWx3 -> float32 tensor 3 x size x size. Random; reseed with
    ``Compose.set_random_seed`` for repeatable draws (``dfdc.data`` does, per sample).
    ``strength``: ``recipe`` (the seed study's list), ``light`` (flip and the small affine
    jitter only: for tiny data and short CPU runs, where JPEG, noise and colour changes
    drown the blur/seam cue), ``none`` (the inference path).
    """
    if strength not in AUGMENTATIONS:
        raise ValueError(f"augmentation {strength!r}: expected one of {', '.join(AUGMENTATIONS)}")
    if strength == "none":
        return inference_transform(size)
    color = A.OneOf([A.RandomBrightnessContrast(), A.FancyPCA(), A.HueSaturationValue()], p=COLOR_P)
    affine = A.Affine(
        translate_percent=(-AFFINE_SHIFT, AFFINE_SHIFT),
        scale=(1.0 - AFFINE_SCALE, 1.0 + AFFINE_SCALE),
        rotate=(-AFFINE_ROTATE, AFFINE_ROTATE),
        border_mode=cv2.BORDER_CONSTANT,
        fill=PAD_FILL,
        p=AFFINE_P,
    )
    if strength == "light":
        return A.Compose([A.HorizontalFlip(p=FLIP_P), *_resize_and_pad(size), affine, *_to_tensor()])
    return A.Compose(
        [
            A.ImageCompression(quality_range=JPEG_QUALITY, p=JPEG_P),
            A.GaussNoise(std_range=NOISE_STD, p=NOISE_P),
            A.HorizontalFlip(p=FLIP_P),
            *_resize_and_pad(size),
            color,
            A.ToGray(p=GRAY_P),
            affine,
            *_to_tensor(),
        ]
    )
