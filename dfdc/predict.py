"""Per-video inference: videos + a run folder of fold models -> ``submission.csv``.

For every video: ``predict.frames`` evenly spaced frames (``dfdc.video.read_frames``),
batched MTCNN on downscaled frames (``dfdc.faces.FaceDetector``), the training crop
(``dfdc.faces.crop_face`` with the margin and crop size saved in each checkpoint) and the
one preprocessing path shared with training (``dfdc.preprocess.prepare``: uint8 crops, 4x
fewer bytes from the workers than float32; each model normalises on its own device),
P(FAKE) per face and model (the horizontal flip averaged in with ``tta_flip``), then the
video rule per model, the mean over the models, temperature and clip
(``dfdc.aggregate.ensemble_probability``, the order of the 1st place's kernel) -- the same
code calibration and training's validation use.

Pipeline: decoding, detection, cropping and preprocessing run in ``predict.workers``
spawned worker processes of our own (each limits its torch threads and builds its detector
on ``predict.detect_device`` before it takes a video, then says "ready" -- or
"init-failed" with the reason; a comma list spreads them over devices, worker i on item i
mod n), each with at most ``predict.prefetch`` videos queued; the
main process runs the models on batches of ``predict.batch_size`` faces drawn from every
finished video, so the model stage keeps working while the workers prepare the next
videos. ``workers=0`` runs everything inline. With several devices (``device``
"cuda:0,cuda:1", or "auto" = every visible GPU) the fold models are spread over them, model
k on device k mod n; CUDA calls are asynchronous, so the devices work at the same time.

Failures never stop a run: a missing, empty, corrupt or faceless video, an exception in a
worker, a dead worker process, or a video whose decode/detect takes longer than
``predict.video_timeout`` (its worker is killed and replaced) gives that video
``predict.fallback`` with its reason in ``predictions.csv``. A worker that fails to start
(its detector raises, it dies, or with ``predict.video_timeout`` set it is not ready within
``WORKER_START_TIMEOUT`` or that timeout, whichever is longer) is
replaced; after ``WORKER_START_FAILURES`` such failures in a row a worker slot is given up,
and when every slot is, the remaining videos get the fallback with the start-up's reason.
A time budget (``predict.time_budget``) stops starting videos whose projected finish would
not fit; they get the fallback too. ``PredictReport.system_failures`` counts the fallbacks
that say the system broke (not the video's own fault, not the time budget: the Kaggle
kernel fails loudly on too many); ``PredictReport.budget_fallbacks`` the time budget's.
Outputs are written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.aggregate import (
    CALIBRATION, METHODS, TRACK_METHODS, AggregationError, CalibrationError, apply_calibration, apply_temperature,
    clip, constant_models, ensemble_probability, frames_mismatch, read_calibration,
)
from dfdc.config import (
    Config, FacesConfig, PredictConfig, SequenceConfig, config_from_dict, make_hint, read_config, save_config, warn,
)
from dfdc.io import atomic_write_csv, read_table
from dfdc.threads import limit_threads

PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"
FACE_COLUMNS = ["filename", "model", "frame", "track", "prob"]  # per-unit output (``faces_csv``): one row per
# model and unit (a face, or a sequence model's track with frame -1)

# Fallback reasons written to predictions.csv (a prefix; details follow after ": ").
REASON_MISSING = "missing"
REASON_EMPTY = "empty file"
REASON_UNREADABLE = "unreadable"
REASON_NO_FACE = "no face"
REASON_ERROR = "error"
REASON_WORKER_DIED = "worker died"
REASON_TIMEOUT = "timeout"
REASON_TIME = "time budget"
# The video's own fault. The time budget (REASON_TIME) is neither the video's fault nor a
# breakage: the run was slower than planned. Anything else (an exception, a dead or hung
# worker, a model error) says the system broke, and too many of those fail a Kaggle run loudly.
VIDEO_FAULTS = (REASON_MISSING, REASON_EMPTY, REASON_UNREADABLE, REASON_NO_FACE)
WORKER_START_FAILURES = 3  # a worker slot's workers failing to start in a row: that slot is given up
WORKER_START_TIMEOUT = 120.0  # seconds a worker may take to be ready (with timeouts on: at least
# predict.video_timeout): spawn, torch + facenet imports, CUDA context, MTCNN weights took 3.7 s on
# the loaded 2-core test machine (CPU); this ends a hung CUDA init long before any time budget
POLL_SECONDS = 1.0  # longest wait for a worker message while a timeout or the budget may fire


class PredictError(ValueError):
    """An input of the whole run (models, sample submission, calibration) is unusable."""


@dataclass(frozen=True)
class CropSpec:
    """How a model wants its faces: the training crop and the network input side."""

    margin: float  # faces.margin of the model's training run
    crop_size: int  # faces.size: side of the saved training crops
    input_size: int  # the model's input side (its checkpoint's InputSpec): side after prepare
    roundtrip: str = ""  # with predict.crop_roundtrip: the training crops' faces.image_format ("" = raw crops) ...
    quality: int = 0  # ... and faces.image_quality


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker process needs (picklable, sent once per worker)."""

    faces: FacesConfig
    frames: int
    specs: tuple[CropSpec, ...]
    threads: int
    device: str  # the detector's device


@dataclass
class VideoFaces:
    """What a worker returns for one video: preprocessed faces per crop spec."""

    name: str
    tensors: dict[CropSpec, np.ndarray]  # spec -> uint8 (n_faces, 3, S, S), not normalised
    n_faces: int
    n_frames: int
    seconds: dict[str, float]  # decode, detect, crop
    reason: str = ""  # empty on success
    note: str = ""  # said in predictions.csv's reason of a video still predicted (dfdc.video's partial decode)
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # frame index of each face
    tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # face track of each face (dfdc.tracks)


def fallback_kind(reason: str) -> str:
    """The reason's prefix (``"no face"``, ``"timeout"`` ...)."""
    return reason.split(":", 1)[0].strip()


