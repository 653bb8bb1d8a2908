"""Every system of the reference studies on the same faces and folds -> one table (``dfdc compare``).

A *system* is a name plus how to train it and how to predict with it (``System``). Each
listed system is trained on the same ``folds.csv`` (``train.folds`` of the profile picks
which folds), its out-of-fold (OOF) video predictions are scored per fold and pooled, it
predicts the held-out videos (``DATA/test_videos``) and, when labels are given, is scored
on them -- all through the kit's own stages (``dfdc.train.train``,
``dfdc.predict.predict_videos``, ``dfdc.metrics``). Outputs in ``out_dir``
(``submissions/compare/``)::

    compare.csv      one row per system: system, kind, study (the reference study it comes from),
                     study_reported (that study's own figure and its metric, on its own data),
                     init (imagenet | random: how the row's weights started, from the run's
                     resolved model config), params, oof_logloss, oof_auc, oof_logloss_std /
                     oof_auc_std (spread over folds), folds, heldout_logloss, heldout_auc,
                     train_seconds, predict_s_per_video, wall_seconds, error
    compare.png      log loss and AUC per system [study, init]: pooled OOF bar, one dot per fold,
                     held-out mark
    <system>/        the system's submission.csv, predictions.csv, report.{json,md}, result.json

Models go to ``runs_dir/<system>/`` (``runs/compare/``); a frame system keeps each fold's
``best.pt`` and drops ``last.pt`` once the fold is finished (resume state only, 3x the size:
14 GB for the 13 frame systems at smoke sizes otherwise). Resumable: a system whose
``result.json`` matches its configuration is not retrained; an interrupted one resumes
(folds that finished are skipped); a system whose configuration changed is retrained from
scratch. A system that fails (bad weights, a crash) is reported in the ``error`` column
and the others go on; a rerun retries it.

The studies' systems are one table (``STUDY_SYSTEMS``: name, study, the study's figure, setup);
``--systems all`` runs ``DEFAULT_SYSTEMS`` (one name a line). A study's grid (``GRIDS``:
``000-cnn``, ``000-rnn``, ``000-mlp``) is one command, ``dfdc compare --grid 000-rnn``: each
variant a system of its own, with its own run folder and row. Adding a system is one
``register_system`` call (frame classifiers: ``frame_system``); any model ``dfdc train`` takes
is selected by ``model.arch`` in its overrides, e.g.::

    register_system(System("gru-2layer", train=train_frame, predict=predict_frame, kind="sequence",
                           study="000", overrides=("model.arch=gru", "model.rnn_layers=2", *HEAD_STEPS)))

A system with its own code supplies ``train(job: SystemJob) -> Trained`` (write models under
``job.run_dir``; return the OOF video predictions ``video, label, fold, pred`` and the
parameter count) and ``predict(job: SystemJob, heldout: HeldOut) -> Predicted`` (write
``heldout.out_csv`` as ``filename,label`` for every video of ``heldout.videos_dir`` / its
sample submission; return the number of videos and, optionally, seconds per stage).
``overrides`` are ``section.key=value`` strings applied over the compare profile and the
command's ``--set``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dfdc.aggregate import clip as clip_probability
from dfdc.config import Config, ConfigError, FacesConfig, ModelConfig, apply_override, config_from_dict, read_config
from dfdc.data import folds_fingerprint
from dfdc.faceindex import INDEX
from dfdc.io import atomic_open, atomic_write_csv, atomic_write_json, read_table
from dfdc.metrics import read_labels, score_submission, video_metrics

COLUMNS = ["system", "kind", "study", "study_reported", "init", "params", "oof_logloss", "oof_auc", "oof_logloss_std",
           "oof_auc_std", "folds", "heldout_logloss", "heldout_auc", "train_seconds", "predict_s_per_video",
           "wall_seconds", "error"]
INT_COLUMNS = {"params": "Int64", "folds": "Int64"}
OOF_COLUMNS = ("video", "label", "fold", "pred")  # what a system's train returns (dfdc.train's oof.csv has them)
RESULT_FILE = "result.json"  # per system, in out_dir/<system>/: its row, per-fold figures, fingerprint
RUN_CONFIG = "config.yaml"  # per system, in its run dir: the resolved configuration it was trained with
STARTED_FILE = "compare.json"  # per system, in its run dir: the fingerprint it was started with
HASH_BLOCK = 1 << 20  # bytes read at a time when hashing an input file
CSV_NAME, PNG_NAME = "compare.csv", "compare.png"
NOT_GIVEN = "not given"  # a study's figure that the study does not publish
INIT_IMAGENET, INIT_RANDOM = "imagenet", "random"  # the init column: how a row's weights started


# ----------------------------------------------------------------------------- the system contract


@dataclass
class SystemJob:
    """What compare hands a system: its resolved configuration and where things are."""

    name: str
    cfg: Config  # compare profile + --set + the system's overrides; train.runs_dir/name = run_dir
    faces_dir: Path  # faces.csv + crops (dfdc faces)
    folds_csv: Path  # the folds every system shares
    run_dir: Path  # where the system keeps its models (runs/compare/<system>)
    out_dir: Path  # where its held-out predictions and reports go (submissions/compare/<system>)
    resume: bool = True  # False: the configuration changed since an earlier start; start afresh


@dataclass
class HeldOut:
    """The held-out videos a system predicts."""

    videos_dir: Path
    sample_submission: Path | None  # rows and their order, when given
    out_csv: Path  # submission.csv to write: filename,label (P(FAKE))


@dataclass
class Trained:
    """What a system's training returns."""

    oof: pd.DataFrame  # out-of-fold video predictions: video, label (1 = FAKE), fold, pred (raw P(FAKE))
    params: int  # parameters of one model (one fold)
    seconds: float | None = None  # training time if the system measures it (resume-proof); else wall time


