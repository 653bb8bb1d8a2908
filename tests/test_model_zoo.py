"""Every registered model (timm backbones, custom CNNs, Reseption): forward/backward, checkpoint
round trip, the predictor's ensemble; timm weights from a file; transfer settings (model.trainable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_data import make_tiny_faces

from dfdc.config import Config, ConfigError, ModelConfig, load_config
from dfdc.models import (
    PretrainedWeightsError, create_model, default_input, fake_probability, frame_models, list_models, save_checkpoint,
)
from dfdc.predict import load_ensemble
from dfdc.preprocess import InputSpec

NEEDS_75 = ("inception-v3", "inception-v3-transfer", "inception-resnet-v2", "reseption-v1", "reseption-v2",
            "reseption-ensemble")  # unpadded stems
TIMM_SPECS = {  # kit name -> (timm pretrained config it must read, default side, mean)
    "xception": ("legacy_xception.tf_in1k", 299, (0.5, 0.5, 0.5)),
    "inception-v3": ("inception_v3.tv_in1k", 299, (0.5, 0.5, 0.5)),
    "inception-resnet-v2": ("inception_resnet_v2.tf_in1k", 299, (0.5, 0.5, 0.5)),
    "resnet50": ("resnet50.tv_in1k", 224, (0.485, 0.456, 0.406)),
    "resnet152": ("resnet152.tv_in1k", 224, (0.485, 0.456, 0.406)),
    "resnext101": ("resnext101_32x8d.tv_in1k", 224, (0.485, 0.456, 0.406)),
    "vgg16": ("vgg16.tv_in1k", 224, (0.485, 0.456, 0.406)),
    "tf-efficientnet-b7-ns": ("tf_efficientnet_b7.ns_jft_in1k", 600, (0.485, 0.456, 0.406)),
}
STUDY_MODELS = (*TIMM_SPECS, "efficientnet-b5", "custom-cnn", "reseption-v1", "reseption-v2", "reseption-ensemble",
                "inception-v3-transfer", "simple-cnn", "simple-cnn-2", "custom-cnn-3-constant-128")


# efficientnet-b1..b4 and b6 are efficientnet-pytorch's b0/b5/b7 builder with other width/depth
# coefficients: they build and train here; the checkpoint and predictor path is b0's, b5's and b7's.
SAME_BUILDER = ("efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4", "efficientnet-b6")
# Table 1's 23 custom CNNs are one class with other filters: two of them take the full path here
# (tests/test_study_models.py builds and counts all 23)
TABLE_CNNS = [name for name in frame_models() if name.startswith("custom-cnn-")]
FULL_PATH = [name for name in frame_models() if name not in SAME_BUILDER
             and (name not in TABLE_CNNS or name in ("custom-cnn-2-ascending", "custom-cnn-5-descending"))]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: big backbones at tiny sizes are many small ops, which two threads on
    the shared cores ran several times slower (OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _size(arch: str) -> int:
    from dfdc.models.custom import custom_cnn_min_side

    if arch.startswith("custom-cnn-"):  # unpadded convs: 2 layers need 10 px, 5 layers 94
        return max(32, custom_cnn_min_side(int(arch.split("-")[2])))
    return 75 if arch in NEEDS_75 else 32


def _cfg(arch: str, *extra: str) -> Config:
    cfg = load_config("smoke-random", [f"model.arch={arch}", "model.pretrained=none", "faces.size=48", *extra])
    cfg.train.size = _size(arch)
    return cfg


def test_the_studies_models_are_registered() -> None:
    assert set(STUDY_MODELS) <= set(list_models())


@pytest.mark.parametrize("arch", SAME_BUILDER)
def test_efficientnet_variants_train(arch: str) -> None:
    model = create_model(_cfg(arch).model, 32).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)),
                                             torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and model.fc.weight.grad.abs().sum() > 0
    assert model.input_spec.size == 32 and default_input(arch).size > 224  # its native side by default


@pytest.mark.parametrize("arch", FULL_PATH)  # sequence models and baselines: test_sequence_models, test_baselines
def test_model_trains_saves_reloads_and_predicts(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg(arch)
    size = cfg.train.size
    model = create_model(cfg.model, size)
    assert model.input_spec == default_input(arch, size)
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)  # uint8, as the loaders give them
    y = torch.tensor([0, 1, 0, 1])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # every weight is on the path
    before = model.fc.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.fc.weight)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (4, 2) and torch.isfinite(logits).all()
        assert model.features(x).shape == (4, model.feature_dim)
    run = tmp_path / "run"
    save_checkpoint(run / "fold0" / "best.pt", model, cfg, {"fold": 0})
    ensemble, _ = load_ensemble(run, cfg.predict, ["cpu"])  # the predictor's loading (load_checkpoint)
    (spec,) = ensemble.specs
    ((loaded, _),) = ensemble.groups[spec]  # (model, device)
    assert loaded.input_spec == model.input_spec  # side and normalisation travelled in the checkpoint
    assert spec.input_size == size and spec.crop_size == 48
    with torch.no_grad():
        assert torch.allclose(loaded(x), logits, atol=1e-5)
    probs = ensemble.fake_probability({spec: x.numpy()})
    np.testing.assert_allclose(probs, fake_probability(logits).numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", sorted(TIMM_SPECS))
def test_timm_input_comes_from_the_pretrained_config(arch: str) -> None:
    from timm.models import get_pretrained_cfg

    name, side, mean = TIMM_SPECS[arch]
    pcfg = get_pretrained_cfg(name)
    spec = default_input(arch)
    assert spec == InputSpec(side, mean, tuple(pcfg.std)) and spec.size == pcfg.input_size[-1]
    assert default_input(arch, 96) == InputSpec(96, mean, tuple(pcfg.std))


def test_xception_is_chollets_and_vgg16_has_no_imagenet_classifier() -> None:
    xception = create_model(ModelConfig(arch="xception", pretrained="none"))
    # Chollet's Xception: 36 conv layers in 14 modules -> 2048 features (20.8M weights with
    # its 1000-way classifier removed); the aligned xception41 has 26.9M
    assert xception.encoder.default_cfg["architecture"] == "legacy_xception" and xception.feature_dim == 2048
    assert sum(p.numel() for p in xception.encoder.parameters()) == pytest.approx(20.8e6, rel=0.01)
    vgg = create_model(ModelConfig(arch="vgg16", pretrained="none"))
    assert isinstance(vgg.encoder.pre_logits, torch.nn.Identity) and vgg.feature_dim == 512
    assert sum(p.numel() for p in vgg.encoder.parameters()) == 14_714_688  # VGG16's 13 conv layers


NO_BATCHNORM = ("custom-cnn", *TABLE_CNNS, "simple-cnn", "simple-cnn-2", "lrcn-cnn", "vgg16", "pixels",
                "grey-pixels")  # studies 000 / 002 (and [3]) name none; VGG16 has none; pixels: no weights


@pytest.mark.parametrize("arch", frame_models())
def test_bn_momentum_reaches_every_batchnorm(arch: str) -> None:
    """model.bn_momentum, set once by create_model, reaches every family's BatchNorms (tiny-cnn
    ignored it while each family set it on its own)."""
    model = create_model(ModelConfig(arch=arch, pretrained="none", bn_momentum=0.07), _size(arch))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bool(norms) == (arch not in NO_BATCHNORM)
    assert all(m.momentum == 0.07 for m in norms)


def test_timm_weights_from_a_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("resnet50", pretrained=False)  # timm's own keys, ImageNet head included
    state = source.state_dict()
    files = {"model.safetensors": None, "full.pth": state, "wrapped.pth": {"state_dict": state},
             "no_counters.pth": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}}
    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
        else:
            torch.save(content, tmp_path / name)
    for name in files:
        model = create_model(ModelConfig(arch="resnet50", pretrained=str(tmp_path / name)))
        for key, value in model.encoder.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(value, state[key]), (name, key)
    # a dfdc checkpoint's weights (encoder. prefix, our fc head) load as backbone weights too
    cfg = _cfg("resnet50")
    trained = create_model(cfg.model)
    save_checkpoint(tmp_path / "ours.pt", trained, cfg, {})
    ours = torch.load(tmp_path / "ours.pt", weights_only=True)
    torch.save(ours["state_dict"], tmp_path / "ours_state.pt")
    again = create_model(ModelConfig(arch="resnet50", pretrained=str(tmp_path / "ours_state.pt")))
    assert torch.equal(again.encoder.conv1.weight, trained.encoder.conv1.weight)
    with pytest.raises(PretrainedWeightsError, match=r"do not fit.*--pretrained PATH"):
        create_model(ModelConfig(arch="xception", pretrained=str(tmp_path / "full.pth")))
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(PretrainedWeightsError, match="cannot be read"):
        create_model(ModelConfig(arch="resnet50", pretrained=str(tmp_path / "bad.safetensors")))

    def offline(*args: object, **kwargs: object) -> None:
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        raise AssertionError("built without weights")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError, match=r"cannot download.*resnet50.tv_in1k.*offline\?.*--pretrained PATH"):
        create_model(ModelConfig(arch="resnet50", pretrained="imagenet"))


def test_random_init_models_refuse_pretrained_weights_and_bad_settings() -> None:
    for arch in ("custom-cnn", "reseption-v1"):
        with pytest.raises(PretrainedWeightsError, match="no pretrained weights"):
            create_model(ModelConfig(arch=arch, pretrained="imagenet"))
    with pytest.raises(ConfigError, match="custom_depth=6"):
        create_model(ModelConfig(arch="custom-cnn", pretrained="none", custom_depth=6))
    with pytest.raises(ConfigError, match="custom_widths='wide'"):
        create_model(ModelConfig(arch="custom-cnn", pretrained="none", custom_widths="wide"))
    with pytest.raises(ConfigError, match="trainable='top0'"):
        create_model(ModelConfig(arch="resnet50", pretrained="none", trainable="top0"))


@pytest.mark.parametrize(("rule", "widths"), [("ascending", [32, 64, 96, 128]), ("descending", [256, 128, 64, 32]),
                                              ("constant", [16, 16, 16, 16])])
def test_custom_cnn_width_rules(rule: str, widths: list[int]) -> None:
    """Study 000's Table 1 (4 layers): ascending steps by 32, descending as listed; constant: the base."""
    model = create_model(ModelConfig(arch="custom-cnn", pretrained="none", custom_depth=4, custom_widths=rule,
                                     custom_base_width=16, custom_head_width=24), 64)
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths and model.feature_dim == 24
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.encoder) == 4
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.encoder) == 4


