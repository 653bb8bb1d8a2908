"""Run the exact kernel script here the way Kaggle would: an interpreter environment holding
only what Kaggle's image provides, the inputs read-only, the network blocked, an empty
working folder (``dfdc kernel --local DATA``, ``make kernel-local``).

- ``image_environment``: a fresh ``python -m venv --without-pip`` whose site-packages holds
  links to exactly the distributions of ``kernels/kaggle-image.txt`` and their dependencies,
  taken from this environment (resolved with ``importlib.metadata``). The kit itself, the
  face detector and the models' libraries are not there: the kernel must install them from
  the bundle's wheels, so a wheel missing from the bundle fails here, not on Kaggle.
- ``pinned_environment`` (``kernel.local_image=pinned``): the same list at the versions the
  file records for Kaggle's image (torch 2.10 ...), installed from the package index into a
  cached venv (``kernel.pinned_image_dir``), so that a checkpoint or API skew between the
  kit's torch and the image's fails here too. Its Python is this one, not the image's 3.12.
- ``run_local``: lays out ``input/<competition>/`` (``test_videos`` and
  ``sample_submission.csv``), ``input/<dataset slug>/`` (a copy of the bundle's dataset
  folder) and an empty ``working/`` (the script's working directory), runs the script with
  that interpreter and the network blocked, and reports the kernel's ``STATUS`` line, its
  exit code and the submission's rows. What lies under ``input/`` is made read-only (where
  the file system lets a non-root user feel it; root ignores the bits) and compared before
  and after (sizes and times, links followed): a kernel that writes into ``input/`` fails
  the run. The dataset is a copy, so the folder that gets pushed is never exposed;
  ``test_videos`` is a link to the user's videos (too many GB to copy), and the bits of the
  user's own files are not changed: a write there is caught by the comparison, after it
  happened.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfdc.config import Config
from dfdc.io import atomic_write_json, atomic_write_text
from dfdc.kaggle.bundle import Bundle
from dfdc.kaggle.common import IMAGE_LIST, KERNEL_CODE_FILE, ROOT_ENV, STATUS_MARK, KernelError, repo_root, run_command
from dfdc.kaggle.wheels import closure, image_list, image_pins

IMAGE_STAMP = ".dfdc-image.json"
LOCAL_IMAGES = ("linked", "pinned")  # kernel.local_image
# environment variables the local kernel keeps (everything else, PYTHONPATH and the venv's included, is left out)
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PIP_CACHE_DIR")


@dataclass
class LocalReport:
    submission: Path
    rows: int
    fallback_rows: int
    status: str  # "ok" or "failed" (the kernel's STATUS line; "failed" also on a non-zero exit)
    reasons: str  # the STATUS line's reasons
    returncode: int
    seconds: float
    log: Path


NETBLOCK = '''"""Blocks every network connection but loopback (dfdc kernel --local: Kaggle has no internet)."""
import errno
import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def _loopback(host):
    host = str(host).split("%")[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "network blocked (Kaggle kernels have no internet): %r" % (address,))


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host.decode() if isinstance(host, bytes) else host):
        raise socket.gaierror(socket.EAI_NONAME, "name lookup blocked (Kaggle kernels have no internet): %r" % (host,))
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
'''


def blocked_network_env(folder: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Python processes cannot open non-loopback connections."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "sitecustomize.py", NETBLOCK)
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(folder)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    return env


# --------------------------------------------------------------------------- the image-like interpreter


def _top_level_entries(dist: metadata.Distribution) -> list[str]:
    entries: dict[str, None] = {}
    for file in dist.files or []:
        first = file.parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        entries[first] = None
    return list(entries)


def image_environment(folder: Path, image: list[str]) -> tuple[Path, list[str]]:
    """A venv at ``folder`` seeing only ``image`` and its dependencies (linked from this
    environment); returns (its python, the distributions it holds). Rebuilt when the list
    or a version changes."""
    folder = Path(os.path.abspath(folder))  # the kernel runs in another working directory
    dists = closure(image)
    missing = [n for n in image if n not in dists]
    if missing:
        raise KernelError(f"{', '.join(missing)} (listed in {IMAGE_LIST}) not installed here; run `make setup`")
    versions = {name: metadata.version(name) for name in dists}
    python = folder / "bin" / "python"
    stamp = folder / IMAGE_STAMP
    wanted = {"python": sys.version, "dists": versions}
    if python.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return python, dists
        except ValueError:
            pass
    shutil.rmtree(folder, ignore_errors=True)
    result = run_command([sys.executable, "-m", "venv", "--without-pip", str(folder)], timeout=300,
                         what="python -m venv")
    if result.returncode != 0:
        raise KernelError(f"cannot create the image-like environment {folder}: {result.stderr.strip()[-500:]}")
    purelib = Path(sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})["purelib"])
    purelib.mkdir(parents=True, exist_ok=True)
    for name in dists:
        dist = metadata.distribution(name)
        for entry in _top_level_entries(dist):
            source, link = Path(str(dist.locate_file(entry))), purelib / entry
            if source.exists() and not (link.exists() or link.is_symlink()):
                link.symlink_to(source, target_is_directory=source.is_dir())
    atomic_write_json(stamp, wanted)
    return python, dists


def pinned_environment(folder: Path, pins: dict[str, str], timeout: float) -> tuple[Path, list[str]]:
    """A venv at ``folder`` holding exactly the ``pins`` (``kernels/kaggle-image.txt``: name ->
    version) and their dependencies, installed from the package index; returns (its python, the
    pinned names). Kept while the pins and this Python stay the same (a stamp file), else rebuilt.
    Its Python is this one: the image's own (3.12) may not be installed here."""
    folder = Path(os.path.abspath(folder))
    unpinned = [name for name, version in pins.items() if not version]
    if unpinned:
        raise KernelError(f"{IMAGE_LIST}: {', '.join(unpinned)} without a version (name==VERSION); "
                          "kernel.local_image=pinned installs exactly the image's versions")
    python, stamp = folder / "bin" / "python", folder / IMAGE_STAMP
    wanted = {"python": sys.version, "pins": pins}
    try:
        if python.is_file() and json.loads(stamp.read_text()) == wanted:
            return python, list(pins)
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    made = run_command([sys.executable, "-m", "venv", str(folder)], timeout=300, what="python -m venv")
    if made.returncode != 0:
        raise KernelError(f"cannot create the pinned image environment {folder}: {made.stderr.strip()[-500:]}")
    install = run_command([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                           *(f"{name}=={version}" for name, version in pins.items())],
                          timeout=timeout, what="pip install (the pinned Kaggle image)")
    if install.returncode != 0:
        raise KernelError(f"cannot install the versions of {IMAGE_LIST} into {folder} (the package index must be "
                          f"reachable): {(install.stdout + install.stderr).strip()[-1500:]}")
    atomic_write_json(stamp, wanted)
    return python, list(pins)


