"""dfdc.models.checkpoint: metadata without the weights, fp16 export that keeps what fp16 cannot hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dfdc.baselines import fit_estimator
from dfdc.config import load_config
from dfdc.models import (
    CheckpointError, checkpoint_meta, create_model, export_half, fake_probability, load_checkpoint, save_checkpoint,
    to_half,
)


GREY = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)  # the crops the near-constant feature is fitted on


def _baseline(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A fitted logistic regression on pixel features whose scaler has one near-constant
    feature (scale 1e-8: 0 in fp16, so a plain fp16 cast divides by zero)."""
    cfg = load_config("smoke-random", ["model.arch=logreg", "model.backbone=pixels", "model.pretrained=none"])
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, model.feature_dim))
    model.set_estimator(fit_estimator("logreg", x, np.arange(40) % 2, np.arange(40) // 2, cfg.baseline, 0))
    with torch.no_grad():
        model.scale[0] = 1e-8
        model.mean[0] = model.features(GREY)[0, 0]  # the feature's value on these crops
    path = tmp_path / "fold0" / "best.pt"
    save_checkpoint(path, model, cfg, {"fold": 0, "val_logloss": 0.3})
    return model, path


def test_meta_is_the_checkpoint_without_its_weights(tmp_path: Path) -> None:
    model, path = _baseline(tmp_path)
    meta = checkpoint_meta(path)
    assert "state_dict" not in meta and meta["arch"] == "logreg" and meta["val_logloss"] == 0.3
    assert meta == load_checkpoint(path)[1]  # the same metadata as a full load gives
    assert meta["fp32"] == ["mean", "scale", "head", "platt"]  # the model's float32 parts, recorded


def test_half_export_keeps_the_baselines_scaler_in_float32(tmp_path: Path) -> None:
    model, path = _baseline(tmp_path)
    meta = export_half(path, tmp_path / "half.pt")
    assert meta == checkpoint_meta(path)  # the bundle reads its architecture from this, no second load
    state = torch.load(tmp_path / "half.pt", weights_only=True)["state_dict"]
    assert state["scale"].dtype == torch.float32 and float(state["scale"][0]) == pytest.approx(1e-8)
    assert state["head.0.weight"].dtype == torch.float32  # the fitted estimator too
    floats = {k for k, v in state.items() if v.dtype == torch.float32}
    assert floats == {"mean", "scale", "head.0.weight", "head.0.bias", "platt"}  # everything else is halved
    half, _ = load_checkpoint(tmp_path / "half.pt")  # the kernel's CPU plan: float32 again, weights rounded
    with torch.no_grad():
        want = fake_probability(model(GREY))
        got = fake_probability(half(GREY))
    assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-3)


def test_a_half_model_keeps_its_float32_state(tmp_path: Path) -> None:
    """The predictor's fp16 path (to_half) on a baseline: the scaler stays float32, the
    network halves, the output is finite (on a GPU as here on the CPU); a plain ``half()``
    divides by the scale rounded to 0."""
    import copy

    model, _ = _baseline(tmp_path)
    with torch.no_grad():
        plain = fake_probability(copy.deepcopy(model).half()(GREY))
        half = to_half(model)
        assert half.scale.dtype == torch.float32 and half.head[0].weight.dtype == torch.float32
        floats = {k for k, v in half.state_dict().items() if v.dtype == torch.float32}
        assert floats == {"mean", "scale", "head.0.weight", "head.0.bias", "platt"}  # everything else halves
        got = fake_probability(half(GREY))
    assert not torch.isfinite(plain).all()  # what the fp32 state prevents
    assert torch.isfinite(got).all()


def test_a_resume_file_is_refused_as_training_state(tmp_path: Path) -> None:
    torch.save({"model": {}, "optimizer": {"state": {}}, "epoch": 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"training state \['optimizer'\].*best.pt"):
        checkpoint_meta(tmp_path / "last.pt")
