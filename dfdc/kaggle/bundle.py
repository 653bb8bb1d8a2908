"""Build the two folders a Kaggle submission needs, and check them against an allow-list.

``build_bundle`` writes under ``kernels/build/``:

- ``dataset/`` (flat: the ``kaggle`` client skips subfolders): ``fold{k}.pt`` fp16 weights
  (``dfdc.models.export_half``), ``config.yaml`` (the resolved configuration),
  ``calibration.json`` when the run has one, the wheels of ``dfdc.kaggle.wheels.plan_wheels``
  and ``wheels.json`` (per wheel: file, distribution, version, modules, why it is there),
  ``dataset-metadata.json``;
- ``kernel/``: ``inference.py`` (``kernels/template/inference.py`` with the build's values
  filled in) and ``kernel-metadata.json`` (GPU on, ``machine_shape`` = ``kernel.machine_shape``,
  internet off, private by default, competition and dataset sources).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import zipfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfdc.aggregate import CALIBRATION
from dfdc.config import Config, ModelConfig, make_hint, save_config
from dfdc.io import TEMP_MARK, atomic_write_json, atomic_write_text
from dfdc.kaggle.common import (
    DATASET_METADATA, KERNEL_CODE_FILE, KERNEL_METADATA, PACKAGE_DIST, ROOT_ENV, STATUS_MARK, TEMPLATE,
    WHEELS_MANIFEST, KernelError, repo_root, wheel_dist,
)
from dfdc.kaggle.wheels import fetch_wheel, package_wheel, plan_wheels, wheel_modules

PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
DATASET_SLUG_LENGTH = (6, 50)  # the kaggle client refuses dataset slugs and titles outside this
KERNEL_TITLE_MIN = 5  # the kaggle client refuses shorter kernel titles
MACHINE_SHAPES = ("NvidiaTeslaT4", "NvidiaTeslaP100", "TpuV5E8")  # kaggle-cli #1156, #1198
# Refused while enable_gpu is on: a P100 (sm_60), which an empty shape also gets, is not supported by the
# torch of today's image (kaggle-cli #1151, #1196), so every video would take the kernel's CPU plan
NO_CUDA_SHAPES = ("NvidiaTeslaP100", "")
WEIGHTS_RE = re.compile(r"^fold(\d+)\.pt$")
# Wheel members that must never be shipped: credentials anywhere; in this package's own
# wheel also caches, weights and videos (weights travel as fold*.pt, checked apart).
SECRET_MEMBER = re.compile(r"(^|/)(kaggle\.json|access_token(\.txt)?|credentials\.json|\.env|\.git|\.venv)(/|$)")
OWN_FORBIDDEN_MEMBER = re.compile(r"(^|/)__pycache__/|\.pyc$|\.pt$|\.pth$|\.mp4$|\.ckpt$")


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
    wheels: list[dict[str, Any]] = field(default_factory=list)  # wheels.json


def _title(slug: str) -> str:
    return slug.replace("-", " ")


def _check_slugs(cfg: Config, username: str) -> None:
    if not username or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", username):
        raise KernelError(f"Kaggle username {username!r} is not valid; pass "
                          f"{make_hint('--username YOUR_KAGGLE_NAME', 'USERNAME=YOUR_KAGGLE_NAME')}")
    for what, slug in (("kernel.slug", cfg.kernel.slug), ("kernel.dataset_slug", cfg.kernel.dataset_slug)):
        if not SLUG_RE.fullmatch(slug):
            raise KernelError(f"{what}={slug!r}: use lowercase letters, digits and hyphens (--slug/--dataset-slug)")
    low, high = DATASET_SLUG_LENGTH
    if not low <= len(cfg.kernel.dataset_slug) <= high:
        raise KernelError(f"kernel.dataset_slug={cfg.kernel.dataset_slug!r}: Kaggle needs {low}-{high} characters")
    if len(_title(cfg.kernel.slug)) < KERNEL_TITLE_MIN:
        raise KernelError(f"kernel.slug={cfg.kernel.slug!r}: Kaggle needs a title of at least {KERNEL_TITLE_MIN} characters")
    if cfg.kernel.machine_shape and cfg.kernel.machine_shape not in MACHINE_SHAPES:
        raise KernelError(f"kernel.machine_shape={cfg.kernel.machine_shape!r}: use one of {', '.join(MACHINE_SHAPES)} "
                          "or '' to leave it out")
    if cfg.kernel.enable_gpu and cfg.kernel.machine_shape in NO_CUDA_SHAPES:
        got = "empty (Kaggle then gives a P100)" if not cfg.kernel.machine_shape else repr(cfg.kernel.machine_shape)
        raise KernelError(
            f"kernel.machine_shape is {got}: the torch of Kaggle's image no longer runs CUDA on a P100 (sm_60), so "
            "the kernel would predict every video with its CPU plan (a few frames, one model). Use "
            f"{make_hint('--set ', 'SET=')}kernel.machine_shape=NvidiaTeslaT4 (two T4s), or kernel.enable_gpu=false for "
            "a CPU kernel on purpose")


def _fold_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    from dfdc.models import fold_checkpoints
    from dfdc.runs import warn_unfinished

    found = fold_checkpoints(run_dir)
    if not found:
        raise KernelError(
            f"{run_dir}: no fold*/best.pt checkpoints; train first (`make train`) "
            f"or name a trained run with {make_hint('--models runs/NAME', 'RUN=NAME')}"
        )
    warn_unfinished(run_dir, [fold for fold, _ in found], "the bundle ships")
    return found


def render_script(cfg: Config) -> str:
    """The kernel script: the template with this build's values filled in."""
    template = (repo_root() / TEMPLATE).read_text(encoding="utf-8")
    values = {
        "DATASET_SLUG": cfg.kernel.dataset_slug,
        "COMPETITION": cfg.kernel.competition,
        "FALLBACK": float(cfg.predict.fallback),
        "ROOT_ENV": ROOT_ENV,
        "STATUS_MARK": STATUS_MARK,
        "WHEELS_MANIFEST": WHEELS_MANIFEST,
    }

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KernelError(f"{TEMPLATE}: unknown placeholder {{{{{key}}}}}")
        return repr(values[key])  # str/float reprs are Python literals

    return PLACEHOLDER.sub(fill, template)


