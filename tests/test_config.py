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
    assert cfg.model.arch == "tf-efficientnet-lite0"
    assert cfg.model.pretrained == "imagenet"  # the ImageNet weights its package ships
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


def test_every_profile_loads() -> None:
    """Each shipped profile, b7-recipe included, loads (unknown keys and bad values are errors)."""
    from dfdc.config import PROFILES_DIR

    names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    assert {"b7", "b7-recipe", "smoke", "compare"} <= set(names)
    for name in names:
        assert load_config(name).profile == name
    recipe = load_config("b7-recipe")  # the seed study's recipe: the dataclass defaults (but its name)
    defaults = Config(profile="b7-recipe")
    defaults.train.name = recipe.train.name
    assert recipe == defaults


def test_compare_extends_smoke_so_faces_and_folds_are_smokes() -> None:
    """compare.yaml holds only its differences from smoke: the crops and folds `make demo` and
    `make compare` share are the same by construction, not by copy."""
    import yaml

    from dfdc.config import PROFILES_DIR

    raw = yaml.safe_load((PROFILES_DIR / "compare.yaml").read_text())
    assert raw["extends"] == "smoke" and "faces" not in raw and "folds" not in raw
    compare, smoke = load_config("compare"), load_config("smoke")
    assert compare.faces == smoke.faces and compare.folds == smoke.folds and compare.synth == smoke.synth
    assert compare.train.name == "compare" and compare.train.batch_size == smoke.train.batch_size  # merged deeply


def test_extends_merges_deeply_and_refuses_cycles(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 4\n  lr: 0.5\nfaces:\n  size: 64\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain:\n  epochs: 2\n")
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\nfaces:\n  margin: 0.5\n")
    cfg = load_config(str(tmp_path / "grandchild.yaml"))
    assert (cfg.train.epochs, cfg.train.lr, cfg.faces.size, cfg.faces.margin) == (2, 0.5, 64, 0.5)
    assert load_config(str(tmp_path / "child.yaml"), ["train.epochs=7"]).train.epochs == 7  # overrides last
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "self.yaml"))
    (tmp_path / "typo.yaml").write_text("extends: smok\n")
    with pytest.raises(ConfigError, match="unknown profile 'smok'"):
        load_config(str(tmp_path / "typo.yaml"))
    (tmp_path / "bad_key.yaml").write_text("extends: base.yaml\ntrain:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match=r"bad_key.yaml < base.yaml.*unknown key 'epoch'"):
        load_config(str(tmp_path / "bad_key.yaml"))
