"""Torch datasets and samplers over the face crops (``faces.csv`` joined with ``folds.csv``).

- ``load_face_table(faces_dir, folds_csv)``: one row per crop with its video's fold; rows
  whose crop file is missing are dropped with a warning count (a partial or damaged faces
  folder never stops training).
- ``FaceDataset``: ``(uint8 image tensor 3 x S x S, label 0/1, row index)``; the model
  normalises on its device (``dfdc.preprocess``); augmentation is reseeded per
  (seed, epoch, row), so a sample's augmentation does not depend on the worker that loads it
  and a resumed run draws exactly what an uninterrupted one would.
- ``BalancedEpochSampler``: every epoch a new class-balanced draw (each class subsampled to
  the smallest class's count, i.e. FAKE crops down to the REAL count on DFDC), shuffled with a
  per-epoch seed, then sharded disjointly across DDP ranks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
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
SEED_MODULUS = 2**32  # numpy / albumentations seeds are 32-bit


class DataError(ValueError):
    """Training inputs (faces.csv, folds.csv, crops) that cannot be used."""


def _read_csv(path: Path, needed: tuple[str, ...], what: str, fix: str) -> pd.DataFrame:
    return read_table(path, needed, error=DataError, fix=fix, what=what, dtype={"video": str, "label": str, "path": str})


def load_face_table(faces_dir: Path, folds_csv: Path) -> pd.DataFrame:
    """faces.csv joined with folds.csv on ``video``; adds ``y`` (0/1), ``file`` (absolute path).

    Videos without a fold and rows whose crop file is missing are dropped with a warning.
    The result has a fresh 0..n-1 index (the "row index" the dataset returns).
    """
    faces_dir = Path(faces_dir)
    faces = _read_csv(faces_dir / "faces.csv", ("video", "label", "frame", "face", "path"), "faces table",
                      "build it with `python -m dfdc faces` (make faces)")
    folds = _read_csv(Path(folds_csv), FOLDS_COLUMNS, "folds table", "build it with `python -m dfdc folds` (make folds)")
    bad = sorted(set(faces["label"].dropna()) - set(LABELS)) + (["<empty>"] if faces["label"].isna().any() else [])
    if bad:
        raise DataError(f"{faces_dir / 'faces.csv'}: labels must be REAL or FAKE, found {', '.join(map(str, bad))}; rebuild it")
    fold_of = folds.drop_duplicates("video").set_index("video")["fold"]
    table = faces.copy()
    table["fold"] = table["video"].map(fold_of)
    unassigned = table["fold"].isna()
    if unassigned.all():
        raise DataError(f"no video of {faces_dir / 'faces.csv'} is in {folds_csv}; were both built from the same data?")
    if unassigned.any():
        warn(f"{int(unassigned.sum())} crops of {table.loc[unassigned, 'video'].nunique()} videos have no fold "
              f"in {folds_csv}; skipped (rebuild the folds to include them)")
        table = table[~unassigned]
    table["fold"] = table["fold"].astype(int)
    table["y"] = table["label"].map(LABELS).astype(int)
    if "track" not in table.columns:  # built before face tracks: the in-frame rank is the best guess
        table["track"] = table["face"]
    table["file"] = [str(faces_dir / p) for p in table["path"]]
    exists = np.fromiter((Path(f).is_file() for f in table["file"]), dtype=bool, count=len(table))
    if not exists.all():
        first = table.loc[~exists, "file"].iloc[0]
        warn(f"{int((~exists).sum())} crop files listed in {faces_dir / 'faces.csv'} are missing (first: {first}); "
              "skipped (rerun `dfdc faces` to rebuild them)")
        table = table[exists]
    if table.empty:
        raise DataError(f"no usable crops under {faces_dir}; rebuild with `python -m dfdc faces`")
    return table.reset_index(drop=True)


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
    """Face crops of ``table`` (from ``load_face_table``) -> (uint8 tensor, label 0/1, row index).

    ``transform`` is an albumentations Compose (``dfdc.augment.train_transform``) or
    ``dfdc.preprocess.Prepare`` (validation); with ``seed`` set it is reseeded per sample
    from (seed, epoch, row) so draws are repeatable across workers and resumed runs. Call
    ``set_epoch`` before each epoch (workers are re-created every epoch and see the value).
    """

    def __init__(self, table: pd.DataFrame, transform: Callable[..., Any], seed: int | None = None) -> None:
        self.files = table["file"].tolist()
        self.labels = table["y"].to_numpy(dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = read_rgb(self.files[index])
        if self.seed is not None and hasattr(self.transform, "set_random_state"):
            # One generator shared by every step of the pipeline, so the steps draw one after
            # another from one stream: independent of each other (``set_random_seed`` would give
            # each step the same seed, so all p=0.5 steps would fire together) and of which
            # loader worker reads the sample.
            seq = np.random.SeedSequence([self.seed, self.epoch, int(index)])
            py_seed = int(seq.generate_state(1)[0]) % SEED_MODULUS
            self.transform.set_random_state(np.random.default_rng(seq), random.Random(py_seed))
        return self.transform(image=image)["image"], int(self.labels[index]), int(index)


class BalancedEpochSampler(Sampler[int]):
    """Per-epoch class-balanced draw over ``indices``, sharded across ``num_replicas`` ranks.

    Every epoch each class is subsampled (without replacement) to the smallest class's count,
    with a generator seeded by (seed, epoch); the draw is shuffled and padded (by repeating
    its start) to a multiple of ``num_replicas``; rank r takes positions r, r + R, r + 2R, ...
    So all ranks agree on the epoch's draw and their shards are disjoint. Call ``set_epoch``.
    """

    def __init__(self, labels: np.ndarray, indices: np.ndarray, seed: int,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels)[self.indices]
        self.classes = sorted(set(self.labels.tolist()))
        if len(self.classes) < 2:
            raise DataError("the training part of this fold holds one class only; a balanced draw needs REAL and FAKE crops")
        self.per_class = min(int((self.labels == c).sum()) for c in self.classes)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def epoch_size(self) -> int:
        """Samples in one epoch's draw over all ranks (before padding)."""
        return self.per_class * len(self.classes)

    def __len__(self) -> int:
        return -(-self.epoch_size // self.num_replicas)

    def epoch_draw(self) -> np.ndarray:
        """This epoch's shuffled, balanced draw (all ranks, unpadded)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = [rng.choice(self.indices[self.labels == c], size=self.per_class, replace=False) for c in self.classes]
        return rng.permutation(np.concatenate(parts))

    def __iter__(self) -> Iterator[int]:
        draw = self.epoch_draw()
        total = len(self) * self.num_replicas
        if total > len(draw):
            draw = np.concatenate([draw, draw[: total - len(draw)]])
        return iter(draw[self.rank::self.num_replicas].tolist())


def shard(indices: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s disjoint share of ``indices`` (no padding; for validation)."""
    return np.asarray(indices)[rank::num_replicas]
