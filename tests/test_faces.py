"""Face detection and the crop function (dfdc.faces)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from test_video import astronaut_frames

from dfdc.config import FacesConfig
from dfdc.faces import (
    Detection, FaceDetector, check_margin, crop_box, crop_face, detection_scale, face_box_in_crop, face_difference,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


# --- crop geometry ------------------------------------------------------------------


def coord_frame(h: int = 100, w: int = 200) -> np.ndarray:
    """Channel 0 = x, channel 1 = y, channel 2 = 255: every pixel says where it is."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 255)], -1).astype(np.uint8)


def test_crop_side_and_centre_with_margin() -> None:
    box = np.array([80.0, 30.0, 100.0, 60.0])  # w 20, h 30, centre (90, 45)
    x0, y0, side = crop_box(box, 0.5)
    assert side == 45 and (x0, y0) == (round(90 - 22.5), round(45 - 22.5))
    crop = crop_face(coord_frame(), box, margin=0.5, size=45)  # no resize: exact pixels
    assert crop.shape == (45, 45, 3)
    assert crop[0, 0, 0] == x0 and crop[0, 0, 1] == y0
    assert crop[22, 22, 0] == x0 + 22 and crop[22, 22, 1] == y0 + 22
    assert abs(int(crop[22, 22, 0]) - 90) <= 1 and abs(int(crop[22, 22, 1]) - 45) <= 1


def test_crop_zero_margin_is_the_long_side() -> None:
    _, _, side = crop_box(np.array([0.0, 0.0, 10.0, 40.0]), 0.0)
    assert side == 40


def test_crop_pads_with_zero_outside_the_frame() -> None:
    frame = coord_frame()
    box = np.array([-10.0, -10.0, 10.0, 10.0])  # centred on the top-left corner
    crop = crop_face(frame, box, margin=0.0, size=20)
    assert crop.shape == (20, 20, 3)
    assert (crop[:10, :, :] == 0).all() and (crop[:, :10, :] == 0).all()  # padding
    assert (crop[10:, 10:, 2] == 255).all()  # the frame part
    assert crop[10, 10, 0] == 0 and crop[19, 19, 0] == 9


def test_crop_fully_outside_is_all_padding() -> None:
    crop = crop_face(coord_frame(), np.array([500.0, 500.0, 520.0, 520.0]), 0.5, 16)
    assert crop.shape == (16, 16, 3) and not crop.any()


def test_crop_resizes_both_ways() -> None:
    frame = coord_frame(300, 300)
    small = crop_face(frame, np.array([100.0, 100.0, 200.0, 200.0]), 0.0, 25)  # 100 -> 25: shrink
    big = crop_face(frame, np.array([100.0, 100.0, 110.0, 110.0]), 0.0, 64)  # 10 -> 64: enlarge
    assert small.shape == (25, 25, 3) and big.shape == (64, 64, 3)
    assert small.dtype == np.uint8
    assert abs(int(small[12, 12, 0]) - 150) <= 3  # centre still at the box centre
    assert big[0, 0, 0] >= 100 and big[-1, -1, 0] <= 110


def test_crop_rejects_bad_margin_and_size() -> None:
    with pytest.raises(ValueError):
        crop_face(coord_frame(), np.array([0.0, 0.0, 10.0, 10.0]), -0.1, 10)
    with pytest.raises(ValueError):
        crop_face(coord_frame(), np.array([0.0, 0.0, 10.0, 10.0]), 0.5, 0)


def test_check_margin() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_margin(0.6)  # inside: silent
    with pytest.warns(UserWarning, match="recommended"):
        check_margin(0.2)
    with pytest.raises(ValueError, match="negative"):
        check_margin(-0.1)


def test_detection_round_trip() -> None:
    d = Detection(np.array([1.5, 2, 3, 4], np.float32), 0.99, np.arange(10, dtype=np.float32).reshape(5, 2))
    back = Detection.from_dict(d.to_dict())
    assert back.box.tobytes() == d.box.tobytes() and back.prob == pytest.approx(0.99)  # bit-exact box
    assert back.landmarks.shape == (5, 2)
    d = Detection(np.array([98.549, 1 / 3, 2, 3], np.float32), 0.9, None)
    assert Detection.from_dict(json.loads(json.dumps(d.to_dict()))).box.tobytes() == d.box.tobytes()


def test_detection_scale_never_upscales() -> None:
    assert detection_scale(1080, 1920, 270) == pytest.approx(0.25)
    assert detection_scale(1920, 1080, 270) == pytest.approx(0.25)
    assert detection_scale(240, 320, 270) == 1.0


