"""Cross-validated training (``dfdc train``): one model per fold, resumable, DDP-ready.

For every fold k: train on the crops of folds != k with a fresh class-balanced draw per
epoch, validate on fold k at video level (per-video aggregation of face P(FAKE), clipped at
``train.val_clip``, sklearn's ``log_loss``), keep the best epoch, stop early after
``train.patience`` epochs without improvement.

Outputs under ``<runs_dir>/<name>/`` (rank 0 only, every file written atomically)::

    config.yaml            the resolved configuration
    fold{k}/best.pt        best weights of fold k (dfdc.models.save_checkpoint)
    fold{k}/last.pt        everything to resume: model, optimizer, scheduler, scaler, RNG states
    fold{k}/status.json    {"finished": true, ...} once the fold is done (skipped on rerun)
    fold{k}/oof.csv, oof_faces.csv   this fold's validation predictions of its best epoch
    metrics.csv            fold, epoch, train_loss, val_loss, val_logloss, val_auc, lr, seconds
    curves.png             loss curves per fold
    oof.csv                video, label, fold, pred, n_faces (out-of-fold, all trained folds)
    oof_faces.csv          video, label, fold, frame, face, prob (per-face OOF, for calibration)

Resuming: a killed run (even kill -9) restarts from the last finished epoch of the fold it
was in; with fixed seeds on a CPU the result equals an uninterrupted run's exactly (the
epoch draw, the augmentation and dropout are all seeded or restored).

DDP: launched by ``torchrun --nproc_per_node=N -m dfdc train ...``; NCCL on GPUs, gloo on
CPU. Each rank trains on a disjoint shard of the same balanced epoch draw, validation is
sharded and gathered, only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from dfdc.aggregate import METHODS, aggregate
from dfdc.aggregate import clip as clip_probability
from dfdc.augment import train_transform
from dfdc.config import Config, ConfigError, save_config
from dfdc.data import BalancedEpochSampler, FaceDataset, load_face_table, shard, split_fold
from dfdc.io import atomic_open, atomic_save_torch, atomic_write_csv, atomic_write_json, clean_temp_files
from dfdc.metrics import log_loss
from dfdc.models import TORCH_LOAD_ERRORS, create_model, default_input, fake_probability, save_checkpoint
from dfdc.models.sequence import is_sequence_model
from dfdc.preprocess import Prepare

METRICS_COLUMNS = ["fold", "epoch", "train_loss", "val_loss", "val_logloss", "val_auc", "lr", "seconds"]
OOF_COLUMNS = ["video", "label", "fold", "pred", "n_faces"]
OOF_FACES_COLUMNS = ["video", "label", "fold", "frame", "face", "prob"]
OOF_TRACKS_COLUMNS = ["video", "label", "fold", "track", "prob"]  # sequence models: one row per track read
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FoldResult:
    fold: int
    best_logloss: float
    best_epoch: int
    epochs_run: int
    skipped: bool = False  # finished in an earlier invocation
    finished: bool = True  # False when stop_after_epochs ended the invocation inside this fold


@dataclass
class TrainReport:
    run_dir: Path
    folds: list[FoldResult] = field(default_factory=list)
    oof_logloss: float | None = None  # over every fold's OOF videos, clipped at val_clip
    oof_auc: float | None = None
    oof_videos: int = 0
    stopped_early: bool = False  # stop_after_epochs ended this invocation before all folds finished


# ----------------------------------------------------------------------------- helpers


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup_distributed() -> _Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return _Dist(device=device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)


def _set_cpu_threads(cfg: Config, ctx: _Dist) -> None:
    """On a CPU, give each process its share of the cores, leaving one per loader worker."""
    if ctx.device.type != "cpu":
        return
    threads = cfg.train.cpu_threads or max(1, (os.cpu_count() or 1) // ctx.world - cfg.train.loader_workers)
    torch.set_num_threads(threads)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _video_logloss(videos: pd.DataFrame, clip: float) -> tuple[float, float]:
    """(clipped log loss, ROC AUC or nan) of video predictions ``pred`` against ``label``."""
    from sklearn.metrics import roc_auc_score

    pred = clip_probability(videos["pred"].to_numpy(dtype=float), clip)
    label = videos["label"].to_numpy(dtype=int)
    auc = float(roc_auc_score(label, pred)) if len(set(label.tolist())) == 2 else float("nan")
    return log_loss(label, pred), auc


def _aggregate_videos(faces: pd.DataFrame, cfg: Config, rule: str | None = None) -> pd.DataFrame:
    """Per-video prediction from per-unit ``prob`` with ``rule`` (default ``train.val_aggregation``);
    ``n_faces`` counts the units (faces, or tracks)."""
    rows = []
    for (video, label, fold), group in faces.groupby(["video", "label", "fold"], sort=True):
        probs = group["prob"].to_numpy(dtype=float)
        pred = float(aggregate(probs, rule or cfg.train.val_aggregation, cfg.predict))
        rows.append((video, int(label), int(fold), pred, len(probs)))
    return pd.DataFrame(rows, columns=OOF_COLUMNS)


def _parse_folds(spec: str, available: list[int]) -> list[int]:
    if spec.strip().lower() == "all":
        return available
    try:
        wanted = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"train.folds={spec!r}: expected 'all' or a comma list such as 0,1") from None
    unknown = sorted(set(wanted) - set(available))
    if unknown or not wanted:
        raise ConfigError(f"train.folds={spec!r}: folds {unknown or wanted} not in the folds table (has {available})")
    return wanted


def _schedule(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then cosine decay, stepped once per optimizer step."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(t.warmup_epochs * steps_per_epoch)))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=t.lr * t.min_lr_ratio)
    if warmup <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=t.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def _optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
    raise ConfigError(f"train.optimizer={t.optimizer!r}: expected adamw or sgd")


def _write_curves(metrics: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for fold, rows in metrics.groupby("fold"):
        axes[0].plot(rows["epoch"], rows["train_loss"], "--", label=f"fold {fold} train")
        axes[0].plot(rows["epoch"], rows["val_loss"], "-", label=f"fold {fold} val (faces)")
        axes[1].plot(rows["epoch"], rows["val_logloss"], "o-", label=f"fold {fold}")
    axes[1].axhline(math.log(2), color="grey", lw=0.8, ls=":", label="constant 0.5")
    axes[0].set(title="cross-entropy per face", xlabel="epoch", ylabel="loss")
    axes[1].set(title="video-level validation log loss", xlabel="epoch", ylabel="log loss")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def _update_metrics(run_dir: Path, fold: int, history: list[dict[str, Any]]) -> pd.DataFrame:
    path = run_dir / "metrics.csv"
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=METRICS_COLUMNS)
    old = old[old["fold"] != fold]
    new = pd.DataFrame(history, columns=METRICS_COLUMNS)
    table = new if old.empty else pd.concat([old, new], ignore_index=True)
    table = table.sort_values(["fold", "epoch"]).reset_index(drop=True)
    atomic_write_csv(path, table)
    _write_curves(table, run_dir / "curves.png")
    return table


def _loader(dataset: FaceDataset, indices: np.ndarray | None, cfg: Config, batch_size: int,
            sampler: BalancedEpochSampler | None = None, seed: int = 0, drop_last: bool = False) -> DataLoader:
    workers = cfg.train.loader_workers
    generator = torch.Generator().manual_seed(seed)  # keeps DataLoader off the global RNG
    source = dataset if indices is None else Subset(dataset, indices.tolist())
    return DataLoader(source, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), drop_last=drop_last, generator=generator,
                      persistent_workers=False)


# ----------------------------------------------------------------------------- one fold


class _FoldTrainer:
    """One fold's training over a unit of data: here a face crop (``_datasets``, ``units``,
    ``UNIT_COLUMNS``, ``OOF_UNITS``); ``_TrackFoldTrainer`` trains over face tracks."""

    UNIT_COLUMNS = ["video", "y", "fold", "frame", "face"]  # what names a unit in the OOF file
    OOF_UNITS = ("oof_faces.csv", OOF_FACES_COLUMNS)  # the per-unit OOF file and its columns

    def __init__(self, cfg: Config, table: pd.DataFrame, fold: int, run_dir: Path, ctx: _Dist) -> None:
        self.cfg, self.table, self.fold, self.ctx = cfg, table, fold, ctx
        self.dir = run_dir / f"fold{fold}"
        self.run_dir = run_dir
        t = cfg.train
        self.input = default_input(cfg.model, t.size)  # side: train.size, else the model's own
        self.val_rule = t.val_aggregation
        self._datasets()
        drop_last = len(self.sampler) > t.batch_size  # no batch of one through BatchNorm
        self.train_loader = _loader(self.train_ds, None, cfg, t.batch_size, self.sampler,
                                    seed=t.seed + fold, drop_last=drop_last)
        steps = len(self.train_loader)
        self.steps_per_epoch = min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch > 0 else steps
        self.val_loader = _loader(self.val_ds, shard(self.val_idx, ctx.world, ctx.rank), cfg,
                                  t.val_batch_size or 2 * t.batch_size)
        if t.amp not in (*AMP_DTYPES, "none"):
            raise ConfigError(f"train.amp={t.amp!r}: expected bf16, fp16 or none")
        if t.val_aggregation not in METHODS:  # checked before an epoch is spent, not after
            raise ConfigError(f"train.val_aggregation={t.val_aggregation!r}: use one of {', '.join(METHODS)}")
        self.use_amp = ctx.device.type == "cuda" and t.amp in AMP_DTYPES
        self.amp = t.amp
        if self.use_amp and t.amp == "bf16" and not torch.cuda.is_bf16_supported():
            self.amp = "fp16"  # e.g. a P100: no bfloat16, so fp16 with a GradScaler
            if ctx.main:
                print("warning: this GPU has no bfloat16; training with train.amp=fp16", file=sys.stderr)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format

    # -- data ----------------------------------------------------------------------------
    def _datasets(self) -> None:
        """The fold's units (``self.units``: one row per unit), training and validation rows of
        it, datasets and the balanced sampler: face crops."""
        t, ctx = self.cfg.train, self.ctx
        self.units = self.table
        self.train_idx, self.val_idx = split_fold(self.table, self.fold)
        self.train_ds = FaceDataset(self.table, train_transform(self.input.size, t.augment), seed=t.seed + self.fold)
        self.val_ds = FaceDataset(self.table, Prepare(self.input.size))
        self.sampler = BalancedEpochSampler(self.table["y"].to_numpy(), self.train_idx, seed=t.seed + self.fold,
                                            num_replicas=ctx.world, rank=ctx.rank)

    def _prepare_model(self, model: nn.Module) -> None:
        """A hook between building the model and making its optimizer (frozen parts)."""

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device; image batches (N x 3 x H x W) in ``train.channels_last`` layout."""
        layout = self.memory_format if x.dim() == 4 else torch.contiguous_format
        return x.to(self.ctx.device, non_blocking=True, memory_format=layout)

    # -- state ---------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        t = self.cfg.train
        last = self.dir / "last.pt"
        state = None
        if resume and last.is_file():
            try:  # our own file (holds numpy RNG state), so the full unpickler is needed
                state = torch.load(last, map_location="cpu", weights_only=False)
            except TORCH_LOAD_ERRORS as exc:
                raise ConfigError(f"{last}: cannot resume from it ({exc}); delete it or pass --no-resume") from None
            if state.get("arch") != self.cfg.model.arch:
                raise ConfigError(f"{last} was trained as {state.get('arch')}, not {self.cfg.model.arch}; "
                                  "use another --name or pass --no-resume")
        if state is None and self.ctx.main:  # a fresh start: an older "finished" mark is void
            (self.dir / "status.json").unlink(missing_ok=True)
        self.ctx.barrier()
        _seed_everything(t.seed + self.fold)
        model_cfg = self.cfg.model
        if state is not None:  # its weights replace any pretrained ones: do not fetch them
            from copy import deepcopy

            model_cfg = deepcopy(model_cfg)
            model_cfg.pretrained = "none"
        self.model = create_model(model_cfg, self.input.size).to(self.ctx.device, memory_format=self.memory_format)
        self._prepare_model(self.model)
        self.optimizer = _optimizer(self.model, self.cfg)
        self.scheduler = _schedule(self.optimizer, self.cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp == "fp16")
        self.epoch, self.best, self.best_epoch, self.bad_epochs, self.history = 0, math.inf, -1, 0, []
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
            self.bad_epochs, self.history = state["bad_epochs"], state["history"]
            _set_rng_state(state["rng"])
            if self.ctx.main:
                print(f"fold {self.fold}: resuming at epoch {self.epoch} (best log loss so far {self.best:.4f})",
                      file=sys.stderr)
        self.net: nn.Module = self.model
        if self.ctx.world > 1:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def save_last(self, finished: bool) -> None:
        state = {
            "arch": self.cfg.model.arch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,  # the next epoch to run
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "finished": finished,
            "rng": _rng_state(),
            "config": self.cfg.to_dict(),
        }
        atomic_save_torch(self.dir / "last.pt", state)

    # -- epochs --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[self.amp])
        return contextlib.nullcontext()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for step, batch in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            yield batch

    def train_epoch(self) -> float:
        from tqdm import tqdm

        t = self.cfg.train
        self.sampler.set_epoch(self.epoch)
        self.train_ds.set_epoch(self.epoch)
        self.net.train()
        seen_log = None
        if t.debug_dir:
            Path(t.debug_dir).mkdir(parents=True, exist_ok=True)
            seen_log = open(Path(t.debug_dir) / f"seen_fold{self.fold}_rank{self.ctx.rank}.txt", "a", encoding="utf-8")
        total, count, images, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=f"fold {self.fold} epoch {self.epoch}", unit="step",
                   disable=not self.ctx.main, leave=False, file=sys.stderr)
        try:
            for x, y, idx in self._batches():
                if seen_log is not None:
                    seen_log.write("".join(f"{self.epoch} {i}\n" for i in idx.tolist()))
                x = self._to_device(x)
                y = y.to(self.ctx.device, non_blocking=True)
                with self._autocast():
                    loss = self.criterion(self.net(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if t.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
                images += len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{images * self.ctx.world / (time.perf_counter() - start):.1f}")
        finally:
            bar.close()
            if seen_log is not None:
                seen_log.close()
        stats = torch.tensor([total, float(count)], dtype=torch.float64)
        if self.ctx.world > 1:
            dist.all_reduce(stats)
        return float(stats[0] / max(stats[1], 1.0))

    @torch.no_grad()
    def validate(self) -> pd.DataFrame:
        """Per-unit P(FAKE) and cross-entropy of the whole validation fold (all ranks)."""
        self.model.eval()
        rows: list[tuple[int, float, float]] = []
        for x, y, idx in self.val_loader:
            x = self._to_device(x)
            y = y.to(self.ctx.device)
            with self._autocast():
                logits = self.model(x)
            losses = nn.functional.cross_entropy(logits.float(), y, reduction="none")
            probs = fake_probability(logits)
            rows += zip(idx.tolist(), probs.cpu().tolist(), losses.cpu().tolist())
        if self.ctx.world > 1:
            gathered: list[Any] = [None] * self.ctx.world
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        index, probs, losses = zip(*sorted(rows)) if rows else ((), (), ())
        faces = self.units.loc[list(index), self.UNIT_COLUMNS].rename(columns={"y": "label"})
        faces = faces.assign(prob=list(probs), loss=list(losses)).reset_index(drop=True)
        return faces

    def run(self, resume: bool) -> FoldResult:
        t = self.cfg.train
        self.build(resume)
        ran = 0
        while self.epoch < t.epochs and self.bad_epochs < t.patience:
            if t.stop_after_epochs and ran >= t.stop_after_epochs:
                break
            start = time.perf_counter()
            train_loss = self.train_epoch()
            lr = self.scheduler.get_last_lr()[0]
            faces = self.validate()
            videos = _aggregate_videos(faces, self.cfg, self.val_rule)
            val_logloss, val_auc = _video_logloss(videos, t.val_clip)
            improved = val_logloss < self.best
            if improved:
                self.best, self.best_epoch, self.bad_epochs = val_logloss, self.epoch, 0
            else:
                self.bad_epochs += 1
            self.history.append({
                "fold": self.fold, "epoch": self.epoch, "train_loss": train_loss,
                "val_loss": float(faces["loss"].mean()), "val_logloss": val_logloss, "val_auc": val_auc,
                "lr": lr, "seconds": time.perf_counter() - start,
            })
            self.epoch += 1
            ran += 1
            finished = self.epoch >= t.epochs or self.bad_epochs >= t.patience
            if self.ctx.main:
                if improved:
                    save_checkpoint(self.dir / "best.pt", self.model, self.cfg,
                                    {"fold": self.fold, "epoch": self.epoch - 1, "val_logloss": val_logloss})
                    atomic_write_csv(self.dir / "oof.csv", videos)
                    name, columns = self.OOF_UNITS
                    atomic_write_csv(self.dir / name, faces[columns])
                self.save_last(finished)
                _update_metrics(self.run_dir, self.fold, self.history)
                print(f"fold {self.fold} epoch {self.epoch - 1}: train_loss {train_loss:.4f} "
                      f"val_logloss {val_logloss:.4f} val_auc {val_auc:.3f}{' *' if improved else ''}",
                      file=sys.stderr)
            self.ctx.barrier()
        finished = self.epoch >= t.epochs or self.bad_epochs >= t.patience
        if finished and self.ctx.main:  # also after a kill between last.pt and this file
            atomic_write_json(self.dir / "status.json", {
                "finished": True, "best_logloss": self.best, "best_epoch": self.best_epoch, "epochs_run": self.epoch})
        self.ctx.barrier()
        return FoldResult(self.fold, self.best, self.best_epoch, self.epoch, finished=finished)


class _TrackFoldTrainer(_FoldTrainer):
    """One fold of a sequence model (lstm / gru): the unit is a face track read as
    ``sequence.seq_len`` frames (``dfdc.sequences``: equal length for REAL and FAKE, a
    balanced draw over tracks, validation read as the predictor reads a video), aggregated to
    a video with ``sequence.aggregation``. ``sequence.mode`` frozen: the backbone's features of
    every crop are computed once (``dfdc.features``, cached in ``<run>/features/``), the
    backbone is frozen with exactly those weights and only the recurrent head trains on the
    cached features; finetune: the backbone trains inside the model on augmented crops."""

    UNIT_COLUMNS = ["video", "y", "fold", "track"]
    OOF_UNITS = ("oof_tracks.csv", OOF_TRACKS_COLUMNS)

    def _datasets(self) -> None:
        from dfdc.aggregate import TRACK_METHODS
        from dfdc.sequences import (
            TrackDataset, TrackFeatureDataset, check_sequence_config, track_units, training_units, validation_units,
        )

        t, s, ctx = self.cfg.train, self.cfg.sequence, self.ctx
        check_sequence_config(s)
        if s.aggregation not in TRACK_METHODS:
            raise ConfigError(f"sequence.aggregation={s.aggregation!r}: use one of {', '.join(TRACK_METHODS)}")
        self.val_rule = s.aggregation
        self.units, rows = track_units(self.table)
        is_val = (self.units["fold"] == self.fold).to_numpy()
        if not is_val.any():
            raise ConfigError(f"fold {self.fold} has no face tracks; folds present: {sorted(set(self.units['fold']))}")
        self.train_idx = training_units(self.units, np.flatnonzero(~is_val), s)
        self.val_idx = validation_units(self.units, np.flatnonzero(is_val), s)
        seed = t.seed + self.fold
        if s.mode == "frozen":
            self.features, self.backbone_state = frozen_backbone_features(self.cfg, self.table, self.input,
                                                                          self.run_dir, self.ctx)
            self.train_ds = TrackFeatureDataset(self.features, self.units, rows, s.seq_len, seed=seed)
            self.val_ds = TrackFeatureDataset(self.features, self.units, rows, s.seq_len)
        else:
            self.train_ds = TrackDataset(self.table, self.units, rows, s.seq_len,
                                         train_transform(self.input.size, t.augment), seed=seed)
            self.val_ds = TrackDataset(self.table, self.units, rows, s.seq_len, Prepare(self.input.size))
        self.sampler = BalancedEpochSampler(self.units["y"].to_numpy(), self.train_idx, seed=seed,
                                            num_replicas=ctx.world, rank=ctx.rank)

    def _prepare_model(self, model: nn.Module) -> None:
        if self.cfg.sequence.mode == "frozen":  # the weights the cached features came from
            model.backbone.load_state_dict(self.backbone_state)
            model.freeze_backbone()


def frozen_backbone_features(cfg: Config, table: pd.DataFrame, spec: Any, run_dir: Path,
                             ctx: _Dist) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Every crop's features by the frozen backbone ``model.backbone`` (weights
    ``model.pretrained``, random init seeded by ``train.seed``), computed once per run by rank
    0 and cached in ``<run>/features/`` (``dfdc.features``); returns them and the backbone's
    weights, which every fold's model takes so the features and the saved model agree."""
    from dfdc.features import CACHE_DIR, frozen_features
    from dfdc.models import create_backbone

    with torch.random.fork_rng(devices=[]):  # the fold's global RNG is left as it was
        torch.manual_seed(cfg.train.seed)
        backbone = create_backbone(cfg.model)
    backbone.set_input_spec(spec)
    backbone.to(ctx.device)
    identity = {"arch": cfg.model.backbone, "pretrained": cfg.model.pretrained, "seed": cfg.train.seed}
    batch = cfg.train.val_batch_size or 2 * cfg.train.batch_size
    files = table["file"].tolist()
    folder = run_dir / CACHE_DIR
    features = None
    if ctx.main:
        features = frozen_features(folder, files, backbone, identity, batch, ctx.device, progress=True)
    ctx.barrier()
    if features is None:  # other ranks: rank 0's cache (same identity and crops)
        features = frozen_features(folder, files, backbone, identity, batch, ctx.device, progress=False)
    return features, {k: v.detach().cpu() for k, v in backbone.state_dict().items()}


def _fold_status(run_dir: Path, fold: int) -> dict[str, Any] | None:
    folder = run_dir / f"fold{fold}"
    status = folder / "status.json"
    if not (status.is_file() and (folder / "best.pt").is_file()):
        return None
    try:
        data = json.loads(status.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("finished") else None


def _merge_oof(run_dir: Path, cfg: Config) -> tuple[float | None, float | None, int]:
    """Concatenate every fold's OOF files into the run's oof.csv and per-unit file
    (oof_faces.csv, or oof_tracks.csv for sequence models)."""
    name, columns = _TrackFoldTrainer.OOF_UNITS if is_sequence_model(cfg.model.arch) else _FoldTrainer.OOF_UNITS
    videos, units = [], []
    for folder in sorted(run_dir.glob("fold*")):
        if (folder / "oof.csv").is_file() and (folder / name).is_file():
            videos.append(pd.read_csv(folder / "oof.csv", dtype={"video": str}))
            units.append(pd.read_csv(folder / name, dtype={"video": str}))
    if not videos:
        return None, None, 0
    oof = pd.concat(videos, ignore_index=True)[OOF_COLUMNS].sort_values(["fold", "video"])
    atomic_write_csv(run_dir / "oof.csv", oof)
    atomic_write_csv(run_dir / name, pd.concat(units, ignore_index=True)[columns].sort_values(columns[:-1]))
    loss, auc = _video_logloss(oof, cfg.train.val_clip)
    return loss, auc, len(oof)


# ----------------------------------------------------------------------------- entry


def train(faces_dir: Path, folds_csv: Path, cfg: Config, folds: list[int] | None = None,
          resume: bool = True) -> TrainReport:
    """Train one model per fold on the face crops; returns per-fold and OOF log losses.

    ``faces_dir`` holds faces.csv and the crops; ``folds_csv`` is folds/folds.csv. ``folds``
    (default: ``cfg.train.folds``) picks the folds to train. With ``resume`` a fold that
    finished earlier is skipped and an interrupted one continues from its ``last.pt``;
    ``resume=False`` retrains every selected fold from scratch. Under torchrun (WORLD_SIZE > 1)
    every rank calls this; only rank 0 writes files.
    """
    from dfdc.baselines import is_baseline, train_baselines  # it writes this module's run outputs

    if is_baseline(cfg.model.arch):  # scikit-learn estimators: fitted, not trained by this loop
        return train_baselines(Path(faces_dir), Path(folds_csv), cfg, folds, resume)
    ctx = _setup_distributed()
    threads = torch.get_num_threads()
    _set_cpu_threads(cfg, ctx)
    try:
        table = load_face_table(Path(faces_dir), Path(folds_csv))
        available = sorted(int(f) for f in table["fold"].unique())
        chosen = folds if folds is not None else _parse_folds(cfg.train.folds, available)
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise ConfigError(f"folds {missing} have no crops (folds present: {available})")
        run_dir = Path(cfg.train.runs_dir) / cfg.train.name
        if ctx.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            clean_temp_files(run_dir)
            save_config(cfg, run_dir / "config.yaml")
        ctx.barrier()
        report = TrainReport(run_dir=run_dir)
        for fold in chosen:
            status = _fold_status(run_dir, fold) if resume else None
            if status is not None:
                report.folds.append(FoldResult(fold, float(status["best_logloss"]), int(status["best_epoch"]),
                                               int(status["epochs_run"]), skipped=True))
                if ctx.main:
                    print(f"fold {fold}: finished earlier (best log loss {status['best_logloss']:.4f}); skipped",
                          file=sys.stderr)
                continue
            trainer = _TrackFoldTrainer if is_sequence_model(cfg.model.arch) else _FoldTrainer
            result = trainer(cfg, table, fold, run_dir, ctx).run(resume)
            report.folds.append(result)
            if not result.finished:  # stop_after_epochs: the rest waits for the next invocation
                report.stopped_early = True
                break
        if ctx.main:
            report.oof_logloss, report.oof_auc, report.oof_videos = _merge_oof(run_dir, cfg)
        ctx.barrier()
        return report
    finally:
        torch.set_num_threads(threads)
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()