def test_reseption_blocks_are_residual_with_leaky_relu_and_xavier_init() -> None:
    """Study 001: every module is residual, V1 concatenates back to its width, V2 remaps with a
    1x1 before the sum; LeakyReLU 0.2 everywhere; Xavier normal weights with the LeakyReLU gain."""
    from dfdc.models.reseption import Residual, block_a, block_b, block_c

    v1 = create_model(ModelConfig(arch="reseption-v1", pretrained="none"))
    v2 = create_model(ModelConfig(arch="reseption-v2", pretrained="none"))
    for model in (v1, v2):
        assert sum(isinstance(m, Residual) for m in model.modules()) == 3 + 4 + 2  # Inception-V3's A, B, C counts
        acts = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
        assert acts and all(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in acts)
    assert all(isinstance(m.remap, torch.nn.Identity) for m in v1.modules() if isinstance(m, Residual))
    remaps = [m.remap[0] for m in v2.modules() if isinstance(m, Residual)]
    assert len(remaps) == 9 and all(c.kernel_size == (1, 1) for c in remaps)
    conv = v1.encoder[-1].branches[0][0]  # a 1x1 conv of the last C module: std = gain * sqrt(2 / (fan_in + fan_out))
    gain = (2 / (1 + 0.2**2)) ** 0.5
    expected = gain * (2 / (conv.in_channels + conv.out_channels)) ** 0.5
    assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.05)
    torch.manual_seed(0)
    for block, channels in ((block_a(192, "v1"), 192), (block_b(96, "v2"), 96), (block_c(64, "v2"), 64)):
        for m in block.modules():  # zero every BatchNorm's scale: the branches add 0 -> identity + LeakyReLU
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.zeros_(m.weight)
        x = torch.rand(2, channels, 9, 9)
        assert torch.allclose(block.eval()(x), x)