@dataclass
class Predicted:
    """What a system's prediction returns."""

    videos: int  # rows written to heldout.out_csv
    stages: dict[str, float] = field(default_factory=dict)  # optional seconds per video by stage (result.json)


TrainFn = Callable[[SystemJob], Trained]
PredictFn = Callable[[SystemJob, HeldOut], Predicted]


@dataclass(frozen=True)
class System:
    """A comparable system: a name, where it comes from, how to train and predict it."""

    name: str
    train: TrainFn
    predict: PredictFn
    overrides: tuple[str, ...] = ()  # section.key=value over the compare profile
    kind: str = "frame"  # frame | sequence | baseline (informational)
    study: str = ""  # the reference study it comes from
    reported: str = NOT_GIVEN  # the study's own figure and its metric (compare.csv's study_reported), or NOT_GIVEN
    description: str = ""

    @property
    def arch(self) -> str | None:
        """The model it trains (its ``model.arch`` override; None: a system with its own code)."""
        archs = [o.split("=", 1)[1].strip() for o in self.overrides if o.split("=", 1)[0].strip() == "model.arch"]
        return archs[-1] if archs else None


SYSTEMS: dict[str, System] = {}


def register_system(system: System) -> System:
    """Add a system to the registry (names are unique)."""
    if system.name in SYSTEMS:
        raise ValueError(f"system {system.name!r} is already registered")
    SYSTEMS[system.name] = system
    return system


def unavailable(system: System) -> str | None:
    """Why this version cannot build ``system`` (its model is not registered, or an override
    names a configuration key it lacks), or None."""
    from dfdc.models import list_models

    if system.arch is not None and system.arch not in list_models():
        return f"its model {system.arch!r} is not registered in dfdc.models"
    try:
        cfg = Config()
        for item in system.overrides:
            apply_override(cfg, item)
    except ConfigError as exc:
        return f"its setting does not fit this version's configuration ({exc})"
    return None


def default_systems() -> list[System]:
    """The default set (``DEFAULT_SYSTEMS``), less the PENDING_MODELS this version lacks (each named)."""
    chosen = []
    for name in DEFAULT_SYSTEMS:
        why = unavailable(SYSTEMS[name]) if name in PENDING_MODELS else None
        if why:
            print(f"{name}: left out of the default set: {why}; it comes with the studies' models", file=sys.stderr)
            continue
        chosen.append(SYSTEMS[name])
    return chosen


def resolve_systems(spec: str) -> list[System]:
    """``all`` (the default set) or a comma list of registered names and grid names (``GRIDS``:
    each expands to its variants)."""
    if spec.strip().lower() == "all":
        return default_systems()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS and n not in GRIDS]
    if unknown or not names:
        raise ConfigError(f"--systems {spec!r}: unknown {unknown or 'empty list'}; registered: {', '.join(SYSTEMS)}; "
                          f"grids: {', '.join(GRIDS)}")
    chosen: dict[str, System] = {}
    for name in names:
        for system in GRIDS.get(name, (SYSTEMS.get(name),)):
            chosen.setdefault(system.name, system)
    missing = {n: why for n, s in chosen.items() if (why := unavailable(s))}
    if missing:
        raise ConfigError("--systems: this version cannot build " + "; ".join(f"{n} ({w})" for n, w in missing.items()))
    return list(chosen.values())


# ----------------------------------------------------------------------------- frame classifiers


