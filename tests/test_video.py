"""Frame sampling and reading (dfdc.video) on tiny H.264 videos made on the fly.

``make_clip`` and ``astronaut_frames`` are also used by tests/test_faces.py and
tests/test_extract.py.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfdc import video
from dfdc.video import VideoReadError, evenly_spaced, read_frames


def astronaut_frames(n: int, width: int = 320, height: int = 240, face: int = 200, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB frames: skimage's astronaut (a real face) scaled to ``face`` px, drifting
    over a textured background; the frame index is encoded in a bright bar at the top."""
    from skimage import data

    rng = np.random.default_rng(seed)
    portrait = cv2.resize(data.astronaut(), (face, face), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), np.full_like(xx, 90)], -1)
    base = (base + rng.integers(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
    frames = []
    span_x, span_y = max(0, width - face), max(0, height - face)
    for i in range(n):
        f = base.copy()
        x = int(span_x * (0.5 + 0.3 * np.sin(i / 5.0)))
        y = int(span_y * (0.5 + 0.3 * np.cos(i / 7.0)))
        f[y : y + face, x : x + face] = portrait[: height - y, : width - x]
        frames.append(f)
    return frames


def make_clip(path: Path, frames: list[np.ndarray], fps: int = 10, faststart: bool = False) -> Path:
    """Write RGB frames as an H.264 mp4 with PyAV (libx264, yuv420p, near-lossless)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def index_frames(n: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """Flat grey frames whose brightness encodes the frame index (4 * i + 10)."""
    return [np.full((height, width, 3), 10 + 4 * i, dtype=np.uint8) for i in range(n)]


def decoded_index(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - 10) / 4))


@pytest.fixture(scope="module")
def clip30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("v") / "clip30.mp4", index_frames(30), faststart=True)


def test_evenly_spaced() -> None:
    assert evenly_spaced(300, 4) == [0, 100, 199, 299]
    assert evenly_spaced(10, 10) == list(range(10))
    assert evenly_spaced(5, 8) == [0, 1, 2, 3, 4]
    assert evenly_spaced(0, 8) == [] and evenly_spaced(8, 0) == []
    assert evenly_spaced(9, 1) == [4]
    idx = evenly_spaced(300, 40)
    assert len(set(idx)) == 40 and idx[0] == 0 and idx[-1] == 299
    gaps = np.diff(idx)
    assert gaps.max() - gaps.min() <= 1


def test_read_k_frames_are_the_right_ones(clip30: Path) -> None:
    idx, frames = read_frames(clip30, k=4)
    assert idx == evenly_spaced(30, 4)
    assert [decoded_index(f) for f in frames] == idx
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


def test_read_explicit_indices_and_past_the_end(clip30: Path) -> None:
    idx, frames = read_frames(clip30, indices=[25, 3, 3, 40])
    assert idx == [3, 25]
    assert [decoded_index(f) for f in frames] == [3, 25]


def test_read_all_frames(clip30: Path) -> None:
    idx, frames = read_frames(clip30)
    assert idx == list(range(30)) and len(frames) == 30


def test_rgb_channel_order(tmp_path: Path) -> None:
    red = [np.zeros((48, 64, 3), np.uint8) for _ in range(3)]
    for f in red:
        f[..., 0] = 200
    _, frames = read_frames(make_clip(tmp_path / "red.mp4", red), k=1)
    r, g, b = frames[0].reshape(-1, 3).mean(0)
    assert r > 150 and g < 60 and b < 60


@pytest.mark.parametrize("claimed", [0, 12, 90])
def test_wrong_container_frame_count(clip30: Path, monkeypatch: pytest.MonkeyPatch, claimed: int) -> None:
    """Missing (0), too low (12) or too high (90) frame counts: still 5 frames spread over all 30."""
    monkeypatch.setattr(video, "_container_frame_count", lambda cap: claimed)
    idx, frames = read_frames(clip30, k=5)
    assert idx == evenly_spaced(30, 5)
    assert [decoded_index(f) for f in frames] == idx


def test_grab_is_used_and_only_kept_frames_are_retrieved(clip30: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"grab": 0, "retrieve": 0}
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, *a):
            self.cap = real(*a)

        def grab(self):
            calls["grab"] += 1
            return self.cap.grab()

        def retrieve(self, *a):
            calls["retrieve"] += 1
            return self.cap.retrieve(*a)

        def read(self, *a):  # pragma: no cover - must not be used
            raise AssertionError("read() decodes every frame to BGR; use grab/retrieve")

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", Counting)
    read_frames(clip30, k=3)
    assert calls["retrieve"] == 3
    assert calls["grab"] >= 30


def test_truncated_video_gives_fewer_frames(clip30: Path, tmp_path: Path) -> None:
    data = clip30.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # moov atom first (faststart): playable prefix
    idx, frames = read_frames(cut, k=5)
    assert 1 <= len(idx) <= 5 and max(idx) < 29
    assert [decoded_index(f) for f in frames] == idx
    # re-spaced over the frames that exist: spread across the readable prefix
    assert idx[0] == 0 and len(idx) == len(set(idx))


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="missing.mp4.*not found"):
        read_frames(tmp_path / "missing.mp4", k=2)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty.mp4.*zero-byte"):
        read_frames(empty, k=2)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="junk.mp4"):
        read_frames(junk, k=2)


def test_a_partly_decoded_video_says_so_and_ffmpeg_messages_name_it(clip30: Path, tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """A truncated file decodes fewer frames than its container claims: ``partial`` says how
    many; FFmpeg's complaints on stderr come back with the video's path in front."""
    whole = video.read_video(clip30, k=5)
    assert whole.partial == "" and (whole.claimed, whole.decoded) == (30, 30)
    capfd.readouterr()
    data = clip30.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got = video.read_video(cut, k=5)
    assert got.claimed == 30 and 0 < got.decoded < 30
    assert got.partial == (f"partial decode: {got.decoded} of the 30 frames the container claims decoded; "
                           f"{len(got.frames)} read")
    err = capfd.readouterr().err.splitlines()
    assert got.messages and err == [f"{cut}: {line}" for line in got.messages]  # every FFmpeg line, named
