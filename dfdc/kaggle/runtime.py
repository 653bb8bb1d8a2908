"""What runs inside the Kaggle kernel once the bundled wheels are installed.

``run_kernel`` (called by ``kernels/template/inference.py``):

1. checks the detector's library imports (a missing wheel fails here, once, not per video);
2. probes CUDA on every visible device with a real small computation, a half-precision
   convolution included (today's torch has no kernels for the P100's sm_60: there
   ``is_available()`` is True and the first real op fails); every failure is logged with
   its reason;
3. plans the run (``plan_run``): on the healthy GPUs, the fold models spread over them
   (model k on GPU k mod n) and the decode + detect workers' MTCNN alternating between
   them; with no healthy GPU, on the CPU with settings that fit the budget
   (``kernel.cpu_frames`` frames, the ``kernel.cpu_models`` fold models with the lowest
   validation log loss, ``kernel.cpu_workers`` workers), written in the log; the time
   budget (``kernel.time_budget`` less the time already spent) and the per-video timeout
   (``kernel.video_timeout``) always hold. A calibration fitted at more frames than the
   plan predicts with is applied with a note in the log: its temperature and clip are kept
   (the best there is: none was fitted at the CPU plan's frames), and its ``confident``
   rule becomes ``mean`` when the frames cannot reach ``confident_min_count`` (with 8 frames
   a one-face video never has the 12 confident faces the rule for FAKE videos needs; only
   its rule for REAL videos could fire, a one-sided rule);
4. predicts with ``dfdc.predict.predict_videos`` and gives the verdict: when more than
   ``kernel.max_fallback_share`` of the videos fell back for reasons that say the system
   broke (import, CUDA or model errors, dead workers, hung videos' timeouts; not the video's
   own fault, not the time budget), ``STATUS: failed`` with the reasons and exit code 1
   (the submission file is written either way); else ``STATUS: ok``, which says
   ``ok (degraded: N videos over the time budget ...)`` when the budget left videos at the
   fallback (a rerun's scoring error would throw the predicted ones away too). The verdict
   is returned, not printed: the kernel script prints it as its log's last line, after its
   own checks of the submission.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfdc.config import Config, read_config
from dfdc.kaggle.common import DETECTOR_MODULE

Log = Callable[[str], None]


def probe_cuda(log: Log) -> tuple[list[str], dict[str, str]]:
    """(devices that computed correctly, device -> why it failed)."""
    import torch

    if not torch.cuda.is_available():
        return [], {"cuda": "torch.cuda.is_available() is False (no GPU attached, or a CPU-only torch)"}
    ok: list[str] = []
    bad: dict[str, str] = {}
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        try:
            name = torch.cuda.get_device_name(index)
            major, minor = torch.cuda.get_device_capability(index)
            x = torch.randn(2, 3, 32, 32, device=device).half()
            w = torch.randn(8, 3, 3, 3, device=device).half()
            y = torch.nn.functional.conv2d(x, w, padding=1)
            z = y.float().mean() + (torch.ones(4, 4, device=device) @ torch.ones(4, 4, device=device)).sum()
            value = float(z.item())  # synchronises: an asynchronous CUDA error surfaces here
            if not math.isfinite(value):
                raise RuntimeError(f"non-finite result {value}")
            ok.append(device)
            log(f"CUDA probe {device}: ok ({name}, sm_{major}{minor}, torch {torch.__version__} "
                f"built for {torch.cuda.get_arch_list()})")
        except Exception as exc:  # noqa: BLE001 - any failure means "do not use this device"; logged
            bad[device] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log(f"CUDA probe {device}: FAILED, {bad[device]}")
    return ok, bad


@dataclass
class KernelPlan:
    """How the kernel predicts: ``predict_videos``' configuration, checkpoints, device(s)
    and ``explicit`` keys (set by the plan over the calibration), and the notes it logs."""

    cfg: Config
    checkpoints: list[Path]
    device: str
    notes: list[str]
    explicit: set[str] = field(default_factory=set)


def plan_run(cfg: Config, devices: list[str], checkpoints: list[Path], budget: float,
             calibration: dict[str, Any] | None = None) -> KernelPlan:
    """The kernel's plan on the healthy GPUs ``devices`` (none: the CPU plan) within
    ``budget`` seconds, for the run's ``calibration`` (``calibration.json``, or None)."""
    from dfdc.aggregate import TRACK_UNIT, frames_mismatch

    k = cfg.kernel
    predict = dataclasses.replace(cfg.predict, time_budget=max(budget, 1.0), video_timeout=k.video_timeout)
    notes = []
    if devices:
        predict = dataclasses.replace(predict, workers=k.workers, detect_device=",".join(devices))
        notes.append(f"{len(checkpoints)} fold models on {', '.join(devices)} (model k on device k mod "
                     f"{len(devices)}); {k.workers} decode + detect workers, MTCNN on {', '.join(devices)}")
        device = ",".join(devices)
    else:
        frames = min(predict.frames, k.cpu_frames)
        notes.append(f"no usable GPU: predicting on the CPU with {frames} frames per video (configured "
                     f"{predict.frames}), {min(k.cpu_models, len(checkpoints))} of {len(checkpoints)} fold models, "
                     f"{k.cpu_workers} worker(s), to fit the time budget")
        checkpoints = sorted(checkpoints, key=_validation_logloss)[: max(1, k.cpu_models)]
        notes.append(f"CPU plan models (lowest validation log loss first): {[p.parent.name for p in checkpoints]}")
        predict = dataclasses.replace(predict, frames=frames, workers=k.cpu_workers, detect_device="cpu", fp16=False)
        device = "cpu"
    explicit: set[str] = set()
    mismatch = frames_mismatch(calibration, predict.frames)
    if mismatch:
        notes.append(f"calibration: {mismatch}; its temperature and clip are kept")
    # The rule in force: the calibration's (face units), else predict.aggregation. With no more
    # frames than confident_min_count its FAKE side cannot fire for a one-face video; unless a
    # calibration fitted at these very frames chose it anyway, the kernel uses the plain mean.
    face_rule = (calibration or {}).get("unit") != TRACK_UNIT
    rule = str((calibration or {}).get("aggregation", predict.aggregation)) if face_rule else ""
    floor = int((calibration or {}).get("confident_min_count", predict.confident_min_count))
    fitted_here = calibration is not None and not mismatch and calibration.get("frames") == predict.frames
    if rule == "confident" and predict.frames <= floor and not fitted_here:
        predict = dataclasses.replace(predict, aggregation="mean")
        explicit.add("aggregation")
        notes.append(f"aggregation mean instead of confident: with {predict.frames} frames a one-face video cannot "
                     f"have more than confident_min_count={floor} confident faces, so only the confident rule's "
                     "REAL side could fire")
    notes.append(f"time budget {predict.time_budget:.0f} s, per-video timeout {predict.video_timeout:g} s, "
                 f"{predict.frames} frames per video")
    return KernelPlan(dataclasses.replace(cfg, predict=predict), checkpoints, device, notes, explicit)