def train_frame(job: SystemJob) -> Trained:
    """A frame classifier through ``dfdc.train.train`` (one model per fold, OOF predictions)."""
    from dfdc.models import fold_checkpoints, load_checkpoint
    from dfdc.train import train

    report = train(job.faces_dir, job.folds_csv, job.cfg, resume=job.resume)
    if report.stopped_early:  # train.stop_after_epochs: the folds are not done; nothing to score yet
        raise RuntimeError(f"{job.name}: training stopped by train.stop_after_epochs; rerun compare to continue it")
    run_dir = Path(report.run_dir)
    trained = {r.fold for r in report.folds}
    for fold in trained:  # resume state (weights + optimizer moments, ~3x best.pt) of a finished fold:
        (run_dir / f"fold{fold}" / "last.pt").unlink(missing_ok=True)  # dfdc.train skips it via status.json
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"video": str})
    model, _ = load_checkpoint(fold_checkpoints(run_dir)[0][1])
    metrics = pd.read_csv(run_dir / "metrics.csv")
    seconds = float(metrics.loc[metrics["fold"].isin(trained), "seconds"].sum())  # every epoch, all invocations
    count = getattr(model, "parameter_count", None)  # a baseline: its estimator's numbers count too
    params = count() if count else sum(p.numel() for p in model.parameters())
    return Trained(oof[oof["fold"].isin(trained)], params, seconds)


def predict_frame(job: SystemJob, heldout: HeldOut) -> Predicted:
    """The fold models through ``dfdc.predict.predict_videos``.

    On a CPU the models run on the cores the decode + detect workers leave (training's rule,
    ``dfdc.train``): torch's default of every core beside a busy worker made OpenMP spin here
    (custom-cnn's model stage 0.79 s per video of 8 faces, loaded 2-core machine)."""
    import torch

    from dfdc.predict import predict_videos
    from dfdc.threads import spare_cores, torch_threads

    threads = 0 if torch.cuda.is_available() else spare_cores(job.cfg.predict.workers)
    with torch_threads(threads):
        report = predict_videos(heldout.videos_dir, job.run_dir, heldout.out_csv, job.cfg, heldout.sample_submission,
                                device=None, progress=False)
    return Predicted(report.videos, report.seconds_per_video())


def frame_system(arch: str, study: str, reported: str = NOT_GIVEN, extra: tuple[str, ...] = (),
                 description: str = "") -> System:
    """A frame classifier of the model registry as a system (``model.arch=arch``)."""
    return register_system(System(arch, train_frame, predict_frame, (f"model.arch={arch}", *extra), "frame", study,
                                  reported, description))


# ----------------------------------------------------------------------------- the studies' systems
#
# Each system names the study it comes from (the reference studies by file number: 000..004)
# and that study's own figure with its metric, as the study prints it; the studies measured on
# their own data (000: 1,000 FaceForensics++ videos; 001: FaceForensics++ with DeepFakeDetection;
# 002: DFDC samples; 003: 200 videos; 004: DFDC), so the figures sit beside ours, they are not
# comparable with them. NOT_GIVEN only where the study gives no figure for that model.

S000, S001, S002, S003, S004 = "000", "001", "002", "003", "004"
FIRST_PLACE = "1st place (Selim Seferbekov)"  # not a reference study: DFDC's winning solution
KIT = "kit (smoke profile)"  # not a reference study: this kit's own CPU detector
MIN_SIDE_75 = ("train.size=80",)  # Inception stems have no padding: at least 75 px (the profile's 64 is less)
# Sequence models and MLPs over frozen per-frame features: a frozen head takes milliseconds a
# step, so they get more steps than the profile's frame budget
HEAD_STEPS = ("train.epochs=10", "train.steps_per_epoch=10")
# Systems that read frozen features of model.backbone (the compare profile's ImageNet EfficientNet-Lite0)
IMAGENET_FEATURES = ("model.pretrained=imagenet",)

# 000 Table 3 (best model of each kind; A_v validation accuracy, L_v validation loss) and §3.2
R000_CNN = "0.6085 validation accuracy, 0.6941 validation loss (000 Table 3: constant 128 x 3 layers)"
R000_INCEPTION = "0.7434 validation accuracy, 0.5474 validation loss (000 Table 3: InceptionV3, top 50 % trainable)"
R000_LSTM = ("0.7106 validation accuracy, 0.6423 validation loss (000 §3.2.3: 128 units x 2 layers; its Table 3 "
             "prints the 256-unit model's 0.7052 / 0.6283 under this name)")
R000_GRU = "0.7119 validation accuracy, 0.6064 validation loss (000 Table 3: 128 units x 1 layer)"
R000_MLP = "0.7432 validation accuracy, 0.6275 validation loss (000 Table 3: constant 128 x 3 layers)"
# 001 Table 5.4 (validation, video classification accuracy, overall, RAdam / SGDM), Tables 7.6
# (test split: average loss, video accuracy) and 7.7 (test split: balanced accuracy)
R001_XCEPTION = "94.76 % / 94.94 % validation video accuracy, RAdam / SGDM (001 Table 5.4)"
R001_INCEPTION = ("96.07 % / 96.44 % validation video accuracy, RAdam / SGDM (001 Table 5.4); test: 95.39 % video "
                  "accuracy, 0.24088 loss (Table 7.6), 94.78 % balanced accuracy (Table 7.7)")
