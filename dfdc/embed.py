"""Pooled backbone features of face crops (``dfdc embed``), and the one embedding loop of the kit.

``embed_faces(faces_dir, model, out, cfg)`` runs any registered model -- by name (random
init, or ``model.pretrained`` weights) or a trained run's fold checkpoint; a model over a
backbone (lstm, gru, logreg ...) embeds with its backbone -- over the crops of a faces folder
(all of them, or with ``embed.select`` identity only those identity folds cluster: the REAL
crops, at most ``folds.identity_crops`` evenly spaced per video) and writes, into ``out``::

    embeddings.npy   N x D array (embed.dtype), row i = index.csv row i: the model's pooled
                     features (``FrameModel.features``) of the crop, prepared as the predictor
                     prepares it (``dfdc.preprocess.prepare``) -- after keeping its central
                     ``embed.center`` fraction when that is below 1
    index.csv        video, label, original, part, frame, face, track, path (path relative to
                     the faces folder; ``dfdc.faceindex.read_index`` fills what the index lacks)
    embed.json       what made it: model source and fingerprint, input spec, selection, rows,
                     dim, dtype, the faces folder, seconds (written last: the "done" marker)

The input side (``embed.size`` 0): a checkpoint's own side; a named model's default side but
never above the crops' own (B7's 600 px on 240-px crops would be 6.25x the pixels for no new
detail).

``embed_chunks`` is the loop (crops read by ``DataLoader`` workers, ``model.features`` without
gradients, fp16 autocast on CUDA when asked) in fixed-size chunks, each written atomically
into a chunks folder, so a killed run resumes at the first missing chunk and DDP ranks can
share the work (``shard``); ``assemble_chunks`` streams them into one ``.npy`` without holding
the array in memory. ``dfdc embed`` and the frozen features of a training run
(``dfdc.features``: sequence models' frozen mode, the classical baselines) both use them.

``load_embeddings(out) -> (array, index)`` is the one reader (analysis, identity folds).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from dfdc.config import Config
from dfdc.data import missing_crop_files, read_rgb
from dfdc.faceindex import INDEX, read_index, spaced_rows
from dfdc.io import TEMP_MARK, atomic_open, atomic_write_csv, atomic_write_json, clean_temp_files, read_table
from dfdc.preprocess import prepare
from dfdc.threads import spare_cores, torch_threads

ARRAY_FILE = "embeddings.npy"
INDEX_FILE = "index.csv"
META_FILE = "embed.json"
PLAN_FILE = ".plan.json"
CHUNKS_DIR = "chunks"
INDEX_COLUMNS = ["video", "label", "original", "part", "frame", "face", "track", "path"]
DTYPES = ("float16", "float32")
SELECTIONS = ("all", "identity")  # embed.select: every crop, or the crops identity folds cluster
EMBED_FORMAT = 2  # bump when the folder layout or the meaning of a plan key changes


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
    """The crops of a faces folder as ``INDEX_COLUMNS`` in canonical order
    (``dfdc.faceindex.read_index``, with its one rule for what an older index lacks)."""
    return read_index(faces_dir, error=EmbedError)[INDEX_COLUMNS]


def select_rows(index: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The rows ``embed.select`` embeds: all, or (identity) the REAL crops identity folds
    cluster -- at most ``folds.identity_crops`` evenly spaced per video
    (``dfdc.faceindex.spaced_rows``, the rule ``dfdc.identity`` applies itself)."""
    if cfg.embed.select == "all":
        return index
    return index[spaced_rows(index, "REAL", cfg.folds.identity_crops)].reset_index(drop=True)


def selection(cfg: Config) -> dict[str, Any]:
    """What ``embed.select`` kept, as recorded in ``embed.json``."""
    if cfg.embed.select == "all":
        return {"select": "all"}
    return {"select": cfg.embed.select, "label": "REAL", "per_video": cfg.folds.identity_crops}


