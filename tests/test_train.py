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
    return load_config("smoke-random", [*TINY, f"train.runs_dir={tmp_path / 'runs'}", "train.name=t", *extra])


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
    # the run's OOF log loss is the class-balanced log loss (train.val_balanced, the default) of oof.csv's
    # predictions clipped at train.val_clip: each class's videos weigh 1 / its count
    clipped = oof["pred"].clip(cfg.train.val_clip, 1 - cfg.train.val_clip)
    weights = 1.0 / oof["label"].map(oof["label"].value_counts())
    balanced = sk_log_loss(oof["label"], clipped, labels=[0, 1], sample_weight=weights)
    assert report.oof_logloss == pytest.approx(balanced, rel=1e-9)
    assert abs(balanced - sk_log_loss(oof["label"], clipped, labels=[0, 1])) > 1e-3  # the folds are imbalanced
    stamp = (run / "fold0" / "best.pt").stat().st_mtime_ns
    again = train(faces, folds, cfg)
    assert all(f.skipped for f in again.folds)
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == stamp
    assert again.oof_logloss == pytest.approx(report.oof_logloss)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_equals_uninterrupted_run(tiny: tuple[Path, Path], tmp_path: Path, workers: int) -> None:
    """Also with a persistent loader worker: it lives through both epochs of the straight run,
    the resumed run starts a new one at epoch 1; both must augment epoch 1 alike."""
    faces, folds = tiny
    loader = [f"train.loader_workers={workers}", "train.persistent_workers=true"]
    straight = _cfg(tmp_path, "train.epochs=2", "train.name=straight", "train.folds=0", *loader)
    train(faces, folds, straight)
    first = _cfg(tmp_path, "train.epochs=2", "train.name=resumed", "train.folds=0", "train.stop_after_epochs=1", *loader)
    part = train(faces, folds, first)
    assert part.stopped_early and not part.folds[0].finished
    assert len(pd.read_csv(tmp_path / "runs" / "resumed" / "metrics.csv")) == 1
    train(faces, folds, _cfg(tmp_path, "train.epochs=2", "train.name=resumed", "train.folds=0", *loader))
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
    return [sys.executable, "-m", "dfdc", "train", "--profile", "smoke-random", "--faces", str(faces), "--folds", str(folds),
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
    from dfdc.runconfig import read_latest

    monkeypatch.chdir(tmp_path)
    assert main(cmd[3:]) == 0  # the same command again, in this process
    out, err = capsys.readouterr()
    assert f"resuming at epoch {state['epoch']}" in err
    assert "fold 0: best validation log loss" in out and "OOF class-balanced log loss" in out
    metrics = pd.read_csv(tmp_path / "runs" / "cli" / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    # the later stages find this run without being told (runs/LATEST, written atomically by train)
    assert read_latest(tmp_path / "runs") == {"run": str(tmp_path / "runs" / "cli"), "profile": "smoke",
                                              "faces": str(faces), "folds": str(folds)}
    assert not list((tmp_path / "runs").rglob("*.tmp-*"))


def test_cli_efficientnet_b0_and_errors(tiny: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dfdc.cli import main

    faces, folds = tiny
    argv = _cli(tmp_path, faces, folds, "--fold-list", "1", "--epochs", "1", "--set", "model.arch=efficientnet-b0",
                "--set", "train.size=64", "--set", "train.steps_per_epoch=2", "--batch-size", "4")[3:]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fold 1: best validation log loss" in out and "OOF class-balanced log loss" in out
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
    monkeypatch.setattr(train_module, "video_logloss", lambda videos, clip, balanced=True: (next(losses), 0.5))
    cfg = _cfg(tmp_path, "train.epochs=6", "train.patience=2", "train.folds=0", "train.steps_per_epoch=1")
    report = train(tiny[0], tiny[1], cfg)
    (fold,) = report.folds
    assert fold.epochs_run == 4 and fold.best_epoch == 1 and fold.best_logloss == 0.50 and fold.finished
    metrics = pd.read_csv(tmp_path / "runs" / "t" / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("balanced", [True, False])
def test_best_epoch_is_chosen_on_the_class_balanced_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         balanced: bool) -> None:
    """On a fold that is 83 % FAKE (5 fakes per real, as DFDC), an epoch that calls every video
    FAKE-ish (FAKE 0.99, REAL 0.6) wins the plain log loss (0.16 against 0.29) but loses the
    class-balanced one (0.46 against 0.29) to an epoch that separates them (0.75 / 0.25)."""
    from dfdc.train import FoldTrainer

    faces, folds = make_tiny_faces(tmp_path, fakes_per_real=5)
    epochs = iter([(0.99, 0.6), (0.75, 0.25)])
    real_videos = FoldTrainer.videos

    def scripted(self, units):  # the real per-video table, with this epoch's scripted predictions
        table = real_videos(self, units)
        fake, real = next(epochs)
        return table.assign(pred=np.where(table["label"] == 1, fake, real))

    monkeypatch.setattr(FoldTrainer, "videos", scripted)
    cfg = _cfg(tmp_path, "train.epochs=2", "train.folds=0", "train.steps_per_epoch=1",
               f"train.val_balanced={str(balanced).lower()}")
    (fold,) = train(faces, folds, cfg).folds
    assert fold.best_epoch == (1 if balanced else 0)
def test_best_pt_and_oof_are_the_best_epochs_not_the_last(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """best.pt and the fold's OOF are written only when validation improves: after a run
    whose best epoch (1) is not its last (3), they hold epoch 1's weights and predictions."""
    import dfdc.train as train_module

    losses = iter([0.60, 0.50, 0.55, 0.56])  # best at epoch 1, then two worse epochs (patience 2)
    monkeypatch.setattr(train_module, "video_logloss", lambda videos, clip, balanced=True: (next(losses), 0.5))
    weights: list[dict[str, torch.Tensor]] = []
    predictions: list[pd.DataFrame] = []
    validate, save_last = train_module.FoldTrainer.validate, train_module.FoldTrainer.save_last

    def recorded_validate(self):  # noqa: ANN001, ANN202
        predictions.append(validate(self))
        return predictions[-1]

    def recorded_save_last(self, finished):  # noqa: ANN001, ANN202
        weights.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return save_last(self, finished)

    monkeypatch.setattr(train_module.FoldTrainer, "validate", recorded_validate)
    monkeypatch.setattr(train_module.FoldTrainer, "save_last", recorded_save_last)
    cfg = _cfg(tmp_path, "train.epochs=6", "train.patience=2", "train.folds=0", "train.steps_per_epoch=2")
    (fold,) = train(tiny[0], tiny[1], cfg).folds
    assert fold.best_epoch == 1 and fold.epochs_run == 4 and len(weights) == 4
    run = tmp_path / "runs" / "t" / "fold0"
    model, meta = load_checkpoint(run / "best.pt")
    assert meta["epoch"] == 1 and meta["val_logloss"] == 0.50
    saved = model.state_dict()
    assert all(torch.equal(saved[k], weights[1][k]) for k in weights[1])  # epoch 1's weights ...
    assert not all(torch.equal(saved[k], weights[3][k]) for k in weights[3])  # ... not the last epoch's
    oof_faces = pd.read_csv(run / "oof_faces.csv")
    assert np.allclose(oof_faces["prob"], predictions[1]["prob"])  # epoch 1's predictions
    assert not np.allclose(oof_faces["prob"], predictions[3]["prob"])


def test_lr_scaling_rules() -> None:
    from dfdc.config import ConfigError
    from dfdc.train import scaled_lr

    def lr(*sets: str, world: int = 1) -> float:
        return scaled_lr(load_config("smoke-random", ["train.lr=2e-4", "train.lr_reference_batch=12", *sets]), world)[0]

    assert lr("train.lr_scaling=none", "train.batch_size=96") == pytest.approx(2e-4)
    assert lr("train.lr_scaling=linear", "train.batch_size=96") == pytest.approx(2e-4 * 8)
    assert lr("train.lr_scaling=sqrt", "train.batch_size=96") == pytest.approx(2e-4 * 8 ** 0.5)
    assert lr("train.lr_scaling=sqrt", "train.batch_size=12", world=4) == pytest.approx(2e-4 * 2)  # global batch 48
    assert lr("train.lr_scaling=linear", "train.batch_size=12") == pytest.approx(2e-4)  # the reference batch: unscaled
    note = scaled_lr(load_config("smoke-random", ["train.lr_scaling=sqrt", "train.batch_size=24"]), 2)[1]
    assert "global batch 48 = 24 x 2 processes" in note and "sqrt" in note
    with pytest.raises(ConfigError, match="lr_scaling='cubic'"):
        lr("train.lr_scaling=cubic")


def test_bounded_epochs_and_validation_sample(tiny: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    faces, folds = tiny
    cfg = _cfg(tmp_path, "train.epochs=2", "train.folds=0", "train.steps_per_epoch=3", "train.batch_size=4",
               "train.val_max_videos=2", "train.debug_dir=" + str(tmp_path / "seen"))
    train(faces, folds, cfg)
    seen = pd.read_csv(tmp_path / "seen" / "seen_fold0_rank0.txt", sep=" ", names=["epoch", "row"])
    assert seen.groupby("epoch").size().tolist() == [12, 12]  # 3 steps x 4 crops per epoch
    assert "3 steps per epoch (train.steps_per_epoch), validation on 2 of the fold's 9 videos" in capsys.readouterr().err
    run = tmp_path / "runs" / "t" / "fold0"
    oof = pd.read_csv(run / "oof.csv")
    fold_videos = set(pd.read_csv(folds).query("fold == 0")["video"])
    assert set(oof["video"]) == fold_videos  # the OOF covers the whole fold, not the sample
    best = torch.load(run / "best.pt", weights_only=False)
    metrics = pd.read_csv(tmp_path / "runs" / "t" / "metrics.csv")
    assert len(metrics) == 2 and best["epoch"] == metrics["val_logloss"].idxmin()


def test_changed_inputs_are_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from dfdc.runs import InputsChangedError

    faces, folds = tiny
    part = _cfg(tmp_path, "train.epochs=2", "train.folds=0", "train.stop_after_epochs=1")
    train(faces, folds, part)
    table = pd.read_csv(folds)
    table.sample(frac=1.0, random_state=1).to_csv(folds, index=False)  # same split, other row order
    train(faces, folds, part)  # fine: the content is the same (fold 0 is now finished)
    train(faces, folds, _cfg(tmp_path, "train.epochs=1", "train.folds=1"))
    moved = table.copy()
    moved.loc[moved["video"].str.startswith(("real000", "fake000")), "fold"] = 1  # a new split
    moved.to_csv(folds, index=False)
    with pytest.raises(InputsChangedError, match="skip .*fold 0.*folds table .* now .*--no-resume"):
        train(faces, folds, part)
    # retraining fold 1 alone would end in an OOF mixing two splits: refused before any training
    run = tmp_path / "runs" / "t"
    stamp = (run / "fold1" / "best.pt").stat().st_mtime_ns
    with pytest.raises(InputsChangedError, match="merge the OOF predictions of fold 0"):
        train(faces, folds, _cfg(tmp_path, "train.epochs=1", "train.folds=1"), resume=False)
    assert (run / "fold1" / "best.pt").stat().st_mtime_ns == stamp and (run / "fold1" / "status.json").is_file()
    # the advised way out: --no-resume on every fold trained on the old split
    report = train(faces, folds, _cfg(tmp_path, "train.epochs=1"), resume=False)
    oof = pd.read_csv(run / "oof.csv")
    assert report.oof_videos == len(moved) and dict(zip(oof["video"], oof["fold"])) == dict(zip(moved["video"], moved["fold"]))
    table.to_csv(folds, index=False)
    pd.read_csv(faces / "faces.csv").iloc[:-2].to_csv(faces / "faces.csv", index=False)
    with pytest.raises(InputsChangedError, match="faces index .* had 48 rows .* now 46 rows"):
        train(faces, folds, part)


def test_no_resume_killed_in_its_first_epoch_leaves_no_old_state(tiny: tuple[Path, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--no-resume on a changed split, killed inside epoch 0: the next plain run must neither
    resume the old split's last.pt nor merge its OOF (review data 1.2)."""
    from dfdc.runs import InputsChangedError
    from dfdc.train import FoldTrainer

    faces, folds = tiny
    cfg = _cfg(tmp_path, "train.epochs=2", "train.folds=0")
    train(faces, folds, cfg)
    run = tmp_path / "runs" / "t" / "fold0"
    table = pd.read_csv(folds)
    table.loc[table["video"].str.startswith(("real000", "fake000")), "fold"] = 1
    table.to_csv(folds, index=False)
    with pytest.raises(InputsChangedError):
        train(faces, folds, cfg)

    def killed(self, warm=1):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(FoldTrainer, "train_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            train(faces, folds, cfg, resume=False)
    assert sorted(p.name for p in run.iterdir()) == ["inputs.json"]  # the old split's state went first
    capsys.readouterr()
    report = train(faces, folds, cfg)
    assert "resuming" not in capsys.readouterr().err and report.folds[0].epochs_run == 2
    oof = pd.read_csv(run / "oof.csv")
    assert set(oof["video"]) == set(table.loc[table["fold"] == 0, "video"])  # today's fold 0, not the old one


def test_only_finished_folds_of_todays_table_are_merged(tiny: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    faces, folds = tiny
    stopped = _cfg(tmp_path, "train.epochs=2", "train.folds=0", "train.stop_after_epochs=1", "train.val_max_videos=2")
    report = train(faces, folds, stopped)
    run = tmp_path / "runs" / "t"
    assert (run / "fold0" / "oof.csv").is_file() and not report.folds[0].finished
    assert report.oof_logloss is None and report.oof_videos == 0 and not (run / "oof.csv").exists()  # unfinished
    report = train(faces, folds, _cfg(tmp_path, "train.epochs=2", "train.folds=0"))
    assert report.oof_videos == 9
    shutil.copytree(run / "fold0", run / "fold4")  # left by an earlier split with more folds
    capsys.readouterr()
    again = train(faces, folds, _cfg(tmp_path, "train.epochs=2", "train.folds=0"))
    assert again.oof_videos == 9 and "fold4 is not a fold of today's folds table" in capsys.readouterr().err


def test_resume_with_a_loss_scaler_from_a_run_saved_without_one(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A bf16 (or fp32) run saves an empty GradScaler state; resumed where training falls
    back to fp16 (an enabled scaler), it goes on with a fresh loss scale and a warning."""
    faces, folds = tiny
    cfg = _cfg(tmp_path, "train.epochs=2", "train.folds=0", "train.steps_per_epoch=2")
    train(faces, folds, _cfg(tmp_path, "train.epochs=2", "train.folds=0", "train.steps_per_epoch=2",
                             "train.stop_after_epochs=1"))
    last = tmp_path / "runs" / "t" / "fold0" / "last.pt"
    assert torch.load(last, weights_only=False)["scaler"] == {}  # a checkpoint made without scaler state
    made, scaler = [], torch.amp.GradScaler

    def fp16_scaler(device: str, enabled: bool = True) -> torch.amp.GradScaler:  # what an fp16 GPU builds
        made.append(scaler("cpu", enabled=True))
        return made[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", fp16_scaler)
    (fold,) = train(faces, folds, cfg).folds
    assert fold.finished and fold.epochs_run == 2 and made and made[-1].is_enabled()
    assert "holds no GradScaler state" in capsys.readouterr().err


def test_bf16_falls_back_to_fp16_without_native_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 / V100 answers is_bf16_supported() with True (emulation); natively it has none."""
    from dfdc.train import amp_dtype

    cfg = load_config("smoke-random", ["train.amp=bf16"])
    cuda = torch.device("cuda", 0)

    def pre_ampere(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", pre_ampere)
    assert amp_dtype(cfg, cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(cfg, cuda) == "bf16"
    assert amp_dtype(load_config("smoke-random", ["train.amp=fp16"]), cuda) == "fp16"
    assert amp_dtype(cfg, torch.device("cpu")) is None and amp_dtype(load_config("smoke-random", ["train.amp=none"]), cuda) is None


def test_epoch_loss_is_summed_over_ranks_on_the_process_device(tiny: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL reduces CUDA tensors only (review data 1.1): the epoch's sums go through
    ``Dist.sum_over_ranks``, which builds them on the process's device."""
    import dataclasses

    import torch.distributed as dist

    from dfdc.data import load_training_data
    from dfdc.distributed import Dist
    from dfdc.train import FoldTrainer

    reduced: list[torch.device] = []
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: reduced.append(tensor.device))
    meta = Dist(world=2, device=torch.device("meta"))
    total = torch.zeros((), dtype=torch.float64, device=meta.device)
    assert meta.sum_over_ranks(total, 7).device.type == "meta" and reduced == [torch.device("meta")]
    # ... and the training epoch reduces through it
    faces, folds = tiny
    trainer = FoldTrainer(_cfg(tmp_path, "train.steps_per_epoch=1"), load_training_data(faces, folds), 0,
                          tmp_path / "runs" / "t", Dist())
    trainer.build(resume=False)
    calls: list[tuple] = []
    real = Dist.sum_over_ranks
    monkeypatch.setattr(Dist, "sum_over_ranks", lambda self, *v: calls.append(v) or real(self, *v))
    trainer.ctx = dataclasses.replace(trainer.ctx, world=2)
    reduced.clear()
    stats = trainer.train_epoch()
    assert len(calls) == 1 and reduced == [torch.device("cpu")] and stats.images == 8


def test_baselines_refuse_torchrun(tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dfdc.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="scikit-learn baseline: it fits in one process"):
        train(*tiny, _cfg(tmp_path, "model.arch=logreg", "model.backbone=tiny-cnn"))
    assert not (tmp_path / "runs").exists()


def test_compile_option_keeps_plain_checkpoints(tiny: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile wraps the training module only; checkpoints keep the plain keys. (The
    eager backend stands in for inductor, whose C++ build takes minutes on 2 cores.)"""
    faces, folds = tiny
    compiled: list[str] = []
    real = torch.compile

    def eager(module, mode=None):  # noqa: ANN001, ANN202
        compiled.append(mode)
        return real(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager)
    train(faces, folds, _cfg(tmp_path, "train.epochs=1", "train.folds=0", "train.compile=true"))
    assert compiled == ["default"]
    state = torch.load(tmp_path / "runs" / "t" / "fold0" / "last.pt", weights_only=False)
    assert not any("_orig_mod" in key for key in state["model"])
    model, _ = load_checkpoint(tmp_path / "runs" / "t" / "fold0" / "best.pt")
    assert model is not None


class _ThreadCounts(torch.utils.data.Dataset):
    """Reports, from inside a loader worker, the threads torch, OpenCV and BLAS would use."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        from threadpoolctl import threadpool_info

        blas = max([p["num_threads"] for p in threadpool_info()] or [1])
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads(), blas])


def test_loader_workers_run_one_thread_each(tmp_path: Path) -> None:
    """Each training loader worker sets torch, OpenCV and the BLAS pools to one thread."""
    from dfdc.train import _loader

    cv2.setNumThreads(4)  # a wide parent: the workers must not inherit it
    try:
        loader = _loader(_ThreadCounts(), 1, 1, _cfg(tmp_path), torch.device("cpu"))
        counts = torch.cat(list(loader))
    finally:
        cv2.setNumThreads(-1)
    assert counts.tolist() == [[1, 1, 1], [1, 1, 1]]


def test_tensorboard_events_per_fold_match_the_metrics(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """fold{k}/tensorboard holds each epoch's metrics.csv row (and images/s) once, also after
    a stopped fold resumes; a fresh retrain starts its events afresh."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    faces, folds = tiny
    train(faces, folds, _cfg(tmp_path, "train.epochs=3", "train.folds=0", "train.stop_after_epochs=2"))
    train(faces, folds, _cfg(tmp_path, "train.epochs=3", "train.folds=0"))
    run = tmp_path / "runs" / "t"

    def scalars() -> dict[str, list[tuple[int, float]]]:
        events = EventAccumulator(str(run / "fold0" / "tensorboard")).Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    got = scalars()
    assert {"loss/train", "loss/val", "val/logloss", "val/auc", "lr", "images_per_s/epoch"} <= set(got)
    metrics = pd.read_csv(run / "metrics.csv")
    for tag, column in (("loss/train", "train_loss"), ("val/logloss", "val_logloss"), ("lr", "lr")):
        assert [step for step, _ in got[tag]] == [0, 1, 2], tag
        assert np.allclose([value for _, value in got[tag]], metrics[column], rtol=1e-6), tag
    assert all(value > 0 for _, value in got["images_per_s/epoch"])
    train(faces, folds, _cfg(tmp_path, "train.epochs=1", "train.folds=0"), resume=False)
    assert [step for step, _ in scalars()["loss/train"]] == [0]


def test_a_constant_model_is_reported_loudly_at_the_end_of_training(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A fold whose every OOF face got the same P(FAKE) (its AUC would be ties only) is named in
    a warning on stderr and in the report; a fold that ranks its faces is not."""
    import dfdc.train as train_module

    faces, folds = tiny
    report = train(faces, folds, _cfg(tmp_path, "train.epochs=1", "train.folds=0"))
    assert report.warnings == [] and "constant model" not in capsys.readouterr().err
    real = train_module.fake_probability
    monkeypatch.setattr(train_module, "fake_probability", lambda logits: torch.full_like(real(logits), 0.37))
    report = train(faces, folds, _cfg(tmp_path, "train.epochs=1", "train.folds=1"))
    (warning,) = report.warnings
    assert warning.startswith("fold1: all ") and "face predictions are 0.3700 (a constant model" in warning
    assert f"warning: {warning}" in capsys.readouterr().err


def test_a_full_disk_stops_training_with_one_line_and_the_rerun_resumes_exactly(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC injected into the atomic writer (at last.pt of epoch 0): `dfdc train` ends with
    one line naming the fold's folder; the same command after "freeing space" ends with the
    weights and metrics of a run the disk never stopped."""
    import contextlib
    import errno

    from dfdc import io
    from dfdc.cli import main

    faces, folds = tiny
    argv = _cli(tmp_path, faces, folds, "--fold-list", "0", "--epochs", "2")[3:]
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--name", "straight"]) == 0
    real, writes = io.atomic_open, []

    @contextlib.contextmanager
    def filling(path, mode="w", **kwargs):  # noqa: ANN001, ANN003, ANN202
        with real(path, mode, **kwargs) as handle:
            writes.append(Path(path))
            if Path(path).name == "last.pt":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            yield handle

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(io, "atomic_open", filling)
        assert main([*argv, "--name", "full"]) == 1
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "full"
    assert writes[-1] == run / "fold0" / "last.pt" and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {run / 'fold0'}: no space left on the device")
    assert err.strip().endswith("; free space and rerun: it resumes")
    assert main([*argv, "--name", "full"]) == 0
    a = torch.load(tmp_path / "runs" / "straight" / "fold0" / "last.pt", weights_only=False)
    b = torch.load(run / "fold0" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "runs" / "straight" / "metrics.csv").drop(columns="seconds"),
                                  pd.read_csv(run / "metrics.csv").drop(columns="seconds"))