R001_EFFNET_B5 = "92.32 % / 92.98 % validation video accuracy, RAdam / SGDM (001 Table 5.4)"
R001_RESNET152 = "95.97 % / 96.07 % validation video accuracy, RAdam / SGDM (001 Table 5.4)"
R001_RESNEXT = ("96.54 % / 97.19 % validation video accuracy, RAdam / SGDM (001 Table 5.4); test: 95.93 % video "
                "accuracy, 0.23245 loss (Table 7.6), 94.21 % balanced accuracy (Table 7.7)")
R001_RESEPTION_V1 = ("93.04 % test video accuracy, 0.25242 test loss (001 Table 7.6), "
                     "91.81 % balanced accuracy (Table 7.7)")
R001_RESEPTION_V2 = ("91.68 % test video accuracy, 0.28180 test loss (001 Table 7.6), "
                     "90.79 % balanced accuracy (Table 7.7)")
R001_ENSEMBLE = "93.22 % test video accuracy, 0.23860 test loss (001 Table 7.6), 93.04 % balanced accuracy (Table 7.7)"
# 002 ("Experiments and Implementation")
R002_LOGREG = "83.33 % validation accuracy (002; 83.25 % training)"
R002_SVM = "67 % validation accuracy (002)"
R002_FINETUNED = "~0.7 validation accuracy (002: ResNet50 and VGG16 fine-tuned, 'around 0.7'; 0.8 training)"
R002_SIMPLE_CNN = "0.75 validation accuracy (002: the better of its two simple CNNs; training plateau ~0.8)"
R002_CNN_LSTM = "0.85 validation accuracy (002; training plateau ~0.87)"
R002_XCEPTION = "~0.84 validation accuracy, 0.05 validation loss (002)"
R003_IRV2 = "0.9092 validation accuracy (003, after 20 epochs; 0.2572 validation loss, 0.9923 training accuracy)"
R004_B7 = ("0.48702 log loss (004: scikit-learn's unclipped log_loss on its own data, a score it placed "
           "'in top 50/2114' of the private leaderboard)")
R_FIRST_PLACE = "0.42798 private leaderboard log loss (7 x B7-NS at 380 px, an ensemble)"


def custom_cnn_overrides(depth: int, widths: str, base: int = 0) -> tuple[str, ...]:
    """Study 000's Table-1 custom CNN of ``depth`` conv layers and width rule ``widths``
    (ascending | descending | constant; ``base``: the constant width) as model overrides."""
    extra = (f"model.custom_base_width={base}",) if widths == "constant" else ()
    return ("model.arch=custom-cnn", f"model.custom_depth={depth}", f"model.custom_widths={widths}", *extra)


def mlp_overrides(name: str) -> tuple[str, ...]:
    """Study 000's Table-2 MLP registered as model ``name`` (``mlp-3-constant-128`` ...): the
    features of a track's frames read at once, trained like the sequence heads."""
    return (f"model.arch={name}", *HEAD_STEPS, *IMAGENET_FEATURES)


def rnn_overrides(cell: str, layers: int, units: int) -> tuple[str, ...]:
    """Study 000's LSTM / GRU of ``layers`` x ``units`` over frozen per-frame features."""
    return (f"model.arch={cell}", f"model.rnn_layers={layers}", f"model.rnn_hidden={units}", *HEAD_STEPS,
            *IMAGENET_FEATURES)


def _system(name: str, kind: str, study: str, reported: str, overrides: tuple[str, ...],
            description: str = "") -> System:
    return System(name, train_frame, predict_frame, overrides, kind, study, reported, description)


def _frame(arch: str, study: str, reported: str, extra: tuple[str, ...] = (), description: str = "") -> System:
    return _system(arch, "frame", study, reported, (f"model.arch={arch}", *extra), description)


