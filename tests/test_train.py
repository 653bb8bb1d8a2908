"""dfdc.train: outputs, exact resume, kill -9 recovery, fold skipping, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from test_data import make_tiny_faces

from dfdc.config import Config, load_config, read_config
from dfdc.models import load_checkpoint
from dfdc.train import train

TINY = ["model.arch=tiny-cnn", "model.pretrained=none", "train.size=32", "train.batch_size=8",
        "train.loader_workers=0", "train.lr=3e-3", "train.warmup_epochs=0.5", "train.patience=10"]


def _cfg(tmp_path: Path, *extra: str) -> Config:
    return load_config("smoke", [*TINY, f"train.runs_dir={tmp_path / 'runs'}", "train.name=t", *extra])


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    return make_tiny_faces(tmp_path)


def test_outputs_and_skip_on_rerun(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    faces, folds = tiny
    cfg = _cfg(tmp_path, "train.epochs=2")
    report = train(faces, folds, cfg)
    run = tmp_path / "runs" / "t"
    assert [f.fold for f in report.folds] == [0, 1] and not any(f.skipped for f in report.folds)
    for name in ("config.yaml", "metrics.csv", "curves.png", "oof.csv", "oof_faces.csv",
                 "fold0/best.pt", "fold0/last.pt", "fold1/best.pt"):
        assert (run / name).is_file(), name
    assert read_config(run / "config.yaml").model.arch == "tiny-cnn"
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["fold", "epoch", "train_loss", "val_loss", "val_logloss", "val_auc", "lr", "seconds"]
    assert list(zip(metrics["fold"], metrics["epoch"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["video", "label", "fold", "pred", "n_faces"]
    assert len(oof) == 18 and oof["video"].is_unique and set(oof["label"]) == {0, 1}
    assert set(zip(oof["video"], oof["fold"])) == set(zip(*[pd.read_csv(folds)[c] for c in ("video", "fold")]))
    faces_oof = pd.read_csv(run / "oof_faces.csv")
    assert list(faces_oof.columns) == ["video", "label", "fold", "frame", "face", "prob"] and len(faces_oof) == 48
    mean = faces_oof.groupby("video")["prob"].mean()
    assert (oof.set_index("video")["pred"] - mean).abs().max() < 1e-6  # video pred = mean of its faces
    for fold in report.folds:  # best.pt holds the best epoch's weights and score
        model, meta = load_checkpoint(run / f"fold{fold.fold}" / "best.pt")
        assert meta["fold"] == fold.fold and meta["epoch"] == fold.best_epoch
        assert meta["val_logloss"] == pytest.approx(fold.best_logloss)
        best_row = metrics[(metrics["fold"] == fold.fold) & (metrics["epoch"] == fold.best_epoch)]
        assert best_row["val_logloss"].item() == pytest.approx(fold.best_logloss)
    # the run's OOF log loss is Kaggle's log loss of oof.csv's predictions clipped at train.val_clip
    clipped = oof["pred"].clip(cfg.train.val_clip, 1 - cfg.train.val_clip)
    assert report.oof_logloss == pytest.approx(sk_log_loss(oof["label"], clipped, labels=[0, 1]), rel=1e-9)
    stamp = (run / "fold0" / "best.pt").stat().st_mtime_ns
    again = train(faces, folds, cfg)
    assert all(f.skipped for f in again.folds)
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == stamp
    assert again.oof_logloss == pytest.approx(report.oof_logloss)


def test_resume_equals_uninterrupted_run(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    faces, folds = tiny
    straight = _cfg(tmp_path, "train.epochs=2", "train.name=straight", "train.folds=0")
    train(faces, folds, straight)
    first = _cfg(tmp_path, "train.epochs=2", "train.name=resumed", "train.folds=0", "train.stop_after_epochs=1")
    part = train(faces, folds, first)
    assert part.stopped_early and not part.folds[0].finished
    assert len(pd.read_csv(tmp_path / "runs" / "resumed" / "metrics.csv")) == 1
    train(faces, folds, _cfg(tmp_path, "train.epochs=2", "train.name=resumed", "train.folds=0"))
    a = torch.load(tmp_path / "runs" / "straight" / "fold0" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "runs" / "resumed" / "fold0" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ma = pd.read_csv(tmp_path / "runs" / "straight" / "metrics.csv").drop(columns="seconds")
    mb = pd.read_csv(tmp_path / "runs" / "resumed" / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ma, mb)


def test_no_resume_retrains(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    faces, folds = tiny
    cfg = _cfg(tmp_path, "train.epochs=1", "train.folds=1")
    train(faces, folds, cfg)
    report = train(faces, folds, cfg, resume=False)
    assert not report.folds[0].skipped and report.folds[0].epochs_run == 1


def _cli(tmp_path: Path, faces: Path, folds: Path, *extra: str) -> list[str]:
    sets = [x for item in TINY for x in ("--set", item)]
    return [sys.executable, "-m", "dfdc", "train", "--profile", "smoke", "--faces", str(faces), "--folds", str(folds),
            "--name", "cli", "--set", f"train.runs_dir={tmp_path / 'runs'}", *sets, *extra]


def test_kill_9_mid_run_then_resume(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    faces, folds = tiny
    cmd = _cli(tmp_path, faces, folds, "--fold-list", "0", "--epochs", "4")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = tmp_path / "runs" / "cli" / "fold0" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(last, weights_only=False)
    assert 1 <= state["epoch"] < 4 and not state["finished"]
    from dfdc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(cmd[3:]) == 0  # the same command again, in this process
    out, err = capsys.readouterr()
    assert f"resuming at epoch {state['epoch']}" in err
    assert "fold 0: best validation log loss" in out and "OOF log loss" in out
    metrics = pd.read_csv(tmp_path / "runs" / "cli" / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    assert not list((tmp_path / "runs").rglob("*.tmp-*"))


def test_cli_efficientnet_b0_and_errors(tiny: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dfdc.cli import main

    faces, folds = tiny
    argv = _cli(tmp_path, faces, folds, "--fold-list", "1", "--epochs", "1", "--set", "model.arch=efficientnet-b0",
                "--set", "train.size=64", "--set", "train.max_steps_per_epoch=2", "--batch-size", "4")[3:]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fold 1: best validation log loss" in out and "OOF log loss" in out
    _, meta = load_checkpoint(tmp_path / "runs" / "cli" / "fold1" / "best.pt")
    assert meta["arch"] == "efficientnet-b0" and meta["config"]["train"]["batch_size"] == 4
    assert main([*argv, "--name", "other", "--pretrained", str(tmp_path / "missing.pth")]) == 1
    err = capsys.readouterr().err
    assert "--pretrained PATH" in err and "missing.pth" in err
    assert main([*argv, "--folds", str(tmp_path / "nofolds.csv")]) == 1
    err = capsys.readouterr().err
    assert "nofolds.csv" in err and "dfdc folds" in err
    assert main([*argv, "--fold-list", "7"]) == 2
    assert "folds [7]" in capsys.readouterr().err


def test_unknown_validation_aggregation_fails_before_training(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from dfdc.config import ConfigError

    faces, folds = tiny
    with pytest.raises(ConfigError, match="val_aggregation='median'"):
        train(faces, folds, _cfg(tmp_path, "train.val_aggregation=median"))
    assert not list((tmp_path / "runs" / "t").glob("fold*/last.pt"))  # no epoch was spent


def test_trained_model_ranks_fake_videos_above_real(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """P(FAKE) is the FAKE column of the softmax, in training's validation and in the
    predictor: after brief training FAKE videos (blurred, brighter crops) score above REAL."""
    from dfdc.models import load_checkpoint
    from dfdc.predict import CropSpec, _Ensemble

    faces, folds = tiny
    report = train(faces, folds, _cfg(tmp_path, "train.epochs=3", "train.folds=0"))
    run = tmp_path / "runs" / "t"
    oof = pd.read_csv(run / "oof.csv")
    assert report.folds[0].best_logloss < 0.69  # it learned something
    fake, real = oof.loc[oof["label"] == 1, "pred"], oof.loc[oof["label"] == 0, "pred"]
    assert fake.min() > real.max(), oof  # every FAKE video above every REAL one
    model, meta = load_checkpoint(run / "fold0" / "best.pt")
    table = pd.read_csv(faces / "faces.csv")
    held_out = set(pd.read_csv(folds).query("fold == 0")["video"])
    crops = table[table["video"].isin(held_out)]
    images = np.stack([cv2.cvtColor(cv2.imread(str(faces / p)), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
                       for p in crops["path"]])
    spec = CropSpec(0.6, 32, int(meta["input"]["size"]))
    probs = _Ensemble({spec: [(model, "cpu")]}, half=False, tta_flip=False).fake_probability({spec: images})
    is_fake = (crops["label"] == "FAKE").to_numpy()
    assert probs[is_fake].mean() > 0.5 > probs[~is_fake].mean()


def test_early_stopping_ends_a_fold_after_patience_epochs_without_improvement(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dfdc.train as train_module

    losses = iter([0.60, 0.50, 0.55, 0.56, 0.40, 0.30])  # best at epoch 1, then two worse epochs
    monkeypatch.setattr(train_module, "_video_logloss", lambda videos, clip: (next(losses), 0.5))
    cfg = _cfg(tmp_path, "train.epochs=6", "train.patience=2", "train.folds=0", "train.max_steps_per_epoch=1")
    report = train(tiny[0], tiny[1], cfg)
    (fold,) = report.folds
    assert fold.epochs_run == 4 and fold.best_epoch == 1 and fold.best_logloss == 0.50 and fold.finished
    metrics = pd.read_csv(tmp_path / "runs" / "t" / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
