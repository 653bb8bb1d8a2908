"""Which run a later stage uses, and with which configuration: the run you ship is the run you trained.

- ``runs/LATEST`` (``LATEST_FILE`` under ``train.runs_dir``): written atomically by ``dfdc train``
  when it returns, it names the run it trained and the inputs it trained on (``run``,
  ``profile``, ``data``, ``faces``, ``folds``: one ``key: value`` line each, so that the
  Makefile reads ``data`` with ``sed``). ``dfdc predict`` / ``calibrate`` / ``kernel`` use that
  run when ``--models`` / ``--run`` is not given (``resolve_run``) and say so.
- ``run_config``: the configuration of a command that uses a run is the run's own resolved
  configuration (``RUN/config.yaml``, else its first checkpoint's), not the command line's
  profile. The sections that shaped the models (``RUN_OWNED_SECTIONS``) cannot be changed at
  that point: a ``--profile`` other than the run's, or a ``--set`` of a run-owned key to
  another value, is refused naming both. The other sections (``predict``, ``calibrate``,
  ``kernel``, ...) start from the run's values and take the user's ``--set`` and flags:
  how many frames to read, workers, the time budget, slugs are the user's choice at
  prediction time (a calibration fitted at other frames is still applied with a warning,
  ``dfdc.predict``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from dfdc.config import (
    DEFAULT_PROFILE, Config, ConfigError, apply_override, config_from_dict, load_config, make_hint, profile_path,
    read_config,
)
from dfdc.io import atomic_write_text

LATEST_FILE = "LATEST"  # under train.runs_dir: the run `dfdc train` made last
RUN_CONFIG = "config.yaml"  # the run's resolved configuration (dfdc.train, dfdc.baselines)
SUBMISSIONS_DIR = Path("submissions")  # default home of a run's submission: submissions/NAME/submission.csv
# Sections that shaped a run's models (crops, split, architecture, training): fixed once trained.
RUN_OWNED_SECTIONS = ("faces", "folds", "model", "train", "sequence", "baseline")
LATEST_KEYS = ("run", "profile", "data", "faces", "folds")


def latest_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / LATEST_FILE


def write_latest(runs_dir: str | Path, record: dict[str, Any]) -> Path:
    """Record the run trained last (``LATEST_KEYS``; missing keys left out), atomically."""
    lines = [f"{key}: {record[key]}" for key in LATEST_KEYS if record.get(key) not in (None, "")]
    path = latest_path(runs_dir)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_latest(runs_dir: str | Path) -> dict[str, str] | None:
    """The record of ``write_latest``, or None when there is none."""
    path = latest_path(runs_dir)
    if not path.is_file():
        return None
    record = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in LATEST_KEYS:
            record[key] = value.strip()
    if "run" not in record:
        raise ConfigError(f"{path}: names no run (a line 'run: runs/NAME'); train again or pass the run folder")
    return record


def resolve_run(given: Path | None, runs_dir: str | Path, flag: str) -> Path:
    """``given``, else the run of ``runs/LATEST`` (printed: which run, and from where); a clear
    error when neither exists. ``flag`` is the option that names a run (``--models``)."""
    if given is not None:
        return Path(given)
    record = read_latest(runs_dir)
    if record is None:
        raise ConfigError(f"no run given and {latest_path(runs_dir)} not found (`dfdc train` writes it): train first "
                          f"(make train), or name the run with {make_hint(f'{flag} runs/NAME', 'RUN=NAME')}")
    run = Path(record["run"])
    print(f"using run {run} ({latest_path(runs_dir)})", file=sys.stderr)
    return run


def default_submission(run_dir: Path) -> Path:
    """``submissions/NAME/submission.csv`` for the run folder ``runs/NAME``."""
    return SUBMISSIONS_DIR / Path(run_dir).name / "submission.csv"


def saved_run_config(run_dir: Path) -> Config | None:
    """The run's resolved configuration: ``config.yaml``, else its first checkpoint's, else None."""
    saved = Path(run_dir) / RUN_CONFIG
    if saved.is_file():
        return read_config(saved)
    from dfdc.models import CheckpointError, checkpoint_meta, fold_checkpoints

    paths = [p for _, p in fold_checkpoints(run_dir)] or sorted(Path(run_dir).glob("*.pt"))
    for path in paths[:1]:
        try:
            data = checkpoint_meta(path).get("config")
        except (CheckpointError, OSError):
            return None
        if isinstance(data, dict):
            return config_from_dict(data)
    return None


def same_profile(a: str, b: str) -> bool:
    """Whether two profile names or paths name the same profile file."""
    if a == b:
        return True
    try:
        return profile_path(a).resolve() == profile_path(b).resolve()
    except ConfigError:
        return False


def _override_key(item: str) -> tuple[str, str]:
    key = item.split("=", 1)[0].strip()
    section, _, name = key.partition(".")
    return section, name


def run_config(run_dir: Path, profile: str | None, overrides: list[str]) -> Config:
    """The configuration a command using ``run_dir`` runs with (module docstring). ``profile``:
    the ``--profile`` the user gave (None when not given)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():  # the command itself says the run folder is missing, and what to do
        return load_config(profile or DEFAULT_PROFILE, overrides)
    saved = saved_run_config(run_dir)
    if saved is None:  # a folder of checkpoints without any saved configuration: the command line's
        print(f"warning: {run_dir} holds no {RUN_CONFIG} and its checkpoints no configuration; using profile "
              f"{profile or DEFAULT_PROFILE} for the run's settings", file=sys.stderr)
        return load_config(profile or DEFAULT_PROFILE, overrides)
    source = run_dir / RUN_CONFIG if (run_dir / RUN_CONFIG).is_file() else f"the checkpoints of {run_dir}"
    if profile is not None and not same_profile(profile, saved.profile):
        raise ConfigError(
            f"{run_dir} was trained with profile {saved.profile!r} ({source}), but --profile {profile} was given: "
            f"the run's models were shaped by its own configuration and are used with it. Leave out "
            f"{make_hint('--profile', 'PROFILE=')} (the run's configuration is used), or name another run")
    cfg = copy.deepcopy(saved)
    for item in overrides:
        section, name = _override_key(item)
        before = copy.deepcopy(cfg)
        apply_override(cfg, item)
        if section in RUN_OWNED_SECTIONS:
            old, new = getattr(getattr(before, section), name), getattr(getattr(cfg, section), name)
            if old != new:
                raise ConfigError(
                    f"--set {item} contradicts the run {run_dir}: its models were made with {section}.{name}="
                    f"{yaml.safe_dump(old, default_flow_style=True).strip().removesuffix('...').strip()} ({source}). "
                    f"Keys of {', '.join(RUN_OWNED_SECTIONS)} are the run's; leave it out, or train a new run with it")
    return cfg
