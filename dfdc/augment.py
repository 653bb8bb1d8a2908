"""The training augmentation (albumentations 2.x) around the one preprocessing path.

``train_transform(size)`` is the seed study's recipe (the DFDC notes, "The recipe of
the study this kit follows"): JPEG compression, Gaussian noise, colour jitter, grey, a small
affine jitter and a horizontal flip, around ``dfdc.preprocess.resize_pad`` -- the same
resize + pad validation, prediction and the kernel use (``dfdc.preprocess.prepare``). It
takes an RGB ``uint8`` HWC image (as read from the crop files) and returns a ``uint8``
3 x size x size tensor; the model normalises it on its device (``dfdc.preprocess``).
Only training imports this module, so the kernel never needs albumentations.

The 1st place's generalisation augmentations (selimsef/dfdc_deepfake_challenge,
``training/datasets/classifier_dataset.py`` and ``training/transforms/albu.py``), named sets
``first-place`` (their training pipeline: the recipe's list plus GaussianBlur and a random
interpolation of the isotropic resize) and ``light-first-place`` (the ``light`` set plus the
same three additions that target generalisation): before the pipeline, where a crop has its
MTCNN landmarks (``faces.csv``'s ``landmarks``, in crop pixels), with p 0.7 ``remove_landmark``
(the eyes if a draw > 0.5, else the mouth if the next > 0.5, else the nose if the next > 0.5:
a 2-px line between the landmarks, binary-dilated by a quarter of the eye distance (eyes, nose)
or a third of the mouth width (mouth), set to 0), else with p 0.2 ``blackout_convex_hull``
(one random half -- top, bottom, left or right of its centroid -- of the face region set to 0).
As theirs in every number, with one difference: their face region is dlib's 68-point jaw and
brow outline; dlib is not a dependency and MTCNN gives 5 points, so the kit's region is an
ellipse through those 5 (``HULL_WIDTH`` x the eye distance by ``HULL_HEIGHT`` x the eyes-to-mouth
distance, centred between eyes and mouth). Their third occlusion, blacking out half of the
fake-vs-original difference mask (p 0.1), needs difference masks the kit does not store.
``IsotropicResize``: the longest side to the input size with one of three interpolation
pairs drawn per sample (theirs: AREA/CUBIC, AREA/LINEAR, LINEAR/LINEAR for down/up).
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from dfdc.preprocess import INTER_DOWN, INTER_UP, PAD_FILL, Prepare, resize_pad

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

# --- the 1st place's additions (module doc) ---
BLUR_LIMIT = (3, 3)  # GaussianBlur(blur_limit=3) ...
BLUR_P = 0.05  # ... p=0.05
ISOTROPIC = ((cv2.INTER_AREA, cv2.INTER_CUBIC), (cv2.INTER_AREA, cv2.INTER_LINEAR),
             (cv2.INTER_LINEAR, cv2.INTER_LINEAR))  # IsotropicResize interpolations (down, up), OneOf
LANDMARK_P = 0.7  # remove_landmark where landmarks exist ...
HULL_P = 0.2  # ... else blackout_convex_hull
PART_P = 0.5  # remove_landmark: eyes if a draw > this, else mouth if the next > this, else nose if ...
LINE_THICKNESS = 2  # px of the line between landmarks before the dilation
EYES_DILATION = 4  # dilation iterations = eye distance // this (eyes and nose) ...
MOUTH_DILATION = 3  # ... mouth width // this (mouth)
HULL_WIDTH = 1.1  # the face region from 5 landmarks: half-width / eye distance ...
HULL_HEIGHT = 1.5  # ... half-height / eyes-to-mouth distance (dlib's outline in theirs)


class ResizePad(A.ImageOnlyTransform):
    """``dfdc.preprocess.resize_pad`` as a pipeline step (the inference path's geometry; with
    other ``down`` / ``up`` interpolations, the 1st place's ``IsotropicResize`` + pad)."""

    def __init__(self, size: int, down: int = INTER_DOWN, up: int = INTER_UP, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.size, self.down, self.up = int(size), int(down), int(up)

    def apply(self, img, **params):  # noqa: ANN001, ANN201 - albumentations' signature
        return resize_pad(img, self.size, self.down, self.up)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "down", "up")


def _blackout_line(image: np.ndarray, a: np.ndarray, b: np.ndarray, width: float, divisor: int) -> np.ndarray:
    """The 1st place's cut-out: a ``LINE_THICKNESS`` line from ``a`` to ``b``, binary-dilated
    ``int(width // divisor)`` times, set to 0."""
    from scipy.ndimage import binary_dilation

    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.line(mask, tuple(int(v) for v in a), tuple(int(v) for v in b), color=1, thickness=LINE_THICKNESS)
    iterations = int(width // divisor)
    line = binary_dilation(mask, iterations=iterations) if iterations > 0 else mask.astype(bool)
    out = image.copy()
    out[line] = 0
    return out
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




def remove_landmark(image: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The eyes, else the mouth, else the nose blacked out (each step a draw > ``PART_P``)."""
    eyes, nose, mouth = points[:2], points[2], points[3:5]
    eye_distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    if rng.random() > PART_P:
        return _blackout_line(image, eyes[0], eyes[1], eye_distance, EYES_DILATION)
    if rng.random() > PART_P:
        return _blackout_line(image, mouth[0], mouth[1], float(np.linalg.norm(mouth[1] - mouth[0])), MOUTH_DILATION)
    if rng.random() > PART_P:
        return _blackout_line(image, nose, eyes.mean(axis=0), eye_distance, EYES_DILATION)
    return image


def blackout_half_face(image: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``blackout_convex_hull`` on the face ellipse of the 5 landmarks (module doc): one half of
    it, split at its centroid horizontally or vertically, set to 0."""
    eyes, mouth = points[:2].mean(axis=0), points[3:5].mean(axis=0)
    down = mouth - eyes
    region = np.zeros(image.shape[:2], np.uint8)
    centre = eyes + down / 2
    axes = (HULL_WIDTH * float(np.linalg.norm(points[1] - points[0])), HULL_HEIGHT * float(np.linalg.norm(down)))
    angle = math.degrees(math.atan2(down[1], down[0])) - 90.0
    cv2.ellipse(region, (int(round(centre[0])), int(round(centre[1]))), (max(1, int(round(axes[0]))),
                max(1, int(round(axes[1])))), angle, 0, 360, 1, -1)
    ys, xs = np.nonzero(region)
    if not len(ys):
        return image
    y, x = int(ys.mean()), int(xs.mean())
    first = rng.random() > 0.5
    if rng.random() > 0.5:
        if first:
            region[:y, :] = 0
        else:
            region[y:, :] = 0
    elif first:
        region[:, :x] = 0
    else:
        region[:, x:] = 0
    out = image.copy()
    out[region > 0] = 0
    return out


def occlude(image: np.ndarray, points: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """The 1st place's per-crop occlusion step (module doc); crops without landmarks unchanged."""
    if points is None:
        return image
    if rng.random() < LANDMARK_P:
        return remove_landmark(image, points, rng)
    if rng.random() < HULL_P:
        return blackout_half_face(image, points, rng)
    return image


class FaceAugment:
    """The occlusion step (its draws from the per-sample generator) then an albumentations
    pipeline; called as ``t(image=x, landmarks=points)`` (``FaceDataset`` passes a crop's
    landmarks to a transform with ``uses_landmarks``), or as ``t(images=frames)`` for a face
    track (``dfdc.sequences``: one pipeline draw for all its frames; tracks carry no
    landmarks, so no occlusion)."""

    uses_landmarks = True

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self.rng = np.random.default_rng()

    def set_random_state(self, rng: np.random.Generator, py_random: Any) -> None:
        # the occlusion's own stream, drawn first whether a crop has landmarks or not: the
        # pipeline's draws stay the same with and without an occlusion
        self.rng = np.random.default_rng(int(rng.integers(np.iinfo(np.int64).max)))
        self.pipeline.set_random_state(rng, py_random)

    def __call__(self, *, image: np.ndarray | None = None, images: np.ndarray | None = None,
                 landmarks: np.ndarray | None = None) -> dict[str, Any]:
        if images is not None:
            return self.pipeline(images=images)
        return self.pipeline(image=occlude(image, landmarks, self.rng))


AUGMENTATIONS = ("recipe", "light", "none", "first-place", "light-first-place")


def train_transform(size: int, strength: str = "recipe") -> A.Compose | Prepare | FaceAugment:
    """The seed recipe's training augmentation around the inference path's resize + pad.

    RGB uint8 HxWx3 -> uint8 tensor 3 x size x size. Random; reseed with
    ``Compose.set_random_seed`` for repeatable draws (``dfdc.data`` does, per sample).
    ``strength``: ``recipe`` (the seed study's list), ``light`` (flip and the small affine
    jitter only: for tiny data and short CPU runs, where JPEG, noise and colour changes
    drown the blur/seam cue), ``none`` (the inference path), ``first-place`` and
    ``light-first-place`` (the recipe / light set with the 1st place's additions, module doc).
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
    first_place = strength.endswith("first-place")
    resize = (A.OneOf([ResizePad(size, down, up) for down, up in ISOTROPIC], p=1.0) if first_place
              else ResizePad(size))
    if strength.startswith("light"):
        steps = [A.HorizontalFlip(p=FLIP_P), resize, affine, ToTensorV2()]
    else:
        steps = [
            A.ImageCompression(quality_range=JPEG_QUALITY, p=JPEG_P),
            A.GaussNoise(std_range=NOISE_STD, p=NOISE_P),
            *([A.GaussianBlur(blur_limit=BLUR_LIMIT, p=BLUR_P)] if first_place else []),
            A.HorizontalFlip(p=FLIP_P),
            resize,
            color,
            A.ToGray(p=GRAY_P),
            affine,
            ToTensorV2(),
        ]
    return FaceAugment(A.Compose(steps)) if first_place else A.Compose(steps)
