"""Face tracks as the unit of sequence models (``model.arch`` lstm / gru): which crops of a
track a model reads, and the torch datasets over tracks.

A unit is one (video, track) of the faces table (``dfdc.tracks``: the same person across
the video's sampled frames), its crops in frame order. Every sequence a model reads --
REAL or FAKE, training, validation or prediction -- has exactly ``sequence.seq_len``
frames, so the length can never tell the label. The rule (``frame_positions``):

- ``seq_len`` positions evenly spaced over the track's n crops with a phase:
  ``floor((k + phase) * n / seq_len)``, k = 0 .. seq_len - 1. With n >= seq_len they are
  distinct and regularly spaced (stride n / seq_len) for both classes -- a random subset
  would space REAL tracks (40 crops in the recipe) irregularly and FAKE tracks (8 crops)
  regularly, a cue a recurrent model could learn. Training draws the phase at random per
  sample (seeded by seed, epoch, unit); validation and prediction use 0.5 (centred).
- A track with fewer than ``seq_len`` crops repeats them evenly (the same formula).
- Training skips tracks with fewer than ``sequence.min_len`` crops (0 = ``seq_len``: no
  repeated frames in training at all, so repetition cannot become a class cue where FAKE
  videos keep fewer crops than REAL ones). Validation and prediction read a video as the
  predictor does (``select_tracks``): every track with at least ``min_len`` crops, else the
  video's longest track, so every video with a face gets a prediction.

The per-video P(FAKE) is ``sequence.aggregation`` over its tracks' P(FAKE) (``max`` by
default: one swapped face makes the video FAKE; ``dfdc.aggregate``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from dfdc.config import Config, ConfigError, SequenceConfig, warn
from dfdc.data import KeyedDataset, file_array, is_random_pipeline, read_rgb, reseed, sample_seed

UNIT_COLUMNS = ("video", "track", "label", "y", "fold", "n")  # one row per (video, track)
EVAL_PHASE = 0.5  # validation and prediction: positions centred in their strides
MODES = ("frozen", "finetune")
PHASE_STREAM = 1  # the frame phase's draw: a stream of its own beside the augmentation's


def min_length(cfg: SequenceConfig) -> int:
    """The fewest crops a track needs to be read (``min_len``, 0 = ``seq_len``)."""
    return cfg.min_len or cfg.seq_len


def check_track_settings(cfg: SequenceConfig) -> None:
    """The ``sequence`` section: lengths and mode, with a clear error."""
    if cfg.seq_len < 1:
        raise ConfigError(f"sequence.seq_len={cfg.seq_len}: must be at least 1")
    if not 0 <= cfg.min_len <= cfg.seq_len:
        raise ConfigError(f"sequence.min_len={cfg.min_len}: use 0 (= seq_len) or 1 .. seq_len ({cfg.seq_len})")
    if cfg.mode not in MODES:
        raise ConfigError(f"sequence.mode={cfg.mode!r}: use one of {', '.join(MODES)}")


def check_frozen_trainable(cfg: Config) -> None:
    """``model.trainable`` (which backbone layers train) means nothing to a frozen backbone:
    refused rather than silently trained as ``head``."""
    if cfg.sequence.mode == "frozen" and str(cfg.model.trainable).strip().lower() != "all":
        raise ConfigError(f"model.trainable={cfg.model.trainable!r} trains part of the backbone, but "
                          "sequence.mode=frozen keeps the whole backbone frozen (only the recurrent head trains on "
                          "cached features): set sequence.mode=finetune to train the top of the backbone, or leave "
                          "model.trainable=all")


def frame_positions(n: int, seq_len: int, phase: float = EVAL_PHASE) -> np.ndarray:
    """``seq_len`` crop positions (0 .. n-1, in order) of a track of ``n`` crops (rule above)."""
    if n < 1:
        raise ValueError("a track needs at least one crop")
    pos = np.floor((np.arange(seq_len) + float(phase)) * n / seq_len).astype(np.int64)
    return np.minimum(pos, n - 1)


def select_tracks(lengths: Sequence[int], min_len: int) -> list[int]:
    """Which of a video's tracks (by their crop counts) are read: those with at least
    ``min_len`` crops, else the longest one (the first of equals)."""
    keep = [i for i, n in enumerate(lengths) if n >= min_len]
    if keep or not len(lengths):
        return keep
    return [int(np.argmax(lengths))]


class Ragged:
    """Per-unit row arrays as one flat array and offsets: ``rows[i]`` is unit i's rows (a
    view). One array instead of 150k small ones on DFDC: loader workers share its pages."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat, self.offsets = np.asarray(flat, dtype=np.int64), np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def track_units(table: pd.DataFrame) -> tuple[pd.DataFrame, Ragged]:
    """One unit per (video, track) of a faces table (``dfdc.data.load_training_data`` rows,
    whose ``track`` column ``dfdc.faceindex.read_index`` always fills): ``units``
    (``UNIT_COLUMNS``, index 0..n-1, sorted by video and track) and, per unit, the table rows
    of its crops in frame order (``Ragged``). One sort, no Python loop over the groups."""
    order = pd.DataFrame({"video": table["video"].to_numpy(), "track": table["track"].to_numpy(dtype=np.int64),
                          "frame": table["frame"].to_numpy(), "pos": np.arange(len(table))})
    order = order.sort_values(["video", "track", "frame", "pos"], kind="mergesort")
    flat = order["pos"].to_numpy(dtype=np.int64)
    video, track = order["video"].to_numpy(), order["track"].to_numpy()
    new = np.ones(len(flat), bool)
    new[1:] = (video[1:] != video[:-1]) | (track[1:] != track[:-1])
    starts = np.flatnonzero(new)
    offsets = np.append(starts, len(flat))
    first = table.iloc[flat[starts]]
    units = pd.DataFrame({"video": video[starts], "track": track[starts].astype(int),
                          "label": first["label"].to_numpy(), "y": first["y"].to_numpy(dtype=int),
                          "fold": first["fold"].to_numpy(dtype=int), "n": np.diff(offsets).astype(int)},
                         columns=list(UNIT_COLUMNS))
    return units, Ragged(flat, offsets)


