"""Pooled backbone features of every face crop (``dfdc embed``).

``embed_faces(faces_dir, model, out, cfg)`` runs any registered backbone -- by name (random
init, or ``model.pretrained`` weights) or a trained run's fold checkpoint -- over the crops of
a faces folder and writes, into ``out``::

    embeddings.npy   N x D array (embed.dtype), row i = index.csv row i: the model's pooled
                     features (``FrameModel.features``) of the crop, as the predictor sees it
    index.csv        video, label, original, part, frame, face, track, path (path relative to
                     the faces folder; track -1 when the faces table has none)
    embed.json       what made it: model source and fingerprint, input spec, rows, dim, dtype,
                     the faces folder, seconds (written last: the "done" marker)

Work is done in fixed-size chunks (``embed.chunk_size`` crops) each written atomically
under ``out/chunks/``; a killed run resumes at the first missing chunk (the plan file
``out/.plan.json`` makes sure the chunks came from the same crops and the same weights), and
the finished chunks are assembled into ``embeddings.npy`` at the end. The same command on a
finished folder does nothing.

``load_embeddings(out) -> (array, index)`` is the one reader (analysis, identity folds,
scikit-learn baselines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from dfdc.config import Config
from dfdc.data import read_rgb
from dfdc.faceindex import ROW_ORDER
from dfdc.io import atomic_open, atomic_write_csv, atomic_write_json, clean_temp_files, read_table
from dfdc.preprocess import prepare
from dfdc.threads import spare_cores, torch_threads

ARRAY_FILE = "embeddings.npy"
INDEX_FILE = "index.csv"
META_FILE = "embed.json"
PLAN_FILE = ".plan.json"
CHUNKS_DIR = "chunks"
FACES_FILE = "faces.csv"
INDEX_COLUMNS = ["video", "label", "original", "part", "frame", "face", "track", "path"]
FACES_NEEDED = ("video", "label", "frame", "path")  # faces.csv columns embed cannot do without
NO_TRACK = -1  # ``track`` of a crop whose faces table has no track column
DTYPES = ("float16", "float32")
EMBED_FORMAT = 1  # bump when the folder layout changes


class EmbedError(RuntimeError):
    """Embeddings that cannot be made or read as asked (the message says what to do)."""


@dataclass
class EmbedReport:
    out: Path
    rows: int
    dim: int
    model: str
    chunks_done: int  # chunks computed by this run
    chunks_reused: int  # chunks a previous (killed) run had finished
    seconds: float
    crops_per_second: float
    device: str
    skipped: bool = False  # the folder already held these embeddings

    def format(self) -> str:
        if self.skipped:
            return f"{self.out} already holds these embeddings ({self.rows} x {self.dim}, {self.model}); nothing to do"
        resumed = f", {self.chunks_reused} chunk(s) reused" if self.chunks_reused else ""
        return (f"embedded {self.rows} crops -> {self.rows} x {self.dim} ({self.model}) on {self.device} "
                f"in {self.seconds:.1f} s ({self.crops_per_second:.1f} crops/s{resumed}) -> {self.out}")


# ----------------------------------------------------------------------------- the faces index


def read_faces_index(faces_dir: Path) -> pd.DataFrame:
    """The crops of a faces folder as ``INDEX_COLUMNS``, one row per crop, in the faces
    index's canonical order (video, frame, face: the order training reads; the file itself
    is appended as videos finish).

    The one place that reads ``faces.csv`` for embeddings and identity folds: columns that a
    faces table lacks are filled (``original`` None, ``part`` "", ``face`` 0, ``track`` -1)."""
    faces_dir = Path(faces_dir)
    table = read_table(faces_dir / FACES_FILE, FACES_NEEDED, error=EmbedError, what="faces table",
                       fix="build it with `python -m dfdc faces` (make faces)",
                       dtype={"video": str, "label": str, "path": str, "part": str, "original": object})
    defaults = {"original": None, "part": "", "face": 0, "track": NO_TRACK}
    for column, value in defaults.items():
        if column not in table.columns:
            table[column] = value
    table["original"] = table["original"].where(table["original"].notna(), None)
    table["track"] = table["track"].fillna(NO_TRACK).astype(int)
    table = table.sort_values(ROW_ORDER, kind="mergesort")
    return table[INDEX_COLUMNS].reset_index(drop=True)


def _fingerprint_rows(index: pd.DataFrame) -> str:
    digest = hashlib.sha1()
    for video, path in zip(index["video"], index["path"]):
        digest.update(f"{video}\0{path}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the model


def _state_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_model(source: str, cfg: Config, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``source``: a registered arch name, a training run folder (its fold ``embed.fold``
    checkpoint) or a checkpoint file. Returns (model in eval mode on ``device``, description)."""
    from dfdc.models import CheckpointError, create_model, fold_checkpoints, list_models, load_checkpoint

    path = Path(source)
    if path.is_dir():
        folds = fold_checkpoints(path)
        if not folds:
            raise EmbedError(f"{path} holds no fold*/best.pt; train first (dfdc train) or name a model "
                             f"({', '.join(list_models())})")
        chosen = [p for k, p in folds if k == cfg.embed.fold] if cfg.embed.fold >= 0 else [folds[0][1]]
        if not chosen:
            raise EmbedError(f"{path} has no fold {cfg.embed.fold} (folds: {[k for k, _ in folds]}); set embed.fold")
        path = chosen[0]
    if path.is_file():
        try:
            model, meta = load_checkpoint(path, device)
        except CheckpointError as exc:
            raise EmbedError(str(exc)) from None
        return model, {"source": str(path), "arch": meta["arch"], "weights": "checkpoint", "input": meta["input"]}
    if source not in list_models():
        raise EmbedError(f"--model {source!r} is neither a registered model ({', '.join(list_models())}) "
                         "nor a training run folder or checkpoint file")
    model_cfg = dataclasses.replace(cfg.model, arch=source)
    torch.manual_seed(cfg.train.seed)  # random-init weights: the same every run (resume needs that)
    model = create_model(model_cfg, input_size=cfg.embed.size)
    return model.to(device).eval(), {"source": source, "arch": source, "weights": model_cfg.pretrained,
                                     "input": model.input_spec.to_dict()}


