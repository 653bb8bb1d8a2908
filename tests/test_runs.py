"""dfdc.runs: the run folder's bookkeeping -- a fold's state is never used on other inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_data import make_tiny_faces
from test_train import _cfg

from dfdc.aggregate import CalibrationError
from dfdc.calibrate import calibrate
from dfdc.runs import INPUTS, InputsChangedError, check_run, has_state, reset_fold
from dfdc.train import train


def test_calibrate_refuses_a_split_the_run_did_not_train_on(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    faces, folds = make_tiny_faces(tmp_path)
    cfg = _cfg(tmp_path, "train.epochs=1", "train.folds=0")
    train(faces, folds, cfg)
    run = tmp_path / "runs" / "t"
    with pytest.raises(CalibrationError) as same:  # the split matches: the check passes, the missing data fails
        calibrate(run, tmp_path / "no-data", folds, cfg, device="cpu", progress=False)
    assert "other inputs" not in str(same.value)
    table = pd.read_csv(folds)
    table.loc[table["video"].str.startswith(("real000", "fake000")), "fold"] = 1
    table.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(CalibrationError, match="cannot calibrate fold 0 .* other inputs -- the folds table .*--folds"):
        calibrate(run, tmp_path / "no-data", tmp_path / "other.csv", cfg, device="cpu", progress=False)


def test_reset_removes_the_state_before_new_fingerprints(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "fold0"
    folder.mkdir(parents=True)
    for name in ("status.json", "last.pt", "best.pt", "oof.csv", "oof_faces.csv", "estimator.joblib"):
        (folder / name).write_text("old")
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.out.tfevents.1.host").write_text("old")
    old = {"folds": {"sha256": "a"}, "faces": {"sha256": "b"}}
    (folder / INPUTS).write_text('{"folds": {"sha256": "a"}, "faces": {"sha256": "b"}}')
    new = {"folds": {"sha256": "c"}, "faces": {"sha256": "b"}}
    with pytest.raises(InputsChangedError, match="cannot resume fold 0"):
        check_run(tmp_path / "run", new, [0], resumed={0})
    check_run(tmp_path / "run", new, [0], retrained={0})  # retrained: not checked
    check_run(tmp_path / "run", old, [0], resumed={0})
    reset_fold(folder, new)
    assert sorted(p.name for p in folder.iterdir()) == [INPUTS] and not has_state(folder)


def test_a_fold_that_has_not_finished_is_named_before_it_is_used(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A fold stopped early keeps a best.pt; calibrate and the bundle use it, and say so."""
    from dfdc.runs import finish_fold, warn_unfinished

    for fold in (0, 1):
        (tmp_path / f"fold{fold}").mkdir()
        (tmp_path / f"fold{fold}" / "best.pt").write_text("weights")
    finish_fold(tmp_path / "fold0", 0.3, 2, 3)
    assert warn_unfinished(tmp_path, [0, 1], "the bundle ships") == [1]
    said = capsys.readouterr().err
    assert "fold(s) 1 have not finished training" in said and "the bundle ships their best epoch so far" in said
    finish_fold(tmp_path / "fold1", 0.3, 2, 3)
    assert warn_unfinished(tmp_path, [0, 1], "the bundle ships") == [] and capsys.readouterr().err == ""
