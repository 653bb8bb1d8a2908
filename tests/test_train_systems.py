"""dfdc.train over the other systems: sequence models (tracks, frozen or fine-tuned
backbone) and the scikit-learn baselines, through the same entry and the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_sequences import make_track_faces

from dfdc.aggregate import apply_calibration
from dfdc.calibrate import fit, run_unit
from dfdc.config import Config, load_config
from dfdc.data import load_face_table, read_rgb
from dfdc.features import CACHE_DIR, EXTRACTOR_FILE
from dfdc.models import fake_probability, load_checkpoint
from dfdc.preprocess import prepare
from dfdc.sequences import frame_positions, track_units
from dfdc.train import train

TINY = ["model.backbone=tiny-cnn", "model.pretrained=none", "model.rnn_hidden=128", "model.head_hidden=32",
        "train.size=24", "train.batch_size=4", "train.loader_workers=0", "train.lr=3e-3", "train.warmup_epochs=0",
        "train.patience=10", "sequence.seq_len=4"]


def _cfg(tmp_path: Path, arch: str, *extra: str) -> Config:
    return load_config("smoke-random", [f"model.arch={arch}", *TINY, f"train.runs_dir={tmp_path / 'runs'}",
                                 f"train.name={arch}", *extra])


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    return make_track_faces(tmp_path_factory.mktemp("train_systems"), n_real=4, fakes_per_real=2)


def test_frozen_lstm_trains_the_head_on_cached_features(faces, tmp_path: Path) -> None:
    faces_dir, folds_csv = faces
    report = train(faces_dir, folds_csv, _cfg(tmp_path, "lstm", "train.epochs=2"))
    run = tmp_path / "runs" / "lstm"
    assert [f.fold for f in report.folds] == [0, 1] and report.oof_videos == 12
    for name in ("oof.csv", "oof_tracks.csv", "metrics.csv", "fold0/best.pt", "fold1/oof_tracks.csv",
                 f"{CACHE_DIR}/{EXTRACTOR_FILE}"):
        assert (run / name).is_file(), name
    assert not (run / "oof_faces.csv").exists()
    tracks = pd.read_csv(run / "oof_tracks.csv")
    assert list(tracks.columns) == ["video", "label", "fold", "track", "prob"]
    oof = pd.read_csv(run / "oof.csv").set_index("video")
    assert (oof["pred"] - tracks.groupby("video")["prob"].max()).abs().max() < 1e-6  # max over tracks
    assert oof.loc["real000.mp4", "n_faces"] == 2  # a two-person video: both tracks read (12 and 6 crops)
    assert oof.loc["fake000_0.mp4", "n_faces"] == 1  # its fake: track 1 has 2 < seq_len crops beside track 0
    cached = torch.load(run / CACHE_DIR / EXTRACTOR_FILE, weights_only=True)
    model, meta = load_checkpoint(run / "fold1" / "best.pt")
    assert meta["kind"] == "sequence"
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in cached.items())  # frozen = the cache's
    # the OOF probability of a track (from cached features) is what the saved model gives its images
    table = load_face_table(faces_dir, folds_csv)
    units, rows = track_units(table)
    row = tracks[tracks["fold"] == 1].iloc[0]
    unit = int(units.index[(units["video"] == row["video"]) & (units["track"] == row["track"])][0])
    files = table["file"].to_numpy()[rows[unit][frame_positions(len(rows[unit]), 4)]]
    x = torch.from_numpy(np.stack([prepare(read_rgb(f), 24) for f in files]))[None]
    with torch.no_grad():
        assert float(fake_probability(model(x))) == pytest.approx(row["prob"], abs=1e-5)
    # calibration of a track run: the per-unit table holds tracks, the rule stays the run's track rule
    assert run_unit(run) == "track" and run_unit(tmp_path) == "face"
    cfg = _cfg(tmp_path, "lstm", "calibrate.min_videos=1")
    units = tracks.assign(frame=-1)  # as the predictor writes a sequence model's units
    result, _ = fit(units, cfg, "track")
    assert result["unit"] == "track" and result["aggregation"] == "max" and result["tracks"] == len(tracks)
    assert result["baseline"]["aggregation"] == "max"
    assert result["logloss_after"] <= result["logloss_before"] + 1e-12
    from dfdc.cli.calibrate import format_result

    assert f"{len(tracks)} tracks" in format_result({**result, "frames": 8}, cfg)
    applied = apply_calibration(cfg.predict, result)
    assert applied.aggregation == cfg.predict.aggregation  # the face rule is left alone
    assert applied.temperature == result["temperature"] and applied.clip == result["clip"]


def test_finetuned_gru_trains_the_backbone_and_resumes(faces, tmp_path: Path) -> None:
    faces_dir, folds_csv = faces
    cfg = _cfg(tmp_path, "gru", "sequence.mode=finetune", "train.epochs=1", "train.folds=0")
    report = train(faces_dir, folds_csv, cfg)
    run = tmp_path / "runs" / "gru"
    assert report.folds[0].finished and not (run / CACHE_DIR).exists()
    last = torch.load(run / "fold0" / "last.pt", weights_only=False)
    torch.manual_seed(cfg.train.seed)
    from dfdc.models import create_model

    fresh = create_model(cfg.model, 24).state_dict()
    moved = [k for k, v in last["model"].items() if k.startswith("backbone.encoder") and v.is_floating_point()
             and not torch.equal(v, fresh[k])]
    assert moved  # end to end: the backbone's weights changed
    again = train(faces_dir, folds_csv, cfg)
    assert again.folds[0].skipped


def test_baselines_come_through_dfdc_train(faces, tmp_path: Path) -> None:
    faces_dir, folds_csv = faces
    report = train(faces_dir, folds_csv, _cfg(tmp_path, "logreg", "train.epochs=1"))
    assert report.oof_videos == 12 and (tmp_path / "runs" / "logreg" / "fold1" / "estimator.joblib").is_file()


def test_frozen_features_are_computed_once_per_run_before_the_folds(faces, tmp_path: Path, monkeypatch) -> None:
    import dfdc.train as train_module
    from dfdc.train import TrackFoldTrainer

    events: list[str] = []
    real_features, real_init = train_module.run_features, TrackFoldTrainer.__init__
    monkeypatch.setattr(train_module, "run_features", lambda *a, **k: events.append("features") or real_features(*a, **k))
    monkeypatch.setattr(TrackFoldTrainer, "__init__",
                        lambda self, *a, **k: events.append(f"fold {a[2]}") or real_init(self, *a, **k))
    faces_dir, folds_csv = faces
    cfg = _cfg(tmp_path, "lstm", "train.epochs=1")
    train(faces_dir, folds_csv, cfg)
    assert events == ["features", "fold 0", "fold 1"]
    events.clear()
    assert all(f.skipped for f in train(faces_dir, folds_csv, cfg).folds) and events == []  # nothing to train


def test_trainable_with_a_frozen_backbone_is_refused(faces, tmp_path: Path) -> None:
    from dfdc.config import ConfigError

    with pytest.raises(ConfigError, match="model.trainable='top50'.*sequence.mode=finetune"):
        train(*faces, _cfg(tmp_path, "lstm", "model.trainable=top50"))
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_auto_loader_workers_count_a_sequence_as_seq_len_images(faces, tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    import dfdc.distributed as distributed
    import dfdc.train as train_module
    from dfdc.data import load_training_data
    from dfdc.distributed import Dist
    from dfdc.train import TrackFoldTrainer

    cfg = _cfg(tmp_path, "gru", "sequence.mode=finetune", "train.loader_workers=-1", "train.feed_images_per_s=800")
    trainer = TrackFoldTrainer(cfg, load_training_data(*faces), 0, tmp_path / "runs" / "gru", Dist())
    monkeypatch.setattr(train_module, "loader_rate", lambda dataset, keys: 10.0)  # sequences/s of one worker
    monkeypatch.setattr(distributed, "available_cores", lambda: 64)
    trainer.ctx = dataclasses.replace(trainer.ctx, device=torch.device("cuda"))
    assert trainer._loader_workers() == 20  # 800 images/s / (10 sequences/s x 4 images)