@dataclass
class PredictReport:
    """The result of ``predict_videos``."""

    videos: int  # rows written (one per sample-submission row / video)
    predicted: int  # videos with a model prediction
    fallbacks: dict[str, str]  # filename -> reason
    seconds: dict[str, float]  # decode/detect/crop: summed over videos in the workers; model: main
    # process; setup: until the first video starts (loading models); fill: from then until the
    # first video comes back from the workers (the pipeline filling); total: wall clock of the call
    calibration: dict[str, Any]  # aggregation, temperature, clip and where they came from
    models: int
    out_csv: Path
    predictions_csv: Path
    faces: int = 0  # faces through the models
    processed: int = 0  # videos decoded by the workers (success or failure)
    devices: tuple[str, ...] = ()  # where the models ran
    faces_csv: Path | None = None  # per-face probabilities, when asked for
    warnings: list[str] = field(default_factory=list)  # said on stderr during the run (and in summary())
    notes: dict[str, str] = field(default_factory=dict)  # filename -> reason of a video still predicted (partial decode)

    def seconds_per_video(self) -> dict[str, float]:
        """Stage seconds divided by the videos the workers processed."""
        n = max(self.processed, 1)
        return {k: v / n for k, v in self.seconds.items()}

    def fallback_counts(self) -> Counter[str]:
        """Every fallback, counted by reason kind (``fallback_kind``)."""
        return Counter(fallback_kind(reason) for reason in self.fallbacks.values())

    def system_failures(self) -> dict[str, int]:
        """Fallbacks that say the system broke (not the video's own fault, not the time
        budget), counted by reason kind."""
        return {kind: n for kind, n in self.fallback_counts().items()
                if kind not in VIDEO_FAULTS and kind != REASON_TIME}

    def system_failure_share(self) -> float:
        return sum(self.system_failures().values()) / max(self.videos, 1)

    def budget_fallbacks(self) -> int:
        """Videos not predicted because the time budget ran out."""
        return self.fallback_counts()[REASON_TIME]

    def summary(self) -> str:
        per = self.seconds_per_video()
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.fallback_counts().items()))
        cal = self.calibration
        return "\n".join(
            [f"warning: {w}" for w in self.warnings] + [
                f"calibration: aggregation={cal['aggregation']} temperature={cal['temperature']:g} "
                f"bias={cal['bias']:g} clip={cal['clip']:g} (source: {cal['source']})",
                f"models: {self.models} on {', '.join(self.devices) or '?'}; videos: {self.videos}; "
                f"predicted: {self.predicted}; faces: {self.faces}; fallbacks: {len(self.fallbacks)}"
                + (f" ({why})" if why else "")
                + (f"; predicted from a partial decode: {len(self.notes)}" if self.notes else ""),
                "seconds per video: "
                + " ".join(f"{k}={per.get(k, 0.0):.3f}" for k in ("decode", "detect", "crop", "model", "total"))
                + f" (wall {self.seconds.get('total', 0.0):.1f} s, of which setup {self.seconds.get('setup', 0.0):.1f} s)",
                f"wrote {self.out_csv} and {self.predictions_csv}",
            ]
        )


# --------------------------------------------------------------------------- calibration


def resolve_calibration(run_dir: Path, cfg: PredictConfig) -> tuple[dict[str, Any] | None, str]:
    """The calibration to use per ``cfg.calibration`` ("auto" | "none" | a JSON path).

    Returns (the validated mapping or None, its source for printing).
    """
    choice = cfg.calibration.strip()
    if choice.lower() == "none":
        return None, "config (calibration disabled)"
    path = Path(run_dir) / CALIBRATION if choice.lower() == "auto" else Path(choice)
    if not path.is_file():
        if choice.lower() == "auto":
            return None, "config (no calibration.json in the run)"
        raise PredictError(f"{path}: calibration file not found; fix --set predict.calibration or use 'none'")
    try:
        return read_calibration(path), str(path)
    except CalibrationError as exc:
        raise PredictError(str(exc)) from None


def _check_predict_config(cfg: PredictConfig) -> None:
    if cfg.aggregation not in METHODS:
        raise PredictError(f"predict.aggregation={cfg.aggregation!r}: use one of {', '.join(METHODS)}")
    if not 0.0 <= cfg.clip < 0.5:
        raise PredictError(f"predict.clip={cfg.clip}: must be in [0, 0.5)")
    if not 0.0 <= cfg.fallback <= 1.0:
        raise PredictError(f"predict.fallback={cfg.fallback}: must be a probability in [0, 1]")
    if cfg.temperature <= 0:
        raise PredictError(f"predict.temperature={cfg.temperature}: must be positive")
    if cfg.frames <= 0 or cfg.batch_size <= 0:
        raise PredictError("predict.frames and predict.batch_size must be positive")
    if cfg.workers < 0:
        raise PredictError(f"predict.workers={cfg.workers}: must be 0 (inline) or more")
    if cfg.video_timeout < 0:
        raise PredictError(f"predict.video_timeout={cfg.video_timeout}: must be 0 (off) or seconds")


# --------------------------------------------------------------------------- inputs


def list_videos(videos_dir: Path, sample_submission: Path | None) -> list[str]:
    """The file names to predict, in output order (sample submission order, else sorted mp4s)."""
    if not Path(videos_dir).is_dir():
        raise PredictError(f"{videos_dir}: videos folder not found; pass --videos DIR holding the .mp4 files")
    if sample_submission is None:
        return sorted(p.name for p in Path(videos_dir).glob("*.mp4"))
    path = Path(sample_submission)
    frame = read_table(path, ("filename",), error=PredictError, what="sample submission",
                       fix="pass the competition's sample_submission.csv (columns filename,label)",
                       dtype={"filename": str})
    names = frame["filename"].astype(str).str.strip().tolist()
    if any(n in ("", "nan") for n in names):
        raise PredictError(f"{path}: empty file names in the 'filename' column; fix the file")
    return names