def calibrate_batchnorm(net: torch.nn.Module, batches: DataLoader, device: torch.device) -> int:
    """Replace every BatchNorm's running statistics by the average over ``batches`` (the
    rest of the model stays in eval mode: no dropout or drop-connect). Returns the layers set."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
        m.train()
    with torch.inference_mode():
        for batch in batches:
            net.features(batch.to(device))
    for m in norms:
        m.eval()
    return len(norms)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ----------------------------------------------------------------------------- crops


def center_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of an image's side (1 = unchanged)."""
    if fraction >= 1.0:
        return image
    h, w = image.shape[:2]
    ch, cw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top: top + ch, left: left + cw]


class _Crops(Dataset):
    def __init__(self, files: list[str], size: int, center: float) -> None:
        self.files, self.size, self.center = files, size, center

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(prepare(center_crop(read_rgb(self.files[i]), self.center), self.size))


# ----------------------------------------------------------------------------- the stage


def _check_settings(cfg: Config) -> None:
    e = cfg.embed
    if e.dtype not in DTYPES:
        raise EmbedError(f"embed.dtype={e.dtype!r}: use one of {', '.join(DTYPES)}")
    if not 0.0 < e.center <= 1.0:
        raise EmbedError(f"embed.center={e.center}: a fraction in (0, 1] of the crop side")
    if e.batch_size < 1 or e.chunk_size < 1:
        raise EmbedError("embed.batch_size and embed.chunk_size must be >= 1")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="embed", unit="crop", disable=not sys.stderr.isatty())


