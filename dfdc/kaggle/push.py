"""Talk to Kaggle through the official ``kaggle`` client: upload the dataset, wait until
Kaggle has processed it, push the kernel, and submit a pushed kernel version.

The client runs as a subprocess (it authenticates on import) with a timeout (it has none of
its own), and its output is read: it exits 0 when the server rejects a request. The
credentials are checked first, so nothing is sent without them.

- ``push_bundle``: reads the dataset's current version number first (``datasets status
  --format 'json(status,current_version_number)'``, kaggle 2.2.4; none when the dataset does not
  exist), then ``datasets create`` (or ``datasets version`` when the slug exists), then the same
  status call every ``kernel.dataset_poll`` seconds until the version number has increased and
  the status is ``ready`` (at most ``kernel.dataset_ready_timeout``; ``failed`` stops at once):
  right after an upload Kaggle may still report the previous version ``ready``, and a kernel
  pushed then would run on the old weights. Then ``kernels push``,
  which fails on any rejection, invalid dataset or competition source included. What was
  pushed (kernel id and version) is recorded in ``BUILD_DIR/push.json``.
- ``submit_kernel``: reads that record, checks ``kernels status`` (Kaggle accepts a code
  submission of a version that ran to completion), then ``competitions submit -c COMP -k
  USER/KERNEL -v VERSION -f submission.csv -m MSG``; every refusal says exactly why.
  ``kernels status`` reports the kernel's latest version only (the client sends no version):
  it is checked when the version submitted is the recorded push, the latest; an older
  ``--version`` is submitted unchecked, with a warning (Kaggle refuses one that did not
  complete).

The client's output is searched for words of refusal ("error", "invalid" ...) with URLs
and the bundle's own kernel and dataset ids left out first: a slug such as
``ssim-error-maps`` is not a refusal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfdc.config import Config, make_hint, warn
from dfdc.io import atomic_write_json
from dfdc.kaggle.bundle import Bundle
from dfdc.kaggle.common import PUSH_RECORD, KernelError, run_command
from dfdc.kaggle.credentials import find_credentials

# What a kaggle CLI run prints when the server refused it (its exit code is 0 then).
REJECTION_RE = re.compile(
    r"error|not valid|already in use|invalid|forbidden|unauthori[sz]ed|denied|could not", re.IGNORECASE
)
# A warning the client prints on every call when kaggle.json is group-readable; it names the
# file's path, which may hold any word, so it is left out before output is searched.
KEY_WARNING = re.compile(r"^Warning: Your Kaggle API key is readable.*$", re.MULTILINE)
URL_RE = re.compile(r"https?://\S+")  # URLs in the client's output (they hold slugs) are not searched
# kernels push: Kaggle saved the kernel but dropped sources (invalidDatasetSources & co.)
INVALID_SOURCES = re.compile(r"The following are not valid (\w+) sources and could not be added to the kernel: (.*)")
DATASET_READY = "ready"
# `kaggle datasets status` (kaggle 2.2.4) prints this JSON: both fields, one call
STATUS_FORMAT = "json(status,current_version_number)"
NOT_FOUND = re.compile(r"not found|404", re.IGNORECASE)  # a dataset that does not exist yet
DATASET_BROKEN = ("failed", "deleted")
SUBMISSION_FILE = "submission.csv"  # what the kernel writes in /kaggle/working


@dataclass
class PushReport:
    dataset_action: str  # "create" or "version"
    dataset_output: str
    dataset_status: str  # the last `datasets status` answer ("ready")
    kernel_output: str
    kernel_url: str | None
    kernel_version: int | None
    record: Path  # push.json
    dataset_version: int = 0  # the dataset version the kernel was pushed against (the upload's)


def kaggle_cli() -> list[str]:
    """The venv's ``kaggle`` command (never imported in-process: it authenticates on import)."""
    path = Path(sys.executable).parent / "kaggle"
    if not path.is_file():
        raise KernelError(f"the kaggle client is not installed beside {sys.executable}; run `make setup`")
    return [str(path)]


def rejected(output: str, success: str = "", names: tuple[str, ...] = ()) -> bool:
    """Whether the client's ``output`` holds a word of refusal, outside the ``success``
    sentence, URLs and ``names`` (the kernel's and dataset's ids and slugs)."""
    text = URL_RE.sub(" ", output.replace(success, "") if success else output)
    for name in sorted(filter(None, names), key=len, reverse=True):
        text = text.replace(name, " ")
    return bool(REJECTION_RE.search(text))


