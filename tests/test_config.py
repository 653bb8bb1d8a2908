from pathlib import Path

import pytest

from dfdc.config import (
    Config,
    ConfigError,
    apply_override,
    load_config,
    read_config,
    save_config,
)


def test_default_profile_is_the_b7_recipe():
    cfg = load_config()
    assert cfg.model.arch == "efficientnet-b7"
    assert cfg.faces.frames_real > cfg.faces.frames_fake
    assert 0.5 <= cfg.faces.margin <= 0.7


def test_smoke_profile_overrides_defaults_only_where_it_says():
    cfg = load_config("smoke")
    assert cfg.model.arch == "efficientnet-b0"
    assert cfg.model.pretrained == "none"
    assert cfg.faces.margin == Config().faces.margin  # not set in smoke: default kept


def test_overrides_are_typed_and_checked():
    cfg = load_config("smoke", ["train.epochs=3", "predict.tta_flip=true", "faces.thresholds=0.5,0.6,0.7"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.predict.tta_flip is True
    assert cfg.faces.thresholds == (0.5, 0.6, 0.7)
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        apply_override(cfg, "train.epoch=3")
    with pytest.raises(ConfigError, match="expected a int"):
        apply_override(cfg, "train.epochs=many")
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override(cfg, "train.epochs")


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="known profiles: .*smoke"):
        load_config("nope")


def test_bad_profile_file_is_named(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))


def test_saved_config_round_trips(tmp_path: Path):
    cfg = load_config("smoke", ["train.lr=0.005"])
    save_config(cfg, tmp_path / "config.yaml")
    again = read_config(tmp_path / "config.yaml")
    assert again == cfg


def test_older_saved_configs_are_upgraded():
    """Checkpoints carry the configuration they were trained with; renamed keys still load."""
    from dfdc.config import config_from_dict

    data = Config().to_dict()
    data["predict"]["confident_min_fraction"] = 0.11  # replaced by the 1st place's count + share
    data["predict"]["calib_min_videos"] = 50  # moved to the calibrate section
    del data["calibrate"]
    data["train"]["max_steps_per_epoch"] = 7  # renamed steps_per_epoch (runs trained before it predict)
    del data["train"]["steps_per_epoch"]
    cfg = config_from_dict(data)
    assert cfg.calibrate.min_videos == 50 and cfg.predict.confident_min_count == 11
    assert cfg.train.steps_per_epoch == 7
    with pytest.raises(ConfigError, match="unknown key 'confident_min_fraction'"):
        load_config("smoke", ["predict.confident_min_fraction=0.2"])  # a user's override is not silently dropped
