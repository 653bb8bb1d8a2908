"""The offline Kaggle kernel: bundle, push, and a local Kaggle-like run (``dfdc kernel``).

A DFDC submission is a Kaggle kernel re-run by the host with the internet off, so
everything it needs beyond the Kaggle image travels as a Kaggle dataset. ``build_bundle``
writes two folders under ``kernels/build/``:

- ``dataset/`` (flat: the ``kaggle`` client skips subfolders): ``fold{k}.pt`` fp16 weights
  (``dfdc.models.export_half``), ``config.yaml`` (the resolved configuration),
  ``calibration.json`` when the run has one, the wheels of dfdc-kit, facenet-pytorch and
  efficientnet-pytorch, and ``dataset-metadata.json``;
- ``kernel/``: ``inference.py`` (``kernels/template/inference.py`` with the build's values
  filled in) and ``kernel-metadata.json`` (GPU on, internet off, private by default).

Both are checked against an explicit allow-list after building. ``push_bundle`` checks the
Kaggle credentials itself, then runs the official ``kaggle`` CLI as subprocesses with a
timeout and reads their output (the client exits 0 on server rejections). ``run_local``
lays out ``input/`` and ``working/`` like Kaggle does and runs the exact kernel script with
network connections blocked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dfdc
from dfdc.aggregate import CALIBRATION
from dfdc.config import Config, save_config, warn
from dfdc.io import TEMP_MARK, atomic_write_json, atomic_write_text

KERNEL_CODE_FILE = "inference.py"
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
ROOT_ENV = "DFDC_KAGGLE_ROOT"  # moves the kernel's /kaggle (local runs)
FORCE_INSTALL_ENV = "DFDC_KERNEL_FORCE_INSTALL"  # install every bundled wheel even if importable
STATUS_MARK = "DFDC-KERNEL-STATUS: "  # the kernel script's last log line: ok / fallback
PACKAGE_DIST = "dfdc-kit"  # this package's distribution name (pyproject.toml)
TEMPLATE = Path("kernels") / "template" / KERNEL_CODE_FILE  # relative to the source checkout
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
DATASET_SLUG_LENGTH = (6, 50)  # the kaggle client refuses dataset slugs and titles outside this
KERNEL_TITLE_MIN = 5  # the kaggle client refuses shorter kernel titles
WEIGHTS_RE = re.compile(r"^fold(\d+)\.pt$")
# Wheel members that must never be shipped: credentials anywhere; in this package's own
# wheel also caches, weights and videos (weights travel as fold*.pt, checked apart).
SECRET_MEMBER = re.compile(r"(^|/)(kaggle\.json|access_token(\.txt)?|credentials\.json|\.env|\.git|\.venv)(/|$)")
OWN_FORBIDDEN_MEMBER = re.compile(r"(^|/)__pycache__/|\.pyc$|\.pt$|\.pth$|\.mp4$|\.ckpt$")
# What a kaggle CLI run prints when the server refused it (its exit code is 0 then).
REJECTION_RE = re.compile(r"error|not valid|already in use|invalid|forbidden|unauthori[sz]ed|denied", re.IGNORECASE)


class KernelError(RuntimeError):
    """A bundle, push or local kernel run that cannot go on; the message says what to do."""


@dataclass
class Bundle:
    """A built bundle: the dataset folder and the kernel folder, ready to push."""

    root: Path
    dataset_dir: Path
    kernel_dir: Path
    username: str
    dataset_id: str
    kernel_id: str
    folds: list[int]
    weights_bytes: int
    files: list[str] = field(default_factory=list)  # relative to root
    competition: str = "deepfake-detection-challenge"
    dataset_slug: str = ""


@dataclass
class Credentials:
    """Where the kaggle client will find its credentials (never the secret itself)."""

    source: str
    username: str | None


@dataclass
class PushReport:
    dataset_action: str  # "create" or "version"
    dataset_output: str
    kernel_output: str
    kernel_url: str | None


@dataclass
class LocalReport:
    submission: Path
    rows: int
    fallback_rows: int
    status: str  # "ok" (the models ran) or "fallback" (the kernel fell back entirely)
    seconds: float
    log: Path


# --------------------------------------------------------------------------- helpers


def repo_root() -> Path:
    """The source checkout of this package (the wheel and the template are built from it)."""
    root = Path(dfdc.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / TEMPLATE).is_file():
        raise KernelError(
            f"{root} is not a dfdc-kit source checkout (no pyproject.toml or {TEMPLATE}); "
            "build the kernel from a clone of the repository installed with `make setup`"
        )
    return root


def requirement_pins(requirements: Path) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of requirements.txt."""
    pins: dict[str, str] = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_dist(filename: str) -> str:
    return _norm(filename.split("-", 1)[0])


