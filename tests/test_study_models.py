"""The reference studies' systems as the studies describe them: each built and its parameters
counted against the study's own figure (at the study's input size, on the meta device: no
memory, no forward), the training options of studies 001 / 003 (RAdam, SGD with momentum, step
decay, ReduceLROnPlateau, the single-output sigmoid head), and one tiny training step plus the
predictor for each new system."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_data import make_tiny_faces
from test_sequences import make_track_faces

from dfdc.config import ConfigError, ModelConfig, load_config
from dfdc.models import (
    class_loss, create_model, fake_probability, load_checkpoint, model_kind, model_requirements, save_checkpoint,
)
from dfdc.train import Schedule, _optimizer, train

GRU_FEATURES = 2048  # study 000: the RNNs and MLPs read InceptionV3's 2048 pooled features per frame


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _count(arch: str, size: int = 0, **settings: object) -> int:
    """Parameters of ``arch`` built on the meta device (shapes only) at input side ``size``."""
    with torch.device("meta"):
        model = create_model(ModelConfig(arch=arch, pretrained="none", **settings), size)
    return sum(p.numel() for p in model.parameters())


def _head_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if not name.startswith("backbone."))


# ----------------------------------------------------------------------------- study 000


def test_custom_cnns_are_table_1s_23_configurations() -> None:
    from dfdc.models.custom import custom_cnn_names

    names = custom_cnn_names()
    assert len(names) == 23 and "custom-cnn-5-constant-256" not in names  # failed on the study's GPU
    assert names["custom-cnn-2-ascending"] == (64, 128) and names["custom-cnn-3-ascending"] == (64, 96, 128)
    assert names["custom-cnn-5-ascending"] == (32, 64, 96, 128, 160)
    assert names["custom-cnn-2-descending"] == (256, 64) and names["custom-cnn-3-descending"] == (256, 64, 32)
    assert names["custom-cnn-5-descending"] == (256, 192, 128, 64, 32)
    assert names["custom-cnn-3-constant-128"] == (128, 128, 128)
    model = create_model(ModelConfig(arch="custom-cnn-4-descending", pretrained="none"), 64)
    assert [m.out_channels for m in model.encoder if isinstance(m, torch.nn.Conv2d)] == [256, 128, 64, 32]


def test_custom_cnn_parameters_at_the_studys_input_size() -> None:
    """Flatten -> dense head at 240 px: the study's 51.7 M (its best, constant 128 x 3) and 55 M
    (constant 32 x 2); the generic custom-cnn's defaults are the best model."""
    assert _count("custom-cnn-3-constant-128") == 51_680_514
    assert _count("custom-cnn-3-constant-128") == pytest.approx(51.7e6, rel=1e-3)
    assert _count("custom-cnn-2-constant-32") == pytest.approx(55e6, rel=0.01)
    assert _count("custom-cnn") == _count("custom-cnn-3-constant-128")
    assert _count("custom-cnn-2-ascending") == pytest.approx(220.5e6, rel=1e-3)  # the study's text: 110 M (see doc)
    with pytest.raises(ConfigError, match="at least 94 px.*train.size"):
        create_model(ModelConfig(arch="custom-cnn-5-ascending", pretrained="none"), 93)
    model = create_model(ModelConfig(arch="custom-cnn-5-ascending", pretrained="none"), 94)
    with pytest.raises(ValueError, match="reads 94 px inputs.*got \\(96, 96\\)"):
        model(torch.zeros(1, 3, 96, 96))


def test_mlps_are_table_2s_and_read_40_frames_at_once() -> None:
    from dfdc.models.sequence import mlp_names

    names = mlp_names()
    assert len(names) == 15 and names["mlp-3-ascending"] == (64, 160, 1024) and names["mlp-2-descending"] == (1024, 512)
    assert all(model_kind(name) == "sequence" for name in names)
    with torch.device("meta"):
        best = create_model(ModelConfig(arch="mlp-3-constant-128", backbone="inception-v3", pretrained="none"))
        ascending = create_model(ModelConfig(arch="mlp-3-ascending", backbone="inception-v3", pretrained="none"))
    assert best.head[0].in_features == 40 * GRU_FEATURES
    assert _head_count(best) == pytest.approx(10.5e6, rel=0.005)  # Table 3: 10.5 M (individual)
    assert _head_count(ascending) == pytest.approx(5.4e6, rel=0.005)  # 3.2.5: 5.4 M
    small = create_model(ModelConfig(arch="mlp-1-constant-128", backbone="tiny-cnn", pretrained="none", mlp_frames=3))
    x = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    assert small(x).shape == (2, 2)
    with pytest.raises(ValueError, match="reads 3 frames.*sequence.seq_len=3"):
        small(x[:, :2])


