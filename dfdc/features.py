"""The frozen features of a training run: every crop's pooled features by the run's frozen
backbone, computed once per run and cached in ``<run>/features/`` (the frozen mode of the
sequence models and the classical baselines read them).

``frozen_backbone(cfg, spec)`` is the one builder of that backbone: the model's own
``backbone`` as the fold models build it (``create_model``, random init seeded by
``train.seed``, weights from ``model.pretrained``), in eval mode.

``run_features(cfg, table, run_dir, ctx, spec)`` computes or reuses the cache and returns a
``FrozenFeatures``: the array (loaded with ``mmap_mode="r"``: ranks and loader workers share
the pages; B7 on DFDC is ~1.6 M x 2560 float32, 16 GB) and the backbone's weights, which every
fold's model takes, so the features and the saved models agree. The loop is
``dfdc.embed.embed_chunks`` (``dfdc embed``'s): resumable chunks under ``features/chunks/``,
sharded over the DDP ranks (chunk n on rank n mod world), fp16 autocast on CUDA when
``predict.fp16`` (the precision the predictor runs the backbone at). A randomly initialised
backbone first gets BatchNorm statistics of ``embed.bn_calibration`` crops
(``dfdc.embed.calibrate_batchnorm``; without them its eval-mode features are constant); rank 0
does that and saves the weights (``extractor.pt``), which the other ranks load.

Files: ``features.npy``, ``index.csv`` (the crop file of each row), ``extractor.pt`` and
``meta.json`` -- what the features were made from: the crop files' names (one hash of the
list, no stat of 1.6 M files: the run's ``inputs.json`` fingerprints the faces index), the
backbone's weights (a hash of its state dict as built), input spec, calibration, precision.
``meta.json`` is written last (the commit point); a rerun with the same plan reuses the cache.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from dfdc.config import Config
from dfdc.data import eval_batch_size, file_array
from dfdc.distributed import Dist, clear_failures, cores_per_process, cpu_workers, report_failure, wait_for_files
from dfdc.embed import (
    assemble_chunks, calibrate_on_crops, chunk_paths, embed_chunks, missing_chunks, read_json, state_fingerprint,
)
from dfdc.io import atomic_save_torch, atomic_write_csv, atomic_write_json, clean_temp_files
from dfdc.preprocess import InputSpec

CACHE_DIR = "features"  # <run>/features/: where a run keeps its frozen features
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.csv"
EXTRACTOR_FILE = "extractor.pt"
META_FILE = "meta.json"
PLAN_FILE = ".plan.json"
CHUNKS_DIR = "chunks"
FEATURES_FORMAT = 2  # bump when the cache's layout or the meaning of a plan key changes
FEATURES_DTYPE = "float32"  # what the heads and estimators are fitted on


@dataclass
class FrozenFeatures:
    """A run's frozen features: row i = training table row i; and the extractor's weights."""

    array: np.ndarray  # n x D, read-only (memory-mapped)
    state: dict[str, torch.Tensor]  # the frozen backbone's state dict (CPU)


def frozen_backbone(cfg: Config, spec: InputSpec) -> nn.Module:
    """The run's frozen feature extractor: ``create_model(cfg.model)``'s ``backbone`` at input
    ``spec`` (random init seeded by ``train.seed``), in eval mode; the global RNG is untouched."""
    from dfdc.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = create_model(cfg.model, spec.size)
    backbone = model.backbone
    backbone.set_input_spec(spec)
    return backbone.eval()


def _plan(cfg: Config, files: np.ndarray, backbone: nn.Module, spec: InputSpec, calibrate: int, half: bool) -> dict:
    return {"format": FEATURES_FORMAT, "rows": int(len(files)),
            "files": hashlib.sha256(b"\n".join(files.tolist())).hexdigest(),
            "backbone": cfg.model.backbone, "weights": state_fingerprint(backbone), "input": spec.to_dict(),
            "bn_calibration": calibrate, "precision": "fp16" if half else "fp32", "dtype": FEATURES_DTYPE,
            "chunk_size": cfg.embed.chunk_size}


def _load(folder: Path, backbone: nn.Module, rows: int) -> FrozenFeatures:
    state = torch.load(folder / EXTRACTOR_FILE, map_location="cpu", weights_only=True)
    backbone.load_state_dict(state)
    array = np.load(folder / FEATURES_FILE, mmap_mode="r")
    if array.shape[0] != rows:
        raise ValueError(f"{folder / FEATURES_FILE}: {array.shape[0]} rows for {rows} crops")
    return FrozenFeatures(array, state)


def _workers(cfg: Config, ctx: Dist) -> int:
    """Loader workers of the feature pass: the configured count; auto: on CUDA the process's
    cores less one, on a CPU 1 (the cores run the backbone)."""
    if cfg.train.loader_workers >= 0 or ctx.device.type != "cuda":
        return cpu_workers(cfg)
    return max(1, cores_per_process(ctx) - 1)


def run_features(cfg: Config, table: pd.DataFrame, run_dir: Path, ctx: Dist, spec: InputSpec) -> FrozenFeatures:
    """Every crop's frozen features for the run (module docstring). Every rank calls it; failures
    on any rank stop all of them with the message (``Dist.agree``, and ``wait_for_files`` for
    the ranks waiting on the others' chunks)."""
    folder = Path(run_dir) / CACHE_DIR
    chunks = folder / CHUNKS_DIR
    files = file_array(table)
    backbone = ctx.local_first(lambda: frozen_backbone(cfg, spec), "building the frozen backbone (pretrained weights)")
    backbone.to(ctx.device)
    random_init = str(cfg.model.pretrained).strip().lower() in ("none", "")
    calibrate = cfg.embed.bn_calibration if random_init else 0
    half = ctx.device.type == "cuda" and cfg.predict.fp16
    plan = _plan(cfg, files, backbone, spec, calibrate, half)
    chunk = cfg.embed.chunk_size

    if read_json(folder / META_FILE) == plan:
        try:
            found = ctx.agree(lambda: _load(folder, backbone, len(files)), "reading the frozen features")
            if ctx.main:
                print(f"features: reusing {folder} ({found.array.shape[0]} crops x {found.array.shape[1]})",
                      file=sys.stderr)
            return found
        except (OSError, ValueError, RuntimeError):
            pass  # damaged: recomputed below (every rank got the same error from the shared folder)

    def prepare() -> None:  # rank 0: a clean folder for this plan, the extractor's weights
        folder.mkdir(parents=True, exist_ok=True)
        clear_failures(folder)
        clean_temp_files(folder)
        (folder / META_FILE).unlink(missing_ok=True)
        if read_json(folder / PLAN_FILE) != plan:
            shutil.rmtree(chunks, ignore_errors=True)
        if calibrate:
            calibrate_on_crops(backbone, files, calibrate, spec.size, 1.0, eval_batch_size(cfg.train), ctx.device)
        atomic_save_torch(folder / EXTRACTOR_FILE, {k: v.detach().cpu() for k, v in backbone.state_dict().items()})
        atomic_write_json(folder / PLAN_FILE, plan)

    ctx.agree(prepare if ctx.main else (lambda: None), "preparing the frozen features")
    state = ctx.agree(lambda: torch.load(folder / EXTRACTOR_FILE, map_location="cpu", weights_only=True),
                      "reading the frozen extractor")
    backbone.load_state_dict(state)  # rank 0's calibrated statistics on every rank

    def missing() -> str | None:
        left = missing_chunks(chunks, len(files), chunk)
        return f"{len(left)} of {len(chunk_paths(chunks, len(files), chunk))} chunks" if left else None

    def committed() -> str | None:
        return None if read_json(folder / META_FILE) == plan else "rank 0 assembling the chunks"

    def compute() -> None:
        try:
            if ctx.main:
                print(f"features: {len(files)} crops through the frozen {cfg.model.backbone} at {spec.size} px"
                      f"{f' on {ctx.world} ranks' if ctx.world > 1 else ''} -> {folder}", file=sys.stderr)
            rows = embed_chunks(backbone, files, spec.size, chunks, chunk_size=chunk,
                                batch_size=eval_batch_size(cfg.train), workers=_workers(cfg, ctx), device=ctx.device,
                                half=half, dtype=FEATURES_DTYPE, shard=(ctx.rank, ctx.world),
                                cores=cores_per_process(ctx))  # ranks on one machine share its cores
            if cfg.train.debug_dir:  # which rank computed how many crops (DDP tests)
                Path(cfg.train.debug_dir).mkdir(parents=True, exist_ok=True)
                with open(Path(cfg.train.debug_dir) / f"features_rank{ctx.rank}.txt", "a", encoding="utf-8") as log:
                    log.write(f"{rows}\n")
            if not ctx.main:
                wait_for_files(committed, folder, "computing the frozen features", ctx)
                return
            wait_for_files(missing, folder, "computing the frozen features", ctx)
            assemble_chunks(chunks, len(files), chunk, folder / FEATURES_FILE)
            atomic_write_csv(folder / INDEX_FILE, pd.DataFrame({"row": np.arange(len(files)), "file": table["file"]}))
            atomic_write_json(folder / META_FILE, plan)  # the commit point
            shutil.rmtree(chunks, ignore_errors=True)
            (folder / PLAN_FILE).unlink(missing_ok=True)
        except Exception as exc:
            report_failure(folder, ctx, exc)
            raise

    ctx.agree(compute, "computing the frozen features")
    return ctx.agree(lambda: _load(folder, backbone, len(files)), "reading the frozen features")