# Every system of the studies, one row each: name, study, the study's figure + metric, setup.
STUDY_SYSTEMS: tuple[System, ...] = (
    _system("custom-cnn", "frame", S000, R000_CNN, custom_cnn_overrides(3, "constant", 128),
            "Table 1's best configuration: 3 conv layers of 128 filters"),
    _frame("simple-cnn", S002, R002_SIMPLE_CNN, description="small CNN from scratch, FC 120 -> 84 -> 2"),
    _frame("reseption-v1", S001, R001_RESEPTION_V1, MIN_SIDE_75, "Inception-V3 stem, residual inception blocks"),
    _frame("reseption-v2", S001, R001_RESEPTION_V2, MIN_SIDE_75, "1x1 reductions and a 1x1 remap before the sum"),
    _frame("reseption-ensemble", S001, R001_ENSEMBLE, MIN_SIDE_75, "V1 + V2, 512 features each -> classifier"),
    _frame("xception", f"{S001}, {S002}", f"{R001_XCEPTION}; {R002_XCEPTION}"),
    _frame("inception-v3", f"{S000}, {S001}", f"{R000_INCEPTION}; {R001_INCEPTION}", MIN_SIDE_75),
    _frame("inception-resnet-v2", S003, R003_IRV2, MIN_SIDE_75),
    _frame("resnet50", S002, R002_FINETUNED),
    _frame("resnet152", S001, R001_RESNET152),
    _frame("resnext101", S001, R001_RESNEXT),
    _frame("vgg16", S002, R002_FINETUNED),
    _frame("efficientnet-b5", S001, R001_EFFNET_B5),
    _frame("efficientnet-b7", S004, R004_B7, description="B7 + softmax, the study this kit follows"),
    _frame("tf-efficientnet-b7-ns", FIRST_PLACE, R_FIRST_PLACE),
    _frame("tf-efficientnet-lite0", KIT, NOT_GIVEN, IMAGENET_FEATURES,
           "the demo's detector: EfficientNet-Lite0 fine-tuned from the ImageNet weights its package ships"),
    _system("cnn-lstm", "sequence", S002, R002_CNN_LSTM, ("model.arch=cnn-lstm", "sequence.mode=finetune"),
            "time-distributed conv blocks -> LSTM, trained end to end"),
    _system("lstm", "sequence", S000, R000_LSTM, rnn_overrides("lstm", 2, 128),
            "frozen per-frame features of a face track -> LSTM 128 x 2 -> 1024 -> 2; max over a video's tracks"),
    _system("gru", "sequence", S000, R000_GRU, rnn_overrides("gru", 1, 128),
            "frozen per-frame features of a face track -> GRU 128 x 1 -> 1024 -> 2; max over a video's tracks"),
    _system("mlp", "baseline", S000, R000_MLP, ("model.arch=mlp", *IMAGENET_FEATURES),
            "scikit-learn MLP on per-crop features, mean over a video's faces"),
    _system("logreg", "baseline", S002, R002_LOGREG, ("model.arch=logreg", *IMAGENET_FEATURES),
            "scikit-learn logistic regression on per-crop features, mean over a video's faces"),
    _system("svm", "baseline", S002, R002_SVM, ("model.arch=svm", *IMAGENET_FEATURES),
            "scikit-learn linear SVM + Platt scaling on per-crop features, mean over a video's faces"),
)
for _system_row in STUDY_SYSTEMS:
    register_system(_system_row)

# What `--systems all` (make compare) runs, one name a line: adding a registered system is one line.
DEFAULT_SYSTEMS: tuple[str, ...] = (
    "custom-cnn",
    "simple-cnn",
    "reseption-v1",
    "reseption-v2",
    "reseption-ensemble",
    "xception",
    "inception-v3",
    "inception-resnet-v2",
    "resnet50",
    "resnet152",
    "resnext101",
    "vgg16",
    "efficientnet-b5",
    "efficientnet-b7",
    "tf-efficientnet-b7-ns",
    "tf-efficientnet-lite0",
    "cnn-lstm",
    "lstm",
    "gru",
    "mlp",
    "logreg",
    "svm",
)
# Models of the default set that the study-000/001/002 model change registers: until it is merged,
# `--systems all` leaves them out and says so. Once they are registered a test fails until this
# set is emptied, so the final default set skips nothing.
PENDING_MODELS: frozenset[str] = frozenset()


# ----------------------------------------------------------------------------- grids of a study


def _grid_000_cnn() -> tuple[System, ...]:
    """000 Table 1: 2-5 layers x ascending / descending / constant 32, 64, 128, 256 (no
    constant 256 at 5 layers): 23 configurations."""
    rows = []
    for depth in (2, 3, 4, 5):
        rules = [("ascending", 0), ("descending", 0)] + [("constant", w) for w in (32, 64, 128, 256)]
        for rule, width in rules[:5] if depth == 5 else rules:
            label = f"{rule}-{width}" if width else rule
            reported = {(2, "ascending"): "0.6599 validation accuracy, 0.5725 training accuracy (000 §3.2.1)",
                        (3, "constant-128"): R000_CNN}.get((depth, label), NOT_GIVEN)
            rows.append(_system(f"custom-cnn-{depth}-{label}", "frame", S000, reported,
                                custom_cnn_overrides(depth, rule, width), f"000 Table 1: {depth} layers, {label}"))
    return tuple(rows)