def _convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_reseption_reductions_carry_the_studys_filter_banks() -> None:
    """Figure 6.10: reduction A's m = 224 (V1) / 336 (V2); Figure 6.11: reduction B's (a .. f)."""
    from dfdc.models.reseption import Reduction

    for arch, m, tuple_b in (("reseption-v1", 224, (192, 320, 192, 192, 256, 320)),
                             ("reseption-v2", 336, (256, 392, 256, 256, 320, 392))):
        model = create_model(ModelConfig(arch=arch, pretrained="none"))
        red_a, red_b = [mod for mod in model.modules() if isinstance(mod, Reduction)]
        assert red_a.towers[0][0].out_channels == m and red_a.towers[0][0].stride == (2, 2)
        assert tuple(c.out_channels for c in _convs(red_b)) == tuple_b
        assert [c.kernel_size for c in _convs(red_b)] == [(1, 1), (3, 3), (1, 1), (1, 7), (7, 1), (3, 3)]


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_trainable_settings_freeze_all_but_the_top_layers() -> None:
    base = dict(arch="custom-cnn", pretrained="none", custom_depth=4)
    head = {"hidden.0.weight", "hidden.0.bias", "fc.weight", "fc.bias"}
    convs = ["encoder.0", "encoder.3", "encoder.6", "encoder.9"]  # the 4 conv layers, input side first

    def conv_params(names: list[str]) -> set[str]:
        return {f"{n}.{k}" for n in names for k in ("weight", "bias")}

    expected = {"all": head | conv_params(convs), "top50": head | conv_params(convs[2:]),
                "top25": head | conv_params(convs[3:]), "head": head}
    for setting, names in expected.items():
        assert _trainable_names(create_model(ModelConfig(**base, trainable=setting))) == names, setting
    # a real backbone: resnet50's 106 layers (53 convs + 53 BatchNorms); top25 trains ceil(26.5) = 27
    model = create_model(ModelConfig(arch="resnet50", pretrained="none", trainable="top25"))
    layers = model.backbone_layers()
    assert len(layers) == 106 and layers[0][0] == "encoder.conv1" and layers[-1][0] == "encoder.layer4.2.bn3"
    trainable_layers = [name for name, layer in layers if any(p.requires_grad for p in layer.parameters())]
    assert trainable_layers == [name for name, _ in layers[-27:]]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected_n = sum(p.numel() for _, layer in layers[-27:] for p in layer.parameters()) + 2048 * 2 + 2
    assert n_trainable == expected_n and n_trainable < 0.75 * sum(p.numel() for p in model.parameters())
    model.train()
    assert not model.encoder.bn1.training and not model.encoder.layer1[0].bn1.training  # frozen: eval
    assert model.encoder.layer4[2].bn3.training and model.training  # trainable: train mode