def embed_faces(faces_dir: Path, model: str, out: Path, cfg: Config) -> EmbedReport:
    """Embed every crop of ``faces_dir`` with ``model`` into ``out`` (see the module docstring).

    Raises ``EmbedError`` for unusable inputs or an ``out`` holding other embeddings."""
    started = time.perf_counter()
    faces_dir, out = Path(faces_dir), Path(out)
    _check_settings(cfg)
    index = read_faces_index(faces_dir)
    if index.empty:
        raise EmbedError(f"{faces_dir / FACES_FILE} lists no crops; rebuild it with `python -m dfdc faces`")
    files = [str(faces_dir / p) for p in index["path"]]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise EmbedError(f"{len(missing)} crop file(s) listed in {faces_dir / FACES_FILE} are missing "
                         f"(first: {missing[0]}); rerun `python -m dfdc faces` to rebuild them")
    device = resolve_device(cfg.embed.device)
    net, described = load_model(model, cfg, device)
    size = cfg.embed.size or int(described["input"]["size"])
    if described["weights"] == "none" and cfg.embed.bn_calibration > 0:
        sample = np.unique(np.linspace(0, len(files) - 1, min(cfg.embed.bn_calibration, len(files))).round().astype(int))
        calibrate_batchnorm(net, DataLoader(_Crops([files[i] for i in sample], size, cfg.embed.center),
                                            batch_size=cfg.embed.batch_size), device)
        described["weights"] = f"none (BatchNorm statistics of {len(sample)} crops)"
    plan = {
        "format": EMBED_FORMAT,
        "rows": len(index),
        "faces": _fingerprint_rows(index),
        "model": described["source"],
        "weights": _state_fingerprint(net),
        "size": size,
        "center": cfg.embed.center,
        "dtype": cfg.embed.dtype,
        "chunk_size": cfg.embed.chunk_size,
    }
    meta = _read_json(out / META_FILE)
    if meta is not None:
        if meta.get("plan") == plan and (out / ARRAY_FILE).is_file():
            return EmbedReport(out, len(index), int(meta["dim"]), described["source"], 0, 0, 0.0, 0.0, str(device), skipped=True)
        raise EmbedError(f"{out} holds embeddings made otherwise ({out / META_FILE}: another model, faces or "
                         "settings); delete the folder or choose another --out")
    chunks_dir = out / CHUNKS_DIR
    old = _read_json(out / PLAN_FILE)
    if old is not None and old != plan:
        raise EmbedError(f"{out} holds an unfinished run with other settings ({out / PLAN_FILE}); delete the "
                         "folder or choose another --out")
    if out.exists() and old is None and any(out.iterdir()):
        raise EmbedError(f"{out} exists and is not an embeddings folder; delete it or choose another --out")
    chunks_dir.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out)
    atomic_write_json(out / PLAN_FILE, plan)

    chunk = cfg.embed.chunk_size
    starts = list(range(0, len(index), chunk))
    paths = [chunks_dir / f"chunk_{n:05d}.npy" for n in range(len(starts))]
    done = [p.is_file() for p in paths]
    reused = sum(done)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")
    work_started = time.perf_counter()
    computed_rows = 0
    # CPU: one core per loader worker, the rest to torch (more threads than free cores makes
    # OpenMP spin: 5-10x slower, measured in training); 0 leaves a GPU run's setting alone
    threads = spare_cores(cfg.embed.loader_workers) if device.type == "cpu" else 0
    with torch_threads(threads), _progress(len(index), sum(min(chunk, len(index) - s) for s, d in zip(starts, done) if d)) as bar:
        for start, path, finished in zip(starts, paths, done):
            if finished:
                continue
            loader = DataLoader(_Crops(files[start: start + chunk], size, cfg.embed.center),
                                batch_size=cfg.embed.batch_size, num_workers=cfg.embed.loader_workers,
                                pin_memory=device.type == "cuda")
            parts = []
            with torch.inference_mode(), autocast:
                for batch in loader:
                    parts.append(net.features(batch.to(device, non_blocking=True)).float().cpu().numpy())
                    bar.update(len(batch))
            _save_npy(path, np.concatenate(parts).astype(cfg.embed.dtype))
            computed_rows += min(chunk, len(index) - start)
    work_seconds = time.perf_counter() - work_started

    array = np.concatenate([np.load(p) for p in paths])
    if array.shape[0] != len(index):
        raise EmbedError(f"{chunks_dir}: chunks hold {array.shape[0]} rows for {len(index)} crops; delete {out} and rerun")
    _save_npy(out / ARRAY_FILE, array)
    atomic_write_csv(out / INDEX_FILE, index)
    seconds = time.perf_counter() - started
    rate = computed_rows / work_seconds if computed_rows and work_seconds > 0 else 0.0
    atomic_write_json(out / META_FILE, {
        "plan": plan,
        "dim": int(array.shape[1]),
        "arch": described["arch"],
        "weights": described["weights"],
        "input": {**described["input"], "size": size},
        "faces_dir": str(faces_dir.resolve()),
        "device": str(device),
        "seconds": round(seconds, 2),
        "crops_per_second": round(rate, 2),
    })
    shutil.rmtree(chunks_dir)
    (out / PLAN_FILE).unlink(missing_ok=True)
    return EmbedReport(out, len(index), int(array.shape[1]), described["source"], len(paths) - reused, reused,
                       seconds, rate, str(device))


def load_embeddings(path: Path, dtype: str | None = "float32") -> tuple[np.ndarray, pd.DataFrame]:
    """``(array N x D, index DataFrame)`` of an embeddings folder written by ``embed_faces``
    (``dtype`` None keeps the stored dtype). The index has ``INDEX_COLUMNS``."""
    path = Path(path)
    meta = _read_json(path / META_FILE)
    if meta is None or not (path / ARRAY_FILE).is_file():
        raise EmbedError(f"{path} holds no finished embeddings ({META_FILE} + {ARRAY_FILE}); "
                         "make them with `python -m dfdc embed --faces DATA/faces --model NAME`")
    array = np.load(path / ARRAY_FILE)
    index = read_table(path / INDEX_FILE, INDEX_COLUMNS, error=EmbedError, what="embeddings index",
                       fix=f"delete {path} and rerun `python -m dfdc embed`",
                       dtype={"video": str, "label": str, "path": str, "part": str, "original": object})
    index["original"] = index["original"].where(index["original"].notna(), None)
    if len(index) != array.shape[0]:
        raise EmbedError(f"{path}: {len(index)} index rows for {array.shape[0]} embeddings; delete it and rerun")
    return (array.astype(dtype) if dtype else array), index


def embeddings_meta(path: Path) -> dict[str, Any]:
    """``embed.json`` of a finished embeddings folder (model, input, faces folder ...)."""
    meta = _read_json(Path(path) / META_FILE)
    if meta is None:
        raise EmbedError(f"{path / META_FILE} not found; make it with `python -m dfdc embed`")
    return meta