def _grid_000_rnn() -> tuple[System, ...]:
    """000 §1.3.4: LSTM and GRU x 1-4 layers x 128 / 512 / 1024 / 2048 units: 32 variants."""
    known = {("lstm", 2, 128): R000_LSTM, ("gru", 1, 128): R000_GRU}
    return tuple(_system(f"{cell}-{layers}x{units}", "sequence", S000, known.get((cell, layers, units), NOT_GIVEN),
                         rnn_overrides(cell, layers, units), f"000: {cell.upper()} {units} units x {layers} layers")
                 for cell in ("lstm", "gru") for layers in (1, 2, 3, 4) for units in (128, 512, 1024, 2048))


# 000 Table 2: (model name, hidden widths) of its 15 MLPs; each ends in a 2-unit output
TABLE2_MLPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    *((f"mlp-1-constant-{w}", (w,)) for w in (128, 256, 512, 1024, 2048)),
    ("mlp-2-ascending", (512, 1024)), ("mlp-2-descending", (1024, 512)),
    *((f"mlp-2-constant-{w}", (w, w)) for w in (256, 512, 1024)),
    ("mlp-3-ascending", (64, 160, 1024)), ("mlp-3-descending", (1024, 160, 64)),
    *((f"mlp-3-constant-{w}", (w, w, w)) for w in (64, 128, 256)),
)


def _grid_000_mlp() -> tuple[System, ...]:
    known = {"mlp-3-ascending": "0.6792 validation accuracy, 0.6054 validation loss (000 §3.2.5)",
             "mlp-3-constant-128": R000_MLP}
    return tuple(_system(name, "sequence", S000, known.get(name, NOT_GIVEN), mlp_overrides(name),
                         f"000 Table 2: hidden {'-'.join(map(str, widths))} -> 2")
                 for name, widths in TABLE2_MLPS)


GRIDS: dict[str, tuple[System, ...]] = {"000-cnn": _grid_000_cnn(), "000-rnn": _grid_000_rnn(),
                                        "000-mlp": _grid_000_mlp()}


# ----------------------------------------------------------------------------- scoring


def oof_scores(oof: pd.DataFrame, clip: float) -> dict[str, Any]:
    """Pooled and per-fold log loss / AUC of OOF video predictions, clipped at ``clip``."""
    missing = [c for c in OOF_COLUMNS if c not in oof.columns]
    if missing or oof.empty:
        raise ValueError(f"OOF predictions need columns {', '.join(OOF_COLUMNS)} and rows; got {list(oof.columns)}")
    y = oof["label"].to_numpy(dtype=int)
    p = clip_probability(oof["pred"].to_numpy(dtype=float), clip)
    pooled = video_metrics(y, p)
    per_fold = {}
    for fold, rows in oof.groupby("fold", sort=True):
        m = video_metrics(rows["label"].to_numpy(dtype=int), clip_probability(rows["pred"].to_numpy(dtype=float), clip))
        per_fold[int(fold)] = {"logloss": m["logloss"], "auc": m["auc"], "videos": m["videos"]}
    fold_ll = [f["logloss"] for f in per_fold.values()]
    fold_auc = [f["auc"] for f in per_fold.values() if f["auc"] is not None]
    return {"logloss": pooled["logloss"], "auc": pooled["auc"], "videos": pooled["videos"], "folds": per_fold,
            "logloss_std": float(np.std(fold_ll)) if len(fold_ll) > 1 else None,
            "auc_std": float(np.std(fold_auc)) if len(fold_auc) > 1 else None}


# ----------------------------------------------------------------------------- the run


@dataclass
class CompareReport:
    table: pd.DataFrame
    csv: Path
    png: Path
    skipped: list[str] = field(default_factory=list)  # finished in an earlier invocation
    failed: list[str] = field(default_factory=list)


def system_config(base: Config, system: System, runs_dir: Path) -> Config:
    """The base configuration + the system's overrides, its models in ``runs_dir/<name>``."""
    cfg = config_from_dict(base.to_dict())
    for item in system.overrides:
        apply_override(cfg, item)
    cfg.train.runs_dir = str(runs_dir)
    cfg.train.name = system.name
    return cfg


def weights_init(model: ModelConfig) -> str:
    """How a model's weights started, read from its resolved model section: ``imagenet``,
    ``random`` (``pretrained: none``) or ``file NAME`` (a local weights file). A model that reads
    frames through a backbone (sequence models, baselines) loads ``model.pretrained`` into that
    backbone (``dfdc.models.create_backbone``; its own head starts random), so the same field
    answers for it; a baseline on pixel features resolves to ``pretrained: none``."""
    choice = model.pretrained.strip()
    if choice.lower() in ("", "none"):
        return INIT_RANDOM
    if choice.lower() == INIT_IMAGENET:
        return INIT_IMAGENET
    return f"file {Path(choice).name}"