def kernel_metadata(cfg: Config, kernel_id: str, dataset_id: str) -> dict[str, Any]:
    """``kernel-metadata.json`` (JSON booleans; ``enable_internet`` written, the client defaults it to true)."""
    meta: dict[str, Any] = {
        "id": kernel_id,
        "title": _title(cfg.kernel.slug),
        "code_file": KERNEL_CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": bool(cfg.kernel.private),
        "enable_gpu": bool(cfg.kernel.enable_gpu),
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [dataset_id],
        "competition_sources": [cfg.kernel.competition],
        "kernel_sources": [],
    }
    if cfg.kernel.machine_shape:
        meta["machine_shape"] = cfg.kernel.machine_shape
    return meta


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
    from dfdc.models import CheckpointError, checkpoint_model_config, export_half

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise KernelError(f"run folder {run_dir} not found; train first (`make train`) or pass "
                          f"{make_hint('--models runs/NAME', 'RUN=NAME')}")
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
        models: list[ModelConfig] = []  # every checkpoint's model section (a sequence model or baseline also
        # needs its backbone's library), from the export's own load
        for fold, path in checkpoints:
            target = dataset / f"fold{fold}.pt"
            try:
                models.append(checkpoint_model_config(export_half(path, target)))
            except (CheckpointError, OSError, KeyError, TypeError, ValueError) as exc:
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
        manifest = []
        cache = Path(cfg.kernel.wheel_cache) if cfg.kernel.wheel_cache else out_dir / "wheel-cache"
        for plan in plan_wheels(models, root):
            if plan.dist == PACKAGE_DIST:
                wheel = package_wheel(root, dataset, cfg.kernel.push_timeout)
            else:
                source = fetch_wheel(plan, cache, cfg.kernel.push_timeout)
                wheel = Path(shutil.copyfile(source, dataset / source.name))
            manifest.append({"file": wheel.name, "dist": plan.dist, "version": wheel.name.split("-")[1],
                             "modules": wheel_modules(wheel), "reason": plan.reason})
        atomic_write_json(dataset / WHEELS_MANIFEST, {"wheels": manifest})
        dataset_id = f"{username}/{cfg.kernel.dataset_slug}"
        kernel_id = f"{username}/{cfg.kernel.slug}"
        atomic_write_json(
            dataset / DATASET_METADATA,
            {"title": _title(cfg.kernel.dataset_slug), "id": dataset_id, "licenses": [{"name": cfg.kernel.license}]},
        )
        atomic_write_text(kernel / KERNEL_CODE_FILE, render_script(cfg))
        atomic_write_json(kernel / KERNEL_METADATA, kernel_metadata(cfg, kernel_id, dataset_id))
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
        wheels=manifest,
    )