def _kaggle(args: list[str], timeout: float, success: str, refuse: re.Pattern | None = None,
            names: tuple[str, ...] = ()) -> str:
    """Run one kaggle CLI command; fail unless it exits 0, says ``success`` and no rejection
    (``rejected``; nor ``refuse``, a pattern with a message of its own)."""
    result = run_command(kaggle_cli() + args, timeout=timeout, what="kaggle " + " ".join(args[:2]))
    output = _output(result)
    found = refuse.search(output) if refuse is not None else None
    if found:
        raise KernelError(f"`kaggle {' '.join(args)}`: Kaggle saved it without its {found.group(1)} sources "
                          f"{found.group(2)} (not valid for this account, or not ready); the kernel would run "
                          f"without them. Check they exist and are yours, then push again:\n{output[-2000:]}")
    if result.returncode != 0 or success.lower() not in output.lower() or rejected(output, success, names):
        raise KernelError(f"`kaggle {' '.join(args)}` failed (exit {result.returncode}):\n{output[-2000:]}")
    return output


def _names(bundle: Bundle) -> tuple[str, ...]:
    """The ids and slugs of a bundle: words of the client's output that are not its own."""
    return (bundle.kernel_id, bundle.dataset_id, bundle.kernel_id.split("/")[-1], bundle.dataset_slug,
            bundle.dataset_id.split("/")[-1])


def _output(result: subprocess.CompletedProcess) -> str:
    return KEY_WARNING.sub("", result.stdout + result.stderr).strip()


def dataset_status(dataset_id: str, timeout: float) -> tuple[str, int] | None:
    """``kaggle datasets status ID --format STATUS_FORMAT``: (status in lower case, "ready",
    "blobs_received", "failed" ...; the current version number), or None when the dataset does
    not exist."""
    result = run_command(kaggle_cli() + ["datasets", "status", dataset_id, "--format", STATUS_FORMAT],
                         timeout=timeout, what="kaggle datasets status")
    output = _output(result)
    last = output.splitlines()[-1].strip() if output else ""
    if result.returncode != 0 and NOT_FOUND.search(output):
        return None
    try:
        answer = json.loads(last)
        return str(answer["status"]).lower(), int(answer["current_version_number"] or 0)
    except (ValueError, KeyError, TypeError):
        raise KernelError(f"`kaggle datasets status {dataset_id} --format '{STATUS_FORMAT}'` failed "
                          f"(exit {result.returncode}):\n{output[-2000:]}") from None


