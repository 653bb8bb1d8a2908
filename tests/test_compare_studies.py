"""dfdc compare and the reference studies: each system's study label and the study's own
figure, the init column read from the run's configuration, the studies' grids, the default set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from test_compare import CONSTANT, make_heldout
from test_data import make_tiny_faces

from dfdc.cli import main as cli_main
from dfdc.compare import (
    DEFAULT_SYSTEMS, GRIDS, NOT_GIVEN, PENDING_MODELS, SYSTEMS, System, compare, default_systems, resolve_systems,
    run_init, system_config, unavailable, weights_init,
)
from dfdc.config import Config, ConfigError, ModelConfig, load_config, save_config

# Read off the study documents (000 Table 3 and §3.2; 001 Tables 5.4, 7.6, 7.7; 002's
# "Experiments and Implementation"; 003's accuracy section; 004 §3.5): system -> (study, every
# fragment its study_reported must hold).
STUDY_FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "custom-cnn": ("000", ("0.6085 validation accuracy", "0.6941 validation loss", "Table 3")),
    "simple-cnn": ("002", ("0.75 validation accuracy",)),
    "reseption-v1": ("001", ("93.04 % test video accuracy", "0.25242", "91.81 % balanced accuracy")),
    "reseption-v2": ("001", ("91.68 % test video accuracy", "0.28180", "90.79 % balanced accuracy")),
    "reseption-ensemble": ("001", ("93.22 % test video accuracy", "0.23860", "93.04 % balanced accuracy")),
    "xception": ("001, 002", ("94.76 % / 94.94 % validation video accuracy", "0.84 validation accuracy")),
    "inception-v3": ("000, 001", ("0.7434 validation accuracy", "96.07 % / 96.44 %", "95.39 %", "94.78 %")),
    "inception-resnet-v2": ("003", ("0.9092 validation accuracy",)),
    "resnet50": ("002", ("0.7 validation accuracy",)),
    "resnet152": ("001", ("95.97 % / 96.07 % validation video accuracy",)),
    "resnext101": ("001", ("96.54 % / 97.19 %", "95.93 %", "94.21 %")),
    "vgg16": ("002", ("0.7 validation accuracy",)),
    "efficientnet-b5": ("001", ("92.32 % / 92.98 % validation video accuracy",)),
    "efficientnet-b7": ("004", ("0.48702 log loss", "unclipped log_loss on its own data", "top 50/2114")),
    "tf-efficientnet-b7-ns": ("1st place (Selim Seferbekov)", ("0.42798 private leaderboard log loss",)),
    "tf-efficientnet-lite0": ("kit (smoke profile)", ("not given",)),
    "cnn-lstm": ("002", ("0.85 validation accuracy",)),
    "lstm": ("000", ("0.7106 validation accuracy", "0.6423 validation loss", "0.7052 / 0.6283")),
    "gru": ("000", ("0.7119 validation accuracy", "0.6064 validation loss")),
    "mlp": ("000", ("0.7432 validation accuracy", "0.6275 validation loss")),
    "logreg": ("002", ("83.33 % validation accuracy",)),
    "svm": ("002", ("67 % validation accuracy",)),
}


def test_each_system_names_its_study_and_the_studys_figure() -> None:
    for name, (study, fragments) in STUDY_FIGURES.items():
        system = SYSTEMS[name]
        assert system.study == study, name
        assert all(f in system.reported for f in fragments), (name, system.reported)
    assert set(DEFAULT_SYSTEMS) == set(STUDY_FIGURES)  # every default row has its study's figure
    b7 = SYSTEMS["efficientnet-b7"].reported  # 004 scored its own data; it is not a leaderboard score
    assert "private leaderboard log loss" not in b7 and "private LB log loss" not in b7


def test_grids_expand_to_the_studys_variants() -> None:
    cnn = [s.name for s in GRIDS["000-cnn"]]
    widths = ("ascending", "descending", "constant-32", "constant-64", "constant-128", "constant-256")
    assert cnn == [f"custom-cnn-{d}-{w}" for d in (2, 3, 4, 5) for w in widths if (d, w) != (5, "constant-256")]
    assert len(cnn) == 23
    rnn = [s.name for s in GRIDS["000-rnn"]]
    assert len(rnn) == 32 and rnn[0] == "lstm-1x128" and rnn[-1] == "gru-4x2048"
    assert {n.split("-")[1] for n in rnn} == {f"{l}x{u}" for l in (1, 2, 3, 4) for u in (128, 512, 1024, 2048)}
    mlp = {s.name: s for s in GRIDS["000-mlp"]}
    assert len(mlp) == 15 and mlp["mlp-3-ascending"].arch == "mlp-3-ascending"  # Table 2's models by name
    assert "64-160-1024" in mlp["mlp-3-ascending"].description and "1024-160-64" in mlp["mlp-3-descending"].description
    assert set(mlp) == {*(f"mlp-1-constant-{w}" for w in (128, 256, 512, 1024, 2048)),
                        "mlp-2-ascending", "mlp-2-descending", *(f"mlp-2-constant-{w}" for w in (256, 512, 1024)),
                        "mlp-3-ascending", "mlp-3-descending", *(f"mlp-3-constant-{w}" for w in (64, 128, 256))}

    variants = resolve_systems("000-rnn")  # a grid name expands; each variant trains in its own run folder
    names = [system_config(Config(), s, Path("runs")).train.name for s in variants]
    assert names == rnn and len(set(names)) == 32
    gru = system_config(Config(), dict(zip(rnn, variants))["gru-3x1024"], Path("runs")).model
    assert (gru.arch, gru.rnn_layers, gru.rnn_hidden) == ("gru", 3, 1024)
    cnn_cfg = system_config(Config(), GRIDS["000-cnn"][cnn.index("custom-cnn-4-constant-64")], Path("runs")).model
    assert (cnn_cfg.custom_depth, cnn_cfg.custom_widths, cnn_cfg.custom_base_width) == (4, "constant", 64)
    assert [s.reported != NOT_GIVEN for s in GRIDS["000-rnn"]].count(True) == 2  # lstm 2x128, gru 1x128
    with pytest.raises(ConfigError, match="unknown.*000-nope"):
        resolve_systems("000-nope")


def test_every_default_system_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the models another change registers may be missing, each named when left out; once
    they are registered this fails until PENDING_MODELS is emptied, so nothing is skipped then."""
    assert PENDING_MODELS <= set(DEFAULT_SYSTEMS)
    for name in DEFAULT_SYSTEMS:
        why = unavailable(SYSTEMS[name])
        if name in PENDING_MODELS:
            assert why is not None and "not registered" in why, f"{name} is registered: remove it from PENDING_MODELS"
        else:
            assert why is None, (name, why)
    chosen = [s.name for s in default_systems()]
    assert chosen == [n for n in DEFAULT_SYSTEMS if n not in PENDING_MODELS]
    err = capsys.readouterr().err
    assert all(f"{name}: left out of the default set" in err for name in PENDING_MODELS)