def test_frozen_layers_do_not_change_in_training_and_resume(tmp_path: Path) -> None:
    from dfdc.train import train

    torch.set_num_threads(1)
    faces, folds = make_tiny_faces(tmp_path)
    common = ["model.arch=efficientnet-b0", "model.pretrained=none", "model.trainable=top25", "train.size=32",
              "train.batch_size=8", "train.loader_workers=0", "train.lr=1e-2", "train.epochs=2", "train.folds=0",
              f"train.runs_dir={tmp_path / 'runs'}", "train.name=frozen"]
    cfg = load_config("smoke-random", common + ["train.stop_after_epochs=1"])
    torch.manual_seed(cfg.train.seed + 0)  # what dfdc.train seeds before building fold 0's model
    initial = create_model(cfg.model, cfg.train.size).state_dict()
    assert train(faces, folds, cfg).stopped_early
    report = train(faces, folds, load_config("smoke-random", common))  # resumes the fold: epoch 2 of 2
    assert report.folds[0].finished and report.folds[0].epochs_run == 2
    final = torch.load(tmp_path / "runs" / "frozen" / "fold0" / "last.pt", weights_only=False)["model"]
    model = create_model(cfg.model, cfg.train.size)
    frozen_layers = [name for name, layer in model.backbone_layers()
                     if not any(p.requires_grad for p in layer.parameters())]
    assert frozen_layers and len(frozen_layers) < len(model.backbone_layers())
    changed = {key for key in initial if not torch.equal(initial[key], final[key])}
    for name in frozen_layers:  # weights and BatchNorm running statistics alike
        assert not {k for k in changed if k.startswith(name + ".")}, name
    assert "fc.weight" in changed and any(k.startswith("encoder._bn1.") for k in changed)


def test_timm_and_reseption_models_through_the_predictor(tmp_path: Path) -> None:
    """Two folds of different systems and input sides in one run: the full per-video predictor."""
    from test_video import astronaut_frames, make_clip

    from dfdc.predict import predict_videos

    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip(videos / "a.mp4", astronaut_frames(4, seed=1))
    run = tmp_path / "run"
    for fold, arch in enumerate(("xception", "reseption-v2")):
        cfg = _cfg(arch)
        model = create_model(cfg.model, cfg.train.size).eval()
        save_checkpoint(run / f"fold{fold}" / "best.pt", model, cfg, {"fold": fold})
    cfg = _cfg("xception", "predict.frames=4", "predict.workers=0", "predict.aggregation=mean")
    report = predict_videos(videos, run, tmp_path / "sub" / "submission.csv", cfg, None, "cpu", progress=False)
    assert report.models == 2 and report.predicted == 1 and not report.fallbacks and report.faces >= 4
    table = pd.read_csv(tmp_path / "sub" / "predictions.csv", keep_default_na=False)
    assert table.loc[0, "reason"] == "" and 0 < table.loc[0, "raw"] < 1