def wait_until_ready(dataset_id: str, cfg: Config, previous: int = 0, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> tuple[str, int]:
    """Poll the dataset until its version number is above ``previous`` (the one before the
    upload) and that version is ready; a clear error when it failed or the wait ran out.
    Returns (status, version)."""
    deadline = clock() + cfg.kernel.dataset_ready_timeout
    while True:
        answer = dataset_status(dataset_id, cfg.kernel.push_timeout)
        status, version = answer if answer is not None else ("not found", 0)
        new = version > previous
        if new and status == DATASET_READY:
            return status, version
        if new and status in DATASET_BROKEN:
            raise KernelError(f"Kaggle reports dataset {dataset_id} as {status!r}: the upload was not processed; "
                              f"see https://www.kaggle.com/datasets/{dataset_id} and push again (make kernel)")
        if clock() >= deadline:
            state = f"{status!r} at version {version}" + ("" if new else f" (the upload makes version {previous + 1})")
            raise KernelError(
                f"dataset {dataset_id} is still {state} after {cfg.kernel.dataset_ready_timeout:g} s "
                "(kernel.dataset_ready_timeout); Kaggle is still processing the upload. The kernel was NOT pushed "
                "(it would start without its files, or with the previous version's). Wait, then run make kernel "
                f"again, or raise the timeout with {make_hint('--set ', 'SET=')}kernel.dataset_ready_timeout=SECONDS"
            )
        sleep(cfg.kernel.dataset_poll)


def push_bundle(bundle: Bundle, cfg: Config, sleep: Callable[[float], None] = time.sleep) -> PushReport:
    """Upload the dataset (create, or a new version if it exists), wait until it is ready,
    then push the kernel; record the pushed version in ``BUNDLE_ROOT/push.json``."""
    timeout = cfg.kernel.push_timeout
    creds = find_credentials()
    if creds.username and creds.username != bundle.username:
        warn(f"the bundle is built for {bundle.username!r} but the credentials ({creds.source}) are {creds.username!r}")
    before = dataset_status(bundle.dataset_id, timeout)
    previous = before[1] if before is not None else 0
    dataset_cmd = ["datasets", "create", "-p", str(bundle.dataset_dir)]
    result = run_command(kaggle_cli() + dataset_cmd, timeout=timeout, what="kaggle datasets create")
    output = _output(result)
    action = "create"
    if "already in use" in output:
        action = "version"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        output = _kaggle(
            ["datasets", "version", "-p", str(bundle.dataset_dir), "-m", f"dfdc-kit folds {bundle.folds} {stamp}"],
            timeout, success="is being created", names=_names(bundle),
        )
    elif result.returncode != 0 or "is being created" not in output or rejected(output, names=_names(bundle)):
        raise KernelError(f"`kaggle {' '.join(dataset_cmd)}` failed (exit {result.returncode}):\n{output[-2000:]}")
    status, version_number = wait_until_ready(bundle.dataset_id, cfg, previous, sleep=sleep)
    kernel_output = _kaggle(["kernels", "push", "-p", str(bundle.kernel_dir)], timeout, success="successfully pushed",
                            refuse=INVALID_SOURCES, names=_names(bundle))
    url = re.search(r"https?://\S+", kernel_output)
    version = re.search(r"Kernel version (\d+) successfully pushed", kernel_output)
    record = bundle.root / PUSH_RECORD
    atomic_write_json(record, {
        "kernel": bundle.kernel_id, "version": int(version.group(1)) if version else None,
        "competition": bundle.competition, "dataset": bundle.dataset_id, "dataset_version": version_number,
        "url": url.group(0) if url else None,
        "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return PushReport(action, output, status, kernel_output, url.group(0) if url else None,
                      int(version.group(1)) if version else None, record, version_number)


def kernel_status(kernel_id: str, timeout: float) -> tuple[str, str]:
    """``kaggle kernels status``: (status in upper case, failure message or "")."""
    result = run_command(kaggle_cli() + ["kernels", "status", kernel_id], timeout=timeout, what="kaggle kernels status")
    output = _output(result)
    found = re.search(r'has status "(?:KernelWorkerStatus\.)?([A-Za-z_]+)"', output)
    if result.returncode != 0 or not found:
        raise KernelError(f"`kaggle kernels status {kernel_id}` failed (exit {result.returncode}):\n{output[-2000:]}")
    failure = re.search(r'Failure message: "(.*)"', output)
    return found.group(1).upper(), failure.group(1) if failure else ""


def submit_kernel(build_dir: Path, cfg: Config, message: str | None = None, version: int | None = None) -> str:
    """Submit the pushed kernel version to the competition; returns the client's answer.

    Refuses, saying why, when nothing was pushed from ``build_dir``, there are no
    credentials, the version has not finished running on Kaggle, or Kaggle rejects it.
    ``kernels status`` speaks of the kernel's latest version: it is checked only when
    ``version`` is the recorded push (the latest pushed from here); another version is
    submitted with a warning that its status was not checked.
    """
    record_path = Path(build_dir) / PUSH_RECORD
    if not record_path.is_file():
        raise KernelError(f"{record_path} not found: nothing was pushed from {build_dir}; run `make kernel` first "
                          "(it pushes the bundle and records the kernel version to submit)")
    try:
        record = json.loads(record_path.read_text())
        kernel_id, competition = str(record["kernel"]), str(record["competition"])
    except (OSError, ValueError, KeyError) as exc:
        raise KernelError(f"{record_path}: unreadable ({exc}); run `make kernel` again") from None
    latest = record.get("version")
    version = version if version is not None else latest
    if not version:
        raise KernelError(f"{record_path} holds no kernel version (the push did not report one); "
                          "pass --version N (see the kernel's page on kaggle.com)")
    find_credentials()
    if latest and int(version) != int(latest):
        warn(f"submitting version {version} of {kernel_id} unchecked: `kaggle kernels status` reports the latest "
             f"version only (version {latest} was pushed last from here); Kaggle refuses a version that did not "
             "run to completion")
    else:
        status, failure = kernel_status(kernel_id, cfg.kernel.push_timeout)
        if status != "COMPLETE":
            why = {"QUEUED": "is queued on Kaggle", "RUNNING": "is still running on Kaggle",
                   "ERROR": "failed on Kaggle" + (f": {failure}" if failure else "")}.get(status, f"has status {status}")
            raise KernelError(f"kernel {kernel_id}, version {version} (its latest, the one pushed last from here), "
                              f"{why}; Kaggle accepts a code submission of a version that ran to completion. Check "
                              f"https://www.kaggle.com/code/{kernel_id} and run make submit again when it is complete")
    text = message or f"dfdc-kit {kernel_id} v{version}"
    return _kaggle(["competitions", "submit", "-c", competition, "-k", kernel_id, "-v", str(version),
                    "-f", SUBMISSION_FILE, "-m", text], cfg.kernel.push_timeout, success="",
                   names=(kernel_id, kernel_id.split("/")[-1], text))  # our words echoed back are no refusal