def image_python(cfg: Config, linked_dir: Path) -> Path:
    """The local kernel's interpreter per ``kernel.local_image`` (``LOCAL_IMAGES``)."""
    listed = repo_root() / IMAGE_LIST
    if cfg.kernel.local_image == "linked":
        return image_environment(linked_dir, image_list(listed))[0]
    if cfg.kernel.local_image == "pinned":
        return pinned_environment(Path(cfg.kernel.pinned_image_dir), image_pins(listed),
                                  cfg.kernel.pinned_image_timeout)[0]
    raise KernelError(f"kernel.local_image={cfg.kernel.local_image!r}: use one of {', '.join(LOCAL_IMAGES)}")


# --------------------------------------------------------------------------- the run


def check_submission(submission: Path, sample: Path) -> tuple[int, Any]:
    """A valid submission (``dfdc.metrics.read_submission``: filename,label, P(FAKE) in [0, 1],
    no name twice) with exactly those two columns and one row per sample-submission row, in
    order; returns (rows, labels)."""
    import pandas as pd

    from dfdc.metrics import ScoreError, read_submission

    try:
        got = read_submission(submission)
        columns = list(pd.read_csv(submission, nrows=0).columns)
        want = pd.read_csv(sample, dtype={"filename": str})
    except (ScoreError, OSError, ValueError) as exc:
        raise KernelError(f"cannot use {submission} (or {sample}): {exc}") from None
    if columns != ["filename", "label"]:
        raise KernelError(f"{submission}: columns {columns}, expected filename,label")
    if got["filename"].tolist() != want["filename"].astype(str).str.strip().tolist():
        raise KernelError(f"{submission}: its {len(got)} file names differ from the {len(want)} rows of {sample}")
    return len(got), got["label"]


