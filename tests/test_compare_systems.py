"""dfdc compare covers the sequence models and the baselines: same folds, same table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from test_compare import make_heldout
from test_sequences import make_track_faces

from dfdc.compare import SYSTEMS, compare, oof_scores, resolve_systems
from dfdc.config import load_config

OURS = {"lstm": "sequence", "gru": "sequence", "logreg": "baseline", "svm": "baseline", "mlp": "baseline"}


def test_sequence_models_and_baselines_are_systems() -> None:
    assert {name: SYSTEMS[name].kind for name in OURS} == OURS
    assert all(SYSTEMS[name].overrides[0] == f"model.arch={name}" for name in OURS)
    # the study each comes from (test_compare_studies checks every system's label and figure)
    assert {name: SYSTEMS[name].study for name in OURS} == {"lstm": "000", "gru": "000", "mlp": "000",
                                                            "logreg": "002", "svm": "002"}


def test_compare_trains_and_scores_them_on_the_same_folds(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    faces, folds = make_track_faces(tmp_path, n_real=4, fakes_per_real=2, crops_real=12, crops_fake=6, size=32)
    videos, labels = make_heldout(tmp_path, 6)
    cfg = load_config("compare", ["train.size=32", "train.batch_size=4", "train.folds=all", "predict.frames=6",
                                  "predict.workers=0", "model.rnn_hidden=128"])
    report = compare(resolve_systems("lstm,logreg"), faces, folds, cfg, tmp_path / "out", tmp_path / "runs", videos,
                     None, labels)
    table = pd.read_csv(report.csv, keep_default_na=False)
    assert table["system"].tolist() == ["lstm", "logreg"] and not report.failed, table["error"].tolist()
    assert table["kind"].tolist() == ["sequence", "baseline"] and (table["folds"] == 2).all()
    assert table["init"].tolist() == ["imagenet", "imagenet"]  # both read the ImageNet Lite0 backbone's features
    for _, row in table.iterrows():
        oof = pd.read_csv(tmp_path / "runs" / row["system"] / "oof.csv")
        assert set(oof["video"]) == set(pd.read_csv(folds)["video"])  # every video of the same folds
        assert float(row["oof_logloss"]) == pytest.approx(oof_scores(oof, 0.01)["logloss"])
        assert 0 <= float(row["heldout_logloss"]) < 5 and float(row["predict_s_per_video"]) > 0
    assert (tmp_path / "runs" / "lstm" / "oof_tracks.csv").is_file()
    # the frozen Lite0 backbone, then on its 1280 features: the scaler's mean and scale, 1280 coefficients,
    # the intercept, the (identity) sigmoid
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    features = backbone.num_features
    assert features == 1280
    assert int(table.loc[1, "params"]) == sum(p.numel() for p in backbone.parameters()) + 3 * features + 1 + 2