def test_recurrent_models_match_the_studys_counts_and_grid() -> None:
    """GRU 128 x 1 = 0.97 M (3.2.4); Table 3's "LSTM 128 units 2-layer" 3.1 M is the 256-unit model's."""
    from dfdc.models.sequence import rnn_grid

    def count(cell: str, layers: int, hidden: int) -> int:
        with torch.device("meta"):
            model = create_model(ModelConfig(arch=cell, backbone="inception-v3", pretrained="none",
                                             rnn_layers=layers, rnn_hidden=hidden))
        return _head_count(model)

    assert count("gru", 1, 128) == pytest.approx(0.97e6, rel=0.005)
    assert count("lstm", 2, 256) == pytest.approx(3.1e6, rel=0.02)
    assert count("lstm", 2, 128) == pytest.approx(1.38e6, rel=0.01)  # not 3.1 M
    grid = rnn_grid()
    assert len(grid) == 32 and grid["gru-4x2048"] == ("model.arch=gru", "model.rnn_layers=4", "model.rnn_hidden=2048")
    for overrides in (grid["lstm-1x128"], grid["gru-4x2048"]):  # each is a valid configuration
        cfg = load_config("smoke-random", [*overrides, "model.backbone=tiny-cnn", "model.pretrained=none"])
        assert create_model(cfg.model).rnn.hidden_size == cfg.model.rnn_hidden


def test_inception_v3_transfer_has_the_studys_head_and_keras_layer_cuts() -> None:
    from dfdc.models.timm_backbones import keras_inception_v3_layers

    assert _count("inception-v3-transfer") == pytest.approx(23.9e6, rel=0.002)
    layers = keras_inception_v3_layers()
    assert len(layers) == 314 and layers[-2:] == ["hidden", "fc"]
    # the concatenations that end Keras's mixed0 .. mixed10 (weightless) and the stem's last pool
    assert all(layers[i] is None for i in (17, 40, 63, 86, 100, 132, 164, 196, 228, 248, 279, 310))
    assert layers[18] is not None and layers[18].startswith("Mixed_5b.") and layers[249].startswith("Mixed_7b.")
    assert layers[157] == "Mixed_6c.branch7x7_3.bn"  # top 50 % = the last 157 layers start here (mixed5)
    model = create_model(ModelConfig(arch="inception-v3-transfer", pretrained="none", trainable="top50"), 80)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "encoder.Mixed_6c.branch7x7_3.bn.weight" in trainable and "encoder.Mixed_6d.branch1x1.conv.weight" in trainable
    assert "encoder.Mixed_6c.branch1x1.bn.weight" not in trainable  # layer 156: frozen
    assert "encoder.Mixed_6c.branch7x7_3.conv.weight" not in trainable
    assert {"hidden.0.weight", "fc.weight"} <= trainable
    model.train()
    assert not model.encoder.Mixed_6c.branch1x1.bn.training and model.encoder.Mixed_7c.branch1x1.bn.training
    backbone = create_model(ModelConfig(arch="gru", backbone="inception-v3-transfer", pretrained="none"), 80)
    assert backbone.feature_dim == GRU_FEATURES and isinstance(backbone.backbone.hidden, torch.nn.Identity)


# ----------------------------------------------------------------------------- study 001


@pytest.mark.parametrize(("arch", "millions"), [("reseption-v1", 16.89), ("reseption-v2", 15.75),
                                                ("reseption-ensemble", 34.0)])
def test_reseption_parameter_counts_within_3_percent(arch: str, millions: float) -> None:
    """Table 7.1 (single output neuron, as the study's models)."""
    assert _count(arch, head="sigmoid") == pytest.approx(millions * 1e6, rel=0.03)


