"""Classical baselines of studies ``000`` / ``002``: scikit-learn estimators on per-crop
features, cross-validated on the same folds and scored like the trained models
(``dfdc train`` with ``model.arch`` = ``logreg`` | ``svm`` | ``mlp`` comes here).

Features (``baseline.features``): ``embedding`` -- the pooled features of the frozen frame
model ``model.backbone`` (weights from ``model.pretrained``; random init gives random
features, honest but weak); ``pixels`` -- the crop area-downscaled to 16 x 16 RGB (the
``pixels`` frame model). Every crop's features are computed once and cached in
``<run>/features/`` (``dfdc.features.run_features``, the sequence models' frozen features
too: one extractor builder, one embedding loop).

Estimators, each ``StandardScaler`` -> estimator, with class-balanced sample weights (the
torch loop undersamples FAKE crops to the REAL count; weighting uses every crop):

- ``logreg``: ``LogisticRegression(C=baseline.C)``;
- ``svm``: ``LinearSVC(C=baseline.C)`` with Platt scaling (``CalibratedClassifierCV``,
  sigmoid) fitted on ``baseline.calibration_folds`` group folds of the training part, grouped
  by the folds table's ``group`` (a fake with its original, or an actor's videos together
  with identity folds), since a linear SVM gives no probabilities;
- ``mlp``: ``MLPClassifier`` with one ReLU hidden layer of ``model.mlp_hidden`` units.

Per fold k: fit on the crops of folds != k, P(FAKE) of fold k's crops, per-video
aggregation (``train.val_aggregation``, the predictor's rules), the clipped video log loss.
Outputs are the training loop's, so calibration, the predictor, the kernel and
``dfdc compare`` read them unchanged: ``fold{k}/best.pt`` (a ``BaselineModel``
checkpoint: the frozen extractor's weights plus the fitted pipeline as tensors; the
predictor embeds each face with the extractor, then computes the pipeline's
``predict_proba`` in torch), ``fold{k}/estimator.joblib`` (the fitted pipeline itself, for
direct scikit-learn use), ``fold{k}/status.json``,
``fold{k}/oof.csv`` / ``oof_faces.csv``, ``metrics.csv`` (one row per fold, epoch 0),
``oof.csv``, ``oof_faces.csv``, ``config.yaml`` (the run folder's bookkeeping: ``dfdc.runs``).
Finished folds are skipped on a rerun. One process fits them (``dfdc train`` refuses torchrun).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dfdc.config import BaselineConfig, Config, ConfigError, save_config
from dfdc.io import clean_temp_files

FEATURE_KINDS = ("embedding", "pixels")
PIXELS = "pixels"  # the registered frame model baseline.features=pixels reads (dfdc.models.baseline)


def is_baseline(arch: str) -> bool:
    from dfdc.models import BASELINE, models_of_kind

    return arch in models_of_kind(BASELINE)


def resolve_config(cfg: Config) -> Config:
    """The configuration a baseline run is fitted and saved with: ``baseline.features=pixels``
    makes ``model.backbone`` the ``pixels`` frame model (no weights), so its checkpoints
    rebuild from their model section alone."""
    b = cfg.baseline
    if b.features not in FEATURE_KINDS:
        raise ConfigError(f"baseline.features={b.features!r}: use one of {', '.join(FEATURE_KINDS)}")
    if b.features == PIXELS:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=PIXELS, pretrained="none"))
    if cfg.model.backbone == PIXELS:
        raise ConfigError("model.backbone=pixels: set baseline.features=pixels instead (embedding reads a CNN backbone)")
    return cfg


def build_estimator(name: str, cfg: BaselineConfig, seed: int, cv: Any = None, hidden: int = 256) -> Any:
    """A fresh ``StandardScaler -> estimator`` pipeline (``cv``: the svm's calibration splits;
    ``hidden``: the mlp's hidden units, ``model.mlp_hidden``)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if name == "logreg":
        estimator: Any = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter)
    elif name == "svm":
        estimator = CalibratedClassifierCV(LinearSVC(C=cfg.C, max_iter=cfg.max_iter, random_state=seed),
                                           method="sigmoid", cv=cv if cv is not None else cfg.calibration_folds,
                                           ensemble=False)
    elif name == "mlp":
        estimator = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=cfg.mlp_alpha, max_iter=cfg.max_iter,
                                  random_state=seed)
    else:
        raise ConfigError(f"unknown baseline {name!r}; use logreg, svm or mlp")
    return make_pipeline(StandardScaler(), estimator)


def fit_estimator(name: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: BaselineConfig,
                  seed: int, hidden: int = 256) -> Any:
    """Fit a baseline on features ``x`` and labels ``y`` (0/1) with class-balanced weights;
    ``groups`` (the folds table's group of each crop's video) keep the svm's calibration folds
    leak-free as the run's folds are."""
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.utils.class_weight import compute_sample_weight

    if len(set(np.asarray(y).tolist())) < 2:
        raise ConfigError("the training part of this fold holds one class only; a baseline needs REAL and FAKE crops")
    cv = None
    if name == "svm":
        splits = max(2, min(cfg.calibration_folds, len(set(np.asarray(groups).tolist()))))
        cv = list(StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed).split(x, y, groups))
    pipeline = build_estimator(name, cfg, seed, cv, hidden)
    step = pipeline.steps[-1][0]
    pipeline.fit(x, y, **{f"{step}__sample_weight": compute_sample_weight("balanced", y)})
    return pipeline


