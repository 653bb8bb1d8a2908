"""Per-video inference: videos + a run folder of fold models -> ``submission.csv``.

For every video: ``predict.frames`` evenly spaced frames (``dfdc.video.read_frames``),
batched MTCNN on downscaled frames (``dfdc.faces.FaceDetector``), the training crop
(``dfdc.faces.crop_face`` with the margin and crop size saved in each checkpoint) and the
one preprocessing path shared with training (``dfdc.preprocess.prepare``: uint8 crops, 4x
fewer bytes from the workers than float32; each model normalises on its own device),
P(FAKE) per face averaged over every fold's model (and the horizontal flip with
``tta_flip``), then the per-video aggregation, temperature and clip of ``dfdc.aggregate``
-- the same code calibration and training's validation use.

Pipeline: decoding, detection, cropping and preprocessing run in ``predict.workers``
spawned processes (each builds its own detector and limits its torch threads) with a
bounded number of videos in flight; the main process runs the models on batches of
``predict.batch_size`` faces drawn from every finished video, so the model stage keeps
working while the workers prepare the next videos. ``workers=0`` runs everything inline.

Failures never stop a run: a missing, empty, corrupt or faceless video, an exception in a
worker or a dead worker process gives that video ``predict.fallback`` with its reason in
``predictions.csv``. A time budget (``predict.time_budget``) stops starting videos whose
projected finish would not fit; they get the fallback too. Outputs are written atomically.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.calibrate import CALIBRATION, CalibrationError, apply_calibration, read_calibration
from dfdc.config import (
    Config, FacesConfig, PredictConfig, SequenceConfig, config_from_dict, read_config, save_config, warn,
)
from dfdc.io import atomic_write_csv, read_table
from dfdc.threads import limit_threads

# Keys of calibration.json that set PredictConfig fields of the same name.
PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"

# Fallback reasons written to predictions.csv (a prefix; details follow after ": ").
REASON_MISSING = "missing"
REASON_EMPTY = "empty file"
REASON_UNREADABLE = "unreadable"
REASON_NO_FACE = "no face"
REASON_ERROR = "error"
REASON_WORKER_DIED = "worker died"
REASON_TIME = "time budget"


class PredictError(ValueError):
    """An input of the whole run (models, sample submission, calibration) is unusable."""


@dataclass(frozen=True)
class CropSpec:
    """How a model wants its faces: the training crop and the network input side."""

    margin: float  # faces.margin of the model's training run
    crop_size: int  # faces.size: side of the saved training crops
    input_size: int  # the model's input side (its checkpoint's InputSpec): side after prepare


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker process needs (picklable, sent once per task)."""

    faces: FacesConfig
    frames: int
    specs: tuple[CropSpec, ...]
    threads: int
    device: str


