"""dfdc.compare: systems on the same folds -> compare.csv / compare.png, resume, failures, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_data import make_tiny_faces
from test_video import astronaut_frames, make_clip

from dfdc.cli import main as cli_main
from dfdc.compare import (
    COLUMNS, SYSTEMS, HeldOut, Predicted, System, SystemJob, Trained, compare, frame_system, oof_scores, predict_frame,
    register_system, resolve_systems, train_frame,
)
from dfdc.config import ConfigError, load_config

TINY = ["train.size=32", "train.batch_size=8", "train.epochs=1", "train.steps_per_epoch=2", "train.folds=all",
        "predict.frames=4", "predict.workers=0"]
STUDY_SYSTEMS = ("custom-cnn", "reseption-v1", "reseption-v2", "xception", "inception-v3", "inception-resnet-v2",
                 "resnet50", "resnet152", "resnext101", "vgg16", "efficientnet-b5", "tf-efficientnet-b7-ns")


def make_heldout(root: Path, frames: int) -> tuple[Path, Path]:
    """Two held-out videos (``root/test_videos``) of ``frames`` frames and their labels (a REAL, b FAKE)."""
    videos = root / "test_videos"
    videos.mkdir()
    make_clip(videos / "a.mp4", astronaut_frames(frames, seed=1))
    make_clip(videos / "b.mp4", astronaut_frames(frames, seed=2))
    labels = root / "labels.csv"
    pd.DataFrame({"filename": ["a.mp4", "b.mp4"], "label": [0, 1]}).to_csv(labels, index=False)
    return videos, labels


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny crops + 2 folds, and two held-out videos with labels."""
    root = tmp_path_factory.mktemp("compare")
    faces, folds = make_tiny_faces(root)
    videos, labels = make_heldout(root, 4)
    return {"root": root, "faces": faces, "folds": folds, "videos": videos, "labels": labels}


CALLS: list[str] = []


def _constant_train(job: SystemJob) -> Trained:
    """A system of the other kind: not a frame model; predicts 0.5 for everything."""
    CALLS.append(f"train {job.name}")
    table = pd.read_csv(job.folds_csv)
    oof = pd.DataFrame({"video": table["video"], "label": (table["label"] == "FAKE").astype(int),
                        "fold": table["fold"], "pred": 0.5})
    return Trained(oof, params=0, seconds=1.5)


def _constant_predict(job: SystemJob, heldout: HeldOut) -> Predicted:
    CALLS.append(f"predict {job.name}")
    names = sorted(p.name for p in heldout.videos_dir.glob("*.mp4"))
    heldout.out_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"filename": names, "label": 0.5}).to_csv(heldout.out_csv, index=False)
    return Predicted(len(names))


def _broken_train(job: SystemJob) -> Trained:
    raise RuntimeError("this system is broken on purpose")


CONSTANT = System("test-constant", _constant_train, _constant_predict, kind="baseline", study="test")
BROKEN = System("test-broken", _broken_train, _constant_predict, kind="baseline", study="test")
# a frame model through the kit's stages whose depth the command's --set chooses (the registered
# custom-cnn pins study 000's configuration in its own overrides)
CNN = System("test-cnn", train_frame, predict_frame, ("model.arch=custom-cnn",), study="test")
for _system in (CONSTANT, BROKEN, CNN):
    if _system.name not in SYSTEMS:
        register_system(_system)


def _run(inputs: dict[str, Path], systems: str, *extra: str, resume: bool = True):
    torch.set_num_threads(1)
    cfg = load_config("compare", [*TINY, *extra])
    return compare(resolve_systems(systems), inputs["faces"], inputs["folds"], cfg, inputs["root"] / "out",
                   inputs["root"] / "runs", inputs["videos"], None, inputs["labels"], resume=resume)


def test_every_frame_model_of_the_studies_is_a_system() -> None:
    assert set(STUDY_SYSTEMS) <= set(SYSTEMS)
    assert all(SYSTEMS[name].overrides[0] == f"model.arch={name}" for name in STUDY_SYSTEMS)
    with pytest.raises(ValueError, match="already registered"):
        frame_system("custom-cnn", "000")
    with pytest.raises(ConfigError, match="unknown.*nope"):
        resolve_systems("custom-cnn,nope")


def test_oof_scores_pool_and_spread_over_folds() -> None:
    oof = pd.DataFrame({"video": list("abcdef"), "label": [0, 1, 0, 1, 0, 1], "fold": [0, 0, 0, 1, 1, 1],
                        "pred": [0.1, 0.9, 0.2, 0.4, 0.6, 1.0]})
    scores = oof_scores(oof, clip=0.01)
    assert scores["folds"][0]["auc"] == 1.0 and scores["folds"][1]["auc"] == 0.5
    assert scores["auc_std"] == pytest.approx(0.25)
    assert scores["logloss"] == pytest.approx((scores["folds"][0]["logloss"] + scores["folds"][1]["logloss"]) / 2)
    assert scores["folds"][1]["logloss"] > scores["folds"][0]["logloss"]
    wrong = oof_scores(oof.assign(pred=[1.0, 0.9, 0.2, 0.4, 0.6, 1.0]), clip=0.01)  # a REAL video at 1.0
    want = -(np.log(0.01) + np.log(0.9) + np.log(0.8)) / 3  # the 1.0 scored as 0.99: -log(0.01), not 34.5
    assert wrong["folds"][0]["logloss"] == pytest.approx(want)