def _validation_logloss(checkpoint: Path) -> float:
    """The fold's best validation log loss saved in its checkpoint (inf when unknown)."""
    from dfdc.models import checkpoint_meta

    try:
        return float(checkpoint_meta(checkpoint).get("val_logloss", math.inf))
    except Exception:  # noqa: BLE001 - an unreadable checkpoint sorts last; loading it reports the error
        return math.inf


def run_folder(dataset: Path) -> Path:
    """The flat dataset as a run folder: fold{k}/best.pt, config.yaml, calibration.json."""
    run = Path(tempfile.mkdtemp(prefix="dfdc-run-"))
    for weights in sorted(dataset.glob("fold*.pt")):
        fold = run / weights.stem
        fold.mkdir()
        try:
            (fold / "best.pt").symlink_to(weights)
        except OSError:
            shutil.copyfile(weights, fold / "best.pt")
    for name in ("config.yaml", "calibration.json"):
        if (dataset / name).is_file():
            shutil.copyfile(dataset / name, run / name)
    return run


def verdict(report, cfg: Config) -> tuple[bool, str]:
    """(ok, the reasons): failed when more than ``kernel.max_fallback_share`` of the videos
    fell back for reasons that say the system broke (``PredictReport.system_failures``); the
    time budget's fallbacks never fail the run, they make it "degraded"."""
    failures = report.system_failures()
    share = report.system_failure_share()
    why = ", ".join(f"{kind}: {n}" for kind, n in sorted(failures.items())) or "none"
    text = (f"{sum(failures.values())} of {report.videos} videos ({share:.0%}) fell back because the system broke "
            f"({why}); kernel.max_fallback_share={cfg.kernel.max_fallback_share:g}")
    ok = share <= cfg.kernel.max_fallback_share
    late = report.budget_fallbacks()
    if late:
        budget = (f"{late} videos over the time budget got the fallback {cfg.predict.fallback:g} (the run was "
                  "slower than planned; not counted as failures)")
        text = f"degraded: {budget}; {text}" if ok else f"{text}; also {budget}"
    return ok, text


def run_kernel(dataset: Path, videos: Path, sample: Path, submission: Path, started: float, log: Log,
               probe: Callable[[Log], tuple[list[str], dict[str, str]]] = probe_cuda) -> tuple[int, str]:
    """Predict the competition's videos into ``submission``; returns the exit code (0 ok, 1 failed)
    and the verdict for the ``STATUS:`` line ("ok (...)" or "failed (...)"), which the caller prints last."""
    from dfdc.aggregate import load_calibration
    from dfdc.predict import predict_videos

    cfg = read_config(dataset / "config.yaml")
    try:
        importlib.import_module(DETECTOR_MODULE)
    except ImportError as exc:
        return 1, f"failed (import error: {exc}; the bundle lacks the detector's wheel)"
    devices, problems = probe(log)
    run = run_folder(dataset)
    try:
        checkpoints = sorted(run.glob("fold*/best.pt"))
        budget = cfg.kernel.time_budget - (time.monotonic() - started)
        calibration = load_calibration(run) if cfg.predict.calibration.strip().lower() == "auto" else None
        plan = plan_run(cfg, devices, checkpoints, budget, calibration)
        if problems and devices:
            plan.notes.append(f"left out: {problems}")
        for note in plan.notes:
            log(note)
        report = predict_videos(videos, run, submission, plan.cfg, sample_submission=sample, device=plan.device,
                                checkpoints=plan.checkpoints, progress=False, explicit=plan.explicit)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    log("predictor report:\n" + report.summary())
    ok, text = verdict(report, cfg)
    return (0, f"ok ({text})") if ok else (1, f"failed ({text})")