def run_init(run_dir: Path, cfg: Config) -> str:
    """``weights_init`` of the configuration the run in ``run_dir`` was trained with (its
    ``config.yaml``, which the trainers write resolved), else of ``cfg`` (what compare gave the
    system: a system with its own code that writes none)."""
    saved = Path(run_dir) / RUN_CONFIG
    return weights_init(read_config(saved).model if saved.is_file() else cfg.model)


def _file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes (None: no such file)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs_digest(faces_dir: Path, folds_csv: Path, videos_dir: Path | None, sample: Path | None,
                  labels_path: Path | None) -> dict[str, Any]:
    """What the systems are trained and scored on, by content: the folds table as training
    fingerprints it (``dfdc.data.folds_fingerprint``: a remade split changes it), the bytes of
    the faces index, sample submission and labels, the held-out videos' names and sizes. A
    comparison result is reused only while this is unchanged."""
    videos = (sorted((p.name, p.stat().st_size) for p in Path(videos_dir).iterdir() if p.is_file())
              if videos_dir is not None and Path(videos_dir).is_dir() else None)
    return {"folds": folds_fingerprint(folds_csv)["sha256"], "faces": _file_digest(Path(faces_dir) / INDEX),
            "videos": videos, "sample": _file_digest(Path(sample)) if sample is not None else None,
            "labels": _file_digest(Path(labels_path)) if labels_path is not None else None}


def _fingerprint(cfg: Config, inputs: dict[str, Any]) -> str:
    data = {"config": cfg.to_dict(), "inputs": inputs}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _faces_config(cfg: Config, faces_dir: Path) -> Config:
    """Crop settings from the faces folder's own config.yaml (the predictor crops with them).

    Only its ``faces`` section is read, and keys this version does not know are ignored (the
    folder may be older than the code)."""
    saved = faces_dir / "config.yaml"
    if not saved.is_file():
        return cfg
    try:
        faces = (yaml.safe_load(saved.read_text()) or {}).get("faces") or {}
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ConfigError(f"{saved}: cannot read the crop settings ({exc}); rebuild the faces folder") from None
    known = {f.name for f in dataclasses.fields(FacesConfig)}
    cfg.faces = config_from_dict({"faces": {k: v for k, v in faces.items() if k in known}}).faces
    return cfg


def _run_system(system: System, base: Config, faces_dir: Path, folds_csv: Path, runs_dir: Path, out_dir: Path,
                videos_dir: Path | None, sample: Path | None, labels: pd.DataFrame | None,
                inputs: dict[str, Any], resume: bool) -> tuple[dict[str, Any], bool]:
    """Train, score and predict one system; returns its result and whether it was reused."""
    cfg = system_config(base, system, runs_dir)
    folder = out_dir / system.name
    run_dir = runs_dir / system.name
    fingerprint = _fingerprint(cfg, inputs)
    done = _read_json(folder / RESULT_FILE)
    if resume and done is not None and done.get("fingerprint") == fingerprint:
        # the study's labels and figures are the current table's; an older result may lack init
        done["row"].update(study=system.study, study_reported=system.reported,
                           init=done["row"].get("init") or run_init(run_dir, cfg))
        return done, True
    started = _read_json(run_dir / STARTED_FILE)
    fresh = not resume or (started is not None and started.get("fingerprint") != fingerprint)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / STARTED_FILE, {"system": system.name, "fingerprint": fingerprint})
    job = SystemJob(system.name, cfg, faces_dir, folds_csv, run_dir, folder, resume=not fresh)
    start = time.perf_counter()
    trained = system.train(job)
    train_wall = time.perf_counter() - start
    scores = oof_scores(trained.oof, cfg.train.val_clip)
    row: dict[str, Any] = {
        "system": system.name, "kind": system.kind, "study": system.study, "study_reported": system.reported,
        "init": run_init(run_dir, cfg), "params": int(trained.params),
        "oof_logloss": scores["logloss"], "oof_auc": scores["auc"], "oof_logloss_std": scores["logloss_std"],
        "oof_auc_std": scores["auc_std"], "folds": len(scores["folds"]), "heldout_logloss": None, "heldout_auc": None,
        "train_seconds": trained.seconds if trained.seconds is not None else train_wall,
        "predict_s_per_video": None, "wall_seconds": None, "error": "",
    }
    stages: dict[str, float] = {}
    if videos_dir is not None:
        heldout = HeldOut(videos_dir, sample, folder / "submission.csv")
        t0 = time.perf_counter()
        predicted = system.predict(job, heldout)
        row["predict_s_per_video"] = (time.perf_counter() - t0) / max(predicted.videos, 1)
        stages = predicted.stages
        if labels is not None:
            metrics = score_submission(heldout.out_csv, labels, folder)["metrics"]
            row["heldout_logloss"], row["heldout_auc"] = metrics["logloss"], metrics["auc"]
    row["wall_seconds"] = time.perf_counter() - start
    result = {"row": row, "oof_folds": scores["folds"], "predict_stages_per_video": stages,
              "fingerprint": fingerprint, "overrides": list(system.overrides)}
    atomic_write_json(folder / RESULT_FILE, result)
    return result, False


