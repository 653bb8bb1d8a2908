import subprocess
import sys

from dfdc.cli import COMMANDS, main


def test_help_lists_every_stage_command():
    out = subprocess.run([sys.executable, "-m", "dfdc", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out, f"`python -m dfdc --help` does not list {name}"


def test_bad_override_is_a_clear_error_not_a_traceback(capsys):
    assert main(["folds", "--data", ".", "--out", "x.csv", "--set", "folds.n_fold=3"]) == 2
    assert "unknown key 'n_fold'" in capsys.readouterr().err