def test_reseption_ensemble_loads_the_trained_networks_and_trains_its_new_layers(tmp_path: Path) -> None:
    cfg = load_config("reseption", ["train.size=75"])
    paths = {}
    for arch in ("reseption-v1", "reseption-v2"):
        cfg.model.arch = arch
        member = create_model(cfg.model, 75)
        paths[arch] = tmp_path / arch / "best.pt"
        save_checkpoint(paths[arch], member, cfg, {"fold": 0})
    ensemble = create_model(ModelConfig(arch="reseption-ensemble", pretrained="none", head="sigmoid", trainable="head",
                                         ensemble_v1=str(paths["reseption-v1"]),
                                         ensemble_v2=str(paths["reseption-v2"])), 75)
    trained_v1, _ = load_checkpoint(paths["reseption-v1"])
    key = "encoder.0.0.weight"
    assert torch.equal(ensemble.v1.state_dict()[key], trained_v1.state_dict()[key])
    trainable = {name.split(".")[0] for name, p in ensemble.named_parameters() if p.requires_grad}
    assert trainable == {"proj_v1", "proj_v2", "fc"}
    assert ensemble.fc.in_features == 1024 and ensemble.proj_v1.out_features == 512
    # its checkpoint rebuilds without the member files (the predictor, the kernel)
    saved = tmp_path / "ensemble" / "best.pt"
    cfg.model.arch, cfg.model.ensemble_v1, cfg.model.ensemble_v2 = "reseption-ensemble", str(paths["reseption-v1"]), \
        str(paths["reseption-v2"])
    save_checkpoint(saved, ensemble, cfg, {"fold": 0})
    for path in paths.values():
        path.unlink()
    loaded, _ = load_checkpoint(saved)
    x = torch.randint(0, 256, (2, 3, 75, 75), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ensemble.eval()(x), atol=1e-5)
    assert model_requirements("reseption-ensemble") == () and model_requirements("inception-v3-transfer") == ("timm",)
    with pytest.raises(ConfigError, match="give both"):
        create_model(ModelConfig(arch="reseption-ensemble", pretrained="none", ensemble_v1=str(paths["reseption-v1"])))


def test_reseption_profile_is_the_studys_training() -> None:
    cfg = load_config("reseption")
    t = cfg.train
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.size) == ("radam", 1e-3, 24, 50, 299)
    assert (t.schedule, t.decay_gamma, t.decay_every, t.plateau_factor, t.plateau_patience) == (
        "exponential+plateau", 0.94, 2.0, 0.5, 2)
    assert cfg.model.head == "sigmoid" and cfg.model.arch == "reseption-v1"
    model = torch.nn.Linear(2, 1)
    assert isinstance(_optimizer(model, cfg, t.lr, torch.device("cpu")), torch.optim.RAdam)


# ----------------------------------------------------------------------------- training options


def _lrs(schedule: str, val_losses: list[float], steps_per_epoch: int = 3) -> list[float]:
    """The lr at the start of each epoch under ``train.schedule`` (lr 1.0)."""
    cfg = load_config("smoke-random", [f"train.schedule={schedule}", "train.lr=1.0", "train.epochs=8"])
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    schedule_ = Schedule(optimizer, cfg, steps_per_epoch, 1.0)
    lrs = []
    for loss in val_losses:
        lrs.append(schedule_.get_last_lr()[0])
        for _ in range(steps_per_epoch):
            optimizer.step()
            schedule_.step()
        schedule_.epoch_end(loss)
    return lrs


def test_step_decay_and_plateau_schedules() -> None:
    flat = [1.0] * 8  # a validation loss that never improves after the first epoch
    assert _lrs("exponential", flat) == pytest.approx([1, 1, 0.94, 0.94, 0.94**2, 0.94**2, 0.94**3, 0.94**3])
    # torch's ReduceLROnPlateau (patience 2) halves after the third epoch without improvement (1, 2, 3 do
    # not improve on 0), then after three more (Keras's would halve after two)
    assert _lrs("plateau", flat) == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    both = _lrs("exponential+plateau", flat)
    assert both[4] == pytest.approx(0.94**2 * 0.5) and both[7] == pytest.approx(0.94**3 * 0.25)
    improving = [1.0 - 0.1 * i for i in range(8)]
    assert _lrs("plateau", improving) == [1.0] * 8
    cosine = _lrs("cosine", flat)
    assert cosine[0] < cosine[1] and cosine[-1] < cosine[1]  # the default: warm-up then cosine
    with pytest.raises(ConfigError, match="train.schedule='step'"):
        _lrs("step", flat)


def test_schedule_state_resumes() -> None:
    cfg = load_config("smoke-random", ["train.schedule=exponential+plateau"])
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    first = Schedule(optimizer, cfg, 2, 1.0)
    for loss in (1.0, 1.0, 1.0):
        optimizer.step()
        first.step()
        first.epoch_end(loss)
    second = Schedule(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0), cfg, 2, 1.0)
    second.load_state_dict(first.state_dict())
    assert second.plateau.num_bad_epochs == first.plateau.num_bad_epochs == 2
    assert second.step_scheduler.last_epoch == 3


