"""dfdc.sequences: face tracks as sequence units, the frame rule, equal lengths per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_data import make_tiny_faces
from torch.utils.data import DataLoader

from dfdc.augment import AUGMENTATIONS, train_transform
from dfdc.config import ConfigError, SequenceConfig
from dfdc.data import BalancedEpochSampler, load_face_table
from dfdc.preprocess import Prepare
from dfdc.sequences import (
    TrackDataset, TrackFeatureDataset, check_track_settings, frame_positions, select_tracks, track_units,
    training_units, validation_units, video_sequences,
)


def make_track_faces(root: Path, n_real: int = 4, fakes_per_real: int = 2, crops_real: int = 12, crops_fake: int = 4,
                     size: int = 24, n_folds: int = 2, two_person_every: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """A faces folder with tracks: REAL videos keep ``crops_real`` frames, FAKE ones
    ``crops_fake`` (the recipe's 40 / 8 imbalance, scaled down); every ``two_person_every``-th
    original has a second person (track 1) seen in half of the frames, whose fakes inherit
    both tracks. REAL crops are noise, FAKE crops blurred and brighter; rows in any order."""
    return make_tiny_faces(root, n_real, fakes_per_real, crops_real, crops_fake, size, n_folds, seed, blur=5,
                           frame_step=3, two_person_every=two_person_every, shuffle=True)


@pytest.fixture
def tracks(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[np.ndarray]]:
    faces_dir, folds_csv = make_track_faces(tmp_path)
    table = load_face_table(faces_dir, folds_csv)
    units, rows = track_units(table)
    return table, units, rows


def test_frame_positions_are_regular_and_pad_evenly() -> None:
    assert frame_positions(12, 4).tolist() == [1, 4, 7, 10]  # centred in strides of 3
    assert frame_positions(12, 4, phase=0.0).tolist() == [0, 3, 6, 9]
    assert frame_positions(4, 4, phase=0.99).tolist() == [0, 1, 2, 3]  # every crop once, whatever the phase
    assert frame_positions(2, 4).tolist() == [0, 0, 1, 1]  # short: each crop repeated evenly, in order
    for n in (1, 3, 7, 40):
        for phase in (0.0, 0.3, 0.99):
            pos = frame_positions(n, 8, phase)
            assert len(pos) == 8 and pos.min() >= 0 and pos.max() < n and (np.diff(pos) >= 0).all()


def test_tracks_are_units_in_frame_order(tracks) -> None:
    table, units, rows = tracks
    assert list(units.columns) == ["video", "track", "label", "y", "fold", "n"]
    two = units[units["video"] == "real000.mp4"]
    assert two["track"].tolist() == [0, 1] and two["n"].tolist() == [12, 6]  # a two-person video: two tracks
    assert units.loc[units["video"] == "fake000_0.mp4", "track"].tolist() == [0, 1]  # a fake inherits both
    for unit, r in zip(units.itertuples(), rows):
        part = table.loc[r]
        assert (part["video"] == unit.video).all() and (part["track"] == unit.track).all()
        assert part["frame"].is_monotonic_increasing and len(r) == unit.n


def test_training_skips_short_tracks_of_both_classes(tracks, capsys) -> None:
    _, units, _ = tracks
    cfg = SequenceConfig(seq_len=4)
    kept = training_units(units, np.arange(len(units)), cfg)
    assert (units.loc[kept, "n"] >= 4).all()
    skipped = set(range(len(units))) - set(kept.tolist())
    assert {units.loc[i, "label"] for i in skipped} == {"FAKE"}  # fake second-person tracks: 2 crops
    assert "fewer than 4 crops" in capsys.readouterr().err
    assert len(training_units(units, np.arange(len(units)), SequenceConfig(seq_len=4, min_len=2))) == len(units)


def test_validation_reads_videos_as_the_predictor_does(tracks) -> None:
    _, units, _ = tracks
    cfg = SequenceConfig(seq_len=8)  # fakes have 4 crops: no track is long enough, the longest is read
    val = validation_units(units, np.arange(len(units)), cfg)
    assert sorted(units.loc[val, "video"]) == sorted(units["video"].unique())  # every video once or more
    fake = units.loc[val][units.loc[val, "video"] == "fake000_0.mp4"]
    assert fake["track"].tolist() == [0]
    real = units.loc[val][units.loc[val, "video"] == "real000.mp4"]
    assert real["track"].tolist() == [0]  # track 1 has 6 < 8 crops while track 0 has 12
    assert select_tracks([3, 5, 5], 6) == [1] and select_tracks([7, 2, 9], 6) == [0, 2] and select_tracks([], 3) == []


def test_sequence_batches_have_equal_length_per_class(tracks) -> None:
    """REAL tracks hold 12 crops, FAKE ones 4 (or 2): every sequence of a batch, REAL or FAKE,
    training or validation, has exactly seq_len frames."""
    table, units, rows = tracks
    for seq_len, min_len in ((4, 0), (6, 2)):  # (6, 2): fakes padded by repetition, reals subsampled
        cfg = SequenceConfig(seq_len=seq_len, min_len=min_len)
        train_units = training_units(units, np.arange(len(units)), cfg)
        ds = TrackDataset(table, units, rows, cfg.seq_len, train_transform(16, "light"), seed=1)
        sampler = BalancedEpochSampler(units["y"].to_numpy(), train_units, seed=0)
        lengths: dict[int, set[int]] = {0: set(), 1: set()}
        for epoch in range(2):
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            for x, y, idx in DataLoader(ds, batch_size=4, sampler=sampler):
                assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (seq_len, 3, 16, 16)
                for label in y.tolist():
                    lengths[label].add(x.shape[1])
        assert lengths == {0: {seq_len}, 1: {seq_len}}
        val = TrackDataset(table, units, rows, cfg.seq_len, Prepare(16))
        assert {val[int(i)][0].shape[0] for i in validation_units(units, np.arange(len(units)), cfg)} == {seq_len}


def test_training_draws_vary_but_repeat_with_the_seed(tracks) -> None:
    table, units, rows = tracks
    real = int(units.index[(units["label"] == "REAL") & (units["n"] == 12)][0])
    ds = TrackDataset(table, units, rows, 4, Prepare(16), seed=3)
    draws = {tuple(ds.crop_rows(epoch, real).tolist()) for epoch in range(12)}
    assert len(draws) > 1  # the phase moves across epochs ...
    frame = table["frame"].to_numpy()
    assert all(np.diff(frame[list(d)]).min() > 0 for d in draws)  # ... frames stay distinct and ordered
    assert (ds[(5, real)][0] == ds[(5, real)][0]).all()  # ... and a key gives the same sample again
    fixed = TrackDataset(table, units, rows, 4, Prepare(16))
    assert {tuple(fixed.crop_rows(epoch, real).tolist()) for epoch in range(5)} == {tuple(rows[real][[1, 4, 7, 10]])}


@pytest.mark.parametrize("strength", AUGMENTATIONS)
def test_augmentation_is_one_draw_per_sequence(tracks, strength: str) -> None:
    """Every augmentation set takes a track (the 1st place's sets too: cnn-lstm trains end to
    end through them), one draw for all its frames."""
    table, units, rows = tracks
    same = [np.full((24, 24, 3), 90, np.uint8)] * 4
    ds = TrackDataset(table, units, rows, 4, train_transform(16, strength), seed=0, read=lambda _: same[0].copy())
    for unit in range(4):
        x = ds[unit][0]
        assert all(torch.equal(x[0], x[k]) for k in range(1, 4))  # identical inputs -> identical frames


def test_feature_sequences(tracks) -> None:
    table, units, rows = tracks
    features = np.arange(len(table) * 3, dtype=np.float32).reshape(len(table), 3)
    ds = TrackFeatureDataset(features, units, rows, 4)
    x, y, idx = ds[0]
    assert x.shape == (4, 3) and x.dtype == torch.float32 and y == units.loc[0, "y"] and idx == 0
    assert np.array_equal(x.numpy(), features[rows[0][frame_positions(len(rows[0]), 4)]])


def test_predictor_side_groups_faces_by_track() -> None:
    cfg = SequenceConfig(seq_len=3)
    tracks = np.array([0, 1, 0, 0, 1, 0, 2])
    frames = np.array([30, 30, 0, 10, 20, 20, 10])  # not in frame order
    seqs = video_sequences(tracks, frames, cfg)
    assert len(seqs) == 1  # track 1 (2 faces) and 2 (1 face) are shorter than 3 while track 0 has 4
    assert frames[seqs[0]].tolist() == [0, 20, 30]  # positions 0, 2, 3 of 4 (centred strides of 4/3)
    assert [len(s) for s in video_sequences(tracks, frames, SequenceConfig(seq_len=3, min_len=1))] == [3, 3, 3]
    assert video_sequences(np.array([4]), np.array([7]), cfg)[0].tolist() == [0, 0, 0]  # one face: padded


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="sequence.min_len"):
        check_track_settings(SequenceConfig(seq_len=4, min_len=5))
    with pytest.raises(ConfigError, match="sequence.mode"):
        check_track_settings(SequenceConfig(mode="cached"))
