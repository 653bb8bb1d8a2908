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

from dfdc.config import TrainConfig, warn
from dfdc.faceindex import FILLED, INDEX, parse_landmarks, read_index
from dfdc.io import read_table

LABELS = {"REAL": 0, "FAKE": 1}
FOLDS_COLUMNS = ("video", "label", "fold")
FACES_FINGERPRINT = ("video", "label", "frame", "face", "track", "path")  # what training reads of the index
FOLDS_FINGERPRINT = FOLDS_COLUMNS
FOLDS_FIX = "build it with `python -m dfdc folds` (make folds)"
SEED_MODULUS = 2**32  # numpy / albumentations seeds are 32-bit
CROP_CHECK_SAMPLE = 1000  # crop files stat'ed at start-up (a seeded sample; all of them only on a miss)


class DataError(ValueError):
    """Training inputs (faces.csv, folds.csv, crops) that cannot be used."""


def read_folds_table(folds_csv: Path) -> pd.DataFrame:
    """``folds.csv`` as training reads it (``DataError`` naming the file and the fix)."""
    return read_table(Path(folds_csv), FOLDS_COLUMNS, error=DataError, fix=FOLDS_FIX, what="folds table",
                      dtype={"video": str, "label": str, "group": str, "original": str})


def folds_fingerprint(folds_csv: Path) -> dict[str, Any]:
    """The fingerprint training records of a folds table (``fingerprint``), e.g. for
    ``dfdc calibrate`` to check that a run's folds are the ones it is given."""
    return fingerprint(read_folds_table(folds_csv), FOLDS_FINGERPRINT, folds_csv)


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


def missing_crop_files(files: np.ndarray) -> np.ndarray:
    """Mask of the crop ``files`` that do not exist, without stat'ing 1.7 M files when none is
    missing: a seeded sample of ``CROP_CHECK_SAMPLE`` is stat'ed, all of them only on a miss."""
    files = np.asarray(files)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(files), size=min(CROP_CHECK_SAMPLE, len(files)), replace=False)
    if all(os.path.isfile(files[i]) for i in sample):
        return np.zeros(len(files), bool)
    return np.fromiter((not os.path.isfile(f) for f in files), dtype=bool, count=len(files))


def _check_crop_files(table: pd.DataFrame, index_path: Path) -> pd.DataFrame:
    """Drop (with a warning) the rows whose crop file is missing (``missing_crop_files``)."""
    missing = missing_crop_files(table["file"].to_numpy())
    if not missing.any():
        return table
    first = table.loc[missing, "file"].iloc[0]
    warn(f"{int(missing.sum())} crop files listed in {index_path} are missing (first: {first}); "
         "skipped (rerun `dfdc faces` to rebuild them)")
    return table[~missing]


def load_training_data(faces_dir: Path, folds_csv: Path) -> TrainingData:
    """The faces index (``dfdc.faceindex.read_index``: canonical order, defaults filled) joined
    with folds.csv on ``video``; adds ``fold``, ``group`` (the folds table's group of the
    video: what keeps a fake with its original, or an actor in one fold; the video itself when
    the table has no group column), ``y`` (0/1) and ``file`` (absolute path).

    Videos without a fold are dropped with a warning, and so are crops whose file is missing
    (see ``missing_crop_files``). The result has a fresh 0..n-1 index (the "row index" the
    dataset returns).
    """
    faces_dir = Path(faces_dir)
    index_path = faces_dir / INDEX
    table = read_index(faces_dir, error=DataError)
    folds = read_folds_table(folds_csv)
    file_columns = table.drop(columns=table.attrs.get(FILLED, []))  # the fingerprint is of the file's content
    prints = {"faces": fingerprint(file_columns, FACES_FINGERPRINT, index_path),
              "folds": fingerprint(folds, FOLDS_FINGERPRINT, folds_csv)}
    per_video = folds.drop_duplicates("video").set_index("video")
    table["fold"] = table["video"].map(per_video["fold"])
    unassigned = table["fold"].isna()
    if unassigned.all():
        raise DataError(f"no video of {index_path} is in {folds_csv}; were both built from the same data? "
                        "(a new split: `python -m dfdc folds --data DATA`, make folds)")
    if unassigned.any():
        warn(f"{int(unassigned.sum())} crops of {table.loc[unassigned, 'video'].nunique()} videos have no fold "
              f"in {folds_csv}; skipped (rebuild the folds to include them)")
        table = table[~unassigned]
    table["fold"] = table["fold"].astype(int)
    table["group"] = (table["video"].map(per_video["group"]).fillna(table["video"]) if "group" in per_video.columns
                      else table["video"])
    table["y"] = table["label"].map(LABELS).astype(int)
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


def file_array(table: pd.DataFrame) -> np.ndarray:
    """The ``file`` column as one contiguous numpy bytes array: loader workers share its pages
    instead of touching the reference counts of 1.7 M Python strings (copy-on-write copies of
    all of them). Read an entry with ``.decode("utf-8")``."""
    return np.array([f.encode("utf-8") for f in table["file"]], dtype=np.bytes_)