def verify_bundle(dataset_dir: Path, kernel_dir: Path, cfg: Config) -> None:
    """Allow-list check: only the expected files, no credentials, caches or training state;
    every wheel listed in wheels.json with a reason, and pure Python."""
    import json

    problems = []
    weights = 0
    try:
        listed = {w["file"]: w for w in json.loads((dataset_dir / WHEELS_MANIFEST).read_text())["wheels"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        listed = {}
        problems.append(f"dataset/{WHEELS_MANIFEST}: missing or unreadable ({exc})")
    for path in sorted(dataset_dir.rglob("*")):
        rel = path.relative_to(dataset_dir)
        if path.is_dir() or len(rel.parts) > 1:
            problems.append(f"dataset/{rel}: subfolders are not allowed (the kaggle client skips them)")
        elif WEIGHTS_RE.fullmatch(path.name):
            weights += path.stat().st_size
            problems.extend(f"dataset/{rel}: {p}" for p in _checkpoint_problems(path))
        elif path.name in ("config.yaml", CALIBRATION, DATASET_METADATA, WHEELS_MANIFEST):
            pass
        elif path.suffix == ".whl" and path.name in listed and listed[path.name].get("reason"):
            if not path.name.endswith("-none-any.whl"):
                problems.append(f"dataset/{rel}: not a pure-Python wheel; the Kaggle image may not install it")
            with zipfile.ZipFile(path) as wheel:
                own = wheel_dist(path.name) == PACKAGE_DIST
                bad = [
                    m for m in wheel.namelist()
                    if SECRET_MEMBER.search(m) or (own and OWN_FORBIDDEN_MEMBER.search(m))
                ]
            if bad:
                problems.append(f"dataset/{rel}: holds forbidden files {bad[:5]}")
        else:
            problems.append(f"dataset/{rel}: not on the allow-list")
    for name in listed:
        if not (dataset_dir / name).is_file():
            problems.append(f"dataset/{WHEELS_MANIFEST}: lists {name}, which is not in the dataset")
    kernel_files = sorted(p.name for p in kernel_dir.rglob("*"))
    if kernel_files != sorted([KERNEL_CODE_FILE, KERNEL_METADATA]):
        problems.append(f"kernel/: holds {kernel_files}, expected only {KERNEL_CODE_FILE} and {KERNEL_METADATA}")
    if weights > cfg.kernel.max_weights_bytes:
        problems.append(f"weights take {weights:,} bytes > kernel.max_weights_bytes={cfg.kernel.max_weights_bytes:,}")
    if problems:
        raise KernelError("the bundle failed its allow-list check:\n  " + "\n  ".join(problems))


def _checkpoint_problems(path: Path) -> list[str]:
    """Exported weights must be a checkpoint (``checkpoint_meta``: read as tensors only) without
    optimizer or scheduler state."""
    from dfdc.models import CheckpointError, checkpoint_meta
    from dfdc.models.checkpoint import TRAINING_STATE

    try:
        meta = checkpoint_meta(path)
    except CheckpointError as exc:
        return [str(exc).removeprefix(f"{path}: ")]
    found = [k for k in meta if TRAINING_STATE.search(str(k))]
    return [f"carries training state {found}"] if found else []
