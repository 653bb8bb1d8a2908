"""The Makefile's dependency promises, checked with `make -n` (prints, runs nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(folder: Path, target: str) -> str:
    done = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=folder, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("target", ["train", "compare"])
def test_train_and_compare_never_rebuild_an_existing_split(tmp_path: Path, target: str) -> None:
    """A later `make compare` must not rewrite the folds a `make folds GROUP_BY=...` made."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.txt", "pyproject.toml", ".venv/.installed", "data/demo/.synth.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()  # in this order: the install stamp is newer than what it installs
    assert " folds --data" in _dry_run(tmp_path, target)  # no split yet: made first
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "folds.csv").write_text("video,fold\n")
    commands = _dry_run(tmp_path, target)
    assert f" {target} " in commands and " folds --data" not in commands


def _tree(folder: Path) -> Path:
    """A copy of the Makefile with an installed-looking venv whose python only echoes what it is given."""
    shutil.copy(ROOT / "Makefile", folder / "Makefile")
    for name in ("requirements.txt", "pyproject.toml"):
        (folder / name).touch()
    python = folder / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "ARGS $* VIA_MAKE=$DFDC_VIA_MAKE"\n')
    python.chmod(0o755)
    (folder / ".venv" / ".installed").touch()  # after what it installs: no reinstall
    return folder


def _make(folder: Path, *args: str, dry: bool = True) -> str:
    cmd = ["make", "--no-print-directory", *(["-n"] if dry else []), *args]
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_every_phony_target_and_every_variable() -> None:
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)$", text, re.MULTILINE | re.DOTALL).group(1)
    targets = phony.replace("\\\n", " ").split()
    listed = _make(ROOT, "help", dry=False)
    shown = {line.split()[0] for line in listed.splitlines() if line.startswith("  ")}
    assert set(targets) - shown == set(), "targets missing from `make help`"
    for var in re.findall(r"^([A-Z_]+) \?=", text, re.MULTILINE):  # every variable a user may set
        assert var in shown, f"variable {var} missing from `make help`"
    assert {"DATA", "PROFILE", "RUN", "FACES", "NO_RESUME", "USERNAME", "LABELS", "IMAGE"} <= shown


def test_every_make_variable_a_message_names_exists() -> None:
    """dfdc's messages name make variables when run through make (make_hint(flag, 'VAR=...'))."""
    named = set()
    for path in (ROOT / "dfdc").rglob("*.py"):
        named |= set(re.findall(r"make_hint\([^)]*?,\s*'([A-Z_]+)=", path.read_text()))
    assert {"RUN", "FACES", "NO_RESUME", "USERNAME"} <= named
    text = (ROOT / "Makefile").read_text()
    for var in named:
        assert re.search(rf"^{var} \?=", text, re.MULTILINE), f"a message names {var}=, which the Makefile lacks"
        assert re.search(rf"\$\({var}\)", text), f"the Makefile never uses {var}"


def test_later_targets_use_the_last_trained_run(tmp_path: Path) -> None:
    """`make folds train DATA=/path` then `make kernel`: the trained run and its DATA, not runs/smoke."""
    tree = _tree(tmp_path)
    assert "runs/smoke" not in _make(tree, "kernel") and "--profile" not in _make(tree, "kernel")
    (tree / "runs").mkdir()
    (tree / "runs" / "LATEST").write_text("run: runs/b7\nprofile: b7\ndata: /data/dfdc\n")
    assert "--local /data/dfdc " in _make(tree, "kernel-local")
    assert "predict --videos /data/dfdc/test_videos " in _make(tree, "predict")
    assert "calibrate  --data /data/dfdc" in _make(tree, "calibrate")
    for target in ("kernel", "kernel-build", "kernel-local", "predict", "calibrate", "score", "submit"):
        commands = _make(tree, target)
        assert "--models" not in commands and " --run " not in commands and "--profile" not in commands, target
    out = _make(tree, "kernel", dry=False)  # make tells dfdc to name make variables in its advice
    assert "ARGS -m dfdc kernel --push" in out and "VIA_MAKE=1" in out
    assert "--models runs/mine " in _make(tree, "kernel", "RUN=mine")
    assert "--profile b7-recipe" in _make(tree, "kernel", "PROFILE=b7-recipe")  # checked against the run by dfdc
    assert "--username bob" in _make(tree, "kernel", "USERNAME=bob")
    train = _make(tree, "train", "NO_RESUME=1")
    assert "--name b7 " in train and "--data /data/dfdc" in train and "--no-resume" in train
    assert "--profile b7 " in train  # the last run's profile on its data


def test_labels_default_to_dfdcs_own_name(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "d").mkdir()
    assert "--labels d/test_labels.csv" in _make(tree, "score", "DATA=d")
    (tree / "d" / "labels.csv").write_text("filename,label\n")
    assert "--labels d/labels.csv" in _make(tree, "score", "DATA=d")
    assert "--labels d/labels.csv" in _make(tree, "kernel-local", "DATA=d")  # the local run is scored
    assert "--set kernel.local_image=pinned" in _make(tree, "kernel-local", "DATA=d", "IMAGE=pinned")


def test_the_suite_runs_without_make_hints(tmp_path: Path) -> None:
    """`make test` exports DFDC_VIA_MAKE like every target; the suite's own runs must see flags."""
    assert "DFDC_VIA_MAKE=0 .venv/bin/python -m pytest" in _make(_tree(tmp_path), "test")
