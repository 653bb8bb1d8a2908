"""Cross-validated training (``dfdc train``): one model per fold, resumable, DDP-ready.

For every fold k: train on the crops of folds != k with a fresh class-balanced draw per
epoch (the whole balanced set, or ``train.steps_per_epoch`` batches of it), validate on
fold k -- all its videos, or a seeded sample of ``train.val_max_videos`` -- at video level
(per-video aggregation of face P(FAKE), clipped at ``train.val_clip``, sklearn's
``log_loss``), keep the best epoch, stop early after ``train.patience`` epochs without
improvement. With a validation sample, the best epoch predicts all the fold's videos once
at the end for the OOF files.

Outputs under ``<runs_dir>/<name>/`` (rank 0 only, every file written atomically; the run
folder's bookkeeping -- inputs, status, metrics, OOF files -- is ``dfdc.runs``)::

    config.yaml            the resolved configuration
    .rank0-marker.json     written by rank 0 at start; every rank must see it (shared folder)
    fold{k}/inputs.json    fingerprints of the folds table and faces index the fold trained on
    fold{k}/best.pt        best weights of fold k (dfdc.models.save_checkpoint)
    fold{k}/last.pt        everything to resume: model, optimizer, scheduler, scaler, RNG states
    fold{k}/status.json    {"finished": true, ...} once the fold is done (skipped on rerun)
    fold{k}/oof.csv, oof_faces.csv   this fold's validation predictions of its best epoch
    fold{k}/tensorboard/   TensorBoard events per epoch: loss/train, loss/val, val/logloss, val/auc,
                           lr, seconds, images_per_s/epoch and /steady (``tensorboard --logdir runs/NAME``)
    metrics.csv            fold, epoch, train_loss, val_loss, val_logloss, val_auc, lr, seconds
    curves.png             loss curves per fold
    oof.csv                video, label, fold, pred, n_faces (out-of-fold, every finished fold)
    oof_faces.csv          video, label, fold, frame, face, prob (per-face OOF, for calibration)
    features/              sequence models in frozen mode: every crop's frozen features (dfdc.features)

Resuming: a killed run (even kill -9) restarts from the last finished epoch of the fold it
was in; with fixed seeds on a CPU the result equals an uninterrupted run's exactly (the
epoch draw, the augmentation and dropout are all seeded or restored). A fold whose recorded
input fingerprints differ from today's folds table or faces index is neither resumed,
skipped nor merged into the OOF files: the run stops before any training and says what
changed. ``resume=False`` (``--no-resume``) retrains the chosen folds: each one's old state
is removed before its new fingerprints are written (``dfdc.runs.reset_fold``), so a retrain
killed early never leaves old weights or OOF files under new fingerprints.

DDP (``dfdc.distributed``): launched by ``torchrun --nproc_per_node=N [--nnodes ...] -m dfdc
train ...``; NCCL on GPUs, gloo on CPU. Each rank trains on a disjoint shard of the same
balanced epoch draw with its own dropout and augmentation seeds, validation is sharded and
gathered, only rank 0 writes. The learning rate follows ``train.lr_scaling`` over the global
batch. The run folder must be shared by all nodes: every rank checks that it sees rank 0's
marker; decisions read from that folder (a fold finished, a ``last.pt`` to resume) are rank
0's, broadcast (``Dist.decide``). Failures that can hit one rank alone (inputs, weights, the
shared folder, the frozen features) are agreed on by all ranks, so every rank stops with the
message instead of the others hanging. The classical baselines (scikit-learn,
``dfdc.baselines``) fit in one process: under torchrun they are refused.

The optimizer is ``train.optimizer`` (AdamW, SGD with momentum, RAdam), the learning-rate schedule
``train.schedule`` (``Schedule``: warm-up + cosine, step decay, ReduceLROnPlateau, or step decay
with ReduceLROnPlateau as study 001), the loss that of ``model.head`` (``dfdc.models.class_loss``:
cross-entropy over the softmax, or binary cross-entropy on one output).

The training step (``FoldTrainer.train_step``) and epoch (``FoldTrainer.train_epoch``) are
the ones ``bench/bench_train.py`` times.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dfdc.aggregate import METHODS, TRACK_METHODS, aggregate_videos
from dfdc.augment import train_transform
from dfdc.config import Config, ConfigError, make_hint, save_config
from dfdc.data import (
    BalancedEpochSampler, FaceDataset, TrainingData, eval_batch_size, load_training_data, loader_rate, sample_videos,
    shard, split_fold,
)
from dfdc.distributed import (
    Dist, check_shared_run_dir, cores_per_process, cpu_workers, launched_world, rank_seed, rng_state, seed_everything,
    set_cpu_threads, set_rng_state, setup_distributed,
)
from dfdc.features import FrozenFeatures, run_features
from dfdc.io import atomic_save_torch, clean_temp_files
from dfdc.models import TORCH_LOAD_ERRORS, class_loss, create_model, default_input, fake_probability, save_checkpoint
from dfdc.models.sequence import is_sequence_model
from dfdc.preprocess import Prepare
from dfdc.runs import (
    OOF_FACES, OOF_TRACKS, TENSORBOARD_DIR, FoldResult, TrainReport, check_inputs, check_run, constant_folds,
    finish_fold, fold_dir, fold_status, merge_oof, parse_folds, reset_fold, skipped_result, update_metrics,
    video_logloss, write_fold_oof,
)
from dfdc.threads import before_loader_fork, one_thread_worker

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LR_SCALING = ("none", "linear", "sqrt")
SCHEDULES = ("cosine", "exponential", "plateau", "exponential+plateau")  # train.schedule
OPTIMIZERS = ("adamw", "sgd", "radam")  # train.optimizer
LOADER_RATE_SAMPLES = 32  # units read + augmented at start-up to measure one loader worker (auto workers)


@dataclass
class EpochStats:
    """What one ``train_epoch`` did (this rank's counts; rates over all ranks)."""

    loss: float  # mean training loss over all ranks
    steps: int
    images: int  # this rank's images
    seconds: float  # wall time of the epoch (loader start-up included)
    first_step_seconds: float  # from the loop's start to the end of step 0 (workers, cuDNN autotune)
    steady_images_per_s: float  # images/s over all ranks from step ``warm`` on (nan if too few steps)


# ----------------------------------------------------------------------------- settings


def check_settings(cfg: Config) -> None:
    """Settings a fold would otherwise find wrong only after an epoch (or the frozen features)
    was spent: checked before any work."""
    from dfdc.models.sequence import check_sequence_model_settings
    from dfdc.sequences import check_frozen_trainable, check_track_settings

    t = cfg.train
    if t.amp not in (*AMP_DTYPES, "none"):
        raise ConfigError(f"train.amp={t.amp!r}: expected bf16, fp16 or none")
    if t.val_aggregation not in METHODS:
        raise ConfigError(f"train.val_aggregation={t.val_aggregation!r}: use one of {', '.join(METHODS)}")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={t.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={t.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if t.steps_per_epoch < 0 or t.val_max_videos < 0:
        raise ConfigError("train.steps_per_epoch and train.val_max_videos must be 0 (all) or positive")
    if is_sequence_model(cfg.model.arch):
        check_track_settings(cfg.sequence)
        if cfg.sequence.aggregation not in TRACK_METHODS:
            raise ConfigError(f"sequence.aggregation={cfg.sequence.aggregation!r}: use one of {', '.join(TRACK_METHODS)}")
        check_frozen_trainable(cfg)
        check_sequence_model_settings(cfg)


def amp_dtype(cfg: Config, device: torch.device) -> str | None:
    """The autocast dtype of training on ``device`` (None: fp32): ``train.amp`` on CUDA; bf16
    becomes fp16 (with a GradScaler) on a GPU without native bfloat16 (compute capability < 8:
    T4, V100, P100). ``is_bf16_supported()`` alone answers True there too: it counts emulation."""
    if device.type != "cuda" or cfg.train.amp not in AMP_DTYPES:
        return None
    if cfg.train.amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "fp16"
    return cfg.train.amp


def scaled_lr(cfg: Config, world: int) -> tuple[float, str]:
    """``train.lr`` scaled by ``train.lr_scaling`` from ``lr_reference_batch`` to the global batch
    (batch_size x processes); returns the lr and a sentence saying how it was obtained."""
    t = cfg.train
    if t.lr_scaling not in LR_SCALING:
        raise ConfigError(f"train.lr_scaling={t.lr_scaling!r}: expected one of {', '.join(LR_SCALING)}")
    if t.lr_reference_batch < 1:
        raise ConfigError(f"train.lr_reference_batch={t.lr_reference_batch}: must be at least 1")
    batch = t.batch_size * world
    ratio = batch / t.lr_reference_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[t.lr_scaling]
    lr = t.lr * factor
    rule = {"none": "unscaled", "linear": f"x {ratio:.3g}", "sqrt": f"x sqrt({ratio:.3g})"}[t.lr_scaling]
    return lr, (f"lr {lr:.3g} = train.lr {t.lr:g} {rule} (train.lr_scaling={t.lr_scaling}; global batch "
                f"{batch} = {t.batch_size} x {world} processes, reference {t.lr_reference_batch})")


def _cosine(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int,
            lr: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then cosine decay to ``lr * min_lr_ratio``, both counted in optimizer
    steps (``warmup_epochs x steps_per_epoch`` and ``epochs x steps_per_epoch``)."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(t.warmup_epochs * steps_per_epoch)))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=lr * t.min_lr_ratio)
    if warmup <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=t.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


class Schedule:
    """``train.schedule``: a per-step scheduler (``step`` after every optimizer step) -- the
    warm-up + cosine (``cosine``), or the step decay lr x ``decay_gamma`` every ``decay_every``
    epochs (``exponential``; ``plateau`` alone keeps the lr constant between reductions) -- and,
    for ``plateau`` / ``exponential+plateau``, ReduceLROnPlateau on the per-unit validation loss
    (``epoch_end``) by ``plateau_factor`` after ``plateau_patience`` epochs without improvement
    (study 001: 0.94 every 2 epochs, then 0.5 after 2 epochs; both act on the optimizer's lr)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int, lr: float) -> None:
        t = cfg.train
        if t.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule={t.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if t.decay_every <= 0 or not 0 < t.decay_gamma <= 1 or not 0 < t.plateau_factor < 1:
            raise ConfigError("train.decay_every must be positive, train.decay_gamma in (0, 1] and "
                              "train.plateau_factor in (0, 1)")
        if t.schedule == "cosine":
            self.step_scheduler = _cosine(optimizer, cfg, steps_per_epoch, lr)
        else:
            gamma = t.decay_gamma if t.schedule.startswith("exponential") else 1.0
            every = max(1, int(round(t.decay_every * steps_per_epoch)))
            self.step_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=gamma)
        self.plateau = None
        if t.schedule.endswith("plateau"):
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=t.plateau_factor,
                                                                      patience=t.plateau_patience)

    def step(self) -> None:
        self.step_scheduler.step()

    def epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.step_scheduler.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_scheduler.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "step" not in state:  # a last.pt of the single cosine scheduler before train.schedule existed
            state = {"step": state, "plateau": None}
        self.step_scheduler.load_state_dict(state["step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])


def _optimizer(model: nn.Module, cfg: Config, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused kernel on CUDA when ``train.fused_optimizer``), SGD with momentum
    (Nesterov when ``train.nesterov``) or RAdam (study 001)."""
    t = cfg.train
    if t.optimizer == "adamw":
        fused = {"fused": True} if t.fused_optimizer and device.type == "cuda" else {}
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=t.weight_decay, **fused)
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.nesterov)
    if t.optimizer == "radam":
        return torch.optim.RAdam(model.parameters(), lr=lr, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer={t.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")


def _loader(source: Dataset, batch_size: int, workers: int, cfg: Config, device: torch.device,
            sampler: BalancedEpochSampler | None = None, seed: int = 0, drop_last: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)  # keeps DataLoader off the global RNG
    t = cfg.train
    if workers > 0:
        before_loader_fork()
    return DataLoader(source, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=t.pin_memory and device.type == "cuda", drop_last=drop_last, generator=generator,
                      persistent_workers=t.persistent_workers and workers > 0,
                      worker_init_fn=one_thread_worker if workers > 0 else None)


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any] | None, where: Path) -> None:
    """The GradScaler's state from ``last.pt`` (``where``). A run saved without one (bf16, or
    no AMP: a disabled scaler saves ``{}``) resumed where training falls back to fp16 (a GPU
    without native bfloat16) starts the scaler afresh, with a warning, instead of failing."""
    if not saved:
        if scaler.is_enabled():
            print(f"warning: {where} holds no GradScaler state (saved by a bf16 or fp32 run); fp16 training "
                  "goes on with a fresh loss scale", file=sys.stderr)
        return
    scaler.load_state_dict(saved)


def _pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` padded with zero images to ``size`` rows (one input shape for cuDNN autotune)."""
    if len(x) >= size:
        return x
    return torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])


# ----------------------------------------------------------------------------- one fold


class FoldTrainer:
    """Training of one fold: datasets and loaders, model, optimizer, the step, the epoch,
    validation, checkpoints. ``build`` makes the model (fresh or resumed), ``run`` trains to
    the end (or ``stop_after_epochs``). ``train_step`` (one batch) and ``train_epoch`` are the
    units a benchmark times; another data or model kind replaces ``_units`` and keeps them.

    The unit of data is a face crop here (``units`` = the crops table, ``UNIT_COLUMNS`` name
    one in the per-unit OOF file ``OOF_UNITS``, ``val_rule`` aggregates them to a video);
    ``TrackFoldTrainer`` trains over face tracks.
    """

    UNIT_COLUMNS = ["video", "y", "fold", "frame", "face"]  # what names a unit in the OOF file
    OOF_UNITS = OOF_FACES  # the per-unit OOF file and its columns

    IMAGES_PER_UNIT = 1  # images a unit puts through the backbone (auto loader workers)

    def __init__(self, cfg: Config, data: TrainingData, fold: int, run_dir: Path, ctx: Dist,
                 frozen: FrozenFeatures | None = None) -> None:
        self.cfg, self.data, self.table, self.fold, self.ctx = cfg, data, data.table, fold, ctx
        self.dir = fold_dir(run_dir, fold)
        self.run_dir = run_dir
        self.frozen = frozen
        t = cfg.train
        check_settings(cfg)
        self.lr, self.lr_note = scaled_lr(cfg, ctx.world)
        self.input = default_input(cfg.model, t.size)  # side: train.size, else the model's own
        self.val_rule = t.val_aggregation  # units -> video
        self.amp = amp_dtype(cfg, ctx.device)
        self.use_amp = self.amp is not None
        if self.use_amp and self.amp != t.amp and ctx.main:
            print(f"warning: this GPU has no native bfloat16 (compute capability "
                  f"{'.'.join(map(str, torch.cuda.get_device_capability(ctx.device)))}); training with train.amp=fp16 "
                  "and a GradScaler", file=sys.stderr)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.val_batch = eval_batch_size(t)
        self.fixed_shapes = ctx.device.type == "cuda" and t.cudnn_benchmark
        self.tensorboard: Any = None  # rank 0's SummaryWriter, opened at the first epoch's end
        self._datasets()

    # -- data ----------------------------------------------------------------------------
    def _units(self) -> None:
        """The fold's units (``units``: one row per unit), its training and validation rows,
        datasets and balanced sampler: face crops (the one place that knows them)."""
        t, ctx = self.cfg.train, self.ctx
        self.units = self.table
        self.train_idx, self.full_val_idx = split_fold(self.table, self.fold)
        self.val_idx = sample_videos(self.table, self.full_val_idx, t.val_max_videos, t.seed + self.fold)
        self.train_ds = FaceDataset(self.table, train_transform(self.input.size, t.augment), seed=t.seed + self.fold,
                                    rank=ctx.rank)
        self.val_ds = FaceDataset(self.table, Prepare(self.input.size))
        samples = t.steps_per_epoch * t.batch_size * ctx.world
        self.sampler = BalancedEpochSampler(self.table["y"].to_numpy(), self.train_idx, seed=t.seed + self.fold,
                                            num_replicas=ctx.world, rank=ctx.rank, samples=samples)

    def _prepare_model(self, model: nn.Module) -> None:
        """A hook between building the model and its optimizer (parts to freeze or load)."""

    def _datasets(self) -> None:
        """The fold's units (``_units``) and their loaders."""
        t, ctx = self.cfg.train, self.ctx
        self._units()
        self.workers = self._loader_workers()
        drop_last = len(self.sampler) > t.batch_size  # one batch shape; no batch of one through BatchNorm
        self.train_loader = _loader(self.train_ds, t.batch_size, self.workers, self.cfg, ctx.device, self.sampler,
                                    seed=t.seed + self.fold, drop_last=drop_last)
        self.steps_per_epoch = len(self.train_loader)
        self.val_loader = self._val_loader(self.val_idx)
        self.full_val_loader = self.val_loader if len(self.val_idx) == len(self.full_val_idx) else None

    def _val_loader(self, rows: np.ndarray) -> DataLoader:
        part = shard(rows, self.ctx.world, self.ctx.rank)
        return _loader(Subset(self.val_ds, part.tolist()), self.val_batch, self.workers, self.cfg, self.ctx.device)

    def _loader_workers(self) -> int:
        """``train.loader_workers``, or (-1, CUDA) enough for ``feed_images_per_s`` at the
        images/s one worker is measured to deliver here (units/s x ``IMAGES_PER_UNIT``),
        capped by this process's cores."""
        t, ctx = self.cfg.train, self.ctx
        if t.loader_workers >= 0 or ctx.device.type != "cuda":
            return cpu_workers(self.cfg)
        self.sampler.set_epoch(0)
        keys = self.sampler.keys(LOADER_RATE_SAMPLES)
        rate = loader_rate(self.train_ds, keys) * self.IMAGES_PER_UNIT
        cap = max(1, cores_per_process(ctx) - 1)
        workers = max(1, min(cap, math.ceil(t.feed_images_per_s / rate)))
        if ctx.main:
            print(f"loader: {rate:.0f} images/s per worker (measured on {len(keys)} units of {self.IMAGES_PER_UNIT} "
                  f"images) -> {workers} workers per GPU for {t.feed_images_per_s:g} images/s "
                  f"(train.feed_images_per_s; at most {cap} = cores - 1)", file=sys.stderr)
        return workers

    # -- state ---------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        t, ctx = self.cfg.train, self.ctx
        last = self.dir / "last.pt"
        state = None
        if ctx.decide(lambda: resume and last.is_file(), f"looking for {last}"):  # rank 0 decides for all
            state = ctx.agree(lambda: self._read_last(last), f"reading {last}")
        if state is None and ctx.main:  # a fresh start: the old state goes, then the new fingerprints
            reset_fold(self.dir, self.data.fingerprints)
        ctx.barrier()
        seed_everything(t.seed + self.fold)  # the same initial weights on every rank
        model_cfg = self.cfg.model
        if state is not None:  # its weights replace any pretrained ones: do not fetch them
            from copy import deepcopy

            model_cfg = deepcopy(model_cfg)
            model_cfg.pretrained = "none"
        # the first process of each node fetches / loads pretrained weights (into that node's
        # cache) while the others wait; then the others build theirs from the cache
        model = ctx.local_first(lambda: create_model(model_cfg, self.input.size), "building the model (pretrained weights)")
        self.model = model.to(ctx.device, memory_format=self.memory_format)
        self._prepare_model(self.model)
        if ctx.rank:  # dropout differs between ranks; rank 0 goes on as a single process does
            seed_everything(rank_seed(t.seed + self.fold, ctx.rank))
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = t.cudnn_benchmark
        self.optimizer = _optimizer(self.model, self.cfg, self.lr, ctx.device)
        self.scheduler = Schedule(self.optimizer, self.cfg, self.steps_per_epoch, self.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp == "fp16")
        self.epoch, self.best, self.best_epoch, self.bad_epochs, self.history = 0, math.inf, -1, 0, []
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_scaler(self.scaler, state.get("scaler"), last)
            self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
            self.bad_epochs, self.history = state["bad_epochs"], state["history"]
            self._restore_rng(state["rng"])
            if ctx.main:
                print(f"fold {self.fold}: resuming at epoch {self.epoch} (best log loss so far {self.best:.4f})",
                      file=sys.stderr)
        elif ctx.main:
            print(f"fold {self.fold}: {self.lr_note}; {self.steps_per_epoch} steps per epoch "
                  f"({'train.steps_per_epoch' if t.steps_per_epoch else 'the whole balanced draw'}), validation on "
                  f"{self.units.loc[self.val_idx, 'video'].nunique()} of the fold's "
                  f"{self.units.loc[self.full_val_idx, 'video'].nunique()} videos", file=sys.stderr)
        self.net: nn.Module = self.model
        if ctx.world > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:  # the plain self.model keeps the state dict's keys (no _orig_mod.)
            self.net = torch.compile(self.net, mode=t.compile_mode)
        if t.debug_dir:
            self._debug_log("rng", f"build {torch.initial_seed()}")

    def _read_last(self, last: Path) -> dict[str, Any]:
        """``last.pt``'s training state, checked against today's inputs and model."""
        check_inputs(self.dir, self.fold, self.data.fingerprints, "resume")
        try:  # our own file (holds numpy RNG state), so the full unpickler is needed
            state = torch.load(last, map_location="cpu", weights_only=False)
        except TORCH_LOAD_ERRORS as exc:
            raise ConfigError(f"{last}: cannot resume from it ({exc}); delete it or pass "
                              f"{make_hint('--no-resume', 'NO_RESUME=1')}") from None
        if state.get("arch") != self.cfg.model.arch:
            raise ConfigError(f"{last} was trained as {state.get('arch')}, not {self.cfg.model.arch}; "
                              f"use another {make_hint('--name', 'RUN=')} or pass "
                              f"{make_hint('--no-resume', 'NO_RESUME=1')}")
        return state

    def _restore_rng(self, saved: Any) -> None:
        """This rank's RNG state from ``last.pt`` (one per rank; older files hold one for all)."""
        ctx = self.ctx
        states = saved if isinstance(saved, list) else [saved]
        if len(states) == ctx.world:
            set_rng_state(states[ctx.rank], ctx.device)
            return
        set_rng_state(states[0], ctx.device)
        if ctx.rank:  # another world size than the saved run: a fresh per-rank stream
            seed_everything(rank_seed(self.cfg.train.seed + self.fold + self.epoch, ctx.rank))
        if ctx.main:
            print(f"warning: {self.dir / 'last.pt'} was saved by {len(states)} processes, resumed by {ctx.world}; "
                  "the run goes on but is not an exact continuation", file=sys.stderr)

    def save_last(self, finished: bool) -> None:
        """Write ``last.pt`` (every rank must call it: the RNG states are gathered)."""
        rngs = self.ctx.gather(rng_state(self.ctx.device))
        if not self.ctx.main:
            return
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
            "rng": rngs,  # one per rank
            "config": self.cfg.to_dict(),
        }
        atomic_save_torch(self.dir / "last.pt", state)

    def _debug_log(self, what: str, line: str) -> None:
        folder = Path(self.cfg.train.debug_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{what}_fold{self.fold}_rank{self.ctx.rank}.txt", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    # -- steps ---------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[self.amp])
        return contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device; image batches (N x 3 x H x W) in ``train.channels_last`` layout."""
        layout = self.memory_format if x.dim() == 4 else torch.contiguous_format
        return x.to(self.ctx.device, non_blocking=True, memory_format=layout)

    def _sync(self) -> None:
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch (uint8 images, labels; on the host or the device);
        returns the batch's mean loss, detached, on the device (reading it waits for the GPU)."""
        t = self.cfg.train
        x, y = self._to_device(x), y.to(self.ctx.device, non_blocking=True)
        with self._autocast():
            loss = class_loss(self.net(x), y, t.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def train_epoch(self, warm: int = 1) -> EpochStats:
        """One epoch of ``train_step`` over this rank's shard of the epoch's balanced draw.

        The running loss stays on the device and is read every ``train.log_every`` steps;
        the device is synchronised after step 0 and step ``warm - 1`` to time the first step
        and the steady rate after it."""
        from .progress import progress

        t, ctx = self.cfg.train, self.ctx
        self.sampler.set_epoch(self.epoch)
        self.train_ds.set_epoch(self.epoch)
        self.net.train()
        if t.debug_dir:
            digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
            self._debug_log("rng", f"epoch {self.epoch} {digest}")
        seen_log = None
        if t.debug_dir:
            seen_log = open(Path(t.debug_dir) / f"seen_fold{self.fold}_rank{ctx.rank}.txt", "a", encoding="utf-8")
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        images, steps, start = 0, 0, time.perf_counter()
        first = steady_start = float("nan")
        steady_images = 0
        bar = progress(total=self.steps_per_epoch, desc=f"fold {self.fold} epoch {self.epoch}", unit="step",
                   disable=not ctx.main, leave=False, file=sys.stderr)
        try:
            for x, y, idx in self.train_loader:
                if seen_log is not None:
                    seen_log.write("".join(f"{self.epoch} {i}\n" for i in idx.tolist()))
                loss = self.train_step(x, y)
                total += loss.double() * len(y)
                images += len(y)
                steps += 1
                if steps == 1 or steps == warm:
                    self._sync()
                    now = time.perf_counter()
                    if steps == 1:
                        first = now - start
                    if steps == warm:
                        steady_start, steady_images = now, images
                bar.update(1)
                if steps % max(1, t.log_every) == 0 or steps == self.steps_per_epoch:
                    bar.set_postfix(loss=f"{float(total) / images:.4f}",
                                    img_s=f"{images * ctx.world / (time.perf_counter() - start):.1f}")
        finally:
            bar.close()
            if seen_log is not None:
                seen_log.close()
        self._sync()
        end = time.perf_counter()
        stats = ctx.sum_over_ranks(total, images)  # on this process's device: NCCL reduces CUDA tensors only
        steady = (images - steady_images) * ctx.world / (end - steady_start) if steps > warm else float("nan")
        return EpochStats(loss=float(stats[0] / max(stats[1], 1.0)), steps=steps, images=images,
                          seconds=end - start, first_step_seconds=first, steady_images_per_s=steady)

    @torch.no_grad()
    def predict(self, loader: DataLoader) -> pd.DataFrame:
        """Per-unit P(FAKE) and cross-entropy of ``loader``'s rows, gathered from all ranks."""
        self.model.eval()
        rows: list[tuple[int, float, float]] = []
        for x, y, idx in loader:
            n = len(y)
            x = self._to_device(_pad_batch(x, self.val_batch) if self.fixed_shapes else x)
            y = y.to(self.ctx.device)
            with self._autocast():
                logits = self.model(x)[:n]
            losses = class_loss(logits, y, reduction="none")
            probs = fake_probability(logits)
            rows += zip(idx.tolist(), probs.cpu().tolist(), losses.cpu().tolist())
        rows = [r for part in self.ctx.gather(rows) for r in part]
        index, probs, losses = zip(*sorted(rows)) if rows else ((), (), ())
        faces = self.units.loc[list(index), self.UNIT_COLUMNS].rename(columns={"y": "label"})
        return faces.assign(prob=list(probs), loss=list(losses)).reset_index(drop=True)

    def validate(self) -> pd.DataFrame:
        """Per-unit predictions of this epoch's validation set (all, or the seeded sample)."""
        return self.predict(self.val_loader)

    def _full_oof(self) -> None:
        """With a validation sample: the best epoch's weights predict all the fold's videos."""
        if self.full_val_loader is not None or self.best_epoch < 0:
            return  # the per-epoch validation already covered the whole fold
        best = torch.load(self.dir / "best.pt", map_location="cpu", weights_only=False)
        self.model.load_state_dict(best["state_dict"])
        if self.ctx.main:
            print(f"fold {self.fold}: OOF of the best epoch ({self.best_epoch}) on all "
                  f"{self.units.loc[self.full_val_idx, 'video'].nunique()} videos of the fold", file=sys.stderr)
        faces = self.predict(self._val_loader(self.full_val_idx))
        if self.ctx.main:
            write_fold_oof(self.dir, faces, self.videos(faces), self.OOF_UNITS)

    def _log_tensorboard(self, stats: EpochStats) -> None:
        """The epoch's row of ``metrics.csv`` and its images/s as TensorBoard scalars in
        ``fold{k}/tensorboard/`` (step = epoch; a resumed fold drops the events of the epochs
        it runs again)."""
        from torch.utils.tensorboard import SummaryWriter

        row = self.history[-1]
        if self.tensorboard is None:
            self.tensorboard = SummaryWriter(str(self.dir / TENSORBOARD_DIR), purge_step=row["epoch"])
        scalars = {"loss/train": row["train_loss"], "loss/val": row["val_loss"], "val/logloss": row["val_logloss"],
                   "val/auc": row["val_auc"], "lr": row["lr"], "seconds": row["seconds"],
                   "images_per_s/epoch": stats.images * self.ctx.world / stats.seconds if stats.seconds > 0 else None,
                   "images_per_s/steady": stats.steady_images_per_s}
        for tag, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.tensorboard.add_scalar(tag, value, row["epoch"])
        self.tensorboard.flush()

    def close(self) -> None:
        """Close the TensorBoard writer (also after a failed epoch: ``train`` calls it in any case)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def videos(self, units: pd.DataFrame) -> pd.DataFrame:
        """Per-video predictions of per-unit ones (``val_rule``; ``dfdc.aggregate.aggregate_videos``)."""
        return aggregate_videos(units, self.val_rule, self.cfg.predict)

    def run(self, resume: bool) -> FoldResult:
        t, ctx = self.cfg.train, self.ctx
        self.build(resume)
        ran = 0
        while self.epoch < t.epochs and self.bad_epochs < t.patience:
            if t.stop_after_epochs and ran >= t.stop_after_epochs:
                break
            start = time.perf_counter()
            stats = self.train_epoch()
            if ctx.main and ran == 0:
                rate = f", then {stats.steady_images_per_s:.1f} images/s" if stats.steps > 1 else ""
                print(f"fold {self.fold}: first step {stats.first_step_seconds:.1f} s (loader start-up"
                      f"{', cuDNN autotune' if self.fixed_shapes else ''}{', compile' if t.compile else ''}){rate}",
                      file=sys.stderr)
            lr = self.scheduler.get_last_lr()[0]
            faces = self.validate()
            self.scheduler.epoch_end(float(faces["loss"].mean()))
            videos = self.videos(faces)
            val_logloss, val_auc = video_logloss(videos, t.val_clip, t.val_balanced)
            improved = val_logloss < self.best
            if improved:
                self.best, self.best_epoch, self.bad_epochs = val_logloss, self.epoch, 0
            else:
                self.bad_epochs += 1
            self.history.append({
                "fold": self.fold, "epoch": self.epoch, "train_loss": stats.loss,
                "val_loss": float(faces["loss"].mean()), "val_logloss": val_logloss, "val_auc": val_auc,
                "lr": lr, "seconds": time.perf_counter() - start,
            })
            self.epoch += 1
            ran += 1
            finished = self.epoch >= t.epochs or self.bad_epochs >= t.patience
            if ctx.main and improved:
                save_checkpoint(self.dir / "best.pt", self.model, self.cfg,
                                {"fold": self.fold, "epoch": self.epoch - 1, "val_logloss": val_logloss})
                write_fold_oof(self.dir, faces, videos, self.OOF_UNITS)
            self.save_last(finished)
            if ctx.main:
                update_metrics(self.run_dir, self.fold, self.history)
                self._log_tensorboard(stats)
                print(f"fold {self.fold} epoch {self.epoch - 1}: train_loss {stats.loss:.4f} "
                      f"val_logloss {val_logloss:.4f} val_auc {val_auc:.3f}{' *' if improved else ''}",
                      file=sys.stderr)
            ctx.barrier()
        finished = self.epoch >= t.epochs or self.bad_epochs >= t.patience
        if finished:  # also after a kill between last.pt and status.json
            self._full_oof()
            if ctx.main:
                finish_fold(self.dir, self.best, self.best_epoch, self.epoch)
        ctx.barrier()
        return FoldResult(self.fold, self.best, self.best_epoch, self.epoch, finished=finished)


class TrackFoldTrainer(FoldTrainer):
    """One fold of a sequence model (lstm / gru): the unit is a face track read as
    ``sequence.seq_len`` frames (``dfdc.sequences``: equal length for REAL and FAKE, a
    balanced draw over tracks, validation read as the predictor reads a video), aggregated to
    a video with ``sequence.aggregation``. ``sequence.mode`` frozen: the backbone's features of
    every crop are the run's (``dfdc.features``, computed once per run before the first fold,
    cached in ``<run>/features/``); the backbone is frozen with exactly those weights and only
    the recurrent head trains on the cached features; finetune: the backbone trains inside the
    model on augmented crops."""

    UNIT_COLUMNS = ["video", "y", "fold", "track"]
    OOF_UNITS = OOF_TRACKS

    def _units(self) -> None:
        from dfdc.sequences import TrackDataset, TrackFeatureDataset, track_units, training_units, validation_units

        t, s, ctx = self.cfg.train, self.cfg.sequence, self.ctx
        self.val_rule = s.aggregation
        self.units, rows = track_units(self.table)
        is_val = (self.units["fold"] == self.fold).to_numpy()
        if not is_val.any():
            raise ConfigError(f"fold {self.fold} has no face tracks; folds present: {sorted(set(self.units['fold']))}")
        seed = t.seed + self.fold
        self.train_idx = training_units(self.units, np.flatnonzero(~is_val), s)
        self.full_val_idx = validation_units(self.units, np.flatnonzero(is_val), s)
        self.val_idx = sample_videos(self.units, self.full_val_idx, t.val_max_videos, seed)
        if s.mode == "frozen":
            if self.frozen is None:
                raise ConfigError("sequence.mode=frozen: the run's frozen features (dfdc.features.run_features) "
                                  "must be given to the fold trainer")
            self.train_ds = TrackFeatureDataset(self.frozen.array, self.units, rows, s.seq_len, seed=seed, rank=ctx.rank)
            self.val_ds = TrackFeatureDataset(self.frozen.array, self.units, rows, s.seq_len)
        else:
            self.IMAGES_PER_UNIT = s.seq_len
            self.train_ds = TrackDataset(self.table, self.units, rows, s.seq_len,
                                         train_transform(self.input.size, t.augment), seed=seed, rank=ctx.rank)
            self.val_ds = TrackDataset(self.table, self.units, rows, s.seq_len, Prepare(self.input.size))
        self.sampler = BalancedEpochSampler(self.units["y"].to_numpy(), self.train_idx, seed=seed,
                                            num_replicas=ctx.world, rank=ctx.rank,
                                            samples=t.steps_per_epoch * t.batch_size * ctx.world)

    def _prepare_model(self, model: nn.Module) -> None:
        if self.cfg.sequence.mode == "frozen":  # the weights the cached features came from
            model.backbone.load_state_dict(self.frozen.state)
            model.freeze_backbone()


def _trainer(cfg: Config) -> type[FoldTrainer]:
    """The fold trainer of the model's unit: face crops, or face tracks for sequence models."""
    return TrackFoldTrainer if is_sequence_model(cfg.model.arch) else FoldTrainer


# ----------------------------------------------------------------------------- entry


def train(faces_dir: Path, folds_csv: Path, cfg: Config, folds: list[int] | None = None,
          resume: bool = True) -> TrainReport:
    """Train one model per fold on the face crops; returns per-fold and OOF log losses.

    ``faces_dir`` holds faces.csv and the crops; ``folds_csv`` is folds/folds.csv. ``folds``
    (default: ``cfg.train.folds``) picks the folds to train. With ``resume`` a fold that
    finished earlier is skipped and an interrupted one continues from its ``last.pt``;
    ``resume=False`` retrains every selected fold from scratch. Every fold whose state is used
    (resumed, skipped, merged) is checked against today's inputs before any training. Under
    torchrun (WORLD_SIZE > 1) every rank calls this; only rank 0 writes files.
    """
    from dfdc.baselines import is_baseline, train_baselines

    if is_baseline(cfg.model.arch):  # scikit-learn estimators: fitted in one process, not by this loop
        if launched_world() > 1:
            raise ConfigError(f"model.arch={cfg.model.arch} is a scikit-learn baseline: it fits in one process; "
                              f"run it without torchrun (make train GPUS=1), not on {launched_world()} processes")
        return train_baselines(Path(faces_dir), Path(folds_csv), cfg, folds, resume)
    check_settings(cfg)
    ctx = setup_distributed()
    threads = torch.get_num_threads()
    set_cpu_threads(cfg, ctx)
    try:
        data = ctx.agree(lambda: load_training_data(Path(faces_dir), Path(folds_csv)), "reading the training inputs")
        available = sorted(int(f) for f in data.table["fold"].unique())
        chosen = folds if folds is not None else parse_folds(cfg.train.folds, available)
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise ConfigError(f"folds {missing} have no crops (folds present: {available})")
        run_dir = Path(cfg.train.runs_dir) / cfg.train.name

        def prepare_run_dir() -> None:
            check_run(run_dir, data.fingerprints, available, retrained=set() if resume else set(chosen),
                      resumed=set(chosen) if resume else set())
            if ctx.main:
                run_dir.mkdir(parents=True, exist_ok=True)
                clean_temp_files(run_dir)
                save_config(cfg, run_dir / "config.yaml")

        ctx.agree(prepare_run_dir, "checking and creating the run folder")
        check_shared_run_dir(run_dir, ctx, cfg.train.shared_dir_timeout)
        report = TrainReport(run_dir=run_dir)
        done = ctx.decide(lambda: {fold: fold_status(run_dir, fold) if resume else None for fold in chosen},
                          "reading which folds finished")  # rank 0 decides for all
        frozen = None
        if is_sequence_model(cfg.model.arch) and cfg.sequence.mode == "frozen" and None in done.values():
            frozen = run_features(cfg, data.table, run_dir, ctx, default_input(cfg.model, cfg.train.size))
        for fold in chosen:
            if done[fold] is not None:
                report.folds.append(skipped_result(fold, done[fold]))
                if ctx.main:
                    print(f"fold {fold}: finished earlier (best log loss {done[fold]['best_logloss']:.4f}); skipped",
                          file=sys.stderr)
                continue
            trainer = _trainer(cfg)(cfg, data, fold, run_dir, ctx, frozen)
            try:
                result = trainer.run(resume)
            finally:
                trainer.close()
            report.folds.append(result)
            if not result.finished:  # stop_after_epochs: the rest waits for the next invocation
                report.stopped_early = True
                break

        def merge() -> tuple[float | None, float | None, int]:
            if not ctx.main:
                return None, None, 0
            return merge_oof(run_dir, _trainer(cfg).OOF_UNITS, cfg.train.val_clip, data.fingerprints, available,
                             cfg.train.val_balanced)

        report.oof_logloss, report.oof_auc, report.oof_videos = ctx.agree(merge, "merging the OOF predictions")
        if ctx.main:
            report.warnings = constant_folds(run_dir, _trainer(cfg).OOF_UNITS)
            for text in report.warnings:
                print(f"warning: {text}", file=sys.stderr)
        return report
    finally:
        torch.set_num_threads(threads)
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()