def local_inputs(data_root: Path) -> tuple[Path, Path]:
    """``DATA_ROOT/test_videos`` and ``DATA_ROOT/sample_submission.csv``, or a clear error."""
    videos, sample = Path(data_root) / "test_videos", Path(data_root) / "sample_submission.csv"
    for path in (videos, sample):
        if not path.exists():
            raise KernelError(
                f"{path} not found: --local needs a folder with test_videos/ and sample_submission.csv "
                "(a DFDC download, or `make synth` for the mini DFDC)"
            )
    return videos, sample


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (links followed): relative path -> (size, mtime_ns)."""
    out = {}
    for dirpath, _, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(dirpath) / name
            info = path.stat()
            out[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return out


def _read_only(folder: Path) -> None:
    for dirpath, dirs, files in os.walk(folder):
        for name in files + dirs:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    folder.chmod(folder.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(folder: Path) -> None:
    for dirpath, dirs, files in os.walk(folder):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | stat.S_IWUSR)
        for name in files + dirs:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)


def kernel_env(work: Path) -> dict[str, str]:
    """The local kernel's environment: ``KEPT_ENV`` only, the network blocked, the Kaggle root
    ``work``, and an empty ``HOME`` beside ``work/working`` (absolute: the kernel runs in
    ``working/``; outside it: Kaggle saves ``working/`` as the kernel's output)."""
    work = Path(os.path.abspath(work))
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    env = blocked_network_env(work / "netblock", base={**base, "HOME": str(home)})
    env[ROOT_ENV] = str(work)
    return env


def run_local(bundle: Bundle, data_root: Path, cfg: Config, work_dir: Path | None = None,
              image_dir: Path | None = None) -> LocalReport:
    """Run the bundle's kernel script on a Kaggle-like tree built from ``data_root``, offline,
    in the image-like interpreter (``image_dir``, default ``<bundle root>/image-venv``)."""
    videos, sample = local_inputs(data_root)
    work = Path(work_dir) if work_dir else bundle.root / "local"
    if work.exists():
        _writable(work)
        shutil.rmtree(work)
    inputs = work / "input"
    comp = inputs / bundle.competition
    comp.mkdir(parents=True)
    (comp / "test_videos").symlink_to(videos.resolve(), target_is_directory=True)
    shutil.copyfile(sample, comp / "sample_submission.csv")
    shutil.copytree(bundle.dataset_dir, inputs / bundle.dataset_slug)  # a copy: the pushed folder stays untouched
    (work / "working").mkdir()
    python = image_python(cfg, Path(image_dir) if image_dir else bundle.root / "image-venv")
    env = kernel_env(work)
    before = _snapshot(inputs)
    _read_only(inputs)
    start = time.monotonic()
    try:
        result = subprocess.run([str(python), str((bundle.kernel_dir / KERNEL_CODE_FILE).resolve())],
                                capture_output=True, text=True, timeout=cfg.kernel.local_timeout, env=env,
                                cwd=work / "working")
    except subprocess.TimeoutExpired:
        raise KernelError(f"the local kernel run did not finish in {cfg.kernel.local_timeout:.0f} s "
                          "(kernel.local_timeout, Kaggle's 9 h)") from None
    finally:
        _writable(inputs)
    seconds = time.monotonic() - start
    log = work / "kernel.log"
    atomic_write_text(log, result.stdout + "\n--- stderr ---\n" + result.stderr)
    lines = result.stdout.strip().splitlines()
    found = re.search(re.escape(STATUS_MARK) + r"(\w+)(?: \((.*)\))?$", lines[-1]) if lines else None
    status, reasons = found.groups("") if found else (
        "failed", "the kernel's log does not end with its STATUS line" if STATUS_MARK in result.stdout
        else "the kernel printed no STATUS line")
    if _snapshot(inputs) != before:
        status, reasons = "failed", f"the kernel changed files under {inputs} (Kaggle's input is read-only)"
    if result.returncode != 0 and status == "ok":
        status, reasons = "failed", f"exit code {result.returncode} after STATUS: ok"
    elif result.returncode != 0 and not reasons:
        reasons = f"exit code {result.returncode}"
    submission = work / "working" / "submission.csv"
    rows, fallback_rows = 0, 0
    if submission.is_file():
        rows, labels = check_submission(submission, sample)
        fallback_rows = int((labels == cfg.predict.fallback).sum())
    elif status == "ok":
        status, reasons = "failed", f"no {submission} written"
    return LocalReport(submission, rows, fallback_rows, status, reasons, result.returncode, seconds, log)
