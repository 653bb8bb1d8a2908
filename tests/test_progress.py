"""Progress output (dfdc.progress): a bar redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from dfdc import progress as progress_module
from dfdc.progress import LINE_EVERY_PERCENT, LineProgress, progress

ROOT = Path(__file__).resolve().parents[1]
STEPS = 1000  # many more updates than lines a log should get
MAX_LINES = int(100 / LINE_EVERY_PERCENT) + 2  # one per LINE_EVERY_PERCENT, the opening line and the last


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def test_a_log_gets_lines_not_redraws(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 1e9)  # only the percent rule
    log = io.StringIO()  # not a terminal, like `make demo > log`
    bar = progress(total=STEPS, desc="faces", unit="video", file=log)
    assert isinstance(bar, LineProgress)
    for i in range(STEPS):
        bar.update(1)
        bar.set_postfix(faces=i)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = _lines(text)
    assert len(lines) <= MAX_LINES and len(lines) >= int(100 / LINE_EVERY_PERCENT)
    assert lines[0].startswith("faces:   0% 0/1000")
    assert lines[-1].startswith("faces: 100% 1000/1000")
    assert all(line.startswith("faces: ") for line in lines)


def test_a_log_gets_a_line_each_interval(monkeypatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)  # every refresh is due
    for _ in progress(range(5), desc="synth", total=None, file=log, leave=False):
        pass
    assert len(_lines(log.getvalue())) >= 5  # the time rule alone prints a transient bar
    log = io.StringIO()
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 1e9)
    for _ in progress(range(STEPS), desc="epoch", file=log, leave=False):
        pass
    assert log.getvalue() == ""  # a transient bar in a log: no percent lines, no closing line


def test_disabled_prints_nothing() -> None:
    log = io.StringIO()
    for _ in progress(range(10), desc="predict", file=log, disable=True):
        pass
    assert log.getvalue() == ""


def test_a_terminal_gets_a_redrawn_bar() -> None:
    """On a pseudo-terminal the same call is tqdm's bar: carriage returns, one line."""
    code = (
        "import time\n"
        "from dfdc.progress import progress\n"
        "for _ in progress(range(20), desc='faces', mininterval=0):\n"
        "    time.sleep(0.005)\n"
    )
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=slave, cwd=ROOT, env=env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    redraws = re.findall(r"\r(?!\n)", text)  # a terminal shows "\n" as "\r\n": those are not redraws
    assert len(redraws) >= 10  # redrawn in place
    assert "faces: 100%" in text


@pytest.mark.parametrize("stage", ["synth"])
def test_a_stage_redirected_to_a_pipe_writes_no_carriage_return(tmp_path: Path, stage: str) -> None:
    """`dfdc synth` with its stderr on a pipe (make > log): plain, bounded progress lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dfdc", stage, "--out", str(tmp_path / "mini"), "--profile", "smoke",
           "--videos", "30", "--test-videos", "2", "--parts", "1", "--resolution", "160x120",
           "--seconds", "0.5", "--fps", "6"]
    # bytes, not text=True: universal newlines would turn each "\r" into "\n"
    result = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=env, timeout=600)
    stderr, stdout = result.stderr.decode(), result.stdout.decode()
    assert result.returncode == 0, stderr
    assert "\r" not in stderr and "\r" not in stdout
    lines = [line for line in _lines(stderr) if line.startswith(f"{stage}:")]
    assert 2 <= len(lines) <= MAX_LINES, stderr
    assert lines[-1].startswith(f"{stage}: 100%")


def test_third_party_progress_is_off_in_a_log_only(monkeypatch) -> None:
    """Off a terminal the Hugging Face hub (timm's weight downloads) draws no bars; on one it does."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    monkeypatch.setenv(progress_module.HF_PROGRESS_ENV, "")  # (so that monkeypatch restores the original)
    monkeypatch.delenv(progress_module.HF_PROGRESS_ENV)
    enable_progress_bars()
    progress_module.quiet_third_party_progress(_Terminal())
    assert progress_module.HF_PROGRESS_ENV not in os.environ and not are_progress_bars_disabled()
    try:
        progress_module.quiet_third_party_progress(io.StringIO())
        assert os.environ[progress_module.HF_PROGRESS_ENV] == "1"  # inherited by worker processes
        assert are_progress_bars_disabled()
    finally:
        enable_progress_bars()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True
