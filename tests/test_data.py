"""dfdc.data: faces.csv x folds.csv, the dataset, the per-epoch balanced DDP sampler.

Also home of ``make_tiny_faces``, the tiny crop dataset the training tests share.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.augment import train_transform
from dfdc.preprocess import Prepare
from dfdc.data import BalancedEpochSampler, DataError, FaceDataset, load_face_table, split_fold


def make_tiny_faces(root: Path, n_real: int = 6, fakes_per_real: int = 2, crops_real: int = 4, crops_fake: int = 2,
                    size: int = 32, n_folds: int = 2, seed: int = 0, *, blur: int = 7, frame_step: int = 1,
                    two_person_every: int = 0, shuffle: bool = False) -> tuple[Path, Path]:
    """Write a tiny faces folder (faces.csv + PNG crops) and a folds.csv; returns their paths.

    REAL crops are sharp noise, FAKE crops a ``blur``-blurred, brighter version: learnable in
    a few steps. A fake shares its original's fold, as dfdc.folds guarantees. With
    ``two_person_every`` > 0 the index has a ``track`` column and every such original has a
    second person (track 1) in every other frame, whose fakes inherit both tracks;
    ``shuffle`` writes the index rows in a random order.
    """
    rng = np.random.default_rng(seed)
    faces_dir = root / "faces"
    (faces_dir / "crops").mkdir(parents=True, exist_ok=True)
    rows, folds = [], []
    for r in range(n_real):
        real = f"real{r:03d}.mp4"
        fold = r % n_folds
        two = two_person_every > 0 and r % two_person_every == 0
        videos = [(real, "REAL", "", crops_real)] + [
            (f"fake{r:03d}_{k}.mp4", "FAKE", real, crops_fake) for k in range(fakes_per_real)]
        for video, label, original, crops in videos:
            folds.append({"video": video, "part": 0, "label": label, "original": original, "group": real, "fold": fold})
            for frame in range(crops):
                for face in ([0, 1] if two and frame % 2 == 0 else [0]):
                    image = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
                    if label == "FAKE":
                        image = cv2.GaussianBlur(image, (blur, blur), 0) + 80
                    rel = f"crops/{video[:-4]}_{frame}_{face}.png"
                    cv2.imwrite(str(faces_dir / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    rows.append({"video": video, "part": 0, "label": label, "original": original,
                                 "frame": frame * frame_step, "face": face, "path": rel, "box": "0 0 10 10",
                                 "prob": 0.99, **({"track": face} if two_person_every > 0 else {})})
    table = pd.DataFrame(rows)
    (table.sample(frac=1.0, random_state=0) if shuffle else table).to_csv(faces_dir / "faces.csv", index=False)
    folds_csv = root / "folds" / "folds.csv"
    folds_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(folds).to_csv(folds_csv, index=False)
    return faces_dir, folds_csv


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return make_tiny_faces(tmp_path)


def test_table_joins_folds_and_labels(tiny: tuple[Path, Path]) -> None:
    faces_dir, folds_csv = tiny
    table = load_face_table(faces_dir, folds_csv)
    assert len(table) == 6 * 4 + 12 * 2
    assert set(table["y"]) == {0, 1}
    assert (table.loc[table["label"] == "FAKE", "y"] == 1).all()
    train_idx, val_idx = split_fold(table, 1)
    assert set(table.loc[val_idx, "fold"]) == {1} and set(table.loc[train_idx, "fold"]) == {0}
    assert len(train_idx) + len(val_idx) == len(table)
    folds = pd.read_csv(folds_csv).set_index("video")
    assert table["group"].tolist() == folds.loc[table["video"], "group"].tolist()  # the folds table's group
    pd.read_csv(folds_csv).drop(columns="group").to_csv(folds_csv, index=False)
    assert load_face_table(faces_dir, folds_csv)["group"].tolist() == table["video"].tolist()  # none: the video


def test_datasets_reseed_per_rank_with_one_rule(tiny: tuple[Path, Path]) -> None:
    """Frame crops and track sequences reseed alike (dfdc.data.sample_seed): rank 0 draws what a
    single process draws, other ranks their own streams."""
    from dfdc.sequences import TrackDataset, track_units

    faces_dir, folds_csv = tiny
    table = load_face_table(faces_dir, folds_csv)
    single, rank1 = FaceDataset(table, train_transform(32), seed=5), FaceDataset(table, train_transform(32), seed=5, rank=1)
    assert single.sample_seed(0, 3).entropy == [5, 0, 3]  # rank 0 = a single process: (seed, epoch, row)
    assert any(not torch.equal(single[k][0], rank1[k][0]) for k in range(6))
    units, rows = track_units(table)
    seq = {r: TrackDataset(table, units, rows, 2, train_transform(32), seed=5, rank=r) for r in (0, 1)}
    assert any(not torch.equal(seq[0][(0, u)][0], seq[1][(0, u)][0]) for u in range(6))
    real = int(np.flatnonzero(units["n"].to_numpy() == 4)[0])
    assert any(not np.array_equal(seq[0].crop_rows(e, real), seq[1].crop_rows(e, real)) for e in range(8))  # phase
    assert isinstance(seq[0].files, np.ndarray) and seq[0].files.dtype.kind == "S"  # one bytes array, as FaceDataset


def test_missing_crop_is_skipped_with_warning(tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    faces_dir, folds_csv = tiny
    victim = faces_dir / "crops" / "real000_1_0.png"
    victim.unlink()
    table = load_face_table(faces_dir, folds_csv)
    assert len(table) == 6 * 4 + 12 * 2 - 1
    err = capsys.readouterr().err
    assert "1 crop files" in err and "real000_1_0.png" in err


def test_bad_inputs_give_clear_errors(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    faces_dir, folds_csv = tiny
    with pytest.raises(DataError, match="dfdc folds"):
        load_face_table(faces_dir, tmp_path / "nope.csv")
    pd.read_csv(folds_csv).drop(columns="fold").to_csv(tmp_path / "nofold.csv", index=False)
    with pytest.raises(DataError, match="missing column.*fold"):
        load_face_table(faces_dir, tmp_path / "nofold.csv")
    table = pd.read_csv(faces_dir / "faces.csv")
    table.loc[0, "label"] = "MAYBE"
    table.to_csv(faces_dir / "faces.csv", index=False)
    with pytest.raises(DataError, match="MAYBE"):
        load_face_table(faces_dir, folds_csv)


def test_dataset_items_and_seeded_augmentation(tiny: tuple[Path, Path]) -> None:
    faces_dir, folds_csv = tiny
    table = load_face_table(faces_dir, folds_csv)
    ds = FaceDataset(table, train_transform(32), seed=5)
    x, y, i = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y == int(table.loc[3, "y"]) and i == 3
    again, _, _ = ds[3]
    assert torch.equal(x, again)  # same (seed, epoch, row): same augmentation
    ds.set_epoch(1)
    assert any(not torch.equal(ds[k][0], FaceDataset(table, train_transform(32), seed=5)[k][0]) for k in range(8))
    val = FaceDataset(table, Prepare(32))
    from dfdc.data import read_rgb
    from dfdc.preprocess import prepare

    assert torch.equal(val[0][0], torch.from_numpy(prepare(read_rgb(table.loc[0, "file"]), 32)))  # the predictor's path
    (faces_dir / table.loc[0, "path"]).write_bytes(b"not a png")
    with pytest.raises(DataError, match=str(table.loc[0, "path"])):
        val[0]


def test_balanced_sampler_per_epoch_and_disjoint_shards() -> None:
    labels = np.array([0] * 10 + [1] * 40)
    indices = np.arange(50)
    sampler = BalancedEpochSampler(labels, indices, seed=3)
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert {e for e, _ in keys} == {epoch}  # each key carries its epoch (persistent workers)
        draw = [row for _, row in keys]
        assert len(draw) == 20 == len(set(draw))
        assert sum(labels[draw]) == 10  # 10 FAKE = the REAL count
        assert set(range(10)) <= set(draw)  # every REAL crop, every epoch
        draws.append(draw)
    assert draws[0] != draws[1]  # a new draw each epoch
    sampler.set_epoch(0)
    assert [row for _, row in sampler] == draws[0]  # repeatable
    shards = []
    for rank in range(3):
        s = BalancedEpochSampler(labels, indices, seed=3, num_replicas=3, rank=rank)
        s.set_epoch(1)
        shards.append([row for _, row in s])
    assert all(len(s) == 7 for s in shards)  # 20 padded to 21
    union = [i for s in shards for i in s]
    assert set(union) == set(draws[1])
    assert len(set(shards[0]) & set(shards[1])) == 0 and len(set(shards[1]) & set(shards[2])) == 0
    with pytest.raises(DataError, match="one class"):
        BalancedEpochSampler(labels, np.arange(10), seed=0)


def test_augmentation_steps_draw_independently(tmp_path: Path) -> None:
    """Each step of the pipeline must decide for itself: two p=0.5 flips agree about half
    the time, not always (a per-sample seed shared by every step would make them agree)."""
    import albumentations as A
    import cv2

    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = 255  # the flips move this corner pixel
    cv2.imwrite(str(tmp_path / "crop.png"), image)
    n = 200
    table = pd.DataFrame({"file": [str(tmp_path / "crop.png")] * n, "y": [0] * n})
    dataset = FaceDataset(table, A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]), seed=5)
    agree = 0
    for index in range(n):
        out = dataset[index][0]
        flipped_h = bool(out[:, -1].any())
        flipped_v = bool(out[-1, :].any())
        agree += flipped_h == flipped_v
    assert 60 < agree < 140, agree
    again = FaceDataset(table, A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]), seed=5)
    assert all(np.array_equal(dataset[i][0], again[i][0]) for i in range(10))  # still seeded


def test_bounded_epochs_draw_fresh_balanced_samples() -> None:
    labels = np.array([0] * 10 + [1] * 40)
    sampler = BalancedEpochSampler(labels, np.arange(50), seed=3, samples=12)
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        draw = [row for _, row in sampler]
        assert len(draw) == 12 == len(set(draw)) and sum(labels[draw]) == 6  # 6 REAL + 6 FAKE, no repeat
        draws.append(draw)
    assert draws[0] != draws[1]  # a fresh sample every epoch
    big = BalancedEpochSampler(labels, np.arange(50), seed=3, samples=30)  # 15 REAL from 10: repeats
    draw = [row for _, row in big]
    assert len(draw) == 30 and sum(labels[draw]) == 15 and set(range(10)) <= set(draw)
    ranks = [BalancedEpochSampler(labels, np.arange(50), seed=3, num_replicas=2, rank=r, samples=12) for r in (0, 1)]
    assert all(len(s) == 6 for s in ranks)
    assert sorted(row for s in ranks for _, row in s) == sorted(draws[0])  # the same draw, sharded


def test_each_rank_has_its_own_augmentation_stream(tiny: tuple[Path, Path]) -> None:
    faces_dir, folds_csv = tiny
    table = load_face_table(faces_dir, folds_csv)
    single = FaceDataset(table, train_transform(32), seed=5)
    rank0 = FaceDataset(table, train_transform(32), seed=5, rank=0)
    rank1 = FaceDataset(table, train_transform(32), seed=5, rank=1)
    keys = [(2, k) for k in range(12)]
    assert all(torch.equal(single[k][0], rank0[k][0]) for k in keys)  # rank 0 = one process
    assert any(not torch.equal(rank0[k][0], rank1[k][0]) for k in keys)
    assert rank0.sample_seed(2, 3).entropy != rank1.sample_seed(2, 3).entropy
    single.set_epoch(2)
    assert torch.equal(single[3][0], single[(2, 3)][0])  # a plain row uses set_epoch's epoch


def test_index_order_does_not_change_the_table_or_its_fingerprint(tiny: tuple[Path, Path]) -> None:
    from dfdc.data import load_training_data

    faces_dir, folds_csv = tiny
    first = load_training_data(faces_dir, folds_csv)
    index = pd.read_csv(faces_dir / "faces.csv")
    index.sample(frac=1.0, random_state=0).to_csv(faces_dir / "faces.csv", index=False)  # e.g. workers' order
    again = load_training_data(faces_dir, folds_csv)
    pd.testing.assert_frame_equal(first.table, again.table)
    assert first.fingerprints == again.fingerprints
    index.iloc[:-1].to_csv(faces_dir / "faces.csv", index=False)  # one crop fewer: another index
    fewer = load_training_data(faces_dir, folds_csv)
    assert fewer.fingerprints["faces"]["sha256"] != first.fingerprints["faces"]["sha256"]
    assert fewer.fingerprints["faces"]["rows"] == first.fingerprints["faces"]["rows"] - 1
    assert fewer.fingerprints["folds"] == first.fingerprints["folds"]
    files = np.asarray(FaceDataset(first.table, Prepare(32)).files)
    assert files.dtype.kind == "S"  # one numpy bytes array, not a list of Python strings
