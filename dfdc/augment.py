"""The training augmentation (albumentations 2.x) around the one preprocessing path.

``train_transform(size)`` is the seed study's recipe (the DFDC notes, "The recipe of
the study this kit follows"): JPEG compression, Gaussian noise, colour jitter, grey, a small
affine jitter and a horizontal flip, around ``dfdc.preprocess.resize_pad`` -- the same
resize + pad validation, prediction and the kernel use (``dfdc.preprocess.prepare``). It
takes an RGB ``uint8`` HWC image (as read from the crop files) and returns a ``uint8``
3 x size x size tensor; the model normalises it on its device (``dfdc.preprocess``).
Only training imports this module, so the kernel never needs albumentations.
"""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from dfdc.preprocess import PAD_FILL, Prepare, resize_pad

# --- the seed recipe (as the study published its augmentation) ---
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
PCA_SAMPLE_PIXELS = 4096  # pixels FancyPCA estimates the colour covariance from (a strided subsample;
# ours, not the recipe's): albumentations' FancyPCA estimates it from every pixel, ~90 ms of a 380 px
# crop on the loaded 2-core machine, most of a crop's augmentation time


class ResizePad(A.ImageOnlyTransform):
    """``dfdc.preprocess.resize_pad`` as a pipeline step (the inference path's geometry)."""

    def __init__(self, size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.size = int(size)

    def apply(self, img, **params):  # noqa: ANN001, ANN201 - albumentations' signature
        return resize_pad(img, self.size)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size",)


class SubsampledFancyPCA(A.FancyPCA):
    """albumentations' ``FancyPCA`` (2.x, ``fancy_pca``) with the same maths -- the RGB
    covariance's eigenvectors V and eigenvalues L (largest first), each pixel x moved by
    ``V diag(alpha * L) (x - mean)`` on the 0-1 scale, clipped -- except that the mean and
    covariance are estimated from at most ``PCA_SAMPLE_PIXELS`` pixels (every k-th) and the
    move is applied to the uint8 image by one ``cv2.transform`` (rounded and saturated to
    0-255 in one step, where the library clips in float32 and converts back: within two grey
    levels of it, tested). Other inputs than RGB uint8 go through the library's own function."""

    def apply(self, img: np.ndarray, alpha_vector: np.ndarray, **params):  # noqa: ANN003, ANN201
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            return super().apply(img, alpha_vector, **params)
        pixels = img.reshape(-1, 3)
        sample = pixels[:: max(1, len(pixels) // PCA_SAMPLE_PIXELS)].astype(np.float64) / 255.0
        mean = sample.mean(axis=0)
        vals, vecs = np.linalg.eigh(np.cov(sample - mean, rowvar=False))
        order = vals[::-1].argsort()  # the library's ordering of the components
        move = vecs[:, order] @ np.diag(np.asarray(alpha_vector, np.float64) * vals[order])
        matrix = np.hstack([np.eye(3) + move, -(move @ (mean * 255.0))[:, None]])  # x + move (x - mean), 0-255
        return cv2.transform(img, matrix.astype(np.float32)).reshape(img.shape)


AUGMENTATIONS = ("recipe", "light", "none")


def train_transform(size: int, strength: str = "recipe") -> A.Compose | Prepare:
    """The seed recipe's training augmentation around the inference path's resize + pad.

    RGB uint8 HxWx3 -> uint8 tensor 3 x size x size. Random; reseed with
    ``Compose.set_random_seed`` for repeatable draws (``dfdc.data`` does, per sample).
    ``strength``: ``recipe`` (the seed study's list), ``light`` (flip and the small affine
    jitter only: for tiny data and short CPU runs, where JPEG, noise and colour changes
    drown the blur/seam cue), ``none`` (the inference path).
    """
    if strength not in AUGMENTATIONS:
        raise ValueError(f"augmentation {strength!r}: expected one of {', '.join(AUGMENTATIONS)}")
    if strength == "none":
        return Prepare(size)
    color = A.OneOf([A.RandomBrightnessContrast(), SubsampledFancyPCA(), A.HueSaturationValue()], p=COLOR_P)
    affine = A.Affine(
        translate_percent=(-AFFINE_SHIFT, AFFINE_SHIFT),
        scale=(1.0 - AFFINE_SCALE, 1.0 + AFFINE_SCALE),
        rotate=(-AFFINE_ROTATE, AFFINE_ROTATE),
        border_mode=cv2.BORDER_CONSTANT,
        fill=PAD_FILL,
        p=AFFINE_P,
    )
    if strength == "light":
        return A.Compose([A.HorizontalFlip(p=FLIP_P), ResizePad(size), affine, ToTensorV2()])
    return A.Compose(
        [
            A.ImageCompression(quality_range=JPEG_QUALITY, p=JPEG_P),
            A.GaussNoise(std_range=NOISE_STD, p=NOISE_P),
            A.HorizontalFlip(p=FLIP_P),
            ResizePad(size),
            color,
            A.ToGray(p=GRAY_P),
            affine,
            ToTensorV2(),
        ]
    )