def training_units(units: pd.DataFrame, indices: np.ndarray, cfg: SequenceConfig) -> np.ndarray:
    """The training part's units with at least ``min_len`` crops (the rest are counted and skipped)."""
    indices = np.asarray(indices, dtype=np.int64)
    short = units.loc[indices, "n"].to_numpy() < min_length(cfg)
    if short.any():
        per_class = units.loc[indices[short]].groupby("label").size().to_dict()
        warn(f"{int(short.sum())} training tracks have fewer than {min_length(cfg)} crops (sequence.min_len); "
             f"skipped ({', '.join(f'{k}: {v}' for k, v in sorted(per_class.items()))})")
    return indices[~short]


def validation_units(units: pd.DataFrame, indices: np.ndarray, cfg: SequenceConfig) -> np.ndarray:
    """The validation part's units read as the predictor reads a video (``select_tracks``,
    vectorised: the tracks with at least ``min_len`` crops, else the video's longest, the
    first of equals)."""
    part = units.loc[np.sort(np.asarray(indices, dtype=np.int64))]
    if part.empty:
        return np.zeros(0, dtype=np.int64)
    long = part["n"] >= min_length(cfg)
    has_long = long.groupby(part["video"]).transform("any")
    longest = part.groupby("video", sort=False)["n"].idxmax()  # the first of equals, in track order
    fallback = longest[longest.index.isin(part.loc[~has_long, "video"])].to_numpy()
    return np.sort(np.concatenate([part.index[long].to_numpy(), fallback]).astype(np.int64))


def _phase(seed: int | None, epoch: int, index: int, rank: int = 0) -> float:
    """The frame phase of a training sample (``sample_seed`` and its own stream), 0.5 unseeded."""
    if seed is None:
        return EVAL_PHASE
    entropy = sample_seed(seed, epoch, index, rank).entropy
    return float(np.random.default_rng([*entropy, PHASE_STREAM]).random())


