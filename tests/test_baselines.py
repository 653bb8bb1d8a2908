"""dfdc.baselines: scikit-learn baselines on frozen features, fitted per fold, predicted like models."""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from test_data import make_tiny_faces

from dfdc.baselines import resolve_config, train_baselines
from dfdc.config import ConfigError, load_config
from dfdc.data import read_rgb
from dfdc.features import FEATURES_FILE, INDEX_FILE, META_FILE
from dfdc.models import export_half, fake_probability, list_models, load_checkpoint
from dfdc.preprocess import prepare

BASELINES = ("logreg", "svm", "mlp")


def _cfg(tmp_path: Path, arch: str, *extra: str):
    return load_config("smoke-random", [f"model.arch={arch}", "model.backbone=tiny-cnn", "model.pretrained=none",
                                 "train.size=32", "train.batch_size=8", f"train.runs_dir={tmp_path / 'runs'}",
                                 f"train.name={arch}", *extra])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    return make_tiny_faces(tmp_path_factory.mktemp("baselines"))


def _crops(run: Path, n: int, size: int) -> torch.Tensor:
    """The first ``n`` crops of the run's feature cache, as the predictor feeds them."""
    files = pd.read_csv(run / "features" / INDEX_FILE)["file"].iloc[:n]
    return torch.from_numpy(np.stack([prepare(read_rgb(f), size) for f in files]))


@pytest.mark.parametrize("arch", BASELINES)
def test_fit_per_fold_and_predict_through_the_checkpoint(arch: str, tiny, tmp_path: Path) -> None:
    faces, folds = tiny
    report = train_baselines(faces, folds, _cfg(tmp_path, arch))
    run = tmp_path / "runs" / arch
    assert arch in list_models() and [f.fold for f in report.folds] == [0, 1]
    assert report.oof_videos == 18 and 0 <= report.oof_logloss < 0.69 and report.oof_auc > 0.9  # learnable toy data
    for name in ("config.yaml", "metrics.csv", "oof.csv", "oof_faces.csv", "fold0/best.pt", "fold0/estimator.joblib",
                 "fold1/status.json", "features/features.npy"):
        assert (run / name).is_file(), name
    assert len(pd.read_csv(run / "oof_faces.csv")) == 48
    model, meta = load_checkpoint(run / "fold1" / "best.pt")
    assert meta["arch"] == arch and meta["kind"] == "frame" and meta["input"]["size"] == 32
    x = _crops(run, 10, 32)
    estimator = joblib.load(run / "fold1" / "estimator.joblib")
    features = np.load(run / "features" / FEATURES_FILE)[:10]
    want = estimator.predict_proba(features)[:, 1]
    with torch.no_grad():  # the checkpoint: frozen extractor -> the estimator's predict_proba, exactly
        assert np.allclose(fake_probability(model(x)).numpy(), want, atol=1e-6)
        export_half(run / "fold1" / "best.pt", tmp_path / "half.pt")
        half, _ = load_checkpoint(tmp_path / "half.pt")
        assert np.allclose(fake_probability(half(x)).numpy(), want, atol=0.05)
    again = train_baselines(faces, folds, _cfg(tmp_path, arch))  # finished folds are skipped
    assert all(f.skipped for f in again.folds) and again.oof_logloss == pytest.approx(report.oof_logloss)


def test_pixel_features_and_the_feature_cache(tiny, tmp_path: Path) -> None:
    import shutil

    faces = shutil.copytree(tiny[0], tmp_path / "faces")  # its index is changed below
    folds = tiny[1]
    cfg = _cfg(tmp_path, "logreg", "baseline.features=pixels", "model.pretrained=imagenet")
    assert resolve_config(cfg).model.backbone == "pixels" and resolve_config(cfg).model.pretrained == "none"
    train_baselines(faces, folds, cfg)
    run = tmp_path / "runs" / "logreg"
    assert np.load(run / "features" / FEATURES_FILE).shape == (48, 768)  # 16 x 16 x 3 pixels per crop
    model, meta = load_checkpoint(run / "fold0" / "best.pt")
    assert meta["config"]["model"]["backbone"] == "pixels" and model.feature_dim == 768
    stamp = (run / "features" / META_FILE).stat().st_mtime_ns
    crops = {str(faces / p) for p in pd.read_csv(faces / "faces.csv")["path"]}
    stats: list[str] = []
    real_stat = os.stat

    def counting(path, *args, **kwargs):  # noqa: ANN001, ANN202
        if str(path) in crops:
            stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    from dfdc.data import load_training_data
    from dfdc.distributed import Dist
    from dfdc.features import run_features

    data = load_training_data(faces, folds)
    spec = load_checkpoint(run / "fold0" / "best.pt")[0].input_spec
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "stat", counting)
        reused = run_features(resolve_config(cfg), data.table, run, Dist(), spec)  # no stat of 48 (1.6 M) crops
    assert not stats and reused.array.shape == (48, 768) and not reused.array.flags.writeable  # memory-mapped
    train_baselines(faces, folds, cfg, resume=False)  # refit: the features are reused
    assert (run / "features" / META_FILE).stat().st_mtime_ns == stamp
    pd.read_csv(faces / "faces.csv").iloc[:-2].to_csv(faces / "faces.csv", index=False)  # other crops
    train_baselines(faces, folds, cfg, resume=False)
    assert (run / "features" / META_FILE).stat().st_mtime_ns != stamp  # ... so they are recomputed
    assert np.load(run / "features" / FEATURES_FILE).shape == (46, 768)


def test_bad_feature_choice_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="baseline.features='hog'"):
        resolve_config(_cfg(tmp_path, "svm", "baseline.features=hog"))


def test_svm_platt_folds_group_by_the_folds_tables_group(tiny, tmp_path: Path, monkeypatch) -> None:
    """Identity folds keep an actor's originals in one group: the svm's calibration folds must
    group by the folds table's ``group`` too, not re-derive each fake's original."""
    import dfdc.baselines as baselines_module

    faces, folds = tiny
    table = pd.read_csv(folds)
    table["group"] = "actor" + (table["group"].str[4:7].astype(int) // 2).astype(str)  # two originals per actor
    table.to_csv(tmp_path / "folds.csv", index=False)
    seen = []
    real_fit = baselines_module.fit_estimator

    def spy(name, x, y, groups, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.append(set(np.asarray(groups).tolist()))
        return real_fit(name, x, y, groups, *args, **kwargs)

    monkeypatch.setattr(baselines_module, "fit_estimator", spy)
    train_baselines(faces, tmp_path / "folds.csv", _cfg(tmp_path, "svm", "train.folds=0"))
    train_part = table[table["fold"] != 0]
    assert seen == [set(train_part["group"])] and all(g.startswith("actor") for g in seen[0])