@dataclass
class VideoFaces:
    """What a worker returns for one video: preprocessed faces per crop spec."""

    name: str
    tensors: dict[CropSpec, np.ndarray]  # spec -> uint8 (n_faces, 3, S, S), not normalised
    n_faces: int
    n_frames: int
    seconds: dict[str, float]  # decode, detect, crop
    reason: str = ""  # empty on success
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # frame index of each face
    tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # face track of each face (dfdc.tracks)


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

    def seconds_per_video(self) -> dict[str, float]:
        """Stage seconds divided by the videos the workers processed."""
        n = max(self.processed, 1)
        return {k: v / n for k, v in self.seconds.items()}

    def summary(self) -> str:
        per = self.seconds_per_video()
        reasons: dict[str, int] = {}
        for r in self.fallbacks.values():
            key = r.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        cal = self.calibration
        return "\n".join(
            [
                f"calibration: aggregation={cal['aggregation']} temperature={cal['temperature']:g} "
                f"clip={cal['clip']:g} (source: {cal['source']})",
                f"models: {self.models}; videos: {self.videos}; predicted: {self.predicted}; "
                f"faces: {self.faces}; fallbacks: {len(self.fallbacks)}" + (f" ({why})" if why else ""),
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
    if cfg.aggregation not in ("mean", "confident"):
        raise PredictError(f"predict.aggregation={cfg.aggregation!r}: use 'mean' or 'confident'")
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
        raise PredictError(f"{run_dir}: run folder not found; pass --models runs/NAME (made by `dfdc train`)")
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


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError(f"--device {device}: CUDA is not available here; use --device cpu")
    return device


# --------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}  # per-process detector, built on first use


def _worker_state(setup: WorkerSetup) -> dict[str, Any]:
    key = (setup.faces, setup.device)
    if _WORKER.get("key") != key:
        from dfdc.faces import FaceDetector

        _WORKER.clear()
        _WORKER["key"] = key
        _WORKER["detector"] = FaceDetector(setup.faces, device=setup.device)
    return _WORKER


def _init_worker(threads: int) -> None:
    """Pool initializer: limit this process's threads before any work."""
    limit_threads(threads)


def process_video(path: str, setup: WorkerSetup) -> VideoFaces:
    """Decode, detect, crop and preprocess one video (runs in a worker process).

    Per-video problems come back as ``reason``; unexpected exceptions propagate and are
    turned into a fallback by the caller.
    """
    from dfdc.faces import crop_face
    from dfdc.preprocess import prepare
    from dfdc.tracks import assign_tracks
    from dfdc.video import VideoReadError, read_frames

    name = Path(path).name
    seconds = {"decode": 0.0, "detect": 0.0, "crop": 0.0}
    state = _worker_state(setup)
    t0 = time.perf_counter()
    try:
        indices, frames = read_frames(Path(path), k=setup.frames)
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
        return VideoFaces(name, {}, 0, len(frames), seconds, f"{REASON_NO_FACE}: in {len(frames)} frames")
    tensors: dict[CropSpec, np.ndarray] = {}
    for spec in setup.specs:
        tensors[spec] = np.stack([prepare(crop_face(frames[i], box, spec.margin, spec.crop_size), spec.input_size)
                                  for i, box in boxes])
    seconds["crop"] = time.perf_counter() - t2
    return VideoFaces(name, tensors, len(boxes), len(frames), seconds, frames=frame_of, tracks=track_of)


# --------------------------------------------------------------------------- model side


@dataclass
class _Ensemble:
    """Fold models grouped by the crop they expect; P(FAKE) averaged over all of them.

    The unit a model reads is a face (``kind`` "frame") or a face track (``kind``
    "sequence": ``sequence.seq_len`` faces of one track, chosen by ``dfdc.sequences``);
    ``units`` turns a video's faces into its units, and a video's P(FAKE) is the aggregation
    of its units' P(FAKE): ``predict.aggregation`` over faces, ``sequence.aggregation`` over
    tracks."""

    groups: dict[CropSpec, list[Any]]
    device: str
    half: bool
    tta_flip: bool
    kind: str = "frame"
    sequence: SequenceConfig | None = None  # the run's sequence settings (kind "sequence")

    def units(self, faces: VideoFaces) -> tuple[dict[CropSpec, np.ndarray], int]:
        """A video's model inputs per spec and their count: its faces, or its track sequences
        (n_tracks x seq_len x 3 x S x S; faces without track ids count as one track)."""
        if self.kind != "sequence":
            return faces.tensors, faces.n_faces
        from dfdc.sequences import video_sequences

        assert self.sequence is not None
        tracks = faces.tracks if len(faces.tracks) == faces.n_faces else np.zeros(faces.n_faces, np.int64)
        frames = faces.frames if len(faces.frames) == faces.n_faces else np.arange(faces.n_faces)
        index = np.stack(video_sequences(tracks, frames, self.sequence))
        return {spec: t[index] for spec, t in faces.tensors.items()}, len(index)

    def batch_units(self, batch_size: int) -> int:
        """Units per model batch for ``predict.batch_size`` faces."""
        return max(1, batch_size // (self.sequence.seq_len if self.kind == "sequence" and self.sequence else 1))

    def rule(self, cfg: Config) -> str:
        """The aggregation of a video's unit probabilities."""
        return cfg.sequence.aggregation if self.kind == "sequence" else cfg.predict.aggregation

    @property
    def specs(self) -> tuple[CropSpec, ...]:
        return tuple(self.groups)

    def __len__(self) -> int:
        return sum(len(m) for m in self.groups.values())

    def fake_probability(self, batch: dict[CropSpec, np.ndarray]) -> np.ndarray:
        import torch

        from dfdc.models import fake_probability

        probs = []
        with torch.inference_mode():
            for spec, models in self.groups.items():
                x = torch.from_numpy(batch[spec]).to(self.device)  # uint8: each model normalises it
                views = [x, torch.flip(x, dims=[-1])] if self.tta_flip else [x]  # W of faces and of tracks
                for model in models:
                    for view in views:
                        probs.append(fake_probability(model(view)))
        return torch.stack(probs).mean(0).cpu().numpy().astype(np.float64)


def load_ensemble(run_dir: Path, cfg: PredictConfig, device: str) -> tuple[_Ensemble, Config]:
    """Load every fold model of ``run_dir``; returns the ensemble and the first model's config."""
    from dfdc.models import load_checkpoint

    groups: dict[CropSpec, list[Any]] = {}
    first: Config | None = None
    kinds: set[str] = set()
    half = bool(cfg.fp16) and device.startswith("cuda")
    for path in find_checkpoints(run_dir):
        try:
            model, meta = load_checkpoint(path, device)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise PredictError(f"{path}: cannot load the checkpoint ({exc}); retrain or re-copy it") from None
        run_cfg = _meta_config(meta, run_dir)
        first = first or run_cfg
        kinds.add(str(meta.get("kind", "frame")))
        spec = CropSpec(float(run_cfg.faces.margin), int(run_cfg.faces.size), int(meta["input"]["size"]))
        model.eval()
        model = model.half() if half else model.float()
        groups.setdefault(spec, []).append(model)
    assert first is not None
    if len(kinds) > 1:
        raise PredictError(f"{run_dir}: its checkpoints mix model kinds ({', '.join(sorted(kinds))}); one run, one kind")
    kind = kinds.pop()
    return _Ensemble(groups, device, half, bool(cfg.tta_flip), kind, first.sequence), first


# --------------------------------------------------------------------------- the run


@dataclass
class _Pending:
    """A video whose units (faces or tracks) are queued for (or partly through) the models."""

    name: str
    n_units: int
    n_faces: int
    probs: list[np.ndarray] = field(default_factory=list)
    done: int = 0
    failed: str = ""  # the reason when a model batch holding its faces failed


class _Runner:
    """Feeds videos to a worker pool (or inline) and yields their ``VideoFaces``.

    Keeps at most ``in_flight`` videos submitted. A dead worker breaks the whole pool: the
    videos that were in flight are retried one at a time in a fresh pool, so the one that
    kills its worker again is identified and gets the fallback, the others are predicted.
    """

    def __init__(
        self,
        paths: dict[str, str],
        setup: WorkerSetup,
        workers: int,
        prefetch: int,
        process: Callable[..., VideoFaces],
    ):
        self.paths = paths
        self.setup = setup
        self.workers = workers
        self.process = process
        self.queue: deque[str] = deque(paths)
        self.suspects: deque[str] = deque()
        self.futures: dict[cf.Future[VideoFaces], str] = {}
        self.pool: cf.ProcessPoolExecutor | None = None
        self.in_flight = max(prefetch * workers, 1)
        self.isolated: str | None = None  # a crash suspect running alone in the pool

    # -- pool management
    def _pool(self) -> cf.ProcessPoolExecutor:
        if self.pool is None:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=_init_worker, initargs=(self.setup.threads,)
            )
        return self.pool

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=not cancel, cancel_futures=True)
            self.pool = None

    @property
    def started(self) -> int:
        return len(self.futures)

    def take_unstarted(self) -> list[str]:
        names = list(self.suspects) + list(self.queue)
        self.suspects.clear()
        self.queue.clear()
        return names

    def take_started(self) -> list[str]:
        self.isolated = None
        names = list(self.futures.values())
        for fut in self.futures:
            fut.cancel()
        self.futures.clear()
        return names

    def _start(self, name: str) -> bool:
        """Submit one video; False when the pool is broken and its in-flight videos must report first."""
        try:
            fut = self._pool().submit(self.process, self.paths[name], self.setup)
        except BrokenProcessPool:
            if self.futures:
                return False  # a worker just died: its videos come back broken and are retried
            self.close(cancel=True)  # died while idle: nothing was lost, start a fresh pool
            fut = self._pool().submit(self.process, self.paths[name], self.setup)
        self.futures[fut] = name
        return True

    def submit(self, may_start: Callable[[int], bool]) -> None:
        """Start videos while there is room (and the time budget allows)."""
        if self.workers == 0 or self.isolated is not None:
            return  # inline, or a crash suspect runs alone until it finishes
        if self.suspects:
            if not self.futures and may_start(0):
                name = self.suspects.popleft()
                self._start(name)  # no future in flight: a broken pool is replaced
                self.isolated = name
            return
        while self.queue and len(self.futures) < self.in_flight and may_start(len(self.futures)):
            name = self.queue.popleft()
            if not self._start(name):
                self.queue.appendleft(name)
                return

    def results(self, block: bool, may_start: Callable[[int], bool]) -> list[tuple[str, VideoFaces | None, str]]:
        """Finished videos as (name, faces or None, failure reason); waits for one if ``block``."""
        if self.workers == 0:
            if not self.queue or not may_start(0):
                return []
            return [self._inline(self.queue.popleft())]
        self.submit(may_start)
        if not self.futures:
            return []
        done, _ = cf.wait(list(self.futures), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        out: list[tuple[str, VideoFaces | None, str]] = []
        broken = False
        for fut in done:
            name = self.futures.pop(fut)
            try:
                out.append((name, fut.result(), ""))
            except BrokenProcessPool:
                broken = True
                if name == self.isolated:
                    out.append((name, None, f"{REASON_WORKER_DIED}: the worker process exited while reading it"))
                else:
                    self.suspects.append(name)
            except Exception as exc:  # noqa: BLE001 - any worker exception becomes this video's fallback
                out.append((name, None, f"{REASON_ERROR}: {type(exc).__name__}: {exc}"))
            if name == self.isolated:
                self.isolated = None
        if broken:  # every future of the dead pool fails: retry its videos one at a time
            self.suspects.extend(self.futures.values())
            self.futures.clear()
            self.close(cancel=True)
        self.submit(may_start)
        return out

    def _inline(self, name: str) -> tuple[str, VideoFaces | None, str]:
        try:
            return name, self.process(self.paths[name], self.setup), ""
        except Exception as exc:  # noqa: BLE001 - any per-video exception becomes a fallback
            return name, None, f"{REASON_ERROR}: {type(exc).__name__}: {exc}"


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
) -> PredictReport:
    """Predict P(FAKE) for every video and write ``out_csv`` (``filename,label``).

    Rows: one per row of ``sample_submission`` in its order (a listed video missing on
    disk gets the fallback, reason "missing"), else one per ``*.mp4`` of ``videos_dir``
    sorted by name. Beside ``out_csv``: ``predictions.csv``
    (``filename,label,raw,n_faces,reason``; ``raw`` is the aggregated P(FAKE) before
    temperature and clip, ``reason`` empty on success) and the resolved ``config.yaml``.

    ``run_dir`` holds ``fold*/best.pt`` (every fold is used, P(FAKE) averaged per face) and
    optionally ``calibration.json``, whose aggregation/temperature/clip override
    ``cfg.predict`` unless ``cfg.predict.calibration`` is "none" or the key is in
    ``explicit`` (keys the user set on the command line). ``device``: "cpu", "cuda" or
    None (CUDA when available). ``process`` is the per-video worker function (replaceable
    in tests; it must be importable by spawned processes).
    """
    from tqdm import tqdm

    from dfdc.aggregate import TRACK_METHODS, AggregationError, aggregate, apply_temperature, clip

    t_start = time.perf_counter()
    pcfg = cfg.predict
    run_dir, out_csv = Path(run_dir), Path(out_csv)
    calibration, source = resolve_calibration(run_dir, pcfg)
    if calibration:
        pcfg = apply_calibration(pcfg, calibration, explicit)
        cfg = dataclasses.replace(cfg, predict=pcfg)
    _check_predict_config(pcfg)
    names = list_videos(videos_dir, sample_submission)
    dev = _resolve_device(device)
    ensemble, run_cfg = load_ensemble(run_dir, pcfg, dev)
    if ensemble.kind == "sequence" and cfg.sequence.aggregation not in TRACK_METHODS:
        raise PredictError(f"sequence.aggregation={cfg.sequence.aggregation!r}: use one of {', '.join(TRACK_METHODS)}")
    # detection exactly as in training (the run's faces settings); crops per model spec
    setup = WorkerSetup(run_cfg.faces, pcfg.frames, ensemble.specs, pcfg.worker_threads, pcfg.detect_device)

    results: dict[str, tuple[float, float, int, str]] = {}  # name -> (label, raw, n_faces, reason)

    def fallback(name: str, reason: str, n_faces: int = 0) -> None:
        results[name] = (pcfg.fallback, math.nan, n_faces, reason)

    unique = list(dict.fromkeys(names))
    paths: dict[str, str] = {}
    for name in unique:
        path = Path(videos_dir) / name
        if not path.is_file():
            fallback(name, REASON_MISSING)
        elif path.stat().st_size == 0:
            fallback(name, f"{REASON_EMPTY}: {path} is zero bytes (incomplete download?)")
        else:
            paths[name] = str(path)

    seconds = {"decode": 0.0, "detect": 0.0, "crop": 0.0, "model": 0.0}
    budget = float(pcfg.time_budget)
    finished = 0  # videos that went through the workers (success or not)
    total_faces = 0
    stopped = False

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def may_start(in_flight: int) -> bool:
        """Start one more video only if its projected finish fits the time budget."""
        if budget <= 0:
            return True
        if stopped or elapsed() >= budget:
            return False
        if finished == 0:
            return True
        per_video = elapsed() / finished
        return elapsed() + (in_flight + 1) * per_video <= budget

    runner = _Runner(paths, setup, pcfg.workers, pcfg.prefetch, process)
    faces_q: deque[tuple[_Pending, dict[CropSpec, np.ndarray], int]] = deque()  # (video, unit tensors, offset)
    queued_faces = 0  # units (faces or tracks) waiting for the models
    batch_units = ensemble.batch_units(pcfg.batch_size)
    bar = tqdm(total=len(paths), unit="video", disable=not progress, desc="predict")

    def finish(item: _Pending) -> None:
        if item.failed:
            fallback(item.name, item.failed, item.n_faces)
            return
        probs = np.concatenate(item.probs)
        try:
            raw = float(aggregate(probs, ensemble.rule(cfg), pcfg))
            label = float(clip(apply_temperature(raw, pcfg.temperature), pcfg.clip))
            results[item.name] = (label, raw, item.n_faces, "")
        except AggregationError as exc:  # e.g. NaN from an overflowing fp16 model
            fallback(item.name, f"{REASON_ERROR}: {exc}", item.n_faces)

    def run_batch() -> None:
        nonlocal queued_faces
        take: list[tuple[_Pending, dict[CropSpec, np.ndarray], int, int]] = []
        room = batch_units
        while faces_q and room > 0:
            item, tensors, offset = faces_q[0]
            n = min(room, item.n_units - offset)
            take.append((item, tensors, offset, n))
            room -= n
            if offset + n >= item.n_units:
                faces_q.popleft()
            else:
                faces_q[0] = (item, tensors, offset + n)
        batch = {spec: np.concatenate([t[spec][o : o + n] for _, t, o, n in take]) for spec in ensemble.specs}
        t0 = time.perf_counter()
        try:
            probs = ensemble.fake_probability(batch)
        except RuntimeError as exc:  # e.g. CUDA out of memory: these videos fall back, the run goes on
            probs = np.full(sum(n for *_, n in take), np.nan)
            for item, *_ in take:
                item.failed = f"{REASON_ERROR}: model: {type(exc).__name__}: {exc}"
        seconds["model"] += time.perf_counter() - t0
        start = 0
        for item, _, _, n in take:
            item.probs.append(probs[start : start + n])
            item.done += n
            start += n
            queued_faces -= n
            if item.done >= item.n_units:
                finish(item)

    seconds["setup"] = elapsed()  # models loaded, inputs checked; worker start-up counts in the loop
    try:
        while True:
            work_queued = queued_faces > 0
            got = runner.results(block=not work_queued, may_start=may_start)
            if got and "fill" not in seconds:
                seconds["fill"] = elapsed() - seconds["setup"]  # until the first video came back
            for name, faces, reason in got:
                finished += 1
                bar.update(1)
                if faces is not None:
                    for key in ("decode", "detect", "crop"):
                        seconds[key] += faces.seconds.get(key, 0.0)
                    reason = faces.reason
                if faces is None or reason:
                    fallback(name, reason, 0 if faces is None else faces.n_faces)
                    continue
                try:
                    tensors, n_units = ensemble.units(faces)
                except (ValueError, IndexError) as exc:  # track ids that cannot be read as sequences
                    fallback(name, f"{REASON_ERROR}: units: {exc}", faces.n_faces)
                    continue
                item = _Pending(name, n_units, faces.n_faces)
                faces_q.append((item, tensors, 0))
                queued_faces += n_units
                total_faces += faces.n_faces
            if queued_faces >= batch_units or (queued_faces > 0 and (not got or runner.started == 0)):
                run_batch()  # a full batch, or whatever is queued while the workers are busy
                continue
            if got or queued_faces > 0:
                continue
            if runner.started == 0:
                # nothing in flight, nothing queued: done, or the budget stopped new starts
                break
            if budget > 0 and elapsed() >= budget:
                break
        left = runner.take_unstarted()
        abandoned = runner.take_started()
        if left or abandoned:
            stopped = True
            warn(
                f"time budget of {budget:g} s: {len(left) + len(abandoned)} videos not predicted "
                f"(fallback {pcfg.fallback})"
            )
            for name in left + abandoned:
                fallback(name, f"{REASON_TIME}: projected finish beyond {budget:g} s")
        while faces_q:  # faces of finished videos are always predicted
            run_batch()
    finally:
        bar.close()
        runner.close(cancel=True)

    rows = [(n, *results[n]) for n in names]
    table = pd.DataFrame(rows, columns=["filename", "label", "raw", "n_faces", "reason"])
    atomic_write_csv(out_csv, table[["filename", "label"]])
    predictions_csv = out_csv.parent / PREDICTIONS_FILE
    atomic_write_csv(predictions_csv, table)
    save_config(cfg, out_csv.parent / CONFIG_FILE)
    seconds["total"] = time.perf_counter() - t_start
    fallbacks = {n: r[3] for n, r in results.items() if r[3]}
    return PredictReport(
        videos=len(names),
        predicted=sum(1 for n in unique if not results[n][3]),
        fallbacks=fallbacks,
        seconds=seconds,
        calibration={
            "aggregation": ensemble.rule(cfg),
            "temperature": pcfg.temperature,
            "clip": pcfg.clip,
            "source": source,
        },
        models=len(ensemble),
        out_csv=out_csv,
        predictions_csv=predictions_csv,
        faces=total_faces,
        processed=finished,
    )