def compare(systems: list[System], faces_dir: Path, folds_csv: Path, cfg: Config, out_dir: Path,
            runs_dir: Path, videos_dir: Path | None = None, sample_submission: Path | None = None,
            labels: Path | None = None, resume: bool = True) -> CompareReport:
    """Train, score and predict every system on the same folds; write compare.csv / compare.png.

    ``cfg``: the compare profile with the command's overrides (each system adds its own).
    ``videos_dir`` (+ ``sample_submission``): held-out videos every system predicts;
    ``labels`` (``filename,label``): scores those predictions. The table and plot are
    rewritten after every system, so an interrupted comparison still shows what finished.
    """
    faces_dir, folds_csv, out_dir, runs_dir = Path(faces_dir), Path(folds_csv), Path(out_dir), Path(runs_dir)
    read_table(folds_csv, ("video", "fold"), error=ConfigError, what="folds table",
               fix="make it with `python -m dfdc folds` (make folds)")
    base = _faces_config(config_from_dict(cfg.to_dict()), faces_dir)
    label_table = read_labels(labels) if labels is not None else None
    inputs = inputs_digest(faces_dir, folds_csv, videos_dir, sample_submission, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, folds, report = [], {}, CompareReport(pd.DataFrame(columns=COLUMNS), out_dir / CSV_NAME, out_dir / PNG_NAME)
    for system in systems:
        print(f"== {system.name} ({system.kind}, study {system.study or '-'})", file=sys.stderr)
        try:
            result, reused = _run_system(system, base, faces_dir, folds_csv, runs_dir, out_dir, videos_dir,
                                         sample_submission, label_table, inputs, resume)
        except (ValueError, RuntimeError, OSError) as exc:  # one broken system must not stop the others
            print(f"{system.name}: failed ({type(exc).__name__}: {exc}); the other systems go on", file=sys.stderr)
            report.failed.append(system.name)
            rows.append({"system": system.name, "kind": system.kind, "study": system.study,
                         "study_reported": system.reported, "error": f"{type(exc).__name__}: {exc}"})
        else:
            if reused:
                report.skipped.append(system.name)
                print(f"{system.name}: finished earlier; not retrained", file=sys.stderr)
            rows.append(result["row"])
            folds[system.name] = result["oof_folds"]
        report.table = pd.DataFrame(rows, columns=COLUMNS).astype(INT_COLUMNS)  # counts stay integers beside failed rows
        atomic_write_csv(report.csv, report.table)
        plot_comparison(report.table, folds, report.png)
    return report


# ----------------------------------------------------------------------------- the plot


def plot_comparison(table: pd.DataFrame, folds: dict[str, dict[Any, dict[str, Any]]], path: Path) -> None:
    """Log loss and AUC per system: pooled OOF bar, per-fold dots, held-out diamond; each system
    labelled with its study and init (the studies' own figures are in compare.csv's study_reported:
    other data, mostly other metrics, so no mark on these axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = table["system"].tolist()
    ticks = [f"{row.system} [{row.study or '-'}{', ' + row.init if isinstance(row.init, str) and row.init else ''}]"
             for row in table.itertuples()]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.7 * len(names) + 4), 4.5))
    for ax, key, title in ((axes[0], "logloss", "log loss (lower is better)"), (axes[1], "auc", "ROC AUC")):
        pooled = pd.to_numeric(table[f"oof_{key}"], errors="coerce").to_numpy(dtype=float)
        ax.bar(x, np.nan_to_num(pooled), color="#9ecae1", label="OOF (pooled)")
        for i, name in enumerate(names):
            values = [f[key] for f in folds.get(name, {}).values() if f.get(key) is not None]
            ax.plot([i] * len(values), values, "o", color="#08519c", ms=4, label="OOF per fold" if i == 0 else None)
        held = pd.to_numeric(table[f"heldout_{key}"], errors="coerce").to_numpy(dtype=float)
        ax.plot(x, held, "D", color="#e6550d", ms=6, ls="none", label="held-out")
        ax.axhline(np.log(2) if key == "logloss" else 0.5, color="grey", lw=0.8, ls=":", label="constant 0.5")
        ax.set_xticks(x, ticks, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
