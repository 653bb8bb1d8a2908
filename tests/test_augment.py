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


# --------------------------------------------------------------- the 1st place's generalisation set

POINTS = np.array([[48.0, 55.0], [80.0, 55.0], [64.0, 70.0], [50.0, 88.0], [78.0, 88.0]])  # eyes, nose, mouth


def test_landmark_cutouts_black_out_the_part_they_name() -> None:
    """remove_landmark: a 2-px line between the landmarks, dilated by a quarter of the eye
    distance (eyes) or a third of the mouth width (mouth), set to 0; nothing else touched."""
    from dfdc.augment import _blackout_line

    image = np.full((128, 128, 3), 200, np.uint8)
    eyes = _blackout_line(image, POINTS[0], POINTS[1], 32.0, 4)
    black = (eyes == 0).all(axis=2)
    assert black[55, 48:81].all()  # the line between the eyes
    assert black[55 - 8, 64] and not black[55 - 11, 64]  # dilated 32 // 4 = 8 px, no more
    assert not black[88, 64] and (eyes[~black] == 200).all()  # the mouth and everything else kept
    mouth = _blackout_line(image, POINTS[3], POINTS[4], 28.0, 3)
    assert (mouth == 0).all(axis=2)[88, 64] and (mouth == 0).all(axis=2)[88 - 9, 64]  # 28 // 3 = 9


def test_occlusion_draws_follow_the_first_place_and_need_landmarks() -> None:
    from dfdc.augment import occlude

    image = np.full((128, 128, 3), 200, np.uint8)
    changed = [not np.array_equal(occlude(image, POINTS, np.random.default_rng(s)), image) for s in range(400)]
    # p 0.7 x (1 - 0.5^3) landmark cut-outs + p 0.3 x 0.2 half-face blackouts = 0.67
    assert 0.6 < np.mean(changed) < 0.74
    assert np.array_equal(occlude(image, None, np.random.default_rng(0)), image)  # no landmarks: unchanged
    again = [occlude(image, POINTS, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*again)  # the same per-sample generator, the same occlusion


def test_half_face_blackout_covers_one_half_of_the_face() -> None:
    from dfdc.augment import blackout_half_face

    image = np.full((128, 128, 3), 200, np.uint8)
    for seed in range(8):
        black = (blackout_half_face(image, POINTS, np.random.default_rng(seed)) == 0).all(axis=2)
        ys, xs = np.nonzero(black)
        assert 1500 < black.sum() < 4000  # half of the ~35 x 49 px half-axes ellipse
        assert (ys.max() - ys.min() < 60) or (xs.max() - xs.min() < 40)  # one side of the centroid only


def test_first_place_sets_read_landmarks_through_the_dataset(tmp_path) -> None:
    """FaceDataset hands a crop's landmarks (faces.csv, crop pixels) to a transform that uses
    them, and FaceAugment occludes with them: the same per-sample seed with and without
    landmarks gives other pixels in about two thirds of the draws."""
    import pandas as pd

    from dfdc.data import FaceDataset, reseed, sample_seed

    path = tmp_path / "c.png"
    cv2.imwrite(str(path), np.full((128, 128, 3), 200, np.uint8))
    text = " ".join(f"{v:.1f}" for v in POINTS.ravel())
    table = pd.DataFrame({"y": [1, 1], "file": [str(path)] * 2, "landmarks": [text, ""]})

    class Recorder:
        uses_landmarks = True
        seen: list = []

        def __call__(self, *, image, landmarks=None):
            self.seen.append(landmarks)
            return {"image": torch.from_numpy(image)}

    recorder = Recorder()
    data = FaceDataset(table, recorder)
    data[0], data[1]
    assert np.array_equal(recorder.seen[0], POINTS) and recorder.seen[1] is None
    for strength in ("first-place", "light-first-place"):
        transform = train_transform(128, strength)
        image = np.full((128, 128, 3), 200, np.uint8)
        differ = 0
        for epoch in range(60):
            reseed(transform, sample_seed(0, epoch, 0))
            occluded = transform(image=image, landmarks=POINTS)["image"]
            reseed(transform, sample_seed(0, epoch, 0))
            plain = transform(image=image, landmarks=None)["image"]
            differ += not torch.equal(occluded, plain)
        assert 30 <= differ <= 50, (strength, differ)  # p 0.67 of an occlusion (60 draws)
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