def sample_seed(seed: int | None, epoch: int, index: int, rank: int = 0) -> np.random.SeedSequence:
    """The seed of one sample's random draws: (seed, epoch, index), plus the rank when > 0, so
    DDP ranks never share a stream while rank 0 draws exactly what a single process draws."""
    return np.random.SeedSequence([int(seed or 0), int(epoch), int(index)] + ([int(rank)] if rank else []))


def is_random_pipeline(transform: Any) -> bool:
    """An albumentations pipeline (random, reseedable) rather than ``dfdc.preprocess.Prepare``."""
    return hasattr(transform, "set_random_state")


def reseed(transform: Any, seq: np.random.SeedSequence) -> None:
    """Reseed an albumentations pipeline from ``seq``: one generator shared by every step, so
    the steps draw one after another from one stream -- independent of each other
    (``set_random_seed`` would give each step the same seed, so all p=0.5 steps would fire
    together) and of which loader worker reads the sample. ``Prepare`` is left alone."""
    if is_random_pipeline(transform):
        py_seed = int(seq.generate_state(1)[0]) % SEED_MODULUS
        transform.set_random_state(np.random.default_rng(seq), random.Random(py_seed))


def eval_batch_size(cfg: TrainConfig) -> int:
    """Batch of the passes without gradients (validation, frozen features): ``val_batch_size``,
    or 2 x ``batch_size`` (no gradients to hold)."""
    return cfg.val_batch_size or 2 * cfg.batch_size


class KeyedDataset(Dataset):
    """Samples with labels, read by ``(epoch, index)`` keys (a ``BalancedEpochSampler``'s) or a
    plain index (then the epoch of ``set_epoch``); ``seed`` and ``rank`` seed each sample's
    augmentation (``sample_seed``). Shared by ``FaceDataset`` and the track datasets."""

    def __init__(self, labels: np.ndarray, seed: int | None, rank: int) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed = seed
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain-index keys (a sampler's ``(epoch, index)`` keys carry their own)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def key(self, key: tuple[int, int] | int) -> tuple[int, int]:
        """``(epoch, index)`` of a sample key."""
        return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))


class FaceDataset(KeyedDataset):
    """Face crops of ``table`` (from ``load_training_data``) -> (uint8 tensor, label 0/1, row index).

    ``transform`` is an albumentations Compose (``dfdc.augment.train_transform``) or
    ``dfdc.preprocess.Prepare`` (validation); with ``seed`` set it is reseeded per sample
    from (seed, epoch, row), and on DDP ranks other than 0 also from the rank, so ranks never
    share an augmentation stream while rank 0 draws exactly what a single process draws.
    A key is ``(epoch, row)`` (the sampler's) or a row (then the epoch of ``set_epoch``).
    """

    def __init__(self, table: pd.DataFrame, transform: Callable[..., Any], seed: int | None = None,
                 rank: int = 0) -> None:
        super().__init__(table["y"].to_numpy(dtype=np.int64), seed, rank)
        self.files = file_array(table)
        self.transform = transform
        # crop landmarks for a transform that reads them (dfdc.augment.FaceAugment); "" = none
        self.landmarks = (table["landmarks"].fillna("").astype(str).to_numpy()
                          if getattr(transform, "uses_landmarks", False) and "landmarks" in table.columns else None)

    def sample_seed(self, epoch: int, index: int) -> np.random.SeedSequence:
        """The seed of one sample's augmentation (``sample_seed``: seed, epoch, row[, rank])."""
        return sample_seed(self.seed, epoch, index, self.rank)

    def read(self, index: int) -> np.ndarray:
        """Crop ``index`` as an RGB uint8 image."""
        return read_rgb(self.files[index].decode("utf-8"))

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int, int]:
        epoch, index = self.key(key)
        image = self.read(index)
        if self.seed is not None:
            reseed(self.transform, self.sample_seed(epoch, index))
        if getattr(self.transform, "uses_landmarks", False):
            points = parse_landmarks(self.landmarks[index]) if self.landmarks is not None else None
            return self.transform(image=image, landmarks=points)["image"], int(self.labels[index]), index
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

    def shard_draw(self) -> np.ndarray:
        """This rank's rows of the epoch's draw (padded so every rank has ``len(self)``)."""
        draw = self.epoch_draw()
        total = len(self) * self.num_replicas
        if total > len(draw):
            draw = np.concatenate([draw, draw[: total - len(draw)]])
        return draw[self.rank::self.num_replicas]

    def keys(self, limit: int | None = None) -> list[tuple[int, int]]:
        """The first ``limit`` (default all) ``(epoch, row)`` keys this rank yields this epoch."""
        return [(self.epoch, row) for row in self.shard_draw()[:limit].tolist()]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, row) for row in self.shard_draw().tolist())


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