def test_init_is_read_from_the_model_config(tmp_path: Path) -> None:
    assert weights_init(ModelConfig(pretrained="imagenet")) == "imagenet"
    assert weights_init(ModelConfig(pretrained="none")) == "random"
    assert weights_init(ModelConfig(pretrained=str(tmp_path / "w.pth"))) == "file w.pth"
    # a sequence model loads model.pretrained into its backbone
    assert weights_init(ModelConfig(arch="gru", backbone="efficientnet-b0", pretrained="imagenet")) == "imagenet"
    # the run's saved (resolved) configuration wins over what compare handed the system
    cfg = load_config("compare", ["model.arch=logreg", "model.pretrained=imagenet", "baseline.features=pixels"])
    assert run_init(tmp_path, cfg) == "imagenet"  # no run configuration: the system's own
    from dfdc.baselines import resolve_config

    save_config(resolve_config(cfg), tmp_path / "config.yaml")  # baseline.features=pixels: no weights
    assert run_init(tmp_path, cfg) == "random"
    embedded = dataclasses.replace(cfg, baseline=dataclasses.replace(cfg.baseline, features="embedding"),
                                   model=dataclasses.replace(cfg.model, backbone="efficientnet-b0"))
    save_config(resolve_config(embedded), tmp_path / "config.yaml")
    assert run_init(tmp_path, cfg) == "imagenet"


def test_compare_csv_carries_study_figure_and_init(tmp_path: Path) -> None:
    faces, folds = make_tiny_faces(tmp_path)
    videos, labels = make_heldout(tmp_path, 2)
    reported = System("test-reported", CONSTANT.train, CONSTANT.predict, kind="baseline", study="009",
                      reported="0.5 validation accuracy (009 Table 1)")
    cfg = load_config("compare", ["model.pretrained=imagenet"])
    report = compare([reported], faces, folds, cfg, tmp_path / "out", tmp_path / "runs", videos, None, labels)
    row = pd.read_csv(report.csv, keep_default_na=False, dtype={"study": str}).iloc[0]
    assert (row["study"], row["study_reported"], row["init"]) == ("009", "0.5 validation accuracy (009 Table 1)",
                                                                  "imagenet")
    again = compare([dataclasses.replace(reported, study="010", reported="0.6 (010)")], faces, folds, cfg,
                    tmp_path / "out", tmp_path / "runs", videos, None, labels)
    row = pd.read_csv(again.csv, keep_default_na=False, dtype={"study": str}).iloc[0]  # reused, labelled by the current table
    assert again.skipped == ["test-reported"] and (row["study"], row["study_reported"]) == ("010", "0.6 (010)")


def test_grid_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["compare", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "grid 000-cnn: 23 variants" in listed and "grid 000-rnn: 32 variants" in listed
    assert cli_main(["compare", "--grid", "nope", "--faces", str(tmp_path)]) == 2
    faces, folds = make_tiny_faces(tmp_path)
    variants = tuple(dataclasses.replace(CONSTANT, name=f"test-grid-{k}") for k in ("a", "b"))
    monkeypatch.setitem(GRIDS, "test-grid", variants)
    out = tmp_path / "out"
    code = cli_main(["compare", "--profile", "compare", "--grid", "test-grid", "--faces", str(faces), "--folds",
                     str(folds), "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert code == 0
    assert pd.read_csv(out / "compare.csv")["system"].tolist() == ["test-grid-a", "test-grid-b"]
    assert (tmp_path / "runs" / "test-grid-a").is_dir() and (tmp_path / "runs" / "test-grid-b").is_dir()


def test_every_system_and_grid_variant_resolves_to_settings_its_training_accepts() -> None:
    """Each system's overrides over the compare profile pass the checks training makes before
    it starts (a sequence model's settings): a system that cannot train fails here, not after
    ten minutes of ``make compare``."""
    from dfdc.models.sequence import check_sequence_model_settings, is_sequence_model

    base = load_config("compare")
    systems = {**SYSTEMS, **{s.name: s for grid in GRIDS.values() for s in grid}}
    checked = 0
    for name, system in systems.items():
        cfg = system_config(base, system, Path("runs"))
        if is_sequence_model(cfg.model.arch):
            check_sequence_model_settings(cfg)  # raises ConfigError naming the key
            checked += 1
    assert checked >= 1 + 2 + 15 + 32  # cnn-lstm, lstm, gru, the 15 MLPs and the 32 RNN variants
