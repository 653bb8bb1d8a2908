"""Frame sampling: which frames of a video to look at, and reading only those.

Shared by the dataset builder (``dfdc.extract``) and the predictor, so training and
inference see frames chosen and decoded the same way.

Reading follows the seed study's recipe: ``cv2.VideoCapture.grab()`` for every frame
(H.264 must be decoded in order anyway) and ``retrieve()`` -- the colour conversion and
copy -- only for the frames kept. The container's frame count (``CAP_PROP_FRAME_COUNT``)
is a hint, not a fact: when it is missing or wrong the frames are counted by grabbing and
the sample is re-spaced over the frames that really exist.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


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


def read_frames(
    path: Path, k: int | None = None, indices: list[int] | None = None
) -> tuple[list[int], list[np.ndarray]]:
    """Read frames of ``path`` as RGB ``uint8`` arrays (H x W x 3).

    Exactly one of ``k`` (that many evenly spaced frames over the whole video) and
    ``indices`` (these frame indices; ones past the end are skipped) may be given; with
    neither, every frame is read. Returns ``(indices actually read, frames)`` in frame
    order. A truncated or partly corrupt video gives fewer frames rather than an error;
    with ``k`` the sample is re-spaced over the frames that exist when the container's
    frame count is missing or wrong.

    Raises ``VideoReadError`` (naming the file and the reason) when the file is missing,
    empty, cannot be opened, or yields no frame.
    """
    path = Path(path)
    if k is not None and indices is not None:
        raise ValueError("read_frames: give k or indices, not both")
    if k is not None and k <= 0:
        raise ValueError(f"read_frames: k must be positive, got {k}")
    _check_file(path)

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

    if not got:
        why = "no decodable frames" if grabbed == 0 else f"none of the requested frames among {grabbed} decodable"
        raise VideoReadError(f"{path}: {why} (corrupt or truncated video?); re-download it")
    return got_idx, got