def _run(cmd: list[str], timeout: float, what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise KernelError(f"{what} did not finish in {timeout:.0f} s: {' '.join(cmd)}") from None
    except OSError as exc:
        raise KernelError(f"{what} could not start ({exc}): {' '.join(cmd)}") from None


def _fold_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    from dfdc.models import fold_checkpoints

    found = fold_checkpoints(run_dir)
    if not found:
        raise KernelError(
            f"{run_dir}: no fold*/best.pt checkpoints; train first (`make train`) "
            "or point --models at a run folder such as runs/b7"
        )
    return found


def _title(slug: str) -> str:
    return slug.replace("-", " ")


def _check_slugs(cfg: Config, username: str) -> None:
    if not username or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", username):
        raise KernelError(f"Kaggle username {username!r} is not valid; pass --username YOUR_KAGGLE_NAME")
    for what, slug in (("kernel.slug", cfg.kernel.slug), ("kernel.dataset_slug", cfg.kernel.dataset_slug)):
        if not SLUG_RE.fullmatch(slug):
            raise KernelError(f"{what}={slug!r}: use lowercase letters, digits and hyphens (--slug/--dataset-slug)")
    low, high = DATASET_SLUG_LENGTH
    if not low <= len(cfg.kernel.dataset_slug) <= high:
        raise KernelError(f"kernel.dataset_slug={cfg.kernel.dataset_slug!r}: Kaggle needs {low}-{high} characters")
    if len(_title(cfg.kernel.slug)) < KERNEL_TITLE_MIN:
        raise KernelError(f"kernel.slug={cfg.kernel.slug!r}: Kaggle needs a title of at least {KERNEL_TITLE_MIN} characters")


def _third_party_wheels(cfg: Config, root: Path, cache: Path) -> list[Path]:
    """Wheels of the pinned third-party packages, from the cache or the package index."""
    pins = requirement_pins(root / "requirements.txt")
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name in cfg.kernel.wheel_packages:
        version = pins.get(_norm(name))
        if version is None:
            raise KernelError(f"{root / 'requirements.txt'} does not pin {name}==VERSION; add the pin")
        prefix = _norm(name).replace("-", "_")
        cached = sorted(cache.glob(f"{prefix}-{version}-*.whl"))
        if not cached:
            fetch = cache / f".fetch{TEMP_MARK}{os.getpid()}"  # a killed fetch never leaves half a wheel
            shutil.rmtree(fetch, ignore_errors=True)
            result = _run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--disable-pip-version-check", "-q", "-w", str(fetch), f"{name}=={version}"],
                timeout=cfg.kernel.push_timeout, what=f"pip wheel {name}",
            )
            for wheel in fetch.glob("*.whl"):
                os.replace(wheel, cache / wheel.name)
            shutil.rmtree(fetch, ignore_errors=True)
            cached = sorted(cache.glob(f"{prefix}-{version}-*.whl"))
            if result.returncode != 0 or not cached:
                raise KernelError(
                    f"cannot get a wheel of {name}=={version} (pip said: {result.stderr.strip()[-500:]}); "
                    f"check the package index is reachable, or put the wheel into {cache}"
                )
        wheels.append(cached[-1])
    return wheels


def _package_wheel(root: Path, out: Path, timeout: float) -> Path:
    """Wheel of this package, built from a clean copy of the sources (no stale build/ files)."""
    out.mkdir(parents=True, exist_ok=True)
    source = out / f".source{TEMP_MARK}{os.getpid()}"
    shutil.rmtree(source, ignore_errors=True)
    try:
        source.mkdir()
        for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md"):
            if (root / name).is_file():
                shutil.copyfile(root / name, source / name)
        shutil.copytree(
            root / "dfdc", source / "dfdc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", f"*{TEMP_MARK}*")
        )
        result = _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-q", "-w", str(out), str(source)],
            timeout=timeout, what="pip wheel dfdc-kit",
        )
    finally:
        shutil.rmtree(source, ignore_errors=True)
    wheels = sorted(out.glob("dfdc_kit-*.whl"))
    if result.returncode != 0 or not wheels:
        raise KernelError(f"building the dfdc-kit wheel from {root} failed: {result.stderr.strip()[-800:]}")
    return wheels[-1]


