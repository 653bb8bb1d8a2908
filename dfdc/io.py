"""Atomic file writing: every file the kit writes appears whole or not at all.

Writers put bytes into a temporary file in the destination folder, flush and fsync it,
then ``os.replace`` it over the destination, so a kill -9 leaves either the old file or
the new one, never half of one. Stray ``*.tmp-*`` files from a killed run are ignored by
readers and removed by ``clean_temp_files``.

A full disk (``ENOSPC``) while writing raises ``DiskFullError``: the folder, the space the file
needed when known, and what to do; the command line prints it as one line, no traceback. Every
stage resumes where it stopped, so freeing space and rerunning the command finishes the work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"
FILE_MODE = 0o666  # what open() would give, before the umask; mkstemp alone gives 0600


RESUME_ADVICE = "free space and rerun: it resumes"


class DiskFullError(OSError):
    """No space left on the device while writing into ``folder``; ``needed``: the bytes the
    file needed (None when unknown), ``written``: the bytes that fitted before the disk filled."""

    def __init__(self, folder: Path | str, needed: int | None = None, written: int | None = None) -> None:
        self.folder, self.needed, self.written = Path(folder), needed, written
        if needed is not None:
            size = f"; it needed {_size(needed)}"
        elif written:
            size = f"; it needed more than the {_size(written)} written"
        else:
            size = ""
        super().__init__(errno.ENOSPC, f"{self.folder}: no space left on the device{size}; {RESUME_ADVICE}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across worker processes with its fields
        return (DiskFullError, (str(self.folder), self.needed, self.written))

    def __str__(self) -> str:
        return str(self.strerror)


MEGABYTE = 1_000_000  # sizes in messages: MB from a tenth of one, bytes below


def _size(n: int) -> str:
    return f"{n / MEGABYTE:.1f} MB" if n >= MEGABYTE // 10 else f"{n} bytes"


def is_disk_full(exc: BaseException) -> bool:
    """``exc``, or an exception it was raised from, is an ``ENOSPC`` (disk full) error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_message(exc: BaseException) -> str:
    """The one line to print for a disk-full ``exc`` (``is_disk_full``)."""
    while not isinstance(exc, DiskFullError) and (exc.__cause__ or exc.__context__) is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            break
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, DiskFullError):
        return str(exc)
    name = getattr(exc, "filename", None)
    folder = Path(name).parent if name else Path.cwd()
    return str(DiskFullError(folder))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", *, needed: int | None = None, **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success it is renamed over ``path``. A full disk
    raises ``DiskFullError`` (``needed``: the file's size, when the caller knows it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        os.chmod(tmp, FILE_MODE & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = None
        with contextlib.suppress(OSError):
            written = os.path.getsize(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path.parent, needed, written) from exc
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb", needed=len(data)) as handle:
        handle.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", needed=len(text.encode("utf-8"))) as handle:
        handle.write(text)


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: Path | str, frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, **kwargs)


def atomic_save_torch(path: Path | str, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints survive a kill -9 mid-write)."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def clean_temp_files(folder: Path | str) -> int:
    """Remove temp files a killed run left under ``folder``; returns how many."""
    removed = 0
    for tmp in Path(folder).rglob(f"*{TEMP_MARK}*"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed


def remove_temp_files_of(folders: Iterable[Path], names: set[str]) -> int:
    """Remove the temp files (``.NAME.tmp-XXXX``) of the files ``names`` in ``folders`` (not
    recursive), leaving every other temp file alone: writers sharing a folder (extraction
    shards) clean only their own. Returns how many were removed."""
    removed = 0
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.name[1:].split(TEMP_MARK)[0] in names:
                os.unlink(entry.path)
                removed += 1
    return removed


def read_table(
    path: Path | str,
    columns: tuple[str, ...] | list[str],
    *,
    error: type[Exception],
    fix: str,
    what: str = "table",
    **read_csv_kwargs: Any,
) -> Any:
    """Read a CSV with ``columns`` into a DataFrame; any problem raises ``error`` naming the
    file and ``fix`` (missing file, unreadable CSV, missing columns). Header names are
    stripped of spaces, so a hand-edited `filename, label` still reads."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found; {fix}")
    try:
        df = pd.read_csv(path, **read_csv_kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: not a readable CSV ({exc}); {fix}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(
            f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(columns)}; "
            f"has {','.join(df.columns)}); {fix}"
        )
    return df