def test_a_remade_split_is_not_served_from_the_old_results(inputs: dict[str, Path], tmp_path: Path) -> None:
    """compare's reuse is keyed on the folds' content, not their path: the same folds.csv
    rewritten with another split trains the system again."""
    folds = tmp_path / "folds.csv"
    table = pd.read_csv(inputs["folds"])
    table.to_csv(folds, index=False)
    cfg = load_config("compare", TINY)

    def run() -> list[str]:
        CALLS.clear()
        report = compare(resolve_systems("test-constant"), inputs["faces"], folds, cfg, tmp_path / "out",
                         tmp_path / "runs")
        return report.skipped

    assert run() == [] and CALLS == ["train test-constant"]
    assert run() == ["test-constant"] and CALLS == []  # unchanged inputs: reused
    table.assign(fold=1 - table["fold"]).to_csv(folds, index=False)  # the same path, another split
    assert run() == [] and CALLS == ["train test-constant"]


def test_compare_writes_the_table_resumes_and_isolates_failures(inputs: dict[str, Path]) -> None:
    CALLS.clear()
    report = _run(inputs, "test-cnn,test-constant,test-broken", "model.custom_depth=2")
    table = pd.read_csv(report.csv, keep_default_na=False)
    assert list(table.columns) == COLUMNS
    assert table["system"].tolist() == ["test-cnn", "test-constant", "test-broken"]
    assert report.failed == ["test-broken"] and "broken on purpose" in table.loc[2, "error"]
    assert report.png.is_file() and report.png.stat().st_size > 10_000
    cnn = table.iloc[0]
    assert cnn["error"] == "" and int(cnn["folds"]) == 2 and int(cnn["params"]) > 1000
    assert cnn["init"] == "random" and table["study"].tolist() == ["test"] * 3  # the run's pretrained: none
    for key in ("oof_logloss", "oof_auc", "oof_logloss_std", "heldout_logloss", "heldout_auc",
                "train_seconds", "predict_s_per_video", "wall_seconds"):
        assert float(cnn[key]) >= 0, key
    run = inputs["root"] / "runs" / "test-cnn"
    assert (run / "fold0" / "best.pt").is_file() and (run / "fold1" / "best.pt").is_file()
    assert not list(run.glob("fold*/last.pt"))  # resume state of finished folds is dropped
    sub = inputs["root"] / "out" / "test-cnn"
    assert pd.read_csv(sub / "submission.csv")["filename"].tolist() == ["a.mp4", "b.mp4"]
    assert (sub / "report.json").is_file()
    stages = json.loads((sub / "result.json").read_text())["predict_stages_per_video"]
    assert {"decode", "detect", "model"} <= set(stages)  # the predictor's own stage timings
    # the same OOF predictions scored by hand: the table is dfdc.train's oof.csv through the metric
    oof = pd.read_csv(run / "oof.csv")
    assert float(cnn["oof_logloss"]) == pytest.approx(oof_scores(oof, 0.01)["logloss"])
    constant = table.iloc[1]
    assert float(constant["oof_logloss"]) == pytest.approx(0.693147, abs=1e-5)
    assert float(constant["heldout_logloss"]) == pytest.approx(0.693147, abs=1e-5)
    assert float(constant["train_seconds"]) == 1.5  # the system's own figure wins over wall time
    assert CALLS == ["train test-constant", "predict test-constant"]

    stamp = (run / "fold0" / "best.pt").stat().st_mtime_ns
    again = _run(inputs, "test-cnn,test-constant", "model.custom_depth=2")
    assert again.skipped == ["test-cnn", "test-constant"] and CALLS == ["train test-constant", "predict test-constant"]
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == stamp
    assert pd.read_csv(again.csv)["oof_logloss"].tolist() == pd.read_csv(report.csv)["oof_logloss"].tolist()[:2]

    changed = _run(inputs, "test-cnn", "model.custom_depth=3")  # another configuration: trained afresh
    assert changed.skipped == [] and (run / "fold0" / "best.pt").stat().st_mtime_ns != stamp
    assert int(pd.read_csv(changed.csv).loc[0, "params"]) != int(cnn["params"])


def test_compare_cli(inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["compare", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in STUDY_SYSTEMS) and "0.42798" in listed
    assert cli_main(["compare", "--systems", "nope", "--faces", str(inputs["faces"])]) == 2
    assert cli_main(["compare", "--systems", "test-constant"]) == 2  # no data given
    out = inputs["root"] / "cli_out"
    code = cli_main(["compare", "--profile", "compare", "--systems", "test-constant", "--faces", str(inputs["faces"]),
                     "--folds", str(inputs["folds"]), "--videos", str(inputs["videos"]), "--labels",
                     str(inputs["labels"]), "--out", str(out), "--runs", str(inputs["root"] / "cli_runs")])
    assert code == 0
    assert pd.read_csv(out / "compare.csv")["system"].tolist() == ["test-constant"] and (out / "compare.png").is_file()


def test_crop_settings_come_from_the_faces_folder(tmp_path: Path) -> None:
    from dfdc.compare import _faces_config

    (tmp_path / "config.yaml").write_text("faces: {size: 77, margin: 0.5, retired_key: 1}\n"
                                          "train: {max_steps_per_epoch: 3}\n")  # an older kit's folder
    cfg = _faces_config(load_config("compare"), tmp_path)
    assert cfg.faces.size == 77 and cfg.faces.margin == 0.5
    assert _faces_config(load_config("compare"), tmp_path / "none").faces.size == 128  # no file: the profile's