def train_baselines(faces_dir: Path, folds_csv: Path, cfg: Config, folds: list[int] | None = None,
                    resume: bool = True) -> Any:
    """Fit ``cfg.model.arch`` (logreg | svm | mlp) per fold; the ``dfdc.train.train`` contract
    and outputs (module docstring), in one process. Returns a ``dfdc.runs.TrainReport``:
    plan (inputs, folds to fit, the run's checks), features (once, cached), then fit, score and
    write each fold."""
    import torch

    from dfdc.data import load_training_data
    from dfdc.distributed import setup_distributed
    from dfdc.features import run_features
    from dfdc.models import create_model, default_input
    from dfdc.runs import TrainReport, check_run, fold_status, merge_oof, parse_folds, skipped_result, OOF_FACES

    cfg = resolve_config(cfg)
    t = cfg.train
    ctx = setup_distributed()  # one process: its device (cuda:0 or the CPU)
    data = load_training_data(Path(faces_dir), Path(folds_csv))
    available = sorted(int(f) for f in data.table["fold"].unique())
    chosen = folds if folds is not None else parse_folds(t.folds, available)
    run_dir = Path(t.runs_dir) / t.name
    check_run(run_dir, data.fingerprints, available, retrained=set() if resume else set(chosen),
              resumed=set(chosen) if resume else set())
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_temp_files(run_dir)
    save_config(cfg, run_dir / "config.yaml")

    report = TrainReport(run_dir=run_dir)
    done = {fold: fold_status(run_dir, fold) if resume else None for fold in chosen}
    todo = [fold for fold in chosen if done[fold] is None]
    for fold in chosen:
        if done[fold] is not None:
            report.folds.append(skipped_result(fold, done[fold]))
            print(f"fold {fold}: finished earlier (best log loss {done[fold]['best_logloss']:.4f}); skipped", file=sys.stderr)
    if todo:
        spec = default_input(cfg.model, t.size)
        start = time.perf_counter()
        frozen = run_features(cfg, data.table, run_dir, ctx, spec)
        share = (time.perf_counter() - start) / len(todo)  # each fold's metrics row carries its share
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            model = create_model(cfg.model, spec.size)
        model.backbone.load_state_dict(frozen.state)  # the extractor the features came from
        for fold in todo:
            report.folds.append(_fit_fold(cfg, data, fold, run_dir, frozen.array, model, share))
    report.folds.sort(key=lambda r: chosen.index(r.fold))
    report.oof_logloss, report.oof_auc, report.oof_videos = merge_oof(run_dir, OOF_FACES, t.val_clip,
                                                                      data.fingerprints, available, t.val_balanced)
    return report


def _fit_fold(cfg: Config, data: Any, fold: int, run_dir: Path, features: np.ndarray, model: Any,
              feature_seconds: float) -> Any:
    """Fit, score and write one fold (its state starts afresh: ``dfdc.runs.reset_fold``)."""
    import joblib

    from dfdc.aggregate import aggregate_videos
    from dfdc.data import split_fold
    from dfdc.io import atomic_open
    from dfdc.metrics import log_loss
    from dfdc.models import save_checkpoint
    from dfdc.runs import (
        OOF_FACES, FoldResult, finish_fold, fold_dir, reset_fold, update_metrics, video_logloss, write_fold_oof,
    )

    t, table = cfg.train, data.table
    folder = fold_dir(run_dir, fold)
    reset_fold(folder, data.fingerprints)
    begin = time.perf_counter()
    labels = table["y"].to_numpy(dtype=np.int64)
    train_idx, val_idx = split_fold(table, fold)
    estimator = fit_estimator(cfg.model.arch, features[train_idx], labels[train_idx],
                              table["group"].to_numpy()[train_idx], cfg.baseline, t.seed + fold, cfg.model.mlp_hidden)
    model.set_estimator(estimator)
    train_p = estimator.predict_proba(features[train_idx])[:, 1]
    val_p = estimator.predict_proba(features[val_idx])[:, 1]
    faces = table.loc[val_idx, ["video", "y", "fold", "frame", "face"]].rename(columns={"y": "label"})
    faces = faces.assign(prob=val_p).reset_index(drop=True)
    videos = aggregate_videos(faces, t.val_aggregation, cfg.predict)
    val_logloss, val_auc = video_logloss(videos, t.val_clip, t.val_balanced)
    save_checkpoint(folder / "best.pt", model, cfg, {"fold": fold, "epoch": 0, "val_logloss": val_logloss})
    with atomic_open(folder / "estimator.joblib", "wb") as handle:
        joblib.dump(estimator, handle)
    write_fold_oof(folder, faces, videos, OOF_FACES)
    update_metrics(run_dir, fold, [{
        "fold": fold, "epoch": 0, "train_loss": log_loss(labels[train_idx], train_p),
        "val_loss": log_loss(labels[val_idx], val_p), "val_logloss": val_logloss, "val_auc": val_auc,
        "lr": float("nan"), "seconds": time.perf_counter() - begin + feature_seconds,
    }])
    finish_fold(folder, val_logloss, 0, 1)
    print(f"fold {fold} {cfg.model.arch}: val_logloss {val_logloss:.4f} val_auc {val_auc:.3f}", file=sys.stderr)
    return FoldResult(fold, val_logloss, 0, 1)
