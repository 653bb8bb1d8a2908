"""dfdc.models.sequence: lstm / gru over a frame backbone; forward, backward, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfdc.config import ConfigError, ModelConfig, load_config
from dfdc.models import (
    create_model, default_input, export_half, fake_probability, list_models, load_checkpoint, model_requirements,
    save_checkpoint,
)

SEQUENCE_ARCHS = ("lstm", "gru")


def _cfg(arch: str, backbone: str = "tiny-cnn", **model: object):
    cfg = load_config("smoke", [f"model.arch={arch}", f"model.backbone={backbone}", "model.pretrained=none",
                                "model.rnn_hidden=128", "model.head_hidden=32", "train.size=32"])
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


@pytest.mark.parametrize("arch", SEQUENCE_ARCHS)
@pytest.mark.parametrize("backbone", ["tiny-cnn", "efficientnet-b0"])
def test_builds_runs_forward_and_backward(arch: str, backbone: str) -> None:
    torch.manual_seed(0)
    cfg = _cfg(arch, backbone, rnn_layers=2)
    model = create_model(cfg.model, 32)
    assert arch in list_models() and model.kind == "sequence"
    assert model.input_spec == default_input(cfg.model, 32)  # the backbone's spec, at the asked side
    x = torch.randint(0, 256, (3, 4, 3, 32, 32), dtype=torch.uint8)  # N x T x 3 x H x W
    logits = model(x)
    assert logits.shape == (3, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    assert model.rnn.weight_hh_l1.grad is not None and model.rnn.weight_hh_l1.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())  # end to end
    model.eval()
    with torch.no_grad():  # cached features (N x T x D) give what the images give
        assert torch.allclose(model(model.frame_features(x)), model(x), atol=1e-5)


def test_frozen_backbone_trains_only_the_head() -> None:
    model = create_model(_cfg("lstm").model, 32)
    model.freeze_backbone()
    model.train()
    assert not model.backbone.training and model.rnn.training  # frozen BatchNorm statistics stay
    x = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    model(x).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head[-1].weight.grad is not None


def test_settings_out_of_the_studied_range_are_refused() -> None:
    with pytest.raises(ConfigError, match="model.rnn_layers=5"):
        create_model(_cfg("gru", rnn_layers=5).model)
    with pytest.raises(ConfigError, match="model.rnn_hidden=64"):
        create_model(_cfg("gru", rnn_hidden=64).model)
    with pytest.raises(ValueError, match="model.backbone='lstm'"):
        create_model(_cfg("gru", backbone="lstm").model)
    assert model_requirements(ModelConfig(arch="lstm", backbone="efficientnet-b0")) == ("efficientnet-pytorch",)


@pytest.mark.parametrize("arch", SEQUENCE_ARCHS)
def test_checkpoint_round_trip_and_half_export(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = _cfg(arch, rnn_layers=3, rnn_hidden=160)
    model = create_model(cfg.model, 40).eval()
    save_checkpoint(tmp_path / "best.pt", model, cfg, {"fold": 0})
    again, meta = load_checkpoint(tmp_path / "best.pt")
    assert meta["kind"] == "sequence" and meta["arch"] == arch and meta["input"]["size"] == 40
    assert again.rnn.num_layers == 3 and again.rnn.hidden_size == 160
    x = torch.randint(0, 256, (2, 5, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)
        export_half(tmp_path / "best.pt", tmp_path / "half.pt")
        half, _ = load_checkpoint(tmp_path / "half.pt")
        assert torch.allclose(fake_probability(half(x)), fake_probability(model(x)), atol=2e-2)


def test_transfer_settings_apply_to_the_backbone() -> None:
    """model.trainable (study 000) freezes the backbone's lower layers; the recurrent head trains."""
    model = create_model(_cfg("lstm", trainable="head").model, 32)
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(not n.startswith("fc.") for n in frozen)
    assert all(p.requires_grad for p in model.rnn.parameters()) and all(p.requires_grad for p in model.head.parameters())