def _fingerprint_rows(index: pd.DataFrame) -> str:
    digest = hashlib.sha1()
    for video, path in zip(index["video"], index["path"]):
        digest.update(f"{video}\0{path}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the model


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of a model's state dict (weights and buffers): which weights made a set of features."""
    digest = hashlib.sha1()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _backbone_of(net: torch.nn.Module, described: dict[str, Any], backbone: str) -> torch.nn.Module:
    """A model over a backbone (lstm, gru, logreg ...) embeds with its backbone: the pooled
    features of the frame model it reads crops through (it has no features of its own)."""
    from dfdc.models.registry import BackboneModel

    if not isinstance(net, BackboneModel):
        return net
    described["arch"] = f"{described['arch']} (its backbone {backbone})"
    return net.backbone


def load_model(source: str, cfg: Config, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``source``: a registered arch name, a training run folder (its fold ``embed.fold``
    checkpoint) or a checkpoint file. Returns (model in eval mode on ``device``, description).
    A model over a backbone gives its backbone (``FrameModel.features``)."""
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
        described = {"source": str(path), "arch": meta["arch"], "weights": "checkpoint", "input": meta["input"]}
        backbone = (meta.get("config") or {}).get("model", {}).get("backbone", "?")
        return _backbone_of(model, described, backbone).eval(), described
    if source not in list_models():
        raise EmbedError(f"--model {source!r} is neither a registered model ({', '.join(list_models())}) "
                         "nor a training run folder or checkpoint file")
    model_cfg = dataclasses.replace(cfg.model, arch=source, pretrained=cfg.embed.pretrained or cfg.model.pretrained)
    torch.manual_seed(cfg.train.seed)  # random-init weights: the same every run (resume needs that)
    model = create_model(model_cfg, input_size=cfg.embed.size)
    described = {"source": source, "arch": source, "weights": model_cfg.pretrained, "input": model.input_spec.to_dict()}
    return _backbone_of(model, described, model_cfg.backbone).to(device).eval(), described


def input_side(cfg: Config, described: dict[str, Any], first_crop: str) -> int:
    """The side crops are prepared at (module docstring): ``embed.size``; else a checkpoint's
    own; else the named model's default, capped at the crops' side (read from ``first_crop``)."""
    own = int(described["input"]["size"])
    if cfg.embed.size:
        return int(cfg.embed.size)
    if described["weights"] == "checkpoint":
        return own
    return min(own, max(read_rgb(first_crop).shape[:2]))


def calibrate_batchnorm(net: torch.nn.Module, batches: Any, device: torch.device) -> int:
    """Replace every BatchNorm's running statistics by the average over ``batches`` (the
    rest of the model stays in eval mode: no dropout or drop-connect). Returns the layers set.
    Random-init models need it: with their initial statistics b0's eval-mode features are
    ~1e-13 (measured), i.e. constant."""
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


def calibration_sample(files: Sequence[Any], count: int) -> np.ndarray:
    """Indices of the ``count`` crops (evenly drawn over ``files``) ``calibrate_batchnorm`` reads."""
    return np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))


def calibrate_on_crops(net: torch.nn.Module, files: Sequence[Any], count: int, size: int, center: float,
                       batch_size: int, device: torch.device) -> int:
    """``calibrate_batchnorm`` over ``count`` evenly drawn crops of ``files``; returns the crops read."""
    sample = calibration_sample(files, count)
    calibrate_batchnorm(net, DataLoader(_Crops([files[i] for i in sample], size, center), batch_size=batch_size),
                        device)
    return len(sample)


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
    """Crop files (``str`` or the ``bytes`` of ``dfdc.data.file_array``) -> uint8 3 x S x S."""

    def __init__(self, files: Sequence[Any], size: int, center: float = 1.0) -> None:
        self.files, self.size, self.center = files, size, center

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        name = self.files[i]
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        return torch.from_numpy(prepare(center_crop(read_rgb(name), self.center), self.size))


# ----------------------------------------------------------------------------- the loop


def chunk_paths(chunks_dir: Path, rows: int, chunk_size: int) -> list[Path]:
    """The chunk files of ``rows`` crops, ``chunk_size`` per file, in row order."""
    return [Path(chunks_dir) / f"chunk_{n:05d}.npy" for n in range(-(-rows // chunk_size))]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def embed_chunks(net: torch.nn.Module, files: Sequence[Any], size: int, chunks_dir: Path, *, chunk_size: int,
                 batch_size: int, workers: int, device: torch.device, center: float = 1.0, half: bool = False,
                 dtype: str = "float32", shard: tuple[int, int] = (0, 1), bar: Any = None,
                 cores: int | None = None) -> int:
    """THE embedding loop: ``net.features`` of the crops ``files`` (prepared at ``size``, their
    central ``center`` fraction), in eval mode without gradients, fp16 autocast on CUDA with
    ``half``; chunk n (rows ``n * chunk_size ...``) goes to ``chunks_dir`` as a ``dtype`` array,
    written atomically. Only the chunks of ``shard`` = (i, N) (n mod N = i) that are not on
    disk yet are computed; returns the rows computed. Reading runs in ``workers`` loader
    processes (a CPU run gives torch the other cores: of the machine, or of ``cores``, this
    process's share when several processes share the machine)."""
    was_training = net.training
    net.eval()
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda" and half)
    # CPU: one core per loader worker, the rest to torch (more threads than free cores makes
    # OpenMP spin: 5-10x slower, measured in training); 0 leaves a GPU run's setting alone
    threads = spare_cores(workers, cores) if device.type == "cpu" else 0
    computed = 0
    try:
        with torch_threads(threads):
            for n, path in enumerate(chunk_paths(chunks_dir, len(files), chunk_size)):
                if n % shard[1] != shard[0] or path.is_file():
                    continue
                part = files[n * chunk_size: (n + 1) * chunk_size]
                loader = DataLoader(_Crops(part, size, center), batch_size=batch_size, num_workers=workers,
                                    pin_memory=device.type == "cuda")
                out = []
                with torch.inference_mode(), autocast:
                    for batch in loader:
                        out.append(net.features(batch.to(device, non_blocking=True)).float().cpu().numpy())
                        if bar is not None:
                            bar.update(len(batch))
                _save_npy(path, np.concatenate(out).astype(dtype))
                computed += len(part)
    finally:
        net.train(was_training)
    return computed


def missing_chunks(chunks_dir: Path, rows: int, chunk_size: int) -> list[Path]:
    """The chunk files of ``rows`` crops not on disk yet."""
    return [p for p in chunk_paths(chunks_dir, rows, chunk_size) if not p.is_file()]


def assemble_chunks(chunks_dir: Path, rows: int, chunk_size: int, out: Path) -> tuple[int, int]:
    """The chunk files, in order, streamed into one ``.npy`` at ``out`` (atomically: a temp
    file renamed over it), one chunk in memory at a time. Returns the array's shape."""
    paths = chunk_paths(chunks_dir, rows, chunk_size)
    first = np.load(paths[0], mmap_mode="r")
    tmp = Path(out).with_name(f".{Path(out).name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(rows, first.shape[1]))
        start = 0
        for path in paths:
            chunk = np.load(path)
            if start + len(chunk) > rows or chunk.shape[1:] != first.shape[1:]:
                raise EmbedError(f"{path}: {chunk.shape} does not fit {rows} rows x {first.shape[1]}; "
                                 f"delete {chunks_dir} and rerun")
            array[start: start + len(chunk)] = chunk
            start += len(chunk)
        if start != rows:
            raise EmbedError(f"{chunks_dir}: chunks hold {start} rows for {rows} crops; delete it and rerun")
        array.flush()
        del array
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows, int(first.shape[1])


# ----------------------------------------------------------------------------- the stage


def _check_settings(cfg: Config) -> None:
    e = cfg.embed
    if e.dtype not in DTYPES:
        raise EmbedError(f"embed.dtype={e.dtype!r}: use one of {', '.join(DTYPES)}")
    if e.select not in SELECTIONS:
        raise EmbedError(f"embed.select={e.select!r}: use one of {', '.join(SELECTIONS)}")
    if not 0.0 < e.center <= 1.0:
        raise EmbedError(f"embed.center={e.center}: a fraction in (0, 1] of the crop side")
    if e.batch_size < 1 or e.chunk_size < 1:
        raise EmbedError("embed.batch_size and embed.chunk_size must be >= 1")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _progress(total: int, initial: int):
    from .progress import progress

    return progress(total=total, initial=initial, desc="embed", unit="crop")


def _crops_to_embed(faces_dir: Path, cfg: Config) -> tuple[pd.DataFrame, list[str]]:
    """The index rows ``embed.select`` keeps and their crop files (a missing file is an error)."""
    index = select_rows(read_faces_index(faces_dir), cfg)
    if index.empty:
        raise EmbedError(f"{faces_dir / INDEX} lists no crops to embed (embed.select={cfg.embed.select}); "
                         "rebuild it with `python -m dfdc faces`")
    files = (str(faces_dir) + os.sep + index["path"]).tolist()
    missing = missing_crop_files(np.asarray(files, dtype=object))
    if missing.any():
        first = files[int(np.flatnonzero(missing)[0])]
        raise EmbedError(f"{int(missing.sum())} crop file(s) listed in {faces_dir / INDEX} are missing "
                         f"(first: {first}); rerun `python -m dfdc faces` to rebuild them")
    return index, files


def _open_out(out: Path, plan: dict[str, Any]) -> bool:
    """Make ``out`` ready for ``plan``; True when it already holds these embeddings. Refuses
    (``EmbedError``) a folder holding other embeddings, another unfinished run, or other files."""
    meta = read_json(out / META_FILE)
    if meta is not None:
        if meta.get("plan") == plan and (out / ARRAY_FILE).is_file():
            return True
        raise EmbedError(f"{out} holds embeddings made otherwise ({out / META_FILE}: another model, faces or "
                         "settings); delete the folder or choose another --out")
    old = read_json(out / PLAN_FILE)
    if old is not None and old != plan:
        raise EmbedError(f"{out} holds an unfinished run with other settings ({out / PLAN_FILE}); delete the "
                         "folder or choose another --out")
    if out.exists() and old is None and any(out.iterdir()):
        raise EmbedError(f"{out} exists and is not an embeddings folder; delete it or choose another --out")
    (out / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
    clean_temp_files(out)
    atomic_write_json(out / PLAN_FILE, plan)
    return False


def embed_faces(faces_dir: Path, model: str, out: Path, cfg: Config) -> EmbedReport:
    """Embed the crops of ``faces_dir`` (``embed.select``) with ``model`` into ``out`` (see the
    module docstring): plan (crops, model, side, the plan's fingerprint), run (the chunks not on
    disk yet), report (assemble, index, ``embed.json``).

    Raises ``EmbedError`` for unusable inputs or an ``out`` holding other embeddings."""
    started = time.perf_counter()
    faces_dir, out = Path(faces_dir), Path(out)
    _check_settings(cfg)
    e = cfg.embed
    index, files = _crops_to_embed(faces_dir, cfg)
    device = resolve_device(e.device)
    net, described = load_model(model, cfg, device)
    size = input_side(cfg, described, files[0])
    if described["weights"] == "none" and e.bn_calibration > 0:
        used = calibrate_on_crops(net, files, e.bn_calibration, size, e.center, e.batch_size, device)
        described["weights"] = f"none (BatchNorm statistics of {used} crops)"
    plan = {"format": EMBED_FORMAT, "rows": len(index), "faces": _fingerprint_rows(index), **selection(cfg),
            "model": described["source"], "weights": state_fingerprint(net), "size": size, "center": e.center,
            "dtype": e.dtype, "chunk_size": e.chunk_size}
    if _open_out(out, plan):
        dim = int(read_json(out / META_FILE)["dim"])
        return EmbedReport(out, len(index), dim, described["source"], 0, 0, 0.0, 0.0, str(device), skipped=True)

    chunks_dir = out / CHUNKS_DIR
    paths = chunk_paths(chunks_dir, len(index), e.chunk_size)
    reused = [p.is_file() for p in paths]
    done_rows = sum(min(e.chunk_size, len(index) - n * e.chunk_size) for n, r in enumerate(reused) if r)
    work_started = time.perf_counter()
    with _progress(len(index), done_rows) as bar:
        computed = embed_chunks(net, files, size, chunks_dir, chunk_size=e.chunk_size, batch_size=e.batch_size,
                                workers=e.loader_workers, device=device, center=e.center, half=True, dtype=e.dtype,
                                bar=bar)
    work_seconds = time.perf_counter() - work_started

    _, dim = assemble_chunks(chunks_dir, len(index), e.chunk_size, out / ARRAY_FILE)
    atomic_write_csv(out / INDEX_FILE, index)
    seconds = time.perf_counter() - started
    rate = computed / work_seconds if computed and work_seconds > 0 else 0.0
    atomic_write_json(out / META_FILE, {
        "plan": plan,
        "dim": dim,
        "arch": described["arch"],
        "weights": described["weights"],
        "input": {**described["input"], "size": size},
        "selection": selection(cfg),
        "faces_dir": str(faces_dir.resolve()),
        "device": str(device),
        "seconds": round(seconds, 2),
        "crops_per_second": round(rate, 2),
    })
    shutil.rmtree(chunks_dir)
    (out / PLAN_FILE).unlink(missing_ok=True)
    return EmbedReport(out, len(index), dim, described["source"], len(paths) - sum(reused), sum(reused),
                       seconds, rate, str(device))


def load_embeddings(path: Path, dtype: str | None = "float32") -> tuple[np.ndarray, pd.DataFrame]:
    """``(array N x D, index DataFrame)`` of an embeddings folder written by ``embed_faces``
    (``dtype`` None keeps the stored dtype). The index has ``INDEX_COLUMNS``."""
    path = Path(path)
    meta = read_json(path / META_FILE)
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
    meta = read_json(Path(path) / META_FILE)
    if meta is None:
        raise EmbedError(f"{path / META_FILE} not found; make it with `python -m dfdc embed`")
    return meta
