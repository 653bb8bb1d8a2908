"""The Kaggle kernel bundles the other systems and runs them offline (make kernel-local, in
the image-like interpreter): a sequence model reading face tracks over an efficientnet-pytorch
backbone (whose wheel the bundle must ship for it), a scikit-learn baseline and a timm model
(its pinned timm wheel wins over the image's copy)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.baselines import fit_estimator
from dfdc.config import load_config, save_config
from dfdc.kaggle import build_bundle, run_local
from dfdc.models import create_model, save_checkpoint


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image") / "image-venv"  # shared by the local runs of this module


@pytest.mark.parametrize("arch,extra", [("lstm", ["model.backbone=efficientnet-b0"]),
                                        ("logreg", ["baseline.features=pixels", "model.backbone=pixels"]),
                                        ("resnet50", [])])
def test_local_kernel_runs_a_sequence_model_a_baseline_and_a_timm_model(arch: str, extra: list[str], mini_dfdc: Path,
                                                           tmp_path: Path, image_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Relative folders, as `make kernel-local` passes them (the kernel runs in another cwd)."""
    cfg = load_config("smoke-random", [f"model.arch={arch}", "model.rnn_hidden=128", "model.head_hidden=32",
                                "train.size=48", "predict.frames=6", "predict.workers=0", "kernel.cpu_workers=0",
                                "sequence.seq_len=4", f"kernel.wheel_cache={tmp_path / 'wheel-cache'}", *extra])
    run = tmp_path / "runs" / arch
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.train.size)
    if hasattr(model, "set_estimator"):
        x = np.random.default_rng(0).normal(size=(20, model.feature_dim))
        model.set_estimator(fit_estimator(arch, x, np.arange(20) % 2, np.arange(20) // 2, cfg.baseline, 0))
    save_checkpoint(run / "fold0" / "best.pt", model, cfg, {"fold": 0})
    save_config(cfg, run / "config.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CACHE_DIR", os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"))
        mp.chdir(tmp_path)
        bundle = build_bundle(Path("runs") / arch, Path("build"), cfg, "alice")
    assert "fold(s) 0 have not finished training" in capsys.readouterr().err  # saved without a finished status
    data = tmp_path / "data"
    (data / "test_videos").mkdir(parents=True)
    videos = sorted(p.name for p in (mini_dfdc / "test_videos").glob("*.mp4"))[:2]
    for name in videos:
        shutil.copyfile(mini_dfdc / "test_videos" / name, data / "test_videos" / name)
    pd.DataFrame({"filename": videos, "label": 0.5}).to_csv(data / "sample_submission.csv", index=False)

    monkeypatch.chdir(tmp_path)
    report = run_local(bundle, Path("data"), cfg, work_dir=Path("local"), image_dir=Path(os.path.relpath(image_dir)))

    log = report.log.read_text()
    assert report.status == "ok" and report.fallback_rows == 0, log
    if arch == "lstm":  # the backbone's library came from the bundle (the image has none)
        assert "efficientnet_pytorch 0.7.1 from" in log and "the library of model lstm" in log, log
    if arch == "resnet50":  # timm from the bundle, not the image's
        assert "timm 1.0.31 from" in log and "the library of model resnet50" in log, log
    predictions = pd.read_csv(tmp_path / "local" / "working" / "predictions.csv", keep_default_na=False)
    assert (predictions["reason"] == "").all() and (predictions["n_faces"] > 0).all(), log
    assert predictions["raw"].between(0, 1).all()