def find_checkpoints(run_dir: Path) -> list[Path]:
    """Every fold model of a run: ``fold{k}/best.pt`` by fold number, else ``*.pt`` directly in the folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PredictError(f"{run_dir}: run folder not found; pass {make_hint('--models runs/NAME', 'RUN=NAME')} "
                          "(made by `dfdc train`)")
    from dfdc.models import fold_checkpoints

    paths = [path for _, path in fold_checkpoints(run_dir)] or sorted(run_dir.glob("*.pt"))
    if not paths:
        raise PredictError(f"{run_dir}: no fold*/best.pt (or *.pt) checkpoint; train the run first (`dfdc train`)")
    return paths


def _meta_config(meta: dict[str, Any], run_dir: Path) -> Config:
    """The resolved configuration a checkpoint was trained with (else the run's config.yaml)."""
    data = meta.get("config")
    if isinstance(data, dict):
        return config_from_dict(data)
    saved = Path(run_dir) / CONFIG_FILE
    if saved.is_file():
        return read_config(saved)
    raise PredictError(f"{run_dir}: checkpoint holds no config and {saved} is missing; cannot crop as in training")


def resolve_devices(device: str | None, what: str = "--device") -> list[str]:
    """``None``/"auto": every visible GPU (else the CPU); else a comma list such as "cuda:0,cuda:1",
    checked: a CUDA device where CUDA is not available is a ``PredictError`` naming ``what``
    (the model devices' ``--device``, or ``predict.detect_device``)."""
    import torch

    if device is None or device.strip() in ("", "auto"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    devices = [d.strip() for d in device.split(",") if d.strip()]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        raise PredictError(f"{what} {device}: CUDA is not available here; use cpu")
    return devices or ["cpu"]


def half_precision(cfg: PredictConfig, devices: Sequence[str]) -> bool:
    """fp16 models: ``predict.fp16`` and every model device a GPU (on a CPU they run in float32)."""
    return bool(cfg.fp16) and all(d.startswith("cuda") for d in devices)


# --------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}  # per-process detector, built by start_worker before the first video


def _worker_state(setup: WorkerSetup) -> dict[str, Any]:
    key = (setup.faces, setup.device)
    if _WORKER.get("key") != key:
        from dfdc.faces import FaceDetector

        _WORKER.clear()
        detector = FaceDetector(setup.faces, device=setup.device)  # may raise: nothing is cached then
        _WORKER.update(key=key, detector=detector)
    return _WORKER


def start_worker(setup: WorkerSetup) -> None:
    """A worker's start-up: build its detector (imports, CUDA context, MTCNN weights) before it
    takes a video, so that time is not charged to a video and a failure is a start failure."""
    _worker_state(setup)


def process_video(path: str, setup: WorkerSetup) -> VideoFaces:
    """Decode, detect, crop and preprocess one video (runs in a worker process).

    Per-video problems come back as ``reason``; unexpected exceptions propagate and are
    turned into a fallback by the caller.
    """
    from dfdc.faces import crop_face
    from dfdc.preprocess import prepare
    from dfdc.tracks import assign_tracks
    from dfdc.video import VideoReadError, read_video

    name = Path(path).name
    seconds = {"decode": 0.0, "detect": 0.0, "crop": 0.0}
    state = _worker_state(setup)
    t0 = time.perf_counter()
    try:
        read = read_video(Path(path), k=setup.frames)
        indices, frames = read.indices, read.frames
    except VideoReadError as exc:
        seconds["decode"] = time.perf_counter() - t0
        return VideoFaces(name, {}, 0, 0, seconds, f"{REASON_UNREADABLE}: {exc}")
    t1 = time.perf_counter()
    detections = state["detector"].detect(frames)
    assign_tracks(detections, setup.faces)
    t2 = time.perf_counter()
    seconds["decode"], seconds["detect"] = t1 - t0, t2 - t1
    boxes = [(i, det.box) for i, dets in enumerate(detections) for det in dets]
    frame_of = np.array([indices[i] for i, dets in enumerate(detections) for _ in dets], dtype=np.int64)
    track_of = np.array([det.track for dets in detections for det in dets], dtype=np.int64)
    if not boxes:
        return VideoFaces(name, {}, 0, len(frames), seconds, f"{REASON_NO_FACE}: in {len(frames)} frames",
                          note=read.partial)
    tensors: dict[CropSpec, np.ndarray] = {}
    for spec in setup.specs:
        crops = [crop_face(frames[i], box, spec.margin, spec.crop_size) for i, box in boxes]
        if spec.roundtrip:
            from dfdc.extract import roundtrip_crop

            crops = [roundtrip_crop(crop, spec.roundtrip, spec.quality) for crop in crops]
        tensors[spec] = np.stack([prepare(crop, spec.input_size) for crop in crops])
    seconds["crop"] = time.perf_counter() - t2
    return VideoFaces(name, tensors, len(boxes), len(frames), seconds, frames=frame_of, tracks=track_of,
                      note=read.partial)


def _worker_main(conn: Any, setup: WorkerSetup, process: Callable[..., VideoFaces],
                 start: Callable[[WorkerSetup], Any] | None = start_worker) -> None:
    """A worker process: ``start(setup)`` first, then "ready" (or "init-failed" with the
    reason, and it exits); then videos arrive on ``conn`` one at a time, "start" and "done" go
    back.

    Each video is announced before its work starts, so the main process knows which video
    a worker was on when it hangs or dies. After a video raised, the worker takes no other
    video: it exits, and the main process gives its queued videos to a fresh worker.
    """
    limit_threads(setup.threads)
    try:
        if start is not None:
            start(setup)
    except Exception as exc:  # noqa: BLE001 - any start-up failure is reported, with its reason
        conn.send(("init-failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        name, path = task
        conn.send(("start", name))
        try:
            result: tuple[Any, ...] = ("done", name, process(path, setup), "")
        except Exception as exc:  # noqa: BLE001 - any per-video exception becomes this video's fallback
            conn.send(("done", name, None, f"{REASON_ERROR}: {type(exc).__name__}: {exc}"))
            return  # its state may be broken (a sticky CUDA error): no other video; it is replaced
        conn.send(result)


# --------------------------------------------------------------------------- model side


@dataclass
class _Ensemble:
    """Fold models grouped by the crop they expect, each on its device.

    The unit a model reads is a face (``kind`` "frame") or a face track (``kind``
    "sequence": ``sequence.seq_len`` faces of one track, chosen by ``dfdc.sequences``);
    ``units`` turns a video's faces into its units. ``model_probabilities`` gives each
    model's P(FAKE) per unit; a video's P(FAKE) is the rule (``rule``: ``predict.aggregation``
    over faces, ``sequence.aggregation`` over tracks) per model, averaged over the models
    (``dfdc.aggregate.ensemble_probability``)."""

    groups: dict[CropSpec, list[tuple[Any, str]]]  # spec -> [(model, device)]
    half: bool
    tta_flip: bool
    kind: str = "frame"
    sequence: SequenceConfig | None = None  # the run's sequence settings (kind "sequence")
    model_names: tuple[str, ...] = ()  # per model, in model_probabilities' row order (default model0 ...)

    def units(self, faces: VideoFaces) -> tuple[dict[CropSpec, np.ndarray], np.ndarray, np.ndarray]:
        """A video's model inputs per spec, and each unit's frame and track: its faces, or its
        track sequences (n_tracks x seq_len x 3 x S x S; frame -1: a track spans frames)."""
        frames = faces.frames if len(faces.frames) == faces.n_faces else np.full(faces.n_faces, -1)
        tracks = faces.tracks if len(faces.tracks) == faces.n_faces else np.full(faces.n_faces, -1)
        if self.kind != "sequence":
            return faces.tensors, frames, tracks
        from dfdc.sequences import video_sequences

        assert self.sequence is not None
        index = np.stack(video_sequences(tracks, frames, self.sequence))  # faces without ids: one track
        return {spec: t[index] for spec, t in faces.tensors.items()}, np.full(len(index), -1), tracks[index[:, 0]]

    def batch_units(self, batch_size: int) -> int:
        """Units per model batch for ``predict.batch_size`` faces."""
        return max(1, batch_size // (self.sequence.seq_len if self.kind == "sequence" and self.sequence else 1))

    def rule(self, cfg: Config) -> str:
        """The aggregation of a video's unit probabilities."""
        return cfg.sequence.aggregation if self.kind == "sequence" else cfg.predict.aggregation

    @property
    def specs(self) -> tuple[CropSpec, ...]:
        return tuple(self.groups)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for models in self.groups.values() for _, d in models))

    def __len__(self) -> int:
        return sum(len(m) for m in self.groups.values())

    @property
    def names(self) -> tuple[str, ...]:
        """One name per model (its fold folder), in ``model_probabilities``' row order."""
        return self.model_names or tuple(f"model{k}" for k in range(len(self)))

    def model_probabilities(self, batch: dict[CropSpec, np.ndarray]) -> np.ndarray:
        """P(FAKE) per model (rows, ``names`` order) and unit (columns); with ``tta_flip`` the
        plain and the mirrored view averaged within each model.

        Every model's work is queued before any result is read back: on several GPUs the
        models run at the same time (CUDA calls return before the GPU finishes)."""
        import torch

        from dfdc.models import fake_probability

        rows = []
        with torch.inference_mode():
            for spec, models in self.groups.items():
                x_cpu = torch.from_numpy(batch[spec])  # uint8: each model normalises on its device
                inputs: dict[str, list[torch.Tensor]] = {}
                for model, device in models:
                    if device not in inputs:
                        x = x_cpu.to(device, non_blocking=True)
                        inputs[device] = [x, torch.flip(x, dims=[-1])] if self.tta_flip else [x]  # W
                    rows.append(torch.stack([fake_probability(model(view)) for view in inputs[device]]).mean(0))
        return torch.stack([r.cpu() for r in rows]).numpy().astype(np.float64)

    def fake_probability(self, batch: dict[CropSpec, np.ndarray]) -> np.ndarray:
        """P(FAKE) per unit averaged over the models (a diagnostic: the predictor applies the
        video rule per model first, ``model_probabilities``)."""
        return self.model_probabilities(batch).mean(0)


def load_ensemble(
    run_dir: Path, cfg: PredictConfig, devices: Sequence[str], checkpoints: Sequence[Path] | None = None
) -> tuple[_Ensemble, Config]:
    """Load the fold models (``checkpoints``, default every fold of ``run_dir``), model k on
    ``devices[k % len(devices)]``; returns the ensemble and the first model's config."""
    from dfdc.models import load_checkpoint, to_half

    groups: dict[CropSpec, list[tuple[Any, str]]] = {}
    names: dict[CropSpec, list[str]] = {}
    first: Config | None = None
    kinds: set[str] = set()
    devices = list(devices) or ["cpu"]
    half = half_precision(cfg, devices)
    paths = list(checkpoints) if checkpoints is not None else find_checkpoints(run_dir)
    if not paths:
        raise PredictError(f"{run_dir}: no checkpoint chosen to predict with")
    for k, path in enumerate(paths):
        device = devices[k % len(devices)]
        try:
            model, meta = load_checkpoint(path, device)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise PredictError(f"{path}: cannot load the checkpoint ({exc}); retrain or re-copy it") from None
        run_cfg = _meta_config(meta, run_dir)
        first = first or run_cfg
        kinds.add(str(meta.get("kind", "frame")))
        fmt = run_cfg.faces.image_format if cfg.crop_roundtrip else ""
        spec = CropSpec(float(run_cfg.faces.margin), int(run_cfg.faces.size), int(meta["input"]["size"]), fmt,
                        int(run_cfg.faces.image_quality) if fmt else 0)
        model.eval()
        model = to_half(model) if half else model.float()
        groups.setdefault(spec, []).append((model, device))
        name = model_name(Path(path), k)
        taken = {n for ns in names.values() for n in ns}
        names.setdefault(spec, []).append(name if name not in taken else f"{name}-{k}")
    assert first is not None
    if len(kinds) > 1:
        raise PredictError(f"{run_dir}: its checkpoints mix model kinds ({', '.join(sorted(kinds))}); one run, one kind")
    ordered = tuple(name for spec in groups for name in names[spec])
    return _Ensemble(groups, half, bool(cfg.tta_flip), kinds.pop(), first.sequence, ordered), first


def model_name(path: Path, index: int) -> str:
    """A model's name in the per-unit output: its fold folder (``fold3``), else its file's
    stem, else its position (``model1``)."""
    from dfdc.models.checkpoint import FOLD_DIR

    if FOLD_DIR.fullmatch(path.parent.name):
        return path.parent.name
    return path.stem if path.stem not in ("", "best") else f"model{index}"


# --------------------------------------------------------------------------- the run


def fits_budget(elapsed: float, finished: int, in_flight: int, budget: float) -> bool:
    """May one more video start? Only if, at the mean time per finished video so far, the
    videos in flight and this one would all finish within ``budget`` seconds (0 = no limit)."""
    if budget <= 0:
        return True
    if elapsed >= budget:
        return False
    if finished == 0:
        return True
    return elapsed + (in_flight + 1) * (elapsed / finished) <= budget


@dataclass
class _Pending:
    """A video whose units (faces or tracks) are queued for (or partly through) the models."""

    name: str
    n_faces: int
    frames: np.ndarray  # per unit: its frame index (-1 for a track)
    tracks: np.ndarray  # per unit: its face track

    @property
    def n_units(self) -> int:
        return len(self.tracks)
    probs: list[np.ndarray] = field(default_factory=list)  # models x units, per model batch
    done: int = 0
    failed: str = ""  # the reason when a model batch holding its faces failed


@dataclass
class _Slot:
    """One worker process and the videos sent to it (the first one is being worked on)."""

    index: int
    device: str
    process: Any = None
    conn: Any = None
    assigned: deque[str] = field(default_factory=deque)
    started: str | None = None  # the video it announced, until its result comes
    started_at: float = 0.0
    served: int = 0  # videos it finished
    ready: bool = False  # its worker built its state (the detector) and said "ready"
    spawned_at: float = 0.0
    init_error: str = ""  # what its worker's start-up raised ("init-failed")
    start_failures: int = 0  # its workers in a row that failed to start (error, death or hang before "ready")
    given_up: str = ""  # after WORKER_START_FAILURES of those: the last reason; no worker is started here again
    tainted: bool = False  # its last video raised (not the video's fault): replaced before the next one


Result = tuple[str, "VideoFaces | None", str]  # (name, faces or None, failure reason)


class _Workers:
    """Our own worker processes: videos in, ``VideoFaces`` out, hung or dead workers replaced.

    A worker runs ``start`` (builds its detector) and says "ready" before it takes a video.
    Each worker holds at most ``prefetch`` videos and announces the one it starts. A video
    that takes longer than ``timeout`` seconds (0 = no limit) gets the fallback with reason
    ``timeout``: its worker is killed and a fresh one takes its place, the other videos
    queued to it go back to the queue. A worker that dies gives its current video the
    fallback ("worker died") the same way. A worker that fails to start (``start`` raised,
    it died, or with a ``timeout`` it was not ready within ``start_timeout``) is replaced too, no video is blamed;
    after ``WORKER_START_FAILURES`` such failures in a row its slot is given up (with a
    warning), and once every slot is, the remaining videos get the start-up's reason. A
    worker whose video raised (``error``: a CUDA error, not the video's fault) is replaced
    before it takes another video, its queued videos going to the fresh one.
    ``workers=0`` runs ``start`` once and the videos inline (no timeout, no replacement).
    """

    def __init__(self, paths: dict[str, str], setup: WorkerSetup, devices: Sequence[str], workers: int,
                 prefetch: int, process: Callable[..., VideoFaces], timeout: float = 0.0,
                 start: Callable[[WorkerSetup], Any] | None = start_worker) -> None:
        self.paths = paths
        self.setup = setup
        self.process = process
        self.start = start
        self.timeout = float(timeout)
        self.start_timeout = max(self.timeout, WORKER_START_TIMEOUT)
        self.prefetch = max(int(prefetch), 1)
        self.queue: deque[str] = deque(paths)
        devices = list(devices) or ["cpu"]
        self.slots = [_Slot(i, devices[i % len(devices)]) for i in range(max(int(workers), 0))]
        self.inline = not self.slots
        self.inline_ready = False
        if self.inline:
            self.setup = dataclasses.replace(setup, device=devices[0])
        self.dead = ""  # set when no worker can start: the remaining videos fall back with this reason
        self.replaced = 0  # workers replaced after a video raised in them

    # -- processes
    def _spawn(self, slot: _Slot) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        setup = dataclasses.replace(self.setup, device=slot.device)
        slot.process = ctx.Process(target=_worker_main, args=(child, setup, self.process, self.start), daemon=True,
                                   name=f"dfdc-predict-{slot.index}")
        slot.process.start()
        child.close()
        slot.conn, slot.assigned, slot.started, slot.served = parent, deque(), None, 0
        slot.ready, slot.init_error, slot.spawned_at = False, "", time.monotonic()

    def _stop(self, slot: _Slot, kill: bool) -> None:
        if slot.process is None:
            return
        if not kill:
            try:
                slot.conn.send(None)
            except (OSError, ValueError):
                pass
            slot.process.join(timeout=5)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=5)
        slot.conn.close()
        slot.process = slot.conn = None

    def close(self, cancel: bool = False) -> None:
        for slot in self.slots:
            self._stop(slot, kill=cancel)

    # -- bookkeeping
    @property
    def started(self) -> int:
        """Videos handed out and not yet back."""
        return sum(len(s.assigned) for s in self.slots)

    def take_unstarted(self) -> list[str]:
        names = list(self.queue)
        self.queue.clear()
        return names

    def take_started(self) -> list[str]:
        names = [n for s in self.slots for n in s.assigned]
        for slot in self.slots:
            slot.assigned.clear()
            slot.started = None
        return names

    def submit(self, may_start: Callable[[int], bool]) -> None:
        """Hand out videos while workers have room (and the time budget allows)."""
        if self.dead:
            return
        for slot in self.slots:
            if slot.given_up:
                continue
            while self.queue and len(slot.assigned) < self.prefetch and may_start(self.started):
                if slot.process is None:
                    self._spawn(slot)
                name = self.queue.popleft()
                try:
                    slot.conn.send((name, self.paths[name]))
                except (OSError, ValueError):  # died meanwhile: found by the next results()
                    self.queue.appendleft(name)
                    break
                slot.assigned.append(name)

    def _retire(self, slot: _Slot, reason: str, out: list[Result]) -> None:
        """Kill the slot's worker; its current video gets ``reason``, its queued ones go back.
        A worker that was not ready yet failed to start: counted against its slot."""
        victim = slot.started  # None: it died between videos (or at start), no video to blame
        rest = [n for n in slot.assigned if n != victim]
        if victim is not None:
            out.append((victim, None, reason))
        self.queue.extendleft(reversed(rest))
        self._stop(slot, kill=True)
        slot.assigned, slot.started = deque(), None
        if slot.ready:
            return
        slot.start_failures += 1
        if slot.start_failures < WORKER_START_FAILURES:
            return
        slot.given_up = reason
        kind, _, detail = reason.partition(": ")
        left = sum(1 for s in self.slots if not s.given_up)
        warn(f"predict: worker slot {slot.index} ({slot.device}) failed to start {slot.start_failures} times in a "
             f"row ({reason}); {left} worker slot(s) left")
        if not left:
            self.dead = (f"{kind}: {WORKER_START_FAILURES} worker processes in a row failed to start ({detail}), "
                         f"on every one of the {len(self.slots)} worker slot(s); no more are started")

    def _drain(self, slot: _Slot, out: list[Result]) -> None:
        while slot.conn is not None and slot.conn.poll():
            try:
                message = slot.conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "ready":
                slot.ready, slot.start_failures = True, 0
            elif message[0] == "init-failed":
                slot.init_error = message[1]
            elif message[0] == "start":
                slot.started, slot.started_at = message[1], time.monotonic()
            elif message[0] == "done":
                _, name, faces, reason = message
                if slot.assigned and slot.assigned[0] == name:
                    slot.assigned.popleft()
                slot.started = None
                slot.served += 1
                slot.tainted = slot.tainted or (faces is None and reason.startswith(REASON_ERROR))
                out.append((name, faces, reason))

    def _replace(self, slot: _Slot) -> None:
        """A worker whose video raised (a CUDA error, a bug: not the video's own fault) may be
        broken for every later video (a sticky CUDA error): it is stopped and its queued
        videos go back to the queue; ``submit`` starts a fresh worker for them."""
        rest = list(slot.assigned)
        self.queue.extendleft(reversed(rest))
        self._stop(slot, kill=True)
        slot.assigned, slot.started, slot.tainted = deque(), None, False
        self.replaced += 1
        warn(f"predict: worker {slot.index} ({slot.device}) replaced after a video raised in it; "
             f"{len(rest)} queued video(s) go to the fresh worker")

    def results(self, block: bool, may_start: Callable[[int], bool], wake_at: float | None = None) -> list[Result]:
        """Finished videos; waits for one if ``block`` (at most until ``wake_at``, monotonic)."""
        if self.inline:
            if not self.inline_ready and not self.dead:
                try:
                    if self.start is not None:
                        self.start(self.setup)
                    self.inline_ready = True
                except Exception as exc:  # noqa: BLE001 - the start-up's reason goes to every video
                    self.dead = f"{REASON_ERROR}: worker start-up failed: {type(exc).__name__}: {exc}"
            if self.dead:
                return [(name, None, self.dead) for name in self.take_unstarted()]
            if not self.queue or not may_start(0):
                return []
            return [self._inline(self.queue.popleft())]
        self.submit(may_start)
        out: list[Result] = []
        if self.dead:
            out += [(name, None, self.dead) for name in self.take_unstarted()]
        live = [s for s in self.slots if s.process is not None]
        if not live:
            return out
        if block and not out and self.started > 0:
            limit = POLL_SECONDS if (self.timeout > 0 or wake_at is not None) else None
            if wake_at is not None:
                limit = max(0.0, min(limit or math.inf, wake_at - time.monotonic()))
            waits = [s.conn for s in live] + [s.process.sentinel for s in live]
            multiprocessing.connection.wait(waits, timeout=limit)
        now = time.monotonic()
        for slot in live:
            self._drain(slot, out)
            alive = slot.process.is_alive()
            if not alive:
                self._drain(slot, out)  # results (or "init-failed") sent just before it exited still count
            if slot.tainted:
                self._replace(slot)
            elif slot.init_error:
                self._retire(slot, f"{REASON_ERROR}: worker start-up failed: {slot.init_error}", out)
            elif not alive:
                code = slot.process.exitcode
                when = "while reading it" if slot.ready else "before it was ready (building the detector)"
                self._retire(slot, f"{REASON_WORKER_DIED}: the worker process exited (code {code}) {when}", out)
            elif self.timeout > 0 and not slot.ready and now - slot.spawned_at > self.start_timeout:
                self._retire(slot, f"{REASON_TIMEOUT}: the worker was not ready after {self.start_timeout:g} s "
                                   "(building the detector); it was replaced", out)
            elif self.timeout > 0 and slot.started is not None and now - slot.started_at > self.timeout:
                self._retire(slot, f"{REASON_TIMEOUT}: no result after {self.timeout:g} s "
                                   "(decode or detection hung); its worker was replaced", out)
        self.submit(may_start)
        return out

    def _inline(self, name: str) -> Result:
        try:
            return name, self.process(self.paths[name], self.setup), ""
        except Exception as exc:  # noqa: BLE001 - any per-video exception becomes a fallback
            return name, None, f"{REASON_ERROR}: {type(exc).__name__}: {exc}"


@dataclass
class _Plan:
    """What a run predicts with, decided before any video is read (``_plan``)."""

    cfg: Config  # with the calibration applied
    source: str  # where the calibration came from
    warnings: list[str]
    names: list[str]  # output rows, in order
    unique: list[str]
    paths: dict[str, str]  # videos to read: name -> path
    early: dict[str, str]  # videos that fall back before reading: name -> reason
    ensemble: _Ensemble
    setup: WorkerSetup
    detect_devices: list[str]


def _plan(videos_dir: Path, run_dir: Path, cfg: Config, sample_submission: Path | None, device: str | None,
          explicit: Collection[str], checkpoints: Sequence[Path] | None, names: Sequence[str] | None) -> _Plan:
    """Step 1: calibration, settings, the videos and the models; inputs of the whole run checked."""
    pcfg = cfg.predict
    calibration, source = resolve_calibration(run_dir, pcfg)
    warnings = [w for w in [frames_mismatch(calibration, pcfg.frames)] if w]
    if calibration:
        pcfg = apply_calibration(pcfg, calibration, explicit)
        cfg = dataclasses.replace(cfg, predict=pcfg)
    _check_predict_config(pcfg)
    for text in warnings:
        warn(f"predict: {text} ({source})")
    if sample_submission is not None or names is None:
        names = list_videos(videos_dir, sample_submission)
    names = list(names)
    devices = resolve_devices(device)
    detect_devices = resolve_devices(pcfg.detect_device, "predict.detect_device")
    ensemble, run_cfg = load_ensemble(run_dir, pcfg, devices, checkpoints)
    if ensemble.kind == "sequence" and cfg.sequence.aggregation not in TRACK_METHODS:
        raise PredictError(f"sequence.aggregation={cfg.sequence.aggregation!r}: use one of {', '.join(TRACK_METHODS)}")
    # detection exactly as in training (the run's faces settings); crops per model spec
    setup = WorkerSetup(run_cfg.faces, pcfg.frames, ensemble.specs, pcfg.worker_threads, detect_devices[0])
    unique = list(dict.fromkeys(names))
    paths: dict[str, str] = {}
    early: dict[str, str] = {}
    for name in unique:
        path = Path(videos_dir) / name
        if not path.is_file():
            early[name] = REASON_MISSING
        elif path.stat().st_size == 0:
            early[name] = f"{REASON_EMPTY}: {path} is zero bytes (incomplete download?)"
        else:
            paths[name] = str(path)
    return _Plan(cfg, source, warnings, names, unique, paths, early, ensemble, setup, detect_devices)


class _Collector:
    """Step 3's state: videos back from the workers, their units (faces or tracks) queued for
    the models in batches of ``predict.batch_size`` faces, each video's P(FAKE) or fallback,
    and what the run measured (stage seconds, faces, each model's spread of probabilities)."""

    def __init__(self, plan: _Plan, keep_units: bool) -> None:
        self.plan, self.cfg, self.pcfg, self.ensemble = plan, plan.cfg, plan.cfg.predict, plan.ensemble
        self.keep_units = keep_units  # keep every unit's probability per model (faces_csv)
        # name -> (label, raw, n_faces, reason, fell back)
        self.results: dict[str, tuple[float, float, int, str, bool]] = {}
        self.face_rows: list[pd.DataFrame] = []
        self.queue: deque[tuple[_Pending, dict[CropSpec, np.ndarray], int]] = deque()  # (video, unit tensors, offset)
        self.queued = 0  # units waiting for the models
        self.batch_units = plan.ensemble.batch_units(self.pcfg.batch_size)
        self.seconds = {"decode": 0.0, "detect": 0.0, "crop": 0.0, "model": 0.0}
        self.finished = 0  # videos back from the workers (success or not)
        self.faces = 0
        self.units = 0  # units through the models of the videos predicted
        self.spread = np.tile([np.inf, -np.inf], (len(plan.ensemble), 1))  # per model: min, max unit P(FAKE)
        self.notes: dict[str, str] = {}  # name -> what to say about a video that is predicted (partial decode)
        for name, reason in plan.early.items():
            self.fallback(name, reason)

    def fallback(self, name: str, reason: str, n_faces: int = 0) -> None:
        self.results[name] = (self.pcfg.fallback, math.nan, n_faces, reason, True)

    def add(self, name: str, faces: VideoFaces | None, reason: str) -> None:
        """A video back from the workers: its units queued for the models, or its fallback."""
        self.finished += 1
        if faces is not None:
            for key in ("decode", "detect", "crop"):
                self.seconds[key] += faces.seconds.get(key, 0.0)
            reason = faces.reason
            if faces.note:
                self.notes[name] = faces.note
                reason = f"{reason} ({faces.note})" if reason else reason
        if faces is None or reason:
            self.fallback(name, reason, 0 if faces is None else faces.n_faces)
            return
        try:
            tensors, frames, tracks = self.ensemble.units(faces)
        except (ValueError, IndexError) as exc:  # track ids that cannot be read as sequences
            self.fallback(name, f"{REASON_ERROR}: units: {exc}", faces.n_faces)
            return
        item = _Pending(name, faces.n_faces, frames, tracks)
        self.queue.append((item, tensors, 0))
        self.queued += item.n_units
        self.faces += faces.n_faces

    def run_batch(self) -> None:
        """Up to one batch of queued units through every model; videos whose units are all
        through get their P(FAKE)."""
        take: list[tuple[_Pending, dict[CropSpec, np.ndarray], int, int]] = []
        room = self.batch_units
        while self.queue and room > 0:
            item, tensors, offset = self.queue[0]
            n = min(room, item.n_units - offset)
            take.append((item, tensors, offset, n))
            room -= n
            if offset + n >= item.n_units:
                self.queue.popleft()
            else:
                self.queue[0] = (item, tensors, offset + n)
        batch = {spec: np.concatenate([t[spec][o : o + n] for _, t, o, n in take]) for spec in self.ensemble.specs}
        t0 = time.perf_counter()
        try:
            probs = self.ensemble.model_probabilities(batch)
        except RuntimeError as exc:  # e.g. CUDA out of memory: these videos fall back, the run goes on
            probs = np.full((len(self.ensemble), sum(n for *_, n in take)), np.nan)
            for item, *_ in take:
                item.failed = f"{REASON_ERROR}: model: {type(exc).__name__}: {exc}"
        self.seconds["model"] += time.perf_counter() - t0
        start = 0
        for item, _, _, n in take:
            item.probs.append(probs[:, start : start + n])
            item.done += n
            start += n
            self.queued -= n
            if item.done >= item.n_units:
                self._finish(item)

    def _finish(self, item: _Pending) -> None:
        if item.failed:
            self.fallback(item.name, item.failed, item.n_faces)
            return
        probs = np.concatenate(item.probs, axis=1)  # models x units
        pcfg = self.pcfg
        try:
            raw = ensemble_probability(probs, self.ensemble.rule(self.cfg), pcfg)  # the rule per model, then the mean
            label = float(clip(apply_temperature(raw, pcfg.temperature, pcfg.bias), pcfg.clip))
        except AggregationError as exc:  # e.g. NaN from an overflowing fp16 model
            self.fallback(item.name, f"{REASON_ERROR}: {exc}", item.n_faces)
            return
        self.results[item.name] = (label, raw, item.n_faces, self.notes.get(item.name, ""), False)
        self.units += probs.shape[1]
        self.spread[:, 0] = np.minimum(self.spread[:, 0], probs.min(axis=1))
        self.spread[:, 1] = np.maximum(self.spread[:, 1], probs.max(axis=1))
        if self.keep_units:
            for name, row in zip(self.ensemble.names, probs):
                self.face_rows.append(pd.DataFrame({"filename": item.name, "model": name, "frame": item.frames,
                                                    "track": item.tracks, "prob": row}))


def _collect(plan: _Plan, runner: _Workers, col: _Collector, t_start: float, progress: bool) -> None:
    """Step 3: take the videos the workers finish, run the models on full batches (or on what
    is queued while the workers are busy), until every video is done or the time budget stops
    new starts; videos not started (or abandoned) in time get the fallback."""
    from .progress import progress as progress_bar

    budget = float(plan.cfg.predict.time_budget)
    stopped = False

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def may_start(in_flight: int) -> bool:
        return not stopped and fits_budget(elapsed(), col.finished, in_flight, budget)

    wake_at = time.monotonic() + budget - elapsed() if budget > 0 else None
    setup_seconds = col.seconds["setup"]
    bar = progress_bar(total=len(plan.paths), unit="video", disable=not progress, desc="predict")
    try:
        while True:
            got = runner.results(block=col.queued <= 0, may_start=may_start, wake_at=wake_at)
            if got and "fill" not in col.seconds:
                col.seconds["fill"] = elapsed() - setup_seconds  # until the first video came back
            for name, faces, reason in got:
                bar.update(1)
                col.add(name, faces, reason)
            if col.queued >= col.batch_units or (col.queued > 0 and (not got or runner.started == 0)):
                col.run_batch()  # a full batch, or whatever is queued while the workers are busy
                continue
            if got or col.queued > 0:
                continue
            if runner.started == 0 and (not runner.queue or not may_start(0)):
                break  # nothing in flight, nothing queued: done, or the budget stopped new starts
            if budget > 0 and elapsed() >= budget:
                break
        left = runner.take_unstarted() + runner.take_started()
        if left:
            stopped = True
            warn(f"time budget of {budget:g} s: {len(left)} videos not predicted "
                 f"(fallback {plan.cfg.predict.fallback})")
            for name in left:
                col.fallback(name, f"{REASON_TIME}: projected finish beyond {budget:g} s")
        while col.queue:  # faces of finished videos are always predicted
            col.run_batch()
    finally:
        bar.close()
        runner.close(cancel=True)


def _write(plan: _Plan, col: _Collector, out_csv: Path, faces_csv: Path | None, t_start: float) -> PredictReport:
    """Step 4: submission, predictions.csv (with each row's reason), per-unit file, config; the report."""
    rows = [(n, *col.results[n][:4]) for n in plan.names]
    table = pd.DataFrame(rows, columns=["filename", "label", "raw", "n_faces", "reason"])
    atomic_write_csv(out_csv, table[["filename", "label"]])
    predictions_csv = out_csv.parent / PREDICTIONS_FILE
    atomic_write_csv(predictions_csv, table)
    if faces_csv is not None:
        per_face = pd.concat(col.face_rows, ignore_index=True) if col.face_rows else pd.DataFrame(columns=FACE_COLUMNS)
        atomic_write_csv(Path(faces_csv), per_face[FACE_COLUMNS])
    save_config(plan.cfg, out_csv.parent / CONFIG_FILE)
    col.seconds["total"] = time.perf_counter() - t_start
    constant = constant_models(plan.ensemble.names, col.spread, col.units)
    for text in constant:
        warn(f"predict: {text}")
    pcfg = plan.cfg.predict
    return PredictReport(
        videos=len(plan.names),
        predicted=sum(1 for n in plan.unique if not col.results[n][4]),
        fallbacks={n: r[3] for n, r in col.results.items() if r[4]},
        seconds=col.seconds,
        calibration={"aggregation": plan.ensemble.rule(plan.cfg), "temperature": pcfg.temperature,
                     "bias": pcfg.bias, "clip": pcfg.clip, "source": plan.source},
        models=len(plan.ensemble),
        out_csv=out_csv,
        predictions_csv=predictions_csv,
        faces=col.faces,
        processed=col.finished,
        devices=plan.ensemble.devices,
        faces_csv=Path(faces_csv) if faces_csv is not None else None,
        warnings=plan.warnings + constant,
        notes={n: r[3] for n, r in col.results.items() if r[3] and not r[4]},
    )


def predict_videos(
    videos_dir: Path,
    run_dir: Path,
    out_csv: Path,
    cfg: Config,
    sample_submission: Path | None = None,
    device: str | None = None,
    *,
    explicit: Collection[str] = (),
    progress: bool = True,
    process: Callable[..., VideoFaces] = process_video,
    checkpoints: Sequence[Path] | None = None,
    faces_csv: Path | None = None,
    names: Sequence[str] | None = None,
    start: Callable[[WorkerSetup], Any] | None = start_worker,
) -> PredictReport:
    """Predict P(FAKE) for every video and write ``out_csv`` (``filename,label``).

    Rows: one per row of ``sample_submission`` in its order (a listed video missing on
    disk gets the fallback, reason "missing"), else ``names`` when given, else one per
    ``*.mp4`` of ``videos_dir`` sorted by name. Beside ``out_csv``: ``predictions.csv``
    (``filename,label,raw,n_faces,reason``; ``raw`` is the aggregated P(FAKE) before
    temperature and clip, ``reason`` empty on success, or "partial decode: ..." for a video
    predicted from the part of it that decoded) and the resolved ``config.yaml``.

    ``run_dir`` holds ``fold*/best.pt`` (every fold is used, unless ``checkpoints`` names
    the ones to use: the video rule per model, then the mean over models) and optionally
    ``calibration.json``, whose aggregation/temperature/clip override ``cfg.predict`` unless
    ``cfg.predict.calibration`` is "none" or the key is in ``explicit`` (keys the user set
    on the command line); one fitted at another ``predict.frames`` is applied with a warning
    (``PredictReport.warnings``; so is a model whose every face got the same P(FAKE)).
    ``device``: "cpu", "cuda", a comma list ("cuda:0,cuda:1": models spread over them) or
    None/"auto" (every visible GPU, else the CPU). ``faces_csv``: also write every unit's
    P(FAKE) per model there (``filename,model,frame,track,prob``: each face, or each track of
    a sequence model with frame -1; calibration searches its aggregation on them). ``process`` is the per-video worker function and ``start`` a
    worker's start-up (replaceable in tests; both must be importable by spawned processes).

    Steps: ``_plan`` (inputs, calibration, models), ``_Workers`` (decode, detect, crop),
    ``_collect`` (the models on batches of faces, the time budget), ``_write`` (the files).
    """
    t_start = time.perf_counter()
    run_dir, out_csv = Path(run_dir), Path(out_csv)
    plan = _plan(videos_dir, run_dir, cfg, sample_submission, device, explicit, checkpoints, names)
    pcfg = plan.cfg.predict
    collector = _Collector(plan, keep_units=faces_csv is not None)
    runner = _Workers(plan.paths, plan.setup, plan.detect_devices, pcfg.workers, pcfg.prefetch, process,
                      pcfg.video_timeout, start)
    collector.seconds["setup"] = time.perf_counter() - t_start  # models loaded, inputs checked
    _collect(plan, runner, collector, t_start, progress)
    return _write(plan, collector, out_csv, faces_csv, t_start)
