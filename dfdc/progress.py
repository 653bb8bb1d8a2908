"""Progress output that reads well on a terminal and in a log file.

``progress(...)`` is the one progress bar of the kit (a ``tqdm`` with the same arguments).
On a terminal it is tqdm's bar, redrawn in place. When its stream is not a terminal (``make
> log``, Slurm, CI, Kaggle's kernel log) a redrawn bar would land in the file as one
``\\r`` frame per refresh; there it prints plain lines instead: one when it starts, one each
time ``LINE_EVERY_PERCENT`` of the total or ``LINE_EVERY_S`` seconds have passed since the
last line (whichever comes first), and one when it ends. A transient bar (``leave=False``,
e.g. one training epoch, whose caller logs its own summary) prints only the time-based lines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LINE_EVERY_S = 30.0  # seconds between two lines in a log, at most: a stalled-looking log is one quiet for minutes
LINE_EVERY_PERCENT = 10.0  # a line per tenth of the work: about a dozen lines for a stage, however long
HF_PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"  # the Hugging Face hub's switch (timm's weight downloads)
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"  # (tqdm's own format without a total)


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` (None: ``sys.stderr``) is a terminal; a stream that cannot say is not."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress(tqdm):
    """A tqdm that writes whole lines, at most one per ``LINE_EVERY_S`` seconds or
    ``LINE_EVERY_PERCENT`` of the total, and never a ``\\r`` (tqdm's documented way to change
    its output: override ``display``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._line_t = time.monotonic()  # when the last line was written (or the bar started)
        self._line_n: float | None = None  # the count it showed (None: no line yet)
        kwargs.setdefault("mininterval", 0)  # every refresh reaches display(), which throttles
        kwargs.setdefault("miniters", 1)
        super().__init__(*args, **kwargs)

    def _due(self) -> bool:
        if self._line_n is None and self.leave:
            return True  # the opening line (a transient bar has none)
        if time.monotonic() - self._line_t >= LINE_EVERY_S:
            return True
        if not self.leave or not self.total:
            return False
        return (self.n - (self._line_n or 0)) * 100.0 / self.total >= LINE_EVERY_PERCENT

    def _write_line(self) -> None:
        self.bar_format = LINE_FORMAT if self.total else LINE_FORMAT_NO_TOTAL
        self.fp.write(self.__str__().rstrip() + "\n")
        self.fp.flush()
        self._line_t, self._line_n = time.monotonic(), self.n

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing or replacing the bar: nothing to clear in a log
            return False
        if self._due():
            self._write_line()
        return True

    def close(self) -> None:
        if self.disable:
            return
        if self.leave and self._line_n != self.n:  # (a transient bar ends silently)
            self._ema_dt = lambda: None  # the final line shows the overall rate, as tqdm's does
            self._write_line()
        self.leave = False  # tqdm's close then only "clears" the bar through display(msg="")
        super().close()


def progress(iterable: Iterable | None = None, *, desc: str, total: float | None = None,
             file: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (or one moved with ``update``), ``tqdm``'s arguments:
    redrawn in place when ``file`` (default ``sys.stderr``) is a terminal, else plain lines
    (``LineProgress``)."""
    stream = sys.stderr if file is None else file
    kind = tqdm if is_terminal(stream) else LineProgress
    return kind(iterable, desc=desc, total=total, file=stream, **kwargs)


def quiet_third_party_progress(stream: IO[str] | None = None) -> None:
    """Off a terminal, turn off the progress bars of the libraries the kit calls that draw
    their own: the Hugging Face hub's downloads (timm's pretrained weights), in this process
    and in the worker processes it starts (an environment variable; a value the user set
    wins). On a terminal nothing changes."""
    if is_terminal(stream) or os.environ.get(HF_PROGRESS_ENV) is not None:
        return
    os.environ[HF_PROGRESS_ENV] = "1"
    hub = sys.modules.get("huggingface_hub")
    if hub is not None:  # imported already: it read the variable at import time
        hub.utils.disable_progress_bars()