def test_optimizers_radam_and_plain_momentum_sgd() -> None:
    model = torch.nn.Linear(2, 1)
    cfg = load_config("smoke-random", ["train.optimizer=sgd", "train.nesterov=false", "train.momentum=0.9"])
    sgd = _optimizer(model, cfg, 0.1, torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and not sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    cfg.train.optimizer = "radam"
    assert isinstance(_optimizer(model, cfg, 0.1, torch.device("cpu")), torch.optim.RAdam)
    cfg.train.optimizer = "adam"
    with pytest.raises(ConfigError, match="adamw, sgd, radam"):
        _optimizer(model, cfg, 0.1, torch.device("cpu"))


def test_sigmoid_head_has_one_output_and_binary_cross_entropy() -> None:
    model = create_model(ModelConfig(arch="tiny-cnn", pretrained="none", head="sigmoid"), 32)
    assert model.fc.out_features == 1
    logits = torch.tensor([[0.3], [-2.0]])
    assert torch.allclose(fake_probability(logits), torch.sigmoid(torch.tensor([0.3, -2.0])))
    y = torch.tensor([1, 0])
    expected = -(np.log(1 / (1 + np.exp(-0.3))) + np.log(1 - 1 / (1 + np.exp(2.0)))) / 2
    assert float(class_loss(logits, y)) == pytest.approx(expected, rel=1e-5)
    two = torch.tensor([[0.0, 0.3], [0.0, -2.0]])  # softmax of [0, z] = sigmoid(z): the same P(FAKE)
    assert torch.allclose(fake_probability(two), fake_probability(logits))
    with pytest.raises(ConfigError, match="model.head='tanh'"):
        create_model(ModelConfig(arch="tiny-cnn", pretrained="none", head="tanh"))


def test_sigmoid_head_trains_and_its_oof_is_the_models_sigmoid(tmp_path: Path) -> None:
    """dfdc train with model.head=sigmoid: BCE validation loss, P(FAKE) = sigmoid in the OOF files
    and through the predictor's loading (load_checkpoint)."""
    from dfdc.data import load_face_table, read_rgb
    from dfdc.preprocess import prepare

    faces, folds = make_tiny_faces(tmp_path)
    cfg = load_config("smoke-random", ["model.arch=tiny-cnn", "model.pretrained=none", "model.head=sigmoid", "train.size=32",
                                "train.batch_size=8", "train.loader_workers=0", "train.epochs=1", "train.folds=0",
                                "train.optimizer=radam", "train.schedule=exponential+plateau",
                                f"train.runs_dir={tmp_path / 'runs'}", "train.name=sigmoid"])
    report = train(faces, folds, cfg)
    assert report.folds[0].finished
    run = tmp_path / "runs" / "sigmoid"
    model, meta = load_checkpoint(run / "fold0" / "best.pt")
    assert model.fc.out_features == 1 and meta["config"]["model"]["head"] == "sigmoid"
    oof = pd.read_csv(run / "fold0" / "oof_faces.csv")
    table = load_face_table(faces, folds)
    row = oof.iloc[0]
    file = table.loc[(table["video"] == row["video"]) & (table["frame"] == row["frame"]), "file"].iloc[0]
    x = torch.from_numpy(prepare(read_rgb(file), 32))[None]
    with torch.no_grad():
        assert float(torch.sigmoid(model(x))[0, 0]) == pytest.approx(row["prob"], abs=1e-5)
    from dfdc.predict import load_ensemble

    ensemble, _ = load_ensemble(run, cfg.predict, ["cpu"])  # what dfdc predict, calibrate and the kernel load
    (spec,) = ensemble.specs
    assert ensemble.fake_probability({spec: x.numpy()})[0] == pytest.approx(row["prob"], abs=1e-5)
    metrics = pd.read_csv(run / "metrics.csv")
    assert np.isfinite(metrics["val_loss"]).all()


# ----------------------------------------------------------------------------- study 002


def test_simple_cnns_have_fc_120_and_84() -> None:
    for arch in ("simple-cnn", "simple-cnn-2"):
        model = create_model(ModelConfig(arch=arch, pretrained="none"), 64)
        assert [m.out_features for m in model.hidden if isinstance(m, torch.nn.Linear)] == [120, 84]
        assert model.fc.in_features == 84 and model.fc.out_features == 2 and model_requirements(arch) == ()


@pytest.fixture(scope="module")
def track_faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    return make_track_faces(tmp_path_factory.mktemp("study_tracks"), n_real=4, fakes_per_real=2, size=32)


TRACKS = ["model.pretrained=none", "train.batch_size=4", "train.loader_workers=0", "train.epochs=1", "train.folds=0",
          "train.steps_per_epoch=2", "sequence.seq_len=4"]


def test_cnn_lstm_trains_end_to_end_and_predicts(track_faces, tmp_path: Path) -> None:
    faces_dir, folds_csv = track_faces
    common = ["model.arch=cnn-lstm", *TRACKS, "train.size=32", f"train.runs_dir={tmp_path / 'runs'}", "train.name=cl"]
    with pytest.raises(ConfigError, match="sequence.mode=finetune"):
        train(faces_dir, folds_csv, load_config("smoke-random", [*common, "sequence.mode=frozen"]))
    cfg = load_config("smoke-random", [*common, "sequence.mode=finetune"])
    torch.manual_seed(cfg.train.seed)
    fresh = create_model(cfg.model, 32).state_dict()
    report = train(faces_dir, folds_csv, cfg)
    assert report.folds[0].finished
    model, meta = load_checkpoint(tmp_path / "runs" / "cl" / "fold0" / "best.pt")
    assert meta["kind"] == "sequence" and model.input_spec.size == 32
    last = torch.load(tmp_path / "runs" / "cl" / "fold0" / "last.pt", weights_only=False)["model"]
    assert not torch.equal(last["backbone.encoder.0.weight"], fresh["backbone.encoder.0.weight"])  # end to end
    assert model_kind("cnn-lstm") == "sequence" and model_requirements("cnn-lstm") == ()
    with torch.no_grad():
        p = fake_probability(model(torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)))
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()


