"""The run you ship is the run you trained: runs/LATEST, the run's own configuration, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

import dfdc.cli.kernel as kernel_cli
from dfdc.cli import main
from dfdc.config import ConfigError, load_config, read_config, save_config
from dfdc.kaggle import KernelError
from dfdc.runconfig import (
    default_submission, read_latest, resolve_run, run_config, write_latest,
)


@pytest.fixture()
def smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder trained with the smoke profile (its config.yaml; no weights needed to be refused)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DFDC_VIA_MAKE", raising=False)
    run = Path("runs") / "demo"
    run.mkdir(parents=True)
    cfg = load_config("smoke", ["train.epochs=3"])  # a run-owned key the smoke profile does not say
    cfg.train.name = "demo"
    save_config(cfg, run / "config.yaml")
    return run


class Captured(Exception):
    """Raised by the stand-in for build_bundle: what the bundle would have been built from."""


def _capture_bundle(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {}

    def build(run: Path, out: Path, cfg, username: str, explicit=()):  # noqa: ANN001 - the real signature
        seen.update(run=run, cfg=cfg)
        raise KernelError("captured")

    monkeypatch.setattr(kernel_cli, "build_bundle", build)
    return seen


def test_bundling_a_smoke_run_with_the_b7_profile_refuses(smoke_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    seen = _capture_bundle(monkeypatch)
    assert main(["kernel", "--models", str(smoke_run), "--profile", "b7"]) == 2
    err = capsys.readouterr().err
    assert "trained with profile 'smoke'" in err and "--profile b7" in err and str(smoke_run) in err
    assert not seen  # nothing was built


def test_the_bundle_takes_the_runs_own_configuration(smoke_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    seen = _capture_bundle(monkeypatch)
    assert main(["kernel", "--models", str(smoke_run), "--set", "kernel.time_budget=100"]) == 1
    want = read_config(smoke_run / "config.yaml")
    cfg = seen["cfg"]
    assert cfg.profile == "smoke" and cfg.train.epochs == 3  # the run's, not the default profile's (b7)
    assert cfg.predict == want.predict and cfg.model == want.model and cfg.faces == want.faces
    assert cfg.kernel.time_budget == 100  # a key that did not shape the models: the user's
    seen.clear()
    assert main(["kernel", "--models", str(smoke_run), "--profile", "smoke"]) == 1  # its own profile: fine
    assert seen["cfg"].train.epochs == 3


@pytest.mark.parametrize("item", ["model.arch=efficientnet-b7", "faces.size=240", "train.epochs=30"])
def test_a_set_that_contradicts_the_run_is_refused(smoke_run: Path, item: str) -> None:
    key, value = item.split("=")
    with pytest.raises(ConfigError, match=f"--set {item} contradicts the run .*{key}="):
        run_config(smoke_run, None, [item])
    section, name = key.split(".")
    same = getattr(getattr(read_config(smoke_run / "config.yaml"), section), name)
    assert getattr(getattr(run_config(smoke_run, None, [f"{key}={same}"]), section), name) == same  # the same value: fine


def test_predict_and_calibrate_keys_stay_the_users(smoke_run: Path) -> None:
    cfg = run_config(smoke_run, None, ["predict.frames=3", "predict.workers=0", "calibrate.min_videos=5"])
    assert (cfg.predict.frames, cfg.predict.workers, cfg.calibrate.min_videos) == (3, 0, 5)
    assert cfg.train.epochs == 3


@pytest.mark.parametrize("command", [["predict", "--videos", "v"], ["calibrate", "--data", "d", "--folds", "f"]])
def test_predict_and_calibrate_refuse_another_profile(smoke_run: Path, command: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    flag = "--models" if command[0] == "predict" else "--run"
    assert main([*command, flag, str(smoke_run), "--profile", "b7"]) == 2
    assert "trained with profile 'smoke'" in capsys.readouterr().err


def test_latest_names_the_run_when_none_is_given(smoke_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    seen = _capture_bundle(monkeypatch)
    assert main(["kernel"]) == 2  # no run named, no runs/LATEST
    err = capsys.readouterr().err
    assert "runs/LATEST not found" in err and "--models runs/NAME" in err
    monkeypatch.setenv("DFDC_VIA_MAKE", "1")
    assert main(["kernel"]) == 2
    assert "RUN=NAME" in capsys.readouterr().err  # through make: the make variable

    write_latest("runs", {"run": smoke_run, "profile": "smoke", "data": "/data/dfdc", "faces": None})
    assert read_latest("runs") == {"run": "runs/demo", "profile": "smoke", "data": "/data/dfdc"}
    assert main(["kernel"]) == 1
    assert seen["run"] == smoke_run and seen["cfg"].profile == "smoke"
    assert "using run runs/demo (runs/LATEST)" in capsys.readouterr().err
    assert default_submission(resolve_run(None, "runs", "--submission")) == Path("submissions/demo/submission.csv")


def test_a_latest_file_without_a_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "LATEST").write_text("profile: b7\n")
    with pytest.raises(ConfigError, match="names no run"):
        read_latest(tmp_path)


def test_a_missing_run_folder_is_reported_by_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFDC_VIA_MAKE", "1")
    assert main(["kernel", "--models", "runs/nothing"]) == 1
    err = capsys.readouterr().err
    assert "run folder runs/nothing not found" in err and "RUN=NAME" in err and "holds no config.yaml" not in err


def test_kernel_labels_need_the_local_run_and_an_existing_file(smoke_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "--models", str(smoke_run), "--labels", "labels.csv"]) == 2
    assert "use it with --local" in capsys.readouterr().err
    (tmp_path / "data" / "test_videos").mkdir(parents=True)
    (tmp_path / "data" / "sample_submission.csv").write_text("filename,label\n")
    assert main(["kernel", "--models", str(smoke_run), "--local", "data", "--labels", "nolabels.csv"]) == 2
    assert "labels nolabels.csv not found" in capsys.readouterr().err
