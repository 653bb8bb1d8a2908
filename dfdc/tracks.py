"""Face tracks: a video's detections linked across its sampled frames, so "track 0" is the
same person in every frame (the unit a sequence model reads; ``dfdc.extract`` writes a
``track`` per crop, the predictor's workers give one per face).

Linking goes frame by frame, in frame order. The tracks alive so far (by their latest box)
and the current frame's detections are matched one-to-one by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on a cost mixing overlap and centre distance; a
pair is linked only if the boxes overlap by at least ``track_iou`` IoU or their centres lie
within ``track_center`` x the boxes' mean side (frames are sampled sparsely -- 40 of 300 at
training, 32 at inference -- so a moving face may overlap little between two samples but
stays near). A detection left unmatched starts a new track. A track not seen for
``track_max_gap`` sampled frames ends (a new face there later starts a new track).

Track ids are renumbered at the end: the track with the most detections is 0 (the main
face), then by size, ties by first appearance -- deterministic for the same detections.
A FAKE reuses its original's detections (``dfdc.extract``), hence its original's tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from dfdc.config import FacesConfig
from dfdc.faces import Detection

NO_MATCH = 1e6  # cost of a pair that must not be linked


@dataclass
class _Track:
    box: np.ndarray  # the latest box
    last: int  # sampled-frame position of the latest box
    size: int = 1
    first: int = 0  # sampled-frame position of the first box


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance of the box centres in units of the boxes' mean side."""
    side = ((a[2] - a[0]) + (a[3] - a[1]) + (b[2] - b[0]) + (b[3] - b[1])) / 4.0
    dx = (a[0] + a[2] - b[0] - b[2]) / 2.0
    dy = (a[1] + a[3] - b[1] - b[3]) / 2.0
    return float(np.hypot(dx, dy) / max(side, 1e-6))


def _cost(track_box: np.ndarray, box: np.ndarray, cfg: FacesConfig) -> float:
    overlap, dist = iou(track_box, box), centre_distance(track_box, box)
    if overlap < cfg.track_iou and dist > cfg.track_center:
        return NO_MATCH
    return (1.0 - overlap) + dist  # lower is better: overlap first, then nearness


def link_tracks(boxes: Sequence[Sequence[np.ndarray]], cfg: FacesConfig) -> list[list[int]]:
    """Track ids for the boxes of each sampled frame (``boxes[i][j]``: x1, y1, x2, y2 of the
    j-th face of the i-th sampled frame, frames in order). Returns ids shaped like ``boxes``."""
    tracks: list[_Track] = []
    raw: list[list[int]] = []
    for position, frame_boxes in enumerate(boxes):
        ids = [-1] * len(frame_boxes)
        alive = [k for k, t in enumerate(tracks) if position - t.last <= cfg.track_max_gap]
        if alive and frame_boxes:
            cost = np.array([[_cost(tracks[k].box, np.asarray(b, dtype=np.float64), cfg) for b in frame_boxes]
                             for k in alive])
            for row, col in zip(*linear_sum_assignment(cost)):
                if cost[row, col] < NO_MATCH:
                    track = tracks[alive[row]]
                    track.box, track.last, track.size = np.asarray(frame_boxes[col], dtype=np.float64), position, track.size + 1
                    ids[col] = alive[row]
        for j, box in enumerate(frame_boxes):
            if ids[j] < 0:
                tracks.append(_Track(np.asarray(box, dtype=np.float64), position, first=position))
                ids[j] = len(tracks) - 1
        raw.append(ids)
    order = sorted(range(len(tracks)), key=lambda k: (-tracks[k].size, tracks[k].first, k))
    rank = {k: r for r, k in enumerate(order)}
    return [[rank[k] for k in ids] for ids in raw]


def assign_tracks(detections: Sequence[Sequence[Detection]], cfg: FacesConfig) -> None:
    """Set ``Detection.track`` of every detection (per sampled frame, frames in order)."""
    ids = link_tracks([[d.box[:4] for d in frame] for frame in detections], cfg)
    for frame, frame_ids in zip(detections, ids):
        for det, track in zip(frame, frame_ids):
            det.track = track