class _TrackDatasetBase(KeyedDataset):
    def __init__(self, units: pd.DataFrame, rows: Ragged, seq_len: int, seed: int | None, rank: int = 0) -> None:
        super().__init__(units["y"].to_numpy(dtype=np.int64), seed, rank)
        self.rows = rows
        self.seq_len = int(seq_len)

    def crop_rows(self, epoch: int, index: int) -> np.ndarray:
        """The table rows of the ``seq_len`` crops this sample reads (random phase when seeded)."""
        rows = self.rows[index]
        return rows[frame_positions(len(rows), self.seq_len, _phase(self.seed, epoch, index, self.rank))]


class TrackDataset(_TrackDatasetBase):
    """Tracks as images: ``(uint8 seq_len x 3 x S x S, label 0/1, unit index)``.

    ``transform``: an albumentations pipeline (``dfdc.augment.train_transform``; the same
    draw for every frame of a sequence, so a flip or shift does not flicker) or
    ``dfdc.preprocess.Prepare``; with ``seed`` set, reseeded per (seed, epoch, unit[, rank])
    as ``dfdc.data.FaceDataset`` is (``sample_seed``: DDP ranks draw their own streams) and
    the frame phase drawn at random (``frame_positions``). The crop files are one numpy bytes
    array (``dfdc.data.file_array``), as in ``FaceDataset``."""

    def __init__(self, table: pd.DataFrame, units: pd.DataFrame, rows: Ragged, seq_len: int,
                 transform: Callable[..., Any], seed: int | None = None,
                 read: Callable[[str], np.ndarray] | None = None, rank: int = 0) -> None:
        super().__init__(units, rows, seq_len, seed, rank)
        self.files = file_array(table)
        self.transform = transform
        self.read = read or read_rgb

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int, int]:
        epoch, index = self.key(key)
        frames = [self.read(self.files[r].decode("utf-8")) for r in self.crop_rows(epoch, index)]
        if self.seed is not None:
            reseed(self.transform, sample_seed(self.seed, epoch, index, self.rank))
        return frames_to_tensor(self.transform, frames), int(self.labels[index]), index


def frames_to_tensor(transform: Callable[..., Any], frames: list[np.ndarray]) -> torch.Tensor:
    """A sequence of RGB crops through one transform: ``uint8`` T x 3 x S x S. An albumentations
    pipeline draws once for all frames (``images=``); ``Prepare`` maps each frame."""
    if is_random_pipeline(transform):  # albumentations Compose
        same = len({f.shape for f in frames}) == 1
        if same:
            return transform(images=np.stack(frames))["images"]
    return torch.stack([transform(image=f)["image"] for f in frames])


class TrackFeatureDataset(_TrackDatasetBase):
    """Tracks as cached backbone features (frozen mode): ``(float32 seq_len x D, label, unit index)``."""

    def __init__(self, features: np.ndarray, units: pd.DataFrame, rows: Ragged, seq_len: int,
                 seed: int | None = None, rank: int = 0) -> None:
        super().__init__(units, rows, seq_len, seed, rank)
        self.features = features

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int, int]:
        epoch, index = self.key(key)
        x = torch.from_numpy(np.ascontiguousarray(self.features[self.crop_rows(epoch, index)], dtype=np.float32))
        return x, int(self.labels[index]), index


def video_sequences(tracks: np.ndarray, frames: np.ndarray, cfg: SequenceConfig) -> list[np.ndarray]:
    """The predictor's side: a video's faces (their track and frame ids, as a worker returns
    them) -> per read track, the face indices of its ``seq_len`` frames (``select_tracks``,
    then ``frame_positions`` at the centred phase)."""
    tracks, frames = np.asarray(tracks), np.asarray(frames)
    ids = sorted(set(tracks.tolist()))
    members = [np.flatnonzero(tracks == t) for t in ids]
    members = [m[np.argsort(frames[m], kind="stable")] for m in members]
    chosen = select_tracks([len(m) for m in members], min_length(cfg))
    return [members[i][frame_positions(len(members[i]), cfg.seq_len)] for i in chosen]
