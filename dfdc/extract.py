"""The class-balanced face dataset builder (``dfdc faces``).

DFDC metadata table -> face crops + ``faces.csv``. The recipe:

- ``frames_real`` evenly spaced frames per REAL video, ``frames_fake`` per FAKE video
  (40 / 8 in the seed study), which balances DFDC's ~5 fakes per real.
- Faces are detected on REAL videos only; a FAKE reuses its original's boxes at the same
  frame indices (fakes are pixel-aligned with their original). A fake's frames are an
  evenly spaced subset of the original's frames that have a face. A fake whose original is
  not in the table, failed, or has no face is detected on itself.
- Face tracks (``dfdc.tracks``): a detected video's faces are linked across its frames; every
  crop row carries its ``track`` (0 = the face seen most often), and a FAKE reusing its
  original's boxes gets its original's tracks.
- Label cleaning: a FAKE crop (nearly) identical to its original's crop at the same frame
  and face (mean absolute difference inside the face box, ``dfdc.faces.face_difference``,
  < ``same_face_tolerance``) is not a manipulated face
  (audio-only fakes, two-person videos with one face swapped): it is dropped and counted.
  Both crops are the decoded video pixels before encoding -- for an original finished by an
  earlier run its frames are decoded again, never read back from a (lossy) crop file -- so
  ``image_format`` cannot change the decision.
- Crop files: ``image_format`` jpg (default, quality ``image_quality``), webp or png.

Work unit = one REAL original with its fakes (one worker holds the boxes and the
original's crops), or one FAKE on its own. Units are spread over worker processes and over
machines (``shard=(i, N)``, by a stable hash of the unit's name, so N machines split any
download the same way).

Output folder::

    crops/<part>/<video stem>/<frame>_<face>.<image_format>   the crops
    boxes/<part>/<video stem>.json     detections of each detected video (full-res boxes)
    manifests/<part>/<video stem>.json one per finished video: its crop rows, dropped count
    faces.csv, done.csv                the faces index, appended as videos finish (dfdc.faceindex);
                                       sharded: faces_<i>of<N>.csv, done_<i>of<N>.csv, and
                                       ``merge_faces`` builds faces.csv from all shards
    failures.csv                       this run's failed videos and why (failures_<i>of<N>.csv per shard)
    config.yaml                        the extraction settings (profile name, faces section; save_faces_config)

Resuming: a video is finished when its manifest exists (written atomically after its
crops and boxes); the index commits it after that. A rerun reads the shard's done file,
indexes finished videos the index missed (a kill between manifest and index), skips
finished videos, wipes the crop folder of unfinished ones (half a video's crops never
survive) and removes this shard's stale temp files. Failed videos have no manifest, so a
rerun retries them (e.g. after a re-download). Shards sharing one output folder never
touch each other's files.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import yaml

from dfdc.config import Config, ConfigError, FacesConfig, read_config
from dfdc.faceindex import ROW_COLUMNS, MergeReport, ShardIndex, merge, shard_files
from dfdc.faces import Detection, FaceDetector, check_margin, crop_box, crop_face, face_difference
from dfdc.io import atomic_write_csv, atomic_write_json, atomic_write_text, is_disk_full, read_table, remove_temp_files_of
from dfdc.threads import available_cores, limit_threads
from dfdc.tracks import assign_tracks
from dfdc.video import VideoReadError, evenly_spaced, read_frames

MANIFEST_COLUMNS = ROW_COLUMNS  # a crop row, in manifests and the faces index
META_COLUMNS = ("video", "path", "part", "label", "original")
FAILURE_COLUMNS = ["video", "part", "label", "reason"]
IMAGE_FORMATS = ("png", "jpg", "webp")
SHARED_CONFIG = "config.yaml"  # the faces folder's resolved configuration (written by every shard)
# FacesConfig fields that change what is written: a rerun into the same folder must match.
RESUME_KEYS = (
    "margin", "size", "frames_real", "frames_fake", "max_faces", "detect_short_side",
    "min_face_size", "thresholds", "min_prob", "same_face_tolerance", "image_format", "image_quality",
    "track_iou", "track_center", "track_max_gap",
)  # fmt: skip


@dataclass
class Job:
    """One video of a work unit."""

    video: str
    path: str
    part: str
    label: str
    original: str | None
    done: bool = False  # its manifest exists (finished by an earlier run)

    @property
    def stem(self) -> str:
        return Path(self.video).stem


@dataclass
class Unit:
    """A REAL original and its fakes, or one FAKE on its own (``original`` None)."""

    key: str
    original: Job | None
    fakes: list[Job]

    @property
    def jobs(self) -> list[Job]:
        return ([self.original] if self.original else []) + self.fakes


@dataclass
class Outcome:
    """What happened to one video in this run."""

    video: str
    part: str
    label: str
    status: str  # "done", "skipped" (finished earlier) or "failed"
    reason: str = ""
    crops: int = 0
    dropped: int = 0
    detected: bool = False  # detection ran on this video (a REAL, or a FAKE without boxes)
    rows: list[dict[str, Any]] = field(default_factory=list)  # its crop rows (status "done")


@dataclass
class ExtractReport:
    """Counts of one ``build_faces`` run; crop counts are totals of the written faces.csv."""

    videos: int = 0  # videos in this shard
    done: int = 0  # finished in this run
    skipped: int = 0  # finished by an earlier run
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video, reason)
    real_crops: int = 0  # in this shard's faces index
    fake_crops: int = 0  # in this shard's faces index
    dropped_identical: int = 0  # FAKE crops equal to their original's, over all finished videos
    fakes_detected_on_self: int = 0  # this run: FAKE videos without usable original boxes
    seconds: float = 0.0
    manifest: str = ""  # path of this shard's faces index (faces.csv unsharded)
    failures_csv: str = ""
    indexed_from_manifests: int = 0  # finished videos the index had missed (a kill between the two)
    index_rebuilt: str = ""  # why the index was rebuilt from the manifests ("" = it was not)

    def format(self) -> str:
        lines = [
            f"videos: {self.videos} in this shard; done {self.done}, skipped (already done) {self.skipped}, "
            f"failed {self.failed}",
            f"crops in {self.manifest}: REAL {self.real_crops}, FAKE {self.fake_crops}; "
            f"dropped identical FAKE crops: {self.dropped_identical}",
            f"FAKE videos detected on themselves (no usable original): {self.fakes_detected_on_self}",
            *([f"faces index rebuilt from the manifests: {self.index_rebuilt}"] if self.index_rebuilt else []),
            f"seconds: {self.seconds:.1f}" + (f" ({self.seconds / self.done:.2f} s per video done)" if self.done else ""),
        ]
        if self.failures:
            lines.append(f"failures ({self.failures_csv}):")
            lines += [f"  {v}: {r}" for v, r in self.failures[:20]]
            if len(self.failures) > 20:
                lines.append(f"  ... {len(self.failures) - 20} more")
        return "\n".join(lines)


# --- layout ---------------------------------------------------------------------


def manifest_path(out_dir: Path, part: str, video: str) -> Path:
    return out_dir / "manifests" / part / f"{Path(video).stem}.json"


def boxes_path(out_dir: Path, part: str, video: str) -> Path:
    return out_dir / "boxes" / part / f"{Path(video).stem}.json"


def crops_dir(out_dir: Path, part: str, video: str) -> Path:
    return out_dir / "crops" / part / Path(video).stem


def failures_name(shard: tuple[int, int]) -> str:
    return "failures.csv" if shard[1] == 1 else f"failures_{shard[0]}of{shard[1]}.csv"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected i/N, e.g. 0/4 (this machine's index, machine count)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= i < N")
    return i, n


def unit_shard(key: str, n: int) -> int:
    """Stable shard of a work unit (same on every machine and Python run)."""
    return zlib.crc32(key.encode("utf-8")) % n


# --- planning -------------------------------------------------------------------


def plan_units(meta: pd.DataFrame) -> list[Unit]:
    """Group the table into work units, sorted by key."""
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(
            f"metadata table lacks column(s) {', '.join(missing)}; build it with dfdc.metadata.load_metadata(root)"
        )
    jobs = [
        Job(str(r.video), str(r.path), str(r.part), str(r.label),
            None if r.original is None or (isinstance(r.original, float) and np.isnan(r.original)) else str(r.original))
        for r in meta.itertuples(index=False)
    ]  # fmt: skip
    bad = sorted({j.label for j in jobs} - {"REAL", "FAKE"})
    if bad:
        raise ValueError(f"metadata table has label(s) {bad}; expected REAL or FAKE")
    reals = {j.video: Unit(j.video, j, []) for j in jobs if j.label == "REAL"}
    alone: list[Unit] = []
    for j in jobs:
        if j.label != "FAKE":
            continue
        if j.original in reals:
            reals[j.original].fakes.append(j)
        else:
            alone.append(Unit(j.video, None, [j]))
    units = list(reals.values()) + alone
    for u in units:
        u.fakes.sort(key=lambda j: j.video)
    return sorted(units, key=lambda u: u.key)


# --- the worker -----------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(cfg: FacesConfig, out_dir: str, device: str | None, threads: int) -> None:
    """Per-process setup: thread limits and one detector per worker."""
    limit_threads(threads)
    _STATE.clear()
    _STATE.update(cfg=cfg, out=Path(out_dir), device=device, detector=None)


def _detector() -> FaceDetector:
    if _STATE["detector"] is None:
        _STATE["detector"] = FaceDetector(_STATE["cfg"], device=_STATE["device"])
    return _STATE["detector"]


def encode_params(fmt: str, quality: int) -> list[int]:
    """OpenCV ``imencode`` parameters of a crop format (PNG: OpenCV's default compression)."""
    if fmt == "jpg":
        return [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if fmt == "webp":
        return [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    return []


def encode_crop(image_rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    """An RGB crop as the bytes of a ``fmt`` file (``faces.image_format``, ``image_quality``)."""
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), encode_params(fmt, quality))
    if not ok:
        raise RuntimeError(f"cannot encode a crop as {fmt}")
    return buf.tobytes()


def roundtrip_crop(image_rgb: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    """An RGB crop encoded as a crop file is (``encode_crop``) and decoded again: the pixels
    training reads from that file (``predict.crop_roundtrip`` gives the predictor the same)."""
    decoded = cv2.imdecode(np.frombuffer(encode_crop(image_rgb, fmt, quality), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _row(job: Job, frame: int, face: int, rel: str, det: Detection) -> dict[str, Any]:
    cfg = _STATE["cfg"]
    return {
        "video": job.video, "part": job.part, "label": job.label, "original": job.original or "",
        "frame": frame, "face": face, "track": int(det.track), "path": rel,
        "box": " ".join(f"{float(v):.1f}" for v in det.box[:4]), "prob": round(float(det.prob), 5),
        "landmarks": landmarks_in_crop(det, cfg.margin, cfg.size),
    }  # fmt: skip


def landmarks_in_crop(det: Detection, margin: float, size: int) -> str:
    """``det``'s 5 landmarks in the pixels of its ``size`` crop (``crop_face``), "x y" pairs
    joined by spaces; "" without landmarks."""
    if det.landmarks is None:
        return ""
    x0, y0, side = crop_box(det.box, margin)
    points = (np.asarray(det.landmarks, dtype=np.float64) - (x0, y0)) * (size / side)
    return " ".join(f"{v:.1f}" for v in points.ravel())


class _Boxes:
    """A detected video's detections per frame, and its crops as decoded pixels, before any
    encoding (for label cleaning)."""

    def __init__(self, job: Job, shape: tuple[int, int], dets: dict[int, list[Detection]], crops: dict) -> None:
        self.job, self.shape, self.dets, self.crops = job, shape, dets, crops

    def decode(self, frames: list[int]) -> None:
        """Crops of ``frames`` from the video itself (an original finished by an earlier run:
        its crop files may be lossy, so they are never read back for label cleaning)."""
        todo = sorted({f for f in frames if self.dets.get(f) and (f, 0) not in self.crops})
        if not todo:
            return
        cfg = _STATE["cfg"]
        indices, images = read_frames(Path(self.job.path), indices=todo)
        for frame_index, image in zip(indices, images):
            for face, det in enumerate(self.dets[frame_index]):
                self.crops[(frame_index, face)] = crop_face(image, det.box, cfg.margin, cfg.size)

    def crop(self, frame: int, face: int) -> np.ndarray | None:
        return self.crops.get((frame, face))


def _save_crops(
    job: Job, frames: list[np.ndarray], indices: list[int], dets: list[list[Detection]], ref: _Boxes | None
) -> tuple[list[dict[str, Any]], dict, int]:
    """Crop, label-clean against ``ref`` and write; returns (rows, crops by (frame, face), dropped)."""
    cfg, out = _STATE["cfg"], _STATE["out"]
    folder = crops_dir(out, job.part, job.video)
    folder.mkdir(parents=True, exist_ok=True)
    rows, crops, dropped = [], {}, 0
    for frame_index, frame, faces in zip(indices, frames, dets):
        for face, det in enumerate(faces):
            crop = crop_face(frame, det.box, cfg.margin, cfg.size)
            if ref is not None:
                same = ref.crop(frame_index, face)
                if same is not None and same.shape == crop.shape:
                    if face_difference(crop, same, det.box, cfg.margin) < cfg.same_face_tolerance:
                        dropped += 1
                        continue
            name = f"{frame_index}_{face}.{cfg.image_format}"
            # a plain write: a video's crops count only once its manifest (written atomically,
            # after them) exists, and ``_guard`` wipes an unfinished video's folder first, so a
            # kill -9 cannot leave a half-written crop in the dataset; no fsync per crop.
            (folder / name).write_bytes(encode_crop(crop, cfg.image_format, cfg.image_quality))
            rows.append(_row(job, frame_index, face, (folder / name).relative_to(out).as_posix(), det))
            if job.label == "REAL":
                crops[(frame_index, face)] = crop
    return rows, crops, dropped


def _finish(job: Job, rows: list[dict[str, Any]], dropped: int, frames: list[int]) -> None:
    out = _STATE["out"]
    atomic_write_json(
        manifest_path(out, job.part, job.video),
        {"video": job.video, "part": job.part, "label": job.label, "frames": frames, "dropped_identical": dropped,
         "rows": rows},
    )  # fmt: skip


def _write_boxes(job: Job, shape: tuple[int, int], indices: list[int], dets: list[list[Detection]]) -> None:
    atomic_write_json(
        boxes_path(_STATE["out"], job.part, job.video),
        {"video": job.video, "height": shape[0], "width": shape[1], "frames": indices,
         "detections": {str(i): [d.to_dict() for d in ds] for i, ds in zip(indices, dets)}},
    )  # fmt: skip


def _load_boxes(job: Job) -> _Boxes | None:
    path = boxes_path(_STATE["out"], job.part, job.video)
    try:
        data = json.loads(path.read_text())
        dets = {int(k): [Detection.from_dict(d) for d in v] for k, v in data["detections"].items()}
        return _Boxes(job, (int(data["height"]), int(data["width"])), dets, {})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _detect_video(job: Job, k: int) -> tuple[Outcome, _Boxes | None]:
    """Sample ``k`` frames, detect, crop, write boxes and the manifest."""
    indices, frames = read_frames(Path(job.path), k=k)
    dets = _detector().detect(frames)
    assign_tracks(dets, _STATE["cfg"])
    if not any(dets):
        return Outcome(job.video, job.part, job.label, "failed", f"no face found in {len(frames)} frames",
                       detected=True), None  # fmt: skip
    shape = frames[0].shape[:2]
    rows, crops, _ = _save_crops(job, frames, indices, dets, None)
    del frames
    _write_boxes(job, shape, indices, dets)
    _finish(job, rows, 0, indices)
    boxes = _Boxes(job, shape, dict(zip(indices, dets)), crops)
    return Outcome(job.video, job.part, job.label, "done", crops=len(rows), detected=True, rows=rows), boxes


def _fake_with_boxes(job: Job, ref: _Boxes) -> Outcome | None:
    """Crop a FAKE at its original's boxes; None when the boxes do not fit this video."""
    cfg = _STATE["cfg"]
    with_faces = sorted(f for f, ds in ref.dets.items() if ds)
    chosen = [with_faces[i] for i in evenly_spaced(len(with_faces), cfg.frames_fake)]
    indices, frames = read_frames(Path(job.path), indices=chosen)
    if frames[0].shape[:2] != ref.shape:
        return None  # not pixel-aligned with its original: detect on the fake itself
    ref.decode(indices)
    rows, _, dropped = _save_crops(job, frames, indices, [ref.dets[i] for i in indices], ref)
    _finish(job, rows, dropped, indices)
    return Outcome(job.video, job.part, job.label, "done", crops=len(rows), dropped=dropped, rows=rows)


def _guard(job: Job, work) -> tuple[Outcome, Any]:
    """Run one video's work; any error becomes a failed Outcome (never fatal)."""
    shutil.rmtree(crops_dir(_STATE["out"], job.part, job.video), ignore_errors=True)
    try:
        return work()
    except VideoReadError as exc:
        return Outcome(job.video, job.part, job.label, "failed", str(exc)), None
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the run; reason is reported
        if is_disk_full(exc):  # not the video's fault: the stage stops, a rerun resumes
            raise
        return Outcome(job.video, job.part, job.label, "failed", f"{type(exc).__name__}: {exc}"), None


def process_unit(unit: Unit) -> list[Outcome]:
    """Process one work unit in this worker (``_init_worker`` must have run)."""
    cfg = _STATE["cfg"]
    outcomes: list[Outcome] = []
    ref: _Boxes | None = None
    orig = unit.original
    if orig is not None:
        if orig.done:
            ref = _load_boxes(orig)
            if ref is None:  # boxes lost: redo the original
                orig.done = False
        if orig.done:
            outcomes.append(Outcome(orig.video, orig.part, orig.label, "skipped"))
        else:
            outcome, ref = _guard(orig, lambda: _detect_video(orig, cfg.frames_real))
            outcomes.append(outcome)
    for job in unit.fakes:
        if job.done:
            outcomes.append(Outcome(job.video, job.part, job.label, "skipped"))
            continue

        def work(job: Job = job) -> tuple[Outcome, Any]:
            if ref is not None and any(ref.dets.values()):
                outcome = _fake_with_boxes(job, ref)
                if outcome is not None:
                    return outcome, None
            return _detect_video(job, cfg.frames_fake)

        outcomes.append(_guard(job, work)[0])
    return outcomes


# --- the driver -----------------------------------------------------------------


def save_faces_config(config: Config, path: Path) -> None:
    """The faces folder's ``config.yaml``: the extraction settings only (the profile's name and
    the ``faces`` section; a stage reading it gets the defaults for the rest), written only
    when they changed, so that a later stage resuming the extraction (``make train`` runs
    ``make faces``) leaves it as the extraction wrote it."""
    text = yaml.safe_dump({"profile": config.profile, "faces": config.to_dict()["faces"]}, sort_keys=False)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    atomic_write_text(path, text)


def _check_resume(out_dir: Path, cfg: FacesConfig) -> None:
    saved = out_dir / SHARED_CONFIG
    if not saved.is_file():
        return
    try:
        old = read_config(saved).faces
    except ConfigError:
        return  # unreadable: it is rewritten below
    diff = [f"{k}: {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in RESUME_KEYS if getattr(old, k) != getattr(cfg, k)]
    if diff:
        raise ValueError(
            f"{out_dir} holds crops made with other face settings ({'; '.join(diff)}); "
            "use another --out folder, or delete this one to rebuild"
        )


def _clean_temps(out_dir: Path, units: list[Unit], shard: tuple[int, int]) -> int:
    """Remove the temp files a killed run of THIS shard left (manifests, boxes, its own
    top-level files); another shard writing into the same folder keeps its own. The folder's
    ``config.yaml`` is every shard's: only an unsharded run (or ``merge_faces``) cleans its
    temp files, so one shard starting never deletes another's config write in flight."""
    names = {f"{j.stem}.json" for u in units for j in u.jobs}
    parts = {j.part for u in units for j in u.jobs}
    folders = [out_dir / kind / part for kind in ("manifests", "boxes") for part in sorted(parts)]
    own = {failures_name(shard), *shard_files(shard), *((SHARED_CONFIG,) if shard[1] == 1 else ())}
    return remove_temp_files_of(folders, names) + remove_temp_files_of([out_dir], own)


def _index_missed(index: ShardIndex, units: list[Unit], out_dir: Path) -> int:
    """Commit finished videos (manifest written) the index does not hold yet; returns how many.
    Costs one stat per video not in the index (all of them only on a first run)."""
    added = 0
    for u in units:
        for j in u.jobs:
            if j.video in index.done:
                continue
            path = manifest_path(out_dir, j.part, j.video)
            try:
                data = json.loads(path.read_text())
                rows, dropped = data["rows"], int(data.get("dropped_identical", 0))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                path.unlink(missing_ok=True)  # a damaged manifest (or one without rows): redo the video
                continue
            index.append(j.video, j.part, j.label, rows, dropped)
            added += 1
    return added


class _Recorder:
    """Takes the outcomes of finished work units: commits done videos to the index, counts
    into the report, collects failure rows, moves the progress bar."""

    def __init__(self, report: ExtractReport, index: ShardIndex, progress: bool) -> None:
        self.report, self.index = report, index
        self.failure_rows: list[dict[str, str]] = []
        self.found = 0  # crops written by this run
        self.bar = None
        if progress:
            from .progress import progress as progress_bar

            self.bar = progress_bar(total=report.videos, initial=report.skipped, unit="video", desc="faces", dynamic_ncols=True)

    def __call__(self, outcomes: list[Outcome]) -> None:
        report = self.report
        for o in outcomes:
            if o.status == "done":
                report.done += 1
                self.found += o.crops
                if o.video not in self.index.done:  # (an original redone for its lost boxes is indexed already)
                    self.index.append(o.video, o.part, o.label, o.rows, o.dropped)
            elif o.status == "skipped":
                report.skipped += 1
            else:
                report.failed += 1
                report.failures.append((o.video, o.reason))
                self.failure_rows.append({"video": o.video, "part": o.part, "label": o.label, "reason": o.reason})
            if o.label == "FAKE" and o.detected and o.status == "done":
                report.fakes_detected_on_self += 1
        if self.bar is not None:
            self.bar.update(len(outcomes))
            self.bar.set_postfix(faces=self.found, failed=report.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_units(todo: list[Unit], record: _Recorder, cfg: FacesConfig, out_dir: Path, workers: int,
               device: str | None) -> None:
    """Process the work units ``todo`` in this process or in ``workers`` worker processes."""
    workers = max(1, min(int(workers), len(todo) or 1))
    if workers == 1:
        _init_worker(cfg, str(out_dir), device, threads=0)
        for u in todo:
            record(process_unit(u))
        return
    threads = max(1, available_cores() // workers)
    ctx = multiprocessing.get_context("spawn")  # CUDA- and fork-safe
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(cfg, str(out_dir), device, threads)) as pool:  # fmt: skip
        futures = {pool.submit(process_unit, u): u for u in todo}
        for fut in cf.as_completed(futures):
            try:
                record(fut.result())
            except Exception as exc:  # noqa: BLE001 - a dead worker fails its unit, not the run
                if is_disk_full(exc):  # a full disk stops the stage (the rerun resumes)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                u = futures[fut]
                record([Outcome(j.video, j.part, j.label, "failed", f"worker error: {type(exc).__name__}: {exc}")
                        for j in u.jobs if not j.done])  # fmt: skip


def build_faces(
    meta: pd.DataFrame,
    out_dir: Path,
    cfg: FacesConfig,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: bool = True,
    config: Config | None = None,
    device: str | None = None,
) -> ExtractReport:
    """Build the class-balanced face crop dataset of ``meta`` under ``out_dir``.

    Args:
        meta: the table of ``dfdc.metadata.load_metadata`` (columns video, path, part,
            label, original, split).
        out_dir: output folder (crops/, boxes/, manifests/, faces.csv, failures.csv,
            config.yaml); a rerun resumes.
        cfg: the ``faces`` configuration (margin, size, frames per class, detector).
        shard: ``(i, N)``: process only work units whose stable hash is ``i`` mod ``N``.
        workers: worker processes (1 = in this process); each builds its own detector.
        progress: show a progress bar (videos/s, faces found; plain lines when stderr is not a terminal).
        config: the full resolved configuration to save as ``config.yaml`` (default: the
            defaults with ``cfg`` as the faces section).
        device: detector device (default ``cuda`` when available).

    Returns an ``ExtractReport``. Corrupt, missing or faceless videos are counted and
    listed in the failures file, never fatal.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_margin(cfg.margin, cfg.margin_recommended)
    if cfg.image_format not in IMAGE_FORMATS:
        raise ValueError(f"faces.image_format {cfg.image_format!r}: use one of {', '.join(IMAGE_FORMATS)}")
    if cfg.frames_real < 1 or cfg.frames_fake < 1 or cfg.max_faces < 1 or cfg.size < 1:
        raise ValueError("faces.frames_real, frames_fake, max_faces and size must be at least 1")
    shard = (int(shard[0]), int(shard[1]))
    if shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard}: need 0 <= i < N")
    units = [u for u in plan_units(meta) if unit_shard(u.key, shard[1]) == shard[0]]
    _check_resume(out_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = Config(faces=cfg) if config is None else dataclasses.replace(config, faces=cfg)
    save_faces_config(full, out_dir / SHARED_CONFIG)
    _clean_temps(out_dir, units, shard)
    index = ShardIndex(out_dir, shard).open()
    missed = _index_missed(index, units, out_dir)
    for u in units:
        for j in u.jobs:
            j.done = j.video in index.done
    report = ExtractReport(videos=sum(len(u.jobs) for u in units), indexed_from_manifests=missed,
                           index_rebuilt=index.rebuilt)
    todo = [u for u in units if not all(j.done for j in u.jobs)]
    report.skipped = sum(len(u.jobs) for u in units if all(j.done for j in u.jobs))

    recorder = _Recorder(report, index, progress)
    try:
        _run_units(todo, recorder, cfg, out_dir, workers, device)
    finally:
        recorder.close()
        _STATE.clear()

    failures_csv = out_dir / failures_name(shard)
    atomic_write_csv(failures_csv, pd.DataFrame(recorder.failure_rows, columns=FAILURE_COLUMNS))
    totals = index.totals()
    report.real_crops, report.fake_crops, report.dropped_identical = totals["REAL"], totals["FAKE"], totals["dropped"]
    report.manifest, report.failures_csv = str(index.rows_path), str(failures_csv)
    report.seconds = time.perf_counter() - start
    return report


def merge_faces(meta: pd.DataFrame, out_dir: Path, shards: int = 0) -> MergeReport:
    """Build ``out_dir/faces.csv`` from the indexes of a sharded extraction (``--shard i/N``).

    ``shards``: N (0 = the N of the shard files present, which must be one). Checks that
    every shard's index is there, that each planned video of ``meta`` is indexed by its
    shard or listed in the shard's failures file, and that no video or crop appears twice;
    refuses (``ValueError``) otherwise, writing nothing.
    """
    from dfdc.faceindex import FaceIndexError, shard_counts

    out_dir = Path(out_dir)
    if shards <= 0:
        counts = shard_counts(out_dir)
        if len(counts) != 1:
            found = ", ".join(f"{n} shards" for n in counts) or "no done_<i>of<N>.csv file"
            raise ValueError(f"{out_dir}: cannot tell the shard count N ({found}); pass --shards N "
                             "(and delete the files of other attempts)")
        shards = counts[0]
    planned: list[set[str]] = [set() for _ in range(shards)]
    for u in plan_units(meta):
        planned[unit_shard(u.key, shards)].update(j.video for j in u.jobs)
    failed: list[set[str]] = []
    for i in range(shards):
        path = out_dir / failures_name((i, shards))
        table = read_table(path, FAILURE_COLUMNS, error=ValueError, what="failures file",
                           fix=f"rerun `dfdc faces --shard {i}/{shards}`", dtype={"video": str}) \
            if path.is_file() else pd.DataFrame(columns=FAILURE_COLUMNS)
        failed.append(set(table["video"].astype(str)))
    remove_temp_files_of([out_dir], {SHARED_CONFIG})  # the shards are done: nobody writes it now
    try:
        return merge(out_dir, planned, failed)
    except FaceIndexError as exc:
        raise ValueError(str(exc)) from None
