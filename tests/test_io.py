import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dfdc.io import atomic_open, atomic_write_csv, atomic_write_text, clean_temp_files


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_kill_9_mid_write_leaves_old_file(tmp_path: Path):
    target = tmp_path / "out.csv"
    atomic_write_csv(target, pd.DataFrame({"a": [1]}))
    code = (
        "import os, signal, sys\n"
        "from dfdc.io import atomic_open\n"
        f"with atomic_open({str(target)!r}) as h:\n"
        "    h.write('partial'); h.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert pd.read_csv(target)["a"].tolist() == [1]
    assert clean_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    assert os.listdir(tmp_path) == ["out.csv"]


def test_written_files_get_ordinary_permissions(tmp_path: Path):
    target = tmp_path / "metadata.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
