"""Face detection (facenet-pytorch MTCNN) and the one crop function.

Shared by the dataset builder (``dfdc.extract``) and the predictor: training crops and
inference crops come from the same ``FaceDetector.detect`` and ``crop_face``, so they
cannot drift apart.

- Detection runs batched on frames downscaled so their short side is about
  ``FacesConfig.detect_short_side`` (never upscaled); boxes and landmarks are mapped back
  to full-resolution pixel coordinates. Boxes are not clipped to the frame (MTCNN boxes may
  reach past the border); ``crop_face`` pads where they do.
- ``crop_face`` cuts a square centred on the box, side ``max(w, h) * (1 + margin)``, pads
  with constant 0 (black) where the square leaves the frame -- the same constant border as
  albumentations' ``PadIfNeeded`` in training, and it invents no image content -- and
  resizes to ``size x size`` (``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging).
- ``face_difference`` compares two crops of the same box (a FAKE's and its original's) only
  inside the detected face box mapped into crop coordinates: the label cleaning of the
  dataset builder. With margin 0.6 the box is 1 / 1.6^2 = 39 % of the crop, so over the
  whole crop a genuine swap's difference is diluted by the unchanged surroundings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from dfdc.config import FacesConfig
from dfdc.threads import torch_threads

PAD_VALUE = 0  # constant border where a crop leaves the frame (black, as PadIfNeeded's default)


@dataclass
class Detection:
    """One face: ``box`` = x1, y1, x2, y2 in full-resolution pixels (float)."""

    box: np.ndarray
    prob: float
    landmarks: np.ndarray | None = None  # 5 x 2 (eyes, nose, mouth corners), full-res pixels
    track: int = -1  # the face track across the video's sampled frames (dfdc.tracks); -1 = not linked

    def to_dict(self) -> dict:
        """JSON-ready; full precision, so a box read back crops exactly the same pixels."""
        return {
            "box": [float(v) for v in self.box],
            "prob": float(self.prob),
            "landmarks": None if self.landmarks is None else [[float(v) for v in p] for p in self.landmarks],
            "track": int(self.track),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Detection:
        lm = data.get("landmarks")
        return cls(
            box=np.asarray(data["box"], dtype=np.float32),
            prob=float(data["prob"]),
            landmarks=None if lm is None else np.asarray(lm, dtype=np.float32),
            track=int(data.get("track", -1)),
        )


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def detection_scale(height: int, width: int, short_side: int) -> float:
    """Downscale factor so the frame's short side is about ``short_side`` (never > 1)."""
    return min(1.0, float(short_side) / float(min(height, width)))


class FaceDetector:
    """Batched MTCNN face detection on downscaled frames, boxes in full-res pixels."""

    def __init__(self, cfg: FacesConfig, device: str | None = None) -> None:
        from facenet_pytorch import MTCNN  # weights ship in the wheel: works offline

        self.cfg = cfg
        self.device = device or default_device()
        self.mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,  # order by probability; we re-sort anyway
            device=self.device,
            min_face_size=cfg.min_face_size,
            thresholds=list(cfg.thresholds),
            post_process=False,
        )

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """Faces in each RGB uint8 frame (H x W x 3): one list per frame, most confident
        first (tie: largest), at most ``max_faces``, none below ``min_prob``.

        Frames may differ in size: they are grouped by size and run ``detect_batch`` at a
        time, each downscaled so its short side is about ``detect_short_side``. Torch runs
        on ``detect_threads`` CPU threads meanwhile (the caller's setting is restored).
        """
        results: list[list[Detection]] = [[] for _ in frames]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
                shape = getattr(frame, "shape", type(frame).__name__)
                raise ValueError(f"FaceDetector.detect: frame {i} must be an H x W x 3 RGB array, got {shape}")
            groups.setdefault(frame.shape, []).append(i)
        batch = max(1, int(self.cfg.detect_batch))
        with torch_threads(self.cfg.detect_threads):
            self._detect_groups(frames, groups, batch, results)
        return results

    def _detect_groups(self, frames, groups, batch: int, results: list[list[Detection]]) -> None:
        for (h, w, _), members in groups.items():
            scale = detection_scale(h, w, self.cfg.detect_short_side)
            dw, dh = max(1, round(w * scale)), max(1, round(h * scale))
            sx, sy = w / dw, h / dh  # exact back-mapping of the rounded size
            for start in range(0, len(members), batch):
                chunk = members[start : start + batch]
                small = [
                    frames[i] if (dw, dh) == (w, h) else cv2.resize(frames[i], (dw, dh), interpolation=cv2.INTER_AREA)
                    for i in chunk
                ]
                boxes, probs, points = self.mtcnn.detect(np.stack(small), landmarks=True)
                for i, b, p, lm in zip(chunk, boxes, probs, points):
                    results[i] = self._select(b, p, lm, sx, sy)

    def _select(self, boxes, probs, points, sx: float, sy: float) -> list[Detection]:
        if boxes is None or len(boxes) == 0:
            return []
        found = []
        for j, box in enumerate(boxes):
            prob = float(probs[j])
            if not np.isfinite(prob) or prob < self.cfg.min_prob:
                continue
            full = np.asarray(box, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)
            lm = None
            if points is not None and points[j] is not None:
                lm = np.asarray(points[j], dtype=np.float32) * np.array([sx, sy], dtype=np.float32)
            found.append(Detection(box=full, prob=prob, landmarks=lm))
        found.sort(key=lambda d: (-d.prob, -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))))
        return found[: self.cfg.max_faces]