def render_script(cfg: Config) -> str:
    """The kernel script: the template with this build's values filled in."""
    template = (repo_root() / TEMPLATE).read_text(encoding="utf-8")
    modules = {_norm(PACKAGE_DIST).replace("-", "_"): "dfdc"}
    for name in cfg.kernel.wheel_packages:
        modules[_norm(name).replace("-", "_")] = _norm(name).replace("-", "_")
    values = {
        "DATASET_SLUG": cfg.kernel.dataset_slug,
        "COMPETITION": cfg.kernel.competition,
        "TIME_BUDGET": float(cfg.kernel.time_budget),
        "FALLBACK": float(cfg.predict.fallback),
        "ROOT_ENV": ROOT_ENV,
        "FORCE_INSTALL_ENV": FORCE_INSTALL_ENV,
        "WHEEL_MODULES": modules,
        "ALWAYS_INSTALL": [_norm(PACKAGE_DIST).replace("-", "_")],
        "STATUS_MARK": STATUS_MARK,
    }

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KernelError(f"{TEMPLATE}: unknown placeholder {{{{{key}}}}}")
        return repr(values[key])  # str/float/list/dict reprs are Python literals

    return PLACEHOLDER.sub(fill, template)


# --------------------------------------------------------------------------- build


def _shipped_calibration(run_dir: Path, cfg: Config, explicit: Collection[str]) -> tuple[Config, dict[str, Any] | None]:
    """The configuration and calibration the kernel runs with.

    The calibration is resolved here as ``dfdc predict`` would (``predict.calibration``:
    auto, none or a local path, which cannot travel to Kaggle) and shipped as the dataset's
    ``calibration.json``, with the keys the user set (``explicit``) taking the user's values;
    the shipped config says ``auto``, so the kernel finds exactly that file.
    """
    from dfdc.predict import PredictError, resolve_calibration

    try:
        calibration, _ = resolve_calibration(run_dir, cfg.predict)
    except PredictError as exc:
        raise KernelError(str(exc)) from None
    shipped = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, calibration="auto"))
    if calibration is None:
        return shipped, None
    return shipped, {**calibration, **{key: getattr(cfg.predict, key) for key in explicit}}


