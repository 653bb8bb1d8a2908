"""dfdc.tracks: faces linked across frames, in the builder's index and the predictor's output."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from test_video import make_clip

from dfdc.config import FacesConfig
from dfdc.tracks import centre_distance, iou, link_tracks

CFG = FacesConfig(size=64, frames_real=8, frames_fake=4, max_faces=2, detect_batch=8)


def _box(cx: float, cy: float, side: float = 40.0) -> np.ndarray:
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def test_iou_and_centre_distance() -> None:
    a = _box(50, 50)
    assert iou(a, a) == 1.0 and iou(a, _box(200, 50)) == 0.0
    assert iou(a, _box(70, 50)) == pytest.approx(20 * 40 / (2 * 1600 - 20 * 40))
    assert centre_distance(a, _box(90, 50)) == pytest.approx(1.0)


def test_two_faces_keep_their_ids_whatever_the_detection_order() -> None:
    frames = []
    for i in range(10):
        left, right = _box(60 + 3 * i, 80), _box(260 - 3 * i, 90)
        frames.append([left, right] if i % 3 else [right, left])  # the detector's order varies
    frames[4] = [frames[4][0]]  # one face missed in a frame
    ids = link_tracks(frames, CFG)
    side = {}
    for boxes, frame_ids in zip(frames, ids):
        for box, track in zip(boxes, frame_ids):
            side.setdefault(track, set()).add((box[0] + box[2]) / 2 < 160)
    assert set(side) == {0, 1} and all(len(s) == 1 for s in side.values())  # each track stays on its side
    assert [len(set(f)) for f in ids] == [len(f) for f in frames]  # no two faces of a frame share a track


def test_far_jumps_gaps_and_numbering_by_size() -> None:
    frames = [[_box(50, 50)] for _ in range(6)]
    frames[2] = [_box(50, 52), _box(300, 300, 10)]  # a short-lived false positive far away
    ids = link_tracks(frames, CFG)
    assert [f[0] for f in ids] == [0] * 6 and ids[2][1] == 1  # the face seen most is track 0
    gap = dict(track_max_gap=1)
    cfg = FacesConfig(**{**CFG.__dict__, **gap})
    ids = link_tracks([[_box(50, 50)], [], [], [_box(50, 50)], [_box(52, 50)]], cfg)
    assert ids == [[1], [], [], [0], [0]]  # unseen for 2 sampled frames: a new track, the longer one is 0
    assert link_tracks([], CFG) == [] and link_tracks([[]], CFG) == [[]]


def two_person_frames(n: int, width: int = 256, height: int = 144, face: int = 90) -> list[np.ndarray]:
    """Two real faces (skimage's astronaut, a second copy mirrored) on the left and right half,
    drifting in opposite directions."""
    from skimage import data

    portrait = cv2.resize(data.astronaut(), (face, face), interpolation=cv2.INTER_AREA)
    other = portrait[:, ::-1]
    frames = []
    for i in range(n):
        f = np.full((height, width, 3), 60, np.uint8)
        dy = int(round((height - face) * (0.5 + 0.4 * np.sin(i / 4.0))))
        f[dy : dy + face, 20 : 20 + face] = portrait
        f[height - face - dy : height - dy, width - 20 - face : width - 20] = other
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def two_person_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracks")
    part = root / "dfdc_train_part_0"
    part.mkdir()
    frames = two_person_frames(16)
    make_clip(part / "twopersons.mp4", frames)
    fake = [f.copy() for f in frames]
    for f in fake:  # the right person's face manipulated (channels reversed), the left one kept
        f[:, 128:] = f[:, 128:, ::-1]
    make_clip(part / "twofakeone.mp4", fake)
    (part / "metadata.json").write_text(json.dumps({
        "twopersons.mp4": {"label": "REAL", "split": "train", "original": None},
        "twofakeone.mp4": {"label": "FAKE", "split": "train", "original": "twopersons.mp4"},
    }))
    return root


def test_builder_writes_stable_tracks_and_fakes_inherit_them(two_person_data: Path, tmp_path: Path) -> None:
    from dfdc.extract import build_faces
    from dfdc.metadata import load_metadata

    meta, _ = load_metadata(two_person_data)
    build_faces(meta, tmp_path / "faces", CFG, progress=False)
    faces = pd.read_csv(tmp_path / "faces" / "faces.csv")
    real = faces[faces["video"] == "twopersons.mp4"]
    assert real["frame"].nunique() == CFG.frames_real
    assert sorted(real["track"].unique()) == [0, 1]
    centre_x = real["box"].map(lambda b: (float(b.split()[0]) + float(b.split()[2])) / 2)
    sides = (centre_x < 128).groupby(real["track"]).nunique()
    assert (sides == 1).all()  # track 0 is one person in every frame, track 1 the other
    assert (real.groupby("frame")["track"].nunique() == 2).all()
    fake = faces[faces["video"] == "twofakeone.mp4"]
    assert not fake.empty and set(fake["track"]) <= {0, 1}
    merged = fake.merge(real, on=["frame", "track"], suffixes=("_fake", "_real"))
    assert len(merged) == len(fake) and (merged["box_fake"] == merged["box_real"]).all()  # the original's tracks


def test_predictor_worker_returns_frames_and_tracks(two_person_data: Path) -> None:
    from dfdc.predict import CropSpec, WorkerSetup, process_video

    setup = WorkerSetup(CFG, 6, (CropSpec(0.6, 64, 32),), 1, "cpu")
    out = process_video(str(two_person_data / "dfdc_train_part_0" / "twopersons.mp4"), setup)
    assert out.reason == "" and out.n_faces == len(out.frames) == len(out.tracks) == 12
    assert sorted(set(out.tracks.tolist())) == [0, 1]
    assert all(sorted(out.tracks[out.frames == f].tolist()) == [0, 1] for f in set(out.frames.tolist()))
    assert out.tensors[setup.specs[0]].dtype == np.uint8