def check_margin(margin: float, recommended: tuple[float, float] | None = None) -> None:
    """Error when ``margin < 0``; warn when outside the recommended range (0.5-0.7)."""
    low, high = recommended if recommended is not None else FacesConfig().margin_recommended
    if margin < 0:
        raise ValueError(f"crop margin {margin} is negative; use a value in [{low}, {high}] (e.g. --margin 0.6)")
    if not low <= margin <= high:
        warnings.warn(
            f"crop margin {margin} is outside the recommended range [{low}, {high}] "
            "(the DFDC preview paper found 0.5-0.7 much better than 0)",
            stacklevel=2,
        )


def crop_box(box: np.ndarray, margin: float) -> tuple[int, int, int]:
    """The square crop of ``box``: integer (x1, y1, side) in full-res pixels."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    side_px = max(1, int(round(side)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return int(round(cx - side_px / 2.0)), int(round(cy - side_px / 2.0)), side_px


def crop_face(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """Square face crop centred on ``box`` (x1, y1, x2, y2 full-res), resized to ``size``.

    Side = ``max(w, h) * (1 + margin)``; parts outside the frame are filled with
    ``PAD_VALUE`` (0). Returns a ``size x size x C`` uint8 array, same channel order as
    ``frame``.
    """
    if margin < 0:
        raise ValueError(f"crop margin {margin} is negative")
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    h, w = frame.shape[:2]
    x0, y0, side = crop_box(box, margin)
    out = np.full((side, side) + frame.shape[2:], PAD_VALUE, dtype=frame.dtype)
    fx1, fy1 = max(0, x0), max(0, y0)
    fx2, fy2 = min(w, x0 + side), min(h, y0 + side)
    if fx2 > fx1 and fy2 > fy1:
        out[fy1 - y0 : fy2 - y0, fx1 - x0 : fx2 - x0] = frame[fy1:fy2, fx1:fx2]
    if side == size:
        return out
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


def face_box_in_crop(box: np.ndarray, margin: float, size: int) -> tuple[int, int, int, int]:
    """The face box ``box`` (full-res x1, y1, x2, y2) in the coordinates of its ``size`` x
    ``size`` crop (``crop_face(frame, box, margin, size)``): integer x1, y1, x2, y2, clipped
    to the crop, the pixels any part of the box touches."""
    x0, y0, side = crop_box(box, margin)
    scale = size / side
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    left, top = int(np.floor((x1 - x0) * scale)), int(np.floor((y1 - y0) * scale))
    right, bottom = int(np.ceil((x2 - x0) * scale)), int(np.ceil((y2 - y0) * scale))
    left, top = min(max(left, 0), size - 1), min(max(top, 0), size - 1)
    return left, top, max(min(right, size), left + 1), max(min(bottom, size), top + 1)


def face_difference(crop: np.ndarray, other: np.ndarray, box: np.ndarray, margin: float) -> float:
    """Mean absolute pixel difference (0-255) of two equal-size crops of the same ``box``
    (cut with ``margin``), inside the face box only."""
    if crop.shape != other.shape:
        raise ValueError(f"face_difference: crops of different shapes {crop.shape} and {other.shape}")
    x1, y1, x2, y2 = face_box_in_crop(box, margin, crop.shape[0])
    a = crop[y1:y2, x1:x2].astype(np.int16)
    b = other[y1:y2, x1:x2].astype(np.int16)
    return float(np.abs(a - b).mean())