def build_bundle(
    run_dir: Path, out_dir: Path, cfg: Config, username: str, explicit: Collection[str] = ()
) -> Bundle:
    """Build the Kaggle dataset folder and kernel folder for the models of ``run_dir``.

    ``out_dir`` receives ``dataset/`` and ``kernel/`` (each replaced whole, never left
    half-written). Every fold's ``best.pt`` is exported to fp16; their total must fit in
    ``cfg.kernel.max_weights_bytes``. The result is verified against an allow-list.
    """
    from dfdc.models import CheckpointError, export_half

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise KernelError(f"run folder {run_dir} not found; train first (`make train`) or pass --models runs/NAME")
    _check_slugs(cfg, username)
    root = repo_root()
    checkpoints = _fold_checkpoints(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".*{TEMP_MARK}*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    staging = out_dir / f".bundle{TEMP_MARK}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    dataset, kernel = staging / "dataset", staging / "kernel"
    dataset.mkdir(parents=True)
    kernel.mkdir()
    try:
        total = 0
        for fold, path in checkpoints:
            target = dataset / f"fold{fold}.pt"
            try:
                export_half(path, target)
            except (CheckpointError, OSError) as exc:
                raise KernelError(f"{path}: cannot export fp16 weights ({exc})") from None
            total += target.stat().st_size
            if total > cfg.kernel.max_weights_bytes:
                raise KernelError(
                    f"{run_dir}: the fp16 weights of folds {[f for f, _ in checkpoints if f <= fold]} already take "
                    f"{total:,} bytes, over kernel.max_weights_bytes={cfg.kernel.max_weights_bytes:,} "
                    "(DFDC models had to fit in 1 GB); ship fewer folds (delete fold folders from a copy "
                    "of the run) or a smaller architecture"
                )
        shipped, calibration = _shipped_calibration(run_dir, cfg, explicit)
        save_config(shipped, dataset / "config.yaml")
        if calibration is not None:
            atomic_write_json(dataset / CALIBRATION, calibration)
        _package_wheel(root, dataset, cfg.kernel.push_timeout)
        cache = Path(cfg.kernel.wheel_cache) if cfg.kernel.wheel_cache else out_dir / "wheel-cache"
        for wheel in _third_party_wheels(cfg, root, cache):
            shutil.copyfile(wheel, dataset / wheel.name)
        dataset_id = f"{username}/{cfg.kernel.dataset_slug}"
        kernel_id = f"{username}/{cfg.kernel.slug}"
        atomic_write_json(
            dataset / DATASET_METADATA,
            {"title": _title(cfg.kernel.dataset_slug), "id": dataset_id, "licenses": [{"name": cfg.kernel.license}]},
        )
        atomic_write_text(kernel / KERNEL_CODE_FILE, render_script(cfg))
        atomic_write_json(
            kernel / KERNEL_METADATA,
            {
                "id": kernel_id,
                "title": _title(cfg.kernel.slug),
                "code_file": KERNEL_CODE_FILE,
                "language": "python",
                "kernel_type": "script",
                "is_private": bool(cfg.kernel.private),
                "enable_gpu": bool(cfg.kernel.enable_gpu),
                "enable_tpu": False,
                "enable_internet": False,  # the client defaults to TRUE when omitted
                "dataset_sources": [dataset_id],
                "competition_sources": [cfg.kernel.competition],
                "kernel_sources": [],
            },
        )
        verify_bundle(dataset, kernel, cfg)
        for name in ("dataset", "kernel"):  # each folder replaced whole
            final = out_dir / name
            old = out_dir / f".{name}-old{TEMP_MARK}{os.getpid()}"
            if final.exists():
                final.rename(old)
            (staging / name).rename(final)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(str(p.relative_to(out_dir)) for d in ("dataset", "kernel") for p in (out_dir / d).iterdir())
    return Bundle(
        root=out_dir,
        dataset_dir=out_dir / "dataset",
        kernel_dir=out_dir / "kernel",
        username=username,
        dataset_id=dataset_id,
        kernel_id=kernel_id,
        folds=[f for f, _ in checkpoints],
        weights_bytes=total,
        files=files,
        competition=cfg.kernel.competition,
        dataset_slug=cfg.kernel.dataset_slug,
    )


def verify_bundle(dataset_dir: Path, kernel_dir: Path, cfg: Config) -> None:
    """Allow-list check: only the expected files, no credentials, caches or training state."""
    allowed_wheels = {_norm(PACKAGE_DIST)} | {_norm(n) for n in cfg.kernel.wheel_packages}
    problems = []
    weights = 0
    for path in sorted(dataset_dir.rglob("*")):
        rel = path.relative_to(dataset_dir)
        if path.is_dir() or len(rel.parts) > 1:
            problems.append(f"dataset/{rel}: subfolders are not allowed (the kaggle client skips them)")
        elif WEIGHTS_RE.fullmatch(path.name):
            weights += path.stat().st_size
            problems.extend(f"dataset/{rel}: {p}" for p in _checkpoint_problems(path))
        elif path.name in ("config.yaml", "calibration.json", DATASET_METADATA):
            pass
        elif path.suffix == ".whl" and _wheel_dist(path.name) in allowed_wheels:
            if not path.name.endswith("-none-any.whl"):
                problems.append(f"dataset/{rel}: not a pure-Python wheel; the Kaggle image may not install it")
            with zipfile.ZipFile(path) as wheel:
                own = _wheel_dist(path.name) == _norm(PACKAGE_DIST)
                bad = [
                    m for m in wheel.namelist()
                    if SECRET_MEMBER.search(m) or (own and OWN_FORBIDDEN_MEMBER.search(m))
                ]
            if bad:
                problems.append(f"dataset/{rel}: holds forbidden files {bad[:5]}")
        else:
            problems.append(f"dataset/{rel}: not on the allow-list")
    kernel_files = sorted(p.name for p in kernel_dir.rglob("*"))
    if kernel_files != sorted([KERNEL_CODE_FILE, KERNEL_METADATA]):
        problems.append(f"kernel/: holds {kernel_files}, expected only {KERNEL_CODE_FILE} and {KERNEL_METADATA}")
    if weights > cfg.kernel.max_weights_bytes:
        problems.append(f"weights take {weights:,} bytes > kernel.max_weights_bytes={cfg.kernel.max_weights_bytes:,}")
    if problems:
        raise KernelError("the bundle failed its allow-list check:\n  " + "\n  ".join(problems))


def _checkpoint_problems(path: Path) -> list[str]:
    """Exported weights must not carry optimizer or scheduler state."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a bundle error
        return [f"cannot be loaded ({exc})"]
    if isinstance(data, dict):
        found = [k for k in data if re.search(r"optim|scheduler|scaler", str(k), re.IGNORECASE)]
        if found:
            return [f"carries training state {found}"]
    return []


# --------------------------------------------------------------------------- credentials + push


CREDENTIALS_HELP = (
    "no Kaggle credentials found. Create an API token on kaggle.com (Settings -> API) and either "
    "set KAGGLE_API_TOKEN, or save it as ~/.kaggle/access_token, or put kaggle.json "
    '({"username": ..., "key": ...}) into $KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle '
    "(chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY"
)


def find_credentials(env: dict[str, str] | None = None) -> Credentials:
    """Find credentials in the kaggle client's order; raise ``KernelError`` if there are none.

    Order: ``KAGGLE_API_TOKEN``; ``~/.kaggle/access_token(.txt)``; ``kaggle.json`` in
    ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else ``${XDG_CONFIG_HOME:-~/.config}/kaggle``,
    overlaid by ``KAGGLE_USERNAME``/``KAGGLE_KEY``; ``~/.kaggle/credentials.json``.
    """
    env = dict(os.environ if env is None else env)
    home = Path(env.get("HOME") or Path.home())
    env_user = env.get("KAGGLE_USERNAME") or None
    kaggle_json = _kaggle_json_path(env, home)
    json_user = json_key = None
    if kaggle_json is not None:
        try:
            data = json.loads(kaggle_json.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise KernelError(
                f"{kaggle_json}: not a valid kaggle.json ({exc}); download a new API token from kaggle.com"
            ) from None
        json_user, json_key = data.get("username") or None, data.get("key") or None
    username = env_user or json_user
    if env.get("KAGGLE_API_TOKEN"):
        return Credentials("KAGGLE_API_TOKEN", username)
    for name in ("access_token", "access_token.txt"):
        if (home / ".kaggle" / name).is_file():
            return Credentials(str(home / ".kaggle" / name), username)
    key = env.get("KAGGLE_KEY") or json_key
    if username and key:
        source = "KAGGLE_USERNAME/KAGGLE_KEY" if env.get("KAGGLE_KEY") else str(kaggle_json)
        return Credentials(source, username)
    if (home / ".kaggle" / "credentials.json").is_file():
        return Credentials(str(home / ".kaggle" / "credentials.json"), username)
    raise KernelError(CREDENTIALS_HELP)


def _kaggle_json_path(env: dict[str, str], home: Path) -> Path | None:
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    folders = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    folders += [home / ".kaggle", xdg / "kaggle"]
    for folder in folders:
        if (folder / "kaggle.json").is_file():
            return folder / "kaggle.json"
    return None


def resolve_username(explicit: str | None, env: dict[str, str] | None = None) -> str | None:
    """``--username``, else KAGGLE_USERNAME, else kaggle.json's; None when none is known."""
    if explicit:
        return explicit
    env = dict(os.environ if env is None else env)
    if env.get("KAGGLE_USERNAME"):
        return env["KAGGLE_USERNAME"]
    path = _kaggle_json_path(env, Path(env.get("HOME") or Path.home()))
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KernelError(f"{path}: not a valid kaggle.json ({exc})") from None
        if isinstance(data, dict) and data.get("username"):
            return str(data["username"])
    return None


def kaggle_cli() -> list[str]:
    """The venv's ``kaggle`` command (never imported in-process: it authenticates on import)."""
    path = Path(sys.executable).parent / "kaggle"
    if not path.is_file():
        raise KernelError(f"the kaggle client is not installed beside {sys.executable}; run `make setup`")
    return [str(path)]


def _kaggle(args: list[str], timeout: float, success: str) -> str:
    """Run one kaggle CLI command; fail unless it exits 0, says ``success`` and no rejection."""
    result = _run(kaggle_cli() + args, timeout=timeout, what="kaggle " + " ".join(args[:2]))
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or success.lower() not in output.lower() or REJECTION_RE.search(
        output.replace(success, "")
    ):
        raise KernelError(f"`kaggle {' '.join(args)}` failed (exit {result.returncode}):\n{output[-2000:]}")
    return output


def push_bundle(bundle: Bundle, timeout: float) -> PushReport:
    """Upload the dataset (create, or a new version if it exists), then push the kernel.

    Credentials are checked first, so nothing is sent without them. Each ``kaggle`` call is
    a subprocess limited to ``timeout`` seconds; its output is read, since the client exits
    0 when the server rejects a request.
    """
    creds = find_credentials()
    if creds.username and creds.username != bundle.username:
        warn(f"the bundle is built for {bundle.username!r} but the credentials ({creds.source}) are {creds.username!r}")
    dataset_cmd = ["datasets", "create", "-p", str(bundle.dataset_dir)]
    result = _run(kaggle_cli() + dataset_cmd, timeout=timeout, what="kaggle datasets create")
    output = (result.stdout + result.stderr).strip()
    action = "create"
    if "already in use" in output:
        action = "version"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        output = _kaggle(
            ["datasets", "version", "-p", str(bundle.dataset_dir), "-m", f"dfdc-kit folds {bundle.folds} {stamp}"],
            timeout, success="is being created",
        )
    elif result.returncode != 0 or "is being created" not in output or REJECTION_RE.search(output):
        raise KernelError(f"`kaggle {' '.join(dataset_cmd)}` failed (exit {result.returncode}):\n{output[-2000:]}")
    kernel_output = _kaggle(["kernels", "push", "-p", str(bundle.kernel_dir)], timeout, success="successfully pushed")
    url = re.search(r"https?://\S+", kernel_output)
    return PushReport(action, output, kernel_output, url.group(0) if url else None)


# --------------------------------------------------------------------------- local run


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


def check_submission(submission: Path, sample: Path) -> tuple[int, Any]:
    """One row per sample-submission row, in order, labels in [0, 1]; returns (rows, labels)."""
    import pandas as pd

    try:
        got = pd.read_csv(submission)
        want = pd.read_csv(sample)
    except (OSError, ValueError) as exc:
        raise KernelError(f"cannot read {submission} or {sample}: {exc}") from None
    if list(got.columns) != ["filename", "label"]:
        raise KernelError(f"{submission}: columns {list(got.columns)}, expected filename,label")
    if got["filename"].tolist() != want["filename"].tolist():
        raise KernelError(f"{submission}: its {len(got)} file names differ from the {len(want)} rows of {sample}")
    labels = pd.to_numeric(got["label"], errors="coerce")
    if labels.isna().any() or not labels.between(0.0, 1.0).all():
        raise KernelError(f"{submission}: labels must be probabilities in [0, 1]")
    return len(got), labels


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


def run_local(bundle: Bundle, data_root: Path, cfg: Config, work_dir: Path | None = None) -> LocalReport:
    """Run the exact kernel script on a Kaggle-like tree built from ``data_root``, offline.

    ``data_root`` holds ``test_videos/`` and ``sample_submission.csv`` (a DFDC download or
    the mini DFDC). The tree (default ``<bundle root>/local``) gets ``input/<competition>/``,
    ``input/<dataset_slug>/`` (the dataset folder) and an empty ``working/``.
    """
    videos, sample = local_inputs(data_root)
    work = Path(work_dir) if work_dir else bundle.root / "local"
    shutil.rmtree(work, ignore_errors=True)
    comp = work / "input" / bundle.competition
    comp.mkdir(parents=True)
    (comp / "test_videos").symlink_to(videos.resolve(), target_is_directory=True)
    shutil.copyfile(sample, comp / "sample_submission.csv")
    (work / "input" / bundle.dataset_slug).symlink_to(bundle.dataset_dir.resolve(), target_is_directory=True)
    (work / "working").mkdir()
    env = blocked_network_env(work / "netblock")
    env[ROOT_ENV] = str(work.resolve())
    env[FORCE_INSTALL_ENV] = "1"  # prove the bundled wheels install offline
    start = time.monotonic()
    result = _run(
        [sys.executable, str((bundle.kernel_dir / KERNEL_CODE_FILE).resolve())],
        timeout=cfg.kernel.local_timeout, what="the local kernel run", env=env, cwd=work / "working",
    )
    seconds = time.monotonic() - start
    log = work / "kernel.log"
    atomic_write_text(log, result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        raise KernelError(f"the kernel script exited {result.returncode}; see {log}")
    status = re.findall(re.escape(STATUS_MARK) + r"(\w+)", result.stdout)
    submission = work / "working" / "submission.csv"
    rows, labels = check_submission(submission, sample)
    fallback_rows = int((labels == cfg.predict.fallback).sum())
    return LocalReport(submission, rows, fallback_rows, status[-1] if status else "unknown", seconds, log)
