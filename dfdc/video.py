"""Frame sampling: which frames of a video to look at, and reading only those.

Shared by the dataset builder (``dfdc.extract``) and the predictor, so training and
inference see frames chosen and decoded the same way.

Reading follows the seed study's recipe: ``cv2.VideoCapture.grab()`` for every frame
(H.264 must be decoded in order anyway) and ``retrieve()`` -- the colour conversion and
copy -- only for the frames kept. The container's frame count (``CAP_PROP_FRAME_COUNT``)
is a hint, not a fact: when it is missing or wrong the frames are counted by grabbing and
the sample is re-spaced over the frames that really exist.

FFmpeg's own messages (OpenCV's decoder prints them straight to the process's stderr, "[h264
@ 0x...] Invalid NAL unit size") are captured while a video is read and printed again with
the video's path in front, so a log says which file they came from. ``read_video`` also says
whether the video decoded only partly (fewer frames than its container claims).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

PARTIAL_DECODE = "partial decode"  # the predictions' reason of a video predicted from part of its frames


class VideoReadError(RuntimeError):
    """A video that yields no frame at all; the message names the file and why."""


def evenly_spaced(n_frames: int, k: int) -> list[int]:
    """``k`` evenly spaced frame indices over ``n_frames`` frames, first and last included.

    Every frame when ``k >= n_frames``; ``[]`` when either is 0 or less.
    """
    if n_frames <= 0 or k <= 0:
        return []
    if k >= n_frames:
        return list(range(n_frames))
    if k == 1:
        return [(n_frames - 1) // 2]
    return [int(i) for i in np.linspace(0, n_frames - 1, k).round().astype(int)]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"{path}: video file not found; check the path or re-download it")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: zero-byte file (incomplete download?); re-download it")


def _open(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"{path}: unreadable or corrupt video (OpenCV cannot open it); re-download it")
    return cap


def _container_frame_count(cap: cv2.VideoCapture) -> int:
    """The frame count the container claims (0 when it does not say)."""
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    if not np.isfinite(count) or count < 0:
        return 0
    return int(count)


def _read_pass(
    path: Path, wanted: list[int] | None, to_end: bool, cap: cv2.VideoCapture | None = None
) -> tuple[list[int], list[np.ndarray], int, bool]:
    """One decoding pass: grab every frame up to the last wanted one, retrieve the wanted.

    Returns (indices read, RGB frames, frames grabbed, whether the stream went on after
    the last wanted frame). With ``to_end`` the pass grabs the whole stream, so "frames
    grabbed" is the true frame count; ``wanted=None`` keeps every frame. ``cap``: an
    unread capture of ``path`` to use (and release) instead of opening one.
    """
    cap = cap if cap is not None else _open(path)
    keep_all = wanted is None
    keep = set(wanted or ())
    last = max(keep) if keep else -1
    indices: list[int] = []
    frames: list[np.ndarray] = []
    grabbed = 0
    more = False
    try:
        while to_end or grabbed <= last:
            if not cap.grab():
                break
            if keep_all or grabbed in keep:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None and bgr.size:
                    indices.append(grabbed)
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            grabbed += 1
        if not to_end and grabbed > last:
            more = bool(cap.grab())  # one cheap grab: did the container under-count?
    finally:
        cap.release()
    return indices, frames, grabbed, more


@dataclass
class FrameRead:
    """What ``read_video`` read: the frames and how much of the stream decoded."""

    indices: list[int]
    frames: list[np.ndarray]
    claimed: int  # the container's frame count (0: it does not say)
    decoded: int  # frames the decoder delivered in the pass that read them
    messages: list[str] = field(default_factory=list)  # FFmpeg's messages while reading

    @property
    def partial(self) -> str:
        """``"partial decode: ..."`` when the stream ended before the container's frame count
        (a truncated or damaged file), else ``""``."""
        if self.claimed <= 0 or self.decoded >= self.claimed:
            return ""
        return (f"{PARTIAL_DECODE}: {self.decoded} of the {self.claimed} frames the container claims decoded; "
                f"{len(self.frames)} read")


@contextlib.contextmanager
def ffmpeg_messages(path: Path) -> Iterator[list[str]]:
    """Capture what is written to this process's stderr (file descriptor 2: FFmpeg writes there,
    under Python) inside the block; afterwards print each line again as ``<path>: <line>`` and
    give the lines in the yielded list. Falls back to no capture where fd 2 cannot be redirected
    or no temporary file can be made."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 to redirect: read without capturing
        yield lines
        return
    try:
        sink = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the with below
    except OSError:  # no temporary space: read without capturing
        os.close(saved)
        yield lines
        return
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())
            for line in lines:
                print(f"{path}: {line}", file=sys.stderr)


