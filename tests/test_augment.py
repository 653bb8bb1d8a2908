"""dfdc.preprocess (the one inference path) and dfdc.augment (training augmentation)."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from dfdc.augment import train_transform
from dfdc.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec, Prepare, prepare, resize_pad


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(100, 50), (30, 20), (64, 64), (17, 90), (240, 240)])
@pytest.mark.parametrize("size", [64, 96, 240])
def test_resize_pad_equals_albumentations_longest_max_size_and_pad(shape: tuple[int, int], size: int) -> None:
    """The path left albumentations without moving a pixel: models trained before still fit."""
    reference = A.Compose([
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_CUBIC, area_for_downscale="image"),
        A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0),
    ])
    image = _image(*shape)
    assert np.array_equal(resize_pad(image, size), reference(image=image)["image"])


def test_prepare_is_uint8_chw_padded_and_deterministic() -> None:
    image = _image(100, 50)  # portrait: longest side -> 64, width -> 32, centred padding
    out = prepare(image, 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, prepare(image, 64))
    assert not out[:, :, :16].any() and not out[:, :, 48:].any()  # zero padding left and right
    assert out[:, :, 20:40].any()  # the image itself
    assert torch.equal(Prepare(64)(image=image)["image"], torch.from_numpy(out))
    with pytest.raises(ValueError, match="RGB uint8"):
        prepare(image.astype(np.float32), 64)


def test_input_spec_roundtrip() -> None:
    spec = InputSpec(299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.with_size(0) == spec and spec.with_size(128).size == 128
    assert InputSpec(224).mean == IMAGENET_MEAN and InputSpec(224).std == IMAGENET_STD


def test_train_transform_shape_randomness_and_seed() -> None:
    tf = train_transform(48)
    image = _image(80, 60)
    outs = [tf(image=image)["image"] for _ in range(6)]
    assert all(o.shape == (3, 48, 48) and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # augmentation is random
    tf.set_random_seed(11)
    first = tf(image=image)["image"]
    tf.set_random_seed(11)
    assert torch.equal(first, tf(image=image)["image"])  # ... and repeatable when seeded


def test_augmentation_strengths() -> None:
    image = _image(40, 40)
    assert torch.equal(train_transform(32, "none")(image=image)["image"], torch.from_numpy(prepare(image, 32)))
    light = train_transform(32, "light")
    names = [type(t).__name__ for t in light.transforms]
    assert "ImageCompression" not in names and "HorizontalFlip" in names and "Affine" in names
    assert light(image=image)["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="heavy"):
        train_transform(32, "heavy")


def _colourful(seed: int = 0, side: int = 200) -> np.ndarray:
    """Smooth colour blobs whose colours spread mostly along one RGB direction."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.normal(0, 1, (side, side)), (0, 0), 6)
    t = (t - t.mean()) / t.std()
    other = cv2.GaussianBlur(rng.normal(0, 1, (side, side, 3)), (0, 0), 6)
    rgb = 128 + 40 * t[..., None] * np.array([0.8, 0.5, 0.3]) + 8 * other / other.std()
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_subsampled_fancy_pca_moves_colours_along_the_principal_components() -> None:
    """With only the first component's alpha, every pixel moves along the image's first
    principal colour direction; with any alpha it is albumentations' FancyPCA within a grey
    level or two (covariance from a subsample)."""
    from albumentations.augmentations.pixel.functional import fancy_pca

    from dfdc.augment import SubsampledFancyPCA

    img = _colourful()
    pixels = img.reshape(-1, 3).astype(np.float64)
    vals, vecs = np.linalg.eigh(np.cov(pixels, rowvar=False))
    first = vecs[:, np.argmax(vals)]
    pca = SubsampledFancyPCA(p=1.0)
    moved = pca.apply(img, np.array([8.0, 0.0, 0.0], np.float32)).reshape(-1, 3).astype(np.float64) - pixels
    along = moved @ first
    across = moved - along[:, None] * first[None, :]
    assert np.abs(along).mean() > 5.0  # the colours changed ...
    assert np.abs(across).max() <= 1.5  # ... along the first component only (rounding aside)
    rng = np.random.default_rng(1)
    for _ in range(5):
        alpha = rng.normal(0, 20.0, 3).astype(np.float32)
        ours, theirs = pca.apply(img, alpha).astype(int), fancy_pca(img, alpha).astype(int)
        assert np.abs(theirs - img).mean() > 2.0  # a visible change to compare
        assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() < 0.5
    assert isinstance(train_transform(32).transforms[4].transforms[1], SubsampledFancyPCA)  # the recipe uses it
