"""Torch datasets and samplers over the face crops (the faces index joined with ``folds.csv``).

- ``load_training_data(faces_dir, folds_csv)``: one row per crop with its video's fold, in a
  canonical order (video, frame, face: the same table whatever order the index was written
  in), plus fingerprints of both inputs (a run records them; resuming on other inputs is
  refused). Crop files are not stat'ed one by one (1.7 M on DFDC): a seeded sample is, and
  only when one of those is missing is every file checked and the missing ones dropped.
- ``FaceDataset``: ``(uint8 image tensor 3 x S x S, label 0/1, row index)``; the model
  normalises on its device (``dfdc.preprocess``). The file list is one numpy bytes array,
  not a list of Python strings that every loader worker would copy page by page.
  A sample key is ``(epoch, row)`` (what ``BalancedEpochSampler`` yields) or a plain row;
  augmentation is reseeded per (seed, epoch, row[, rank]), so a sample's augmentation does
  not depend on the worker that loads it, persistent workers need no epoch update, and a
  resumed run draws exactly what an uninterrupted one would.
- ``BalancedEpochSampler``: every epoch a new class-balanced draw -- the whole balanced set
  (each class subsampled to the smallest class's count, i.e. FAKE crops down to the REAL
  count on DFDC) or a bounded number of samples (``train.steps_per_epoch``), half per
  class -- shuffled with a per-epoch seed, then sharded disjointly across DDP ranks.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from dfdc.config import warn
from dfdc.io import read_table

LABELS = {"REAL": 0, "FAKE": 1}
FACES_COLUMNS = ("video", "part", "label", "original", "frame", "face", "track", "path", "box", "prob")
FOLDS_COLUMNS = ("video", "label", "fold")
ROW_ORDER = ["video", "frame", "face"]  # the canonical order of the training table (unique per crop)
FACES_FINGERPRINT = ("video", "label", "frame", "face", "track", "path")  # what training reads of the index
FOLDS_FINGERPRINT = FOLDS_COLUMNS
SEED_MODULUS = 2**32  # numpy / albumentations seeds are 32-bit
CROP_CHECK_SAMPLE = 1000  # crop files stat'ed at start-up (a seeded sample; all of them only on a miss)


class DataError(ValueError):
    """Training inputs (faces.csv, folds.csv, crops) that cannot be used."""


def _read_csv(path: Path, needed: tuple[str, ...], what: str, fix: str) -> pd.DataFrame:
    return read_table(path, needed, error=DataError, fix=fix, what=what, dtype={"video": str, "label": str, "path": str})


def fingerprint(table: pd.DataFrame, columns: tuple[str, ...], source: Path | str) -> dict[str, Any]:
    """A content fingerprint of ``columns`` of ``table`` in canonical row order (sha256 of
    pandas' per-row hashes): equal tables give equal fingerprints whatever their file order."""
    cols = [c for c in columns if c in table.columns]
    ordered = table[cols].sort_values(cols, kind="mergesort").reset_index(drop=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes()).hexdigest()
    return {"file": str(source), "sha256": digest[:16], "rows": int(len(table)),
            "videos": int(table["video"].nunique())}


@dataclass
class TrainingData:
    """The training table and the fingerprints of the inputs it was made from."""

    table: pd.DataFrame
    fingerprints: dict[str, dict[str, Any]]  # {"faces": ..., "folds": ...} (see ``fingerprint``)


def _check_crop_files(table: pd.DataFrame, index_path: Path) -> pd.DataFrame:
    """Stat a seeded sample of the crop files; on any miss stat all and drop the missing rows."""
    rng = np.random.default_rng(0)
    sample = rng.choice(len(table), size=min(CROP_CHECK_SAMPLE, len(table)), replace=False)
    files = table["file"].to_numpy()
    if all(Path(files[i]).is_file() for i in sample):
        return table
    exists = np.fromiter((Path(f).is_file() for f in files), dtype=bool, count=len(table))
    first = table.loc[~exists, "file"].iloc[0]
    warn(f"{int((~exists).sum())} crop files listed in {index_path} are missing (first: {first}); "
         "skipped (rerun `dfdc faces` to rebuild them)")
    return table[exists]


def load_training_data(faces_dir: Path, folds_csv: Path) -> TrainingData:
    """faces.csv joined with folds.csv on ``video``; adds ``y`` (0/1), ``file`` (absolute path).

    Videos without a fold are dropped with a warning, and so are crops whose file is missing
    (see ``_check_crop_files``). The result is sorted by (video, frame, face) and has a fresh
    0..n-1 index (the "row index" the dataset returns).
    """
    faces_dir = Path(faces_dir)
    index_path = faces_dir / "faces.csv"
    faces = _read_csv(index_path, ("video", "label", "frame", "face", "path"), "faces table",
                      "build it with `python -m dfdc faces` (make faces); after sharded runs "
                      "`python -m dfdc faces --merge`")
    folds = _read_csv(Path(folds_csv), FOLDS_COLUMNS, "folds table", "build it with `python -m dfdc folds` (make folds)")
    bad = sorted(set(faces["label"].dropna()) - set(LABELS)) + (["<empty>"] if faces["label"].isna().any() else [])
    if bad:
        raise DataError(f"{index_path}: labels must be REAL or FAKE, found {', '.join(map(str, bad))}; rebuild it")
    prints = {"faces": fingerprint(faces, FACES_FINGERPRINT, index_path),
              "folds": fingerprint(folds, FOLDS_FINGERPRINT, folds_csv)}
    fold_of = folds.drop_duplicates("video").set_index("video")["fold"]
    table = faces.sort_values(ROW_ORDER, kind="mergesort")
    table["fold"] = table["video"].map(fold_of)
    unassigned = table["fold"].isna()
    if unassigned.all():
        raise DataError(f"no video of {index_path} is in {folds_csv}; were both built from the same data? "
                        "(a new split: `python -m dfdc folds --data DATA`, make folds)")
    if unassigned.any():
        warn(f"{int(unassigned.sum())} crops of {table.loc[unassigned, 'video'].nunique()} videos have no fold "
              f"in {folds_csv}; skipped (rebuild the folds to include them)")
        table = table[~unassigned]
    table["fold"] = table["fold"].astype(int)
    table["y"] = table["label"].map(LABELS).astype(int)
    if "track" not in table.columns:  # built before face tracks: the in-frame rank is the best guess
        table["track"] = table["face"]
    table["file"] = str(faces_dir) + os.sep + table["path"]  # vectorised: 1.7 M rows on DFDC
    table = _check_crop_files(table, index_path)
    if table.empty:
        raise DataError(f"no usable crops under {faces_dir}; rebuild with `python -m dfdc faces`")
    return TrainingData(table.reset_index(drop=True), prints)


def load_face_table(faces_dir: Path, folds_csv: Path) -> pd.DataFrame:
    """The table of ``load_training_data`` alone."""
    return load_training_data(faces_dir, folds_csv).table


def split_fold(table: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training part (fold != k) and the validation part (fold == k)."""
    if fold not in set(table["fold"]):
        raise DataError(f"fold {fold} has no crops; folds present: {sorted(set(table['fold']))}")
    is_val = (table["fold"] == fold).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def read_rgb(path: str) -> np.ndarray:
    """An RGB uint8 image; a clear error naming the file when it cannot be decoded."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"crop file {path} is missing or not a readable image; rerun `dfdc faces` to rebuild it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FaceDataset(Dataset):
    """Face crops of ``table`` (from ``load_training_data``) -> (uint8 tensor, label 0/1, row index).

    ``transform`` is an albumentations Compose (``dfdc.augment.train_transform``) or
    ``dfdc.preprocess.Prepare`` (validation); with ``seed`` set it is reseeded per sample
    from (seed, epoch, row), and on DDP ranks other than 0 also from the rank, so ranks never
    share an augmentation stream while rank 0 draws exactly what a single process draws.
    A key is ``(epoch, row)`` (the sampler's) or a row (then the epoch of ``set_epoch``).
    """

    def __init__(self, table: pd.DataFrame, transform: Callable[..., Any], seed: int | None = None,
                 rank: int = 0) -> None:
        # one contiguous bytes array: loader workers share its pages instead of touching the
        # reference counts of 1.7 M Python strings (copy-on-write copies of all of them)
        self.files = np.array([f.encode("utf-8") for f in table["file"]], dtype=np.bytes_)
        self.labels = table["y"].to_numpy(dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain-row keys (a sampler's ``(epoch, row)`` keys carry their own)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def sample_seed(self, epoch: int, index: int) -> np.random.SeedSequence:
        """The seed of one sample's augmentation: (seed, epoch, row), plus the rank when > 0."""
        entropy = [int(self.seed or 0), int(epoch), int(index)] + ([self.rank] if self.rank else [])
        return np.random.SeedSequence(entropy)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int, int]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        image = read_rgb(self.files[index].decode("utf-8"))
        if self.seed is not None and hasattr(self.transform, "set_random_state"):
            # One generator shared by every step of the pipeline, so the steps draw one after
            # another from one stream: independent of each other (``set_random_seed`` would give
            # each step the same seed, so all p=0.5 steps would fire together) and of which
            # loader worker reads the sample.
            seq = self.sample_seed(epoch, index)
            py_seed = int(seq.generate_state(1)[0]) % SEED_MODULUS
            self.transform.set_random_state(np.random.default_rng(seq), random.Random(py_seed))
        return self.transform(image=image)["image"], int(self.labels[index]), index


def _draw(rng: np.random.Generator, pool: np.ndarray, size: int) -> np.ndarray:
    """``size`` items of ``pool``: without replacement, or whole permutations then the rest."""
    if size <= len(pool):
        return rng.choice(pool, size=size, replace=False)
    rounds = [rng.permutation(pool) for _ in range(size // len(pool))]
    return np.concatenate([*rounds, rng.choice(pool, size=size % len(pool), replace=False)])


class BalancedEpochSampler(Sampler[tuple[int, int]]):
    """Per-epoch class-balanced draw over ``indices``, sharded across ``num_replicas`` ranks.

    Every epoch, with a generator seeded by (seed, epoch): with ``samples`` 0 each class is
    subsampled (without replacement) to the smallest class's count; with ``samples`` > 0
    that many are drawn over all ranks, split evenly between the classes (without
    replacement while a class has enough crops). The draw is shuffled and padded (by
    repeating its start) to a multiple of ``num_replicas``; rank r takes positions r, r + R,
    r + 2R, ... So all ranks agree on the epoch's draw and their shards are disjoint.
    Yields ``(epoch, row)`` keys (``FaceDataset`` reads its augmentation seed from them).
    Call ``set_epoch``.
    """

    def __init__(self, labels: np.ndarray, indices: np.ndarray, seed: int,
                 num_replicas: int = 1, rank: int = 0, samples: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if samples < 0:
            raise ValueError(f"samples per epoch must be 0 (the whole balanced draw) or positive, got {samples}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels)[self.indices]
        self.classes = sorted(set(self.labels.tolist()))
        if len(self.classes) < 2:
            raise DataError("the training part of this fold holds one class only; a balanced draw needs REAL and FAKE crops")
        self.per_class = min(int((self.labels == c).sum()) for c in self.classes)
        self.samples = int(samples)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def epoch_size(self) -> int:
        """Samples in one epoch's draw over all ranks (before padding)."""
        return self.samples or self.per_class * len(self.classes)

    def __len__(self) -> int:
        return -(-self.epoch_size // self.num_replicas)

    def epoch_draw(self) -> np.ndarray:
        """This epoch's shuffled, balanced draw of rows (all ranks, unpadded)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.classes)
        sizes = ([self.per_class] * n if not self.samples
                 else [self.samples // n + (i < self.samples % n) for i in range(n)])
        parts = [_draw(rng, self.indices[self.labels == c], k) for c, k in zip(self.classes, sizes)]
        return rng.permutation(np.concatenate(parts))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw = self.epoch_draw()
        total = len(self) * self.num_replicas
        if total > len(draw):
            draw = np.concatenate([draw, draw[: total - len(draw)]])
        return iter([(self.epoch, row) for row in draw[self.rank::self.num_replicas].tolist()])


def shard(indices: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s disjoint share of ``indices`` (no padding; for validation)."""
    return np.asarray(indices)[rank::num_replicas]


def sample_videos(table: pd.DataFrame, rows: np.ndarray, max_videos: int, seed: int) -> np.ndarray:
    """``rows`` restricted to a seeded sample of ``max_videos`` of their videos (0 or enough: all)."""
    videos = np.unique(table["video"].to_numpy()[rows])
    if max_videos <= 0 or max_videos >= len(videos):
        return np.asarray(rows)
    keep = np.random.default_rng(seed).choice(videos, size=max_videos, replace=False)
    return np.asarray(rows)[np.isin(table["video"].to_numpy()[rows], keep)]


def loader_rate(dataset: Dataset, keys: list[Any], min_items: int = 16) -> float:
    """Items/s of ``dataset[key]`` in this process on one torch and OpenCV thread: what one
    loader worker delivers (read + decode + augment). At least ``min_items`` are timed."""
    import time

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        dataset[keys[0]]  # first call: imports, caches
        count, start = 0, time.perf_counter()
        while count < min_items:
            for key in keys:
                dataset[key]
                count += 1
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