# --- detector ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    torch.set_num_threads(2)
    return FaceDetector(FacesConfig(), device="cpu")


def test_detector_finds_astronaut_and_maps_to_full_res(detector: FaceDetector) -> None:
    frames = astronaut_frames(3, width=640, height=480, face=400)  # detected at 360x270
    full = FaceDetector(dataclasses.replace(detector.cfg, detect_short_side=10_000), device="cpu")
    small_dets, full_dets = detector.detect(frames), full.detect(frames)
    for s, f in zip(small_dets, full_dets):
        assert len(s) == 1 and len(f) == 1
        assert s[0].prob >= 0.9
        assert iou(s[0].box, f[0].box) > 0.75  # same face, full-resolution coordinates
        assert s[0].landmarks.shape == (5, 2)
        x1, y1, x2, y2 = s[0].box
        assert all(x1 < x < x2 and y1 < y < y2 for x, y in s[0].landmarks)
    # the face moves with the portrait between frames, and boxes follow it
    assert full_dets[0][0].box[0] != full_dets[2][0].box[0]


def test_detector_mixed_sizes_empty_frames_and_limits(detector: FaceDetector) -> None:
    big = astronaut_frames(1, width=640, height=480, face=400)[0]
    small = astronaut_frames(1, width=320, height=240, face=200)[0]
    blank = np.zeros((120, 160, 3), np.uint8)
    pair = np.concatenate([small, small[:, ::-1]], axis=1)  # two faces side by side
    out = detector.detect([big, blank, small, pair])
    assert [len(d) for d in out] == [1, 0, 1, 2]
    assert out[3][0].prob >= out[3][1].prob
    assert out[3][1].box[0] > 320 or out[3][0].box[0] > 320  # one face in the right half
    assert detector.detect([]) == []
    one = FaceDetector(dataclasses.replace(detector.cfg, max_faces=1), device="cpu")
    assert len(one.detect([pair])[0]) == 1
    none = FaceDetector(dataclasses.replace(detector.cfg, min_prob=1.01), device="cpu")
    assert none.detect([small]) == [[]]
    with pytest.raises(ValueError, match="frame 0"):
        detector.detect([np.zeros((10, 10), np.uint8)])


def test_detect_threads_are_scoped(detector: FaceDetector) -> None:
    seen = []
    real_detect = detector.mtcnn.detect

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real_detect(*a, **k)

    before = torch.get_num_threads()
    detector.mtcnn.detect = spy
    try:
        detector.detect(astronaut_frames(1, width=160, height=120, face=100))
    finally:
        del detector.mtcnn.detect
    assert seen == [detector.cfg.detect_threads] and torch.get_num_threads() == before


def test_face_box_in_crop_coordinates() -> None:
    box = np.array([100.0, 100.0, 200.0, 200.0])  # 100 px square; margin 0.6 -> a 160 px crop at 70, 70
    assert face_box_in_crop(box, 0.6, 160) == (30, 30, 130, 130)
    assert face_box_in_crop(box, 0.6, 80) == (15, 15, 65, 65)  # resized crop: coordinates scale
    assert face_box_in_crop(np.array([100.0, 100.0, 300.0, 200.0]), 0.0, 200) == (0, 50, 200, 150)  # centred
    frame = coord_frame(400, 400)
    crop = crop_face(frame, box, 0.6, 160)
    x1, y1, x2, y2 = face_box_in_crop(box, 0.6, 160)
    assert crop[y1, x1, 0] == 100 and crop[y1, x1, 1] == 100  # coord_frame: the box's top-left pixel


def test_face_difference_looks_inside_the_face_only() -> None:
    """A subtle swap (+6 inside the box) stays above the threshold inside the box, where the
    whole margin-0.6 crop (the face ~39 % of it) would average it below and drop it."""
    rng = np.random.default_rng(0)
    box = np.array([100.0, 100.0, 200.0, 200.0])
    original = rng.integers(20, 200, (160, 160, 3), dtype=np.uint8)
    swapped = original.copy()
    x1, y1, x2, y2 = face_box_in_crop(box, 0.6, 160)
    swapped[y1:y2, x1:x2] += 6
    tolerance = FacesConfig().same_face_tolerance
    assert face_difference(swapped, original, box, 0.6) == pytest.approx(6.0)
    assert face_difference(swapped, original, box, 0.6) >= tolerance  # kept
    assert np.abs(swapped.astype(int) - original.astype(int)).mean() < tolerance  # the whole crop would drop it
    assert face_difference(original, original.copy(), box, 0.6) == 0.0  # identical: dropped
    with pytest.raises(ValueError, match="different shapes"):
        face_difference(original, original[:80], box, 0.6)
