"""dfdc.calibrate: OOF calibration lowers log loss on overconfident predictions, guards tiny sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfdc.aggregate import finalize
from dfdc.calibrate import CalibrationError, apply_calibration, calibrate, load_calibration
from dfdc.cli import main
from dfdc.config import PredictConfig
from dfdc.metrics import log_loss


def write_oof(run: Path, videos: int, sharpness: float, faces: int = 8, seed: int = 0) -> pd.DataFrame:
    """oof_faces.csv of a model that is right ~80% of the time but ``sharpness`` x too sure."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(videos):
        label = int(rng.random() < 0.5)
        video_signal = (1.0 if label else -1.0) + rng.normal(0.0, 1.2)  # some videos look wrong
        for f in range(faces):
            logit = sharpness * (video_signal + rng.normal(0.0, 0.5))
            rows.append({"video": f"v{v:04d}.mp4", "label": label, "fold": v % 3, "frame": f, "face": 0,
                         "prob": 1.0 / (1.0 + np.exp(-logit))})
    df = pd.DataFrame(rows)
    run.mkdir(parents=True, exist_ok=True)
    df.to_csv(run / "oof_faces.csv", index=False)
    return df


def test_calibration_lowers_overconfident_oof_logloss(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "x"
    faces = write_oof(run, videos=300, sharpness=6.0)
    cfg = PredictConfig(clip=0.01)
    result = calibrate(run, cfg)
    assert result["videos"] == 300 and result["faces"] == 2400 and not result["guarded"]
    assert result["oof_logloss_after"] < 0.8 * result["oof_logloss_before"], result
    assert result["temperature"] > 1.5  # overconfidence is undone by softening
    saved = json.loads((run / "calibration.json").read_text())
    for key in ("aggregation", "temperature", "clip", "oof_logloss_before", "oof_logloss_after", "videos"):
        assert saved[key] == result[key]
    assert (run / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    # the numbers are reproducible from the shared aggregation code
    calibrated = apply_calibration(cfg, load_calibration(run))
    by_video = faces.groupby("video")
    y = by_video["label"].first().to_numpy()
    p_after = [finalize(g.to_numpy(), calibrated) for _, g in by_video["prob"]]
    p_before = [finalize(g.to_numpy(), PredictConfig(aggregation="mean", clip=0.01)) for _, g in by_video["prob"]]
    assert log_loss(y, p_after) == pytest.approx(result["oof_logloss_after"], rel=1e-9)
    assert log_loss(y, p_before) == pytest.approx(result["oof_logloss_before"], rel=1e-9)


def test_never_worse_than_before_on_calibrated_predictions(tmp_path: Path) -> None:
    write_oof(tmp_path, videos=250, sharpness=1.0, seed=3)
    result = calibrate(tmp_path, PredictConfig())
    assert result["oof_logloss_after"] <= result["oof_logloss_before"]
    assert 0.5 <= result["temperature"] <= 2.0


def test_small_oof_set_only_softens(tmp_path: Path) -> None:
    # under-confident predictions would call for T < 1 and a tiny clip: not allowed on 40 videos
    write_oof(tmp_path, videos=40, sharpness=0.4, seed=1)
    cfg = PredictConfig(clip=0.01, calib_min_videos=200)
    guarded = calibrate(tmp_path, cfg)
    assert guarded["guarded"] and guarded["temperature"] >= 1.0 and guarded["clip"] >= 0.01
    free = calibrate(tmp_path, PredictConfig(clip=0.01, calib_min_videos=10))
    assert not free["guarded"] and free["temperature"] < 1.0
    assert free["oof_logloss_after"] < guarded["oof_logloss_after"]


def test_bad_oof_files(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="oof_faces.csv not found.*dfdc train"):
        calibrate(tmp_path, PredictConfig())
    (tmp_path / "oof_faces.csv").write_text("video,label,prob\na.mp4,1,0.5\n")
    with pytest.raises(CalibrationError, match=r"missing column\(s\) fold, frame, face "):
        calibrate(tmp_path, PredictConfig())
    (tmp_path / "oof_faces.csv").write_text("video,label,fold,frame,face,prob\na.mp4,1,0,0,0,1.5\n")
    with pytest.raises(CalibrationError, match=r"prob must hold numbers in \[0, 1\]"):
        calibrate(tmp_path, PredictConfig())
    (tmp_path / "oof_faces.csv").write_text("video,label,fold,frame,face,prob\na.mp4,1,0,0,0,0.5\na.mp4,0,0,1,0,0.5\n")
    with pytest.raises(CalibrationError, match="two labels"):
        calibrate(tmp_path, PredictConfig())
    assert not (tmp_path / "calibration.json").exists()
    (tmp_path / "calibration.json").write_text("{")
    with pytest.raises(CalibrationError, match="unreadable"):
        load_calibration(tmp_path)
    with pytest.raises(CalibrationError, match="out of range"):
        apply_calibration(PredictConfig(), {"aggregation": "mean", "temperature": 1.0, "clip": 0.7})


def test_cli_calibrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_oof(tmp_path / "run", videos=60, sharpness=6.0, seed=2)
    assert main(["calibrate", "--run", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "60 out-of-fold videos (480 faces); fewer than 200: only softening allowed" in out
    before = float(out.split("before ")[1].split()[0])
    after = float(out.split("after ")[1].split()[0])
    assert after < before
    assert main(["calibrate", "--run", str(tmp_path / "nothing")]) == 1
    assert "not found" in capsys.readouterr().err


def test_confident_rule_parameters_travel_with_the_calibration() -> None:
    calibration = {"aggregation": "confident", "temperature": 1.5, "clip": 0.02,
                   "confident_threshold": 0.7, "confident_min_fraction": 0.2, "confident_real_fraction": 0.8}
    cfg = apply_calibration(PredictConfig(confident_threshold=0.9), calibration)
    assert (cfg.aggregation, cfg.temperature, cfg.clip) == ("confident", 1.5, 0.02)
    assert (cfg.confident_threshold, cfg.confident_min_fraction, cfg.confident_real_fraction) == (0.7, 0.2, 0.8)
    mine = apply_calibration(PredictConfig(clip=0.05), calibration, explicit={"clip"})
    assert mine.clip == 0.05 and mine.temperature == 1.5  # a key the user set wins
