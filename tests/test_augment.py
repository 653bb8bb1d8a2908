"""dfdc.augment: the training augmentation and the shared inference preprocessing."""

from __future__ import annotations

import numpy as np
import torch

from dfdc.augment import IMAGENET_MEAN, IMAGENET_STD, inference_transform, train_transform


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_inference_transform_shape_pad_and_determinism() -> None:
    tf = inference_transform(64)
    image = _image(100, 50)  # portrait, not square: longest side -> 64, width -> 32, padded
    out = tf(image=image)["image"]
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, tf(image=image)["image"])
    assert torch.equal(out, inference_transform(64)(image=image)["image"])
    pad = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
    assert torch.allclose(out[:, :, :10], pad.expand(3, 64, 10), atol=1e-5)  # zero padding, normalised
    assert not torch.allclose(out[:, :, 20:40], pad.expand(3, 64, 20), atol=1e-3)  # the image itself
    # a square crop is only resized: upscaled small crops keep the full frame
    small = inference_transform(64)(image=_image(32, 32))["image"]
    assert small.shape == (3, 64, 64)
    assert not torch.allclose(small[:, :, :4], pad.expand(3, 64, 4), atol=1e-3)


def test_train_transform_shape_randomness_and_seed() -> None:
    tf = train_transform(48)
    image = _image(80, 60)
    outs = [tf(image=image)["image"] for _ in range(6)]
    assert all(o.shape == (3, 48, 48) and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # augmentation is random
    tf.set_random_seed(11)
    first = tf(image=image)["image"]
    tf.set_random_seed(11)
    assert torch.equal(first, tf(image=image)["image"])  # ... and repeatable when seeded


def test_augmentation_strengths() -> None:
    import pytest

    image = _image(40, 40)
    assert torch.equal(train_transform(32, "none")(image=image)["image"], inference_transform(32)(image=image)["image"])
    light = train_transform(32, "light")
    names = [type(t).__name__ for t in light.transforms]
    assert "ImageCompression" not in names and "HorizontalFlip" in names and "Affine" in names
    assert light(image=image)["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="heavy"):
        train_transform(32, "heavy")
