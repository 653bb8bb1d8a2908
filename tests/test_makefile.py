"""The Makefile's dependency promises, checked with `make -n` (prints, runs nothing)."""

from __future__ import annotations

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
