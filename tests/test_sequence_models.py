"""dfdc.models.sequence: lstm / gru over a frame backbone; forward, backward, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfdc.config import ConfigError, ModelConfig, load_config
from dfdc.models import (
    create_model, default_input, export_half, fake_probability, list_models, load_checkpoint, model_kind,
    model_requirements, save_checkpoint,
)

SEQUENCE_ARCHS = ("lstm", "gru")


def _cfg(arch: str, backbone: str = "tiny-cnn", **model: object):
    cfg = load_config("smoke-random", [f"model.arch={arch}", f"model.backbone={backbone}", "model.pretrained=none",
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
    assert arch in list_models() and model_kind(arch) == "sequence" and model.kind == "sequence"
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
    """model.trainable (study 000) freezes the backbone's lower layers; the recurrent head trains.
    The backbone's own classifier is gone: the model reads its features only."""
    model = create_model(_cfg("lstm", trainable="head").model, 32)
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and not [n for n, _ in model.named_parameters() if n.startswith("backbone.fc.")]
    assert all(p.requires_grad for p in model.rnn.parameters()) and all(p.requires_grad for p in model.head.parameters())


@pytest.mark.parametrize("arch", SEQUENCE_ARCHS)
@pytest.mark.parametrize("trainable", ["all", "top50"])
def test_every_trainable_parameter_gets_a_gradient(arch: str, trainable: str) -> None:
    """Fine-tuning (sequence.mode=finetune): no trainable parameter is left off the path (an unused
    one -- the backbone's classifier -- stops DistributedDataParallel at its second step)."""
    torch.manual_seed(0)
    model = create_model(_cfg(arch, trainable=trainable).model, 32).train()
    x = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_finetuned_sequence_model_steps_under_ddp(tmp_path: Path) -> None:
    """The review's reproduction: lstm over tiny-cnn in DistributedDataParallel (gloo, one rank),
    three SGD steps; with an unused trainable parameter the second step raises."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(create_model(_cfg("lstm").model, 32).train())
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        x = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
            optimizer.step()
    finally:
        dist.destroy_process_group()


def test_checkpoint_saved_with_the_backbone_head_still_loads(tmp_path: Path) -> None:
    """Checkpoints written while sequence models kept the backbone's classifier (backbone.fc.*)
    load; so do a whole frame model's weights into the headless backbone (the frozen mode)."""
    torch.manual_seed(2)
    cfg = _cfg("gru")
    model = create_model(cfg.model, 32).eval()
    save_checkpoint(tmp_path / "best.pt", model, cfg, {"fold": 0})
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("backbone.fc.")]
    ckpt["state_dict"]["backbone.fc.weight"] = torch.zeros(2, model.feature_dim)  # as written before
    ckpt["state_dict"]["backbone.fc.bias"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "old.pt")
    again, _ = load_checkpoint(tmp_path / "old.pt")
    x = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)
    whole = create_model(ModelConfig(arch="tiny-cnn", pretrained="none")).state_dict()
    assert "fc.weight" in whole
    model.backbone.load_state_dict(whole)  # strict: the head's keys are ignored, the rest must fit


def test_bn_momentum_reaches_the_backbone() -> None:
    model = create_model(_cfg("lstm", bn_momentum=0.07).model, 32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.07 for m in norms)