def test_study_mlp_trains_on_frozen_features(track_faces, tmp_path: Path) -> None:
    faces_dir, folds_csv = track_faces
    common = ["model.arch=mlp-2-descending", "model.backbone=tiny-cnn", *TRACKS, "train.size=24",
              f"train.runs_dir={tmp_path / 'runs'}", "train.name=mlp"]
    with pytest.raises(ConfigError, match="model.mlp_frames=40.*sequence.seq_len=4"):
        train(faces_dir, folds_csv, load_config("smoke-random", common))
    report = train(faces_dir, folds_csv, load_config("smoke-random", [*common, "model.mlp_frames=4"]))
    assert report.folds[0].finished
    model, _ = load_checkpoint(tmp_path / "runs" / "mlp" / "fold0" / "best.pt")
    assert model.head[0].in_features == 4 * model.backbone.feature_dim and model.head[0].out_features == 1024


def test_study000_profile_reads_the_fine_tuned_transfer_cnns_features(tmp_path: Path) -> None:
    """Step 2 of profiles/study000.yaml: the GRU's backbone is the fine-tuned InceptionV3 transfer
    model's checkpoint (its encoder; its dense layers dropped), 2048 features per frame."""
    from dfdc.train import check_settings

    cfg = load_config("study000", ["train.size=80"])
    check_settings(cfg)
    assert (cfg.model.arch, cfg.model.rnn_hidden, cfg.model.rnn_layers, cfg.sequence.seq_len) == ("gru", 128, 1, 40)
    cfg.model.arch, cfg.model.pretrained, cfg.model.trainable = "inception-v3-transfer", "none", "top50"
    transfer = create_model(cfg.model, 80)
    path = tmp_path / "inception-top50" / "best.pt"
    save_checkpoint(path, transfer, cfg, {"fold": 0})
    gru = create_model(ModelConfig(arch="gru", backbone="inception-v3-transfer", pretrained=str(path)), 80)
    key = "encoder.Mixed_7c.branch1x1.conv.weight"
    assert torch.equal(gru.backbone.state_dict()[key], transfer.state_dict()[key])
    assert gru.feature_dim == GRU_FEATURES


def test_study_003s_feature_map_implies_107_to_138_px() -> None:
    """Study 003's InceptionResNetV2 gives a (2, 2, 1536) map: inputs of 107-138 px (timm's model)."""
    with torch.device("meta"):
        model = create_model(ModelConfig(arch="inception-resnet-v2", pretrained="none"), 107).eval()
        sides = {side: tuple(model.encoder.forward_features(torch.empty(1, 3, side, side)).shape[1:])
                 for side in (106, 107, 138, 139)}
    assert sides[107] == sides[138] == (1536, 2, 2) and sides[106][1:] == (1, 1) and sides[139][1:] == (3, 3)


def test_bad_optimizer_or_schedule_fails_before_any_work() -> None:
    from dfdc.train import check_settings

    for override, message in (("train.optimizer=adam", "train.optimizer='adam'"),
                              ("train.schedule=step", "train.schedule='step'")):
        with pytest.raises(ConfigError, match=message):
            check_settings(load_config("smoke-random", [override]))