def read_frames(
    path: Path, k: int | None = None, indices: list[int] | None = None
) -> tuple[list[int], list[np.ndarray]]:
    """``read_video``'s frame indices and frames (the same arguments)."""
    got = read_video(path, k, indices)
    return got.indices, got.frames


def read_video(path: Path, k: int | None = None, indices: list[int] | None = None) -> FrameRead:
    """Read frames of ``path`` as RGB ``uint8`` arrays (H x W x 3).

    Exactly one of ``k`` (that many evenly spaced frames over the whole video) and
    ``indices`` (these frame indices; ones past the end are skipped) may be given; with
    neither, every frame is read. Returns the indices actually read and the frames, in frame
    order, with the container's frame count and the frames decoded. A truncated or partly
    corrupt video gives fewer frames rather than an error (``FrameRead.partial`` says so); with
    ``k`` the sample is re-spaced over the frames that exist when the container's frame count
    is missing or wrong.

    Raises ``VideoReadError`` (naming the file and the reason) when the file is missing,
    empty, cannot be opened, or yields no frame. FFmpeg's messages meanwhile are printed with
    the path in front (``ffmpeg_messages``) and kept in ``FrameRead.messages``.
    """
    path = Path(path)
    if k is not None and indices is not None:
        raise ValueError("read_frames: give k or indices, not both")
    if k is not None and k <= 0:
        raise ValueError(f"read_frames: k must be positive, got {k}")
    _check_file(path)
    with ffmpeg_messages(path) as messages:
        got_idx, got, grabbed, claimed = _decode(path, k, indices)
    if not got:
        why = "no decodable frames" if grabbed == 0 else f"none of the requested frames among {grabbed} decodable"
        raise VideoReadError(f"{path}: {why} (corrupt or truncated video?); re-download it")
    return FrameRead(got_idx, got, claimed, grabbed, messages)


def _decode(path: Path, k: int | None, indices: list[int] | None) -> tuple[list[int], list[np.ndarray], int, int]:
    """``read_video``'s passes: (indices read, frames, frames grabbed, the container's count)."""
    claimed = 0

    if indices is not None:
        wanted = sorted({int(i) for i in indices if int(i) >= 0})
        if not wanted:
            raise ValueError("read_frames: indices is empty")
        got_idx, got, grabbed, _ = _read_pass(path, wanted, to_end=False)
    else:
        cap = _open(path)
        claimed = _container_frame_count(cap)
        if k is None:
            got_idx, got, grabbed, _ = _read_pass(path, None, to_end=True, cap=cap)
        elif claimed <= 0:
            # The container does not say: count the frames by grabbing, then sample.
            _, _, grabbed, _ = _read_pass(path, [], to_end=True, cap=cap)
            got_idx, got = [], []
            if grabbed > 0:
                got_idx, got, grabbed, _ = _read_pass(path, evenly_spaced(grabbed, k), to_end=False)
        else:
            got_idx, got, grabbed, more = _read_pass(path, evenly_spaced(claimed, k), to_end=False, cap=cap)
            if more and grabbed >= claimed:
                # The stream goes on past the claimed end: the container under-counts: count the real frames and re-space.
                _, _, actual, _ = _read_pass(path, [], to_end=True)
                got_idx, got, grabbed, _ = _read_pass(path, evenly_spaced(actual, k), to_end=False)
            elif grabbed < claimed and len(got_idx) < min(k, grabbed):
                # The stream ended early (truncated, or the container over-counts):
                # re-space over the frames that exist.
                got_idx, got, grabbed, _ = _read_pass(path, evenly_spaced(grabbed, k), to_end=False)

    return got_idx, got, grabbed, claimed
