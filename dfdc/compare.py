"""Every system of the reference studies on the same faces and folds -> one table (``dfdc compare``).

A *system* is a name plus how to train it and how to predict with it (``System``). Each
listed system is trained on the same ``folds.csv`` (``train.folds`` of the profile picks
which folds), its out-of-fold (OOF) video predictions are scored per fold and pooled, it
predicts the held-out videos (``DATA/test_videos``) and, when labels are given, is scored
on them -- all through the kit's own stages (``dfdc.train.train``,
``dfdc.predict.predict_videos``, ``dfdc.metrics``). Outputs in ``out_dir``
(``submissions/compare/``)::

    compare.csv      one row per system: system, kind, study, params, oof_logloss, oof_auc,
                     oof_logloss_std / oof_auc_std (spread over folds), folds, heldout_logloss,
                     heldout_auc, train_seconds, predict_s_per_video, wall_seconds, error
    compare.png      log loss and AUC per system: pooled OOF bar, one dot per fold, held-out mark
    <system>/        the system's submission.csv, predictions.csv, report.{json,md}, result.json

Models go to ``runs_dir/<system>/`` (``runs/compare/``); a frame system keeps each fold's
``best.pt`` and drops ``last.pt`` once the fold is finished (resume state only, 3x the size:
14 GB for the 13 frame systems at smoke sizes otherwise). Resumable: a system whose
``result.json`` matches its configuration is not retrained; an interrupted one resumes
(folds that finished are skipped); a system whose configuration changed is retrained from
scratch. A system that fails (bad weights, a crash) is reported in the ``error`` column
and the others go on; a rerun retries it.

Adding a system is one ``register_system`` call (frame classifiers: ``frame_system``); any
model ``dfdc train`` takes is selected by ``model.arch`` in its overrides, e.g.::

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
from dfdc.config import Config, ConfigError, FacesConfig, apply_override, config_from_dict
from dfdc.data import folds_fingerprint
from dfdc.faceindex import INDEX
from dfdc.io import atomic_open, atomic_write_csv, atomic_write_json, read_table
from dfdc.metrics import read_labels, score_submission, video_metrics

COLUMNS = ["system", "kind", "study", "params", "oof_logloss", "oof_auc", "oof_logloss_std", "oof_auc_std", "folds",
           "heldout_logloss", "heldout_auc", "train_seconds", "predict_s_per_video", "wall_seconds", "error"]
INT_COLUMNS = {"params": "Int64", "folds": "Int64"}
OOF_COLUMNS = ("video", "label", "fold", "pred")  # what a system's train returns (dfdc.train's oof.csv has them)
RESULT_FILE = "result.json"  # per system, in out_dir/<system>/: its row, per-fold figures, fingerprint
STARTED_FILE = "compare.json"  # per system, in its run dir: the fingerprint it was started with
HASH_BLOCK = 1 << 20  # bytes read at a time when hashing an input file
CSV_NAME, PNG_NAME = "compare.csv", "compare.png"
NOT_GIVEN = "not given"  # a study's figure that the study does not publish


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
    reported: str = NOT_GIVEN  # the study's own published figure, or NOT_GIVEN
    description: str = ""


SYSTEMS: dict[str, System] = {}


def register_system(system: System) -> System:
    """Add a system to the registry (names are unique)."""
    if system.name in SYSTEMS:
        raise ValueError(f"system {system.name!r} is already registered")
    SYSTEMS[system.name] = system
    return system


def resolve_systems(spec: str) -> list[System]:
    """``all`` or a comma list of registered names."""
    if spec.strip().lower() == "all":
        return list(SYSTEMS.values())
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise ConfigError(f"--systems {spec!r}: unknown {unknown or 'empty list'}; registered: {', '.join(SYSTEMS)}")
    return [SYSTEMS[n] for n in dict.fromkeys(names)]


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


MIN_SIDE_75 = ("train.size=80",)  # Inception stems have no padding: at least 75 px (the profile's 64 is less)
STUDIES = "reference studies"  # the studies list these backbones without saying which study file used which

frame_system("custom-cnn", "000", description="2-5 conv layers, width rule ascending/descending/constant")
frame_system("reseption-v1", "001", extra=MIN_SIDE_75, description="Inception-V3 stem, wide residual inception blocks")
frame_system("reseption-v2", "001", extra=MIN_SIDE_75, description="1x1 reductions and a 1x1 remap before the sum")
frame_system("xception", STUDIES)
frame_system("inception-v3", STUDIES, extra=MIN_SIDE_75)
frame_system("inception-resnet-v2", STUDIES, extra=MIN_SIDE_75)
frame_system("resnet50", STUDIES)
frame_system("resnet152", STUDIES)
frame_system("resnext101", STUDIES)
frame_system("vgg16", STUDIES)
frame_system("efficientnet-b5", STUDIES)
frame_system("efficientnet-b7", "the study this kit follows (~50th place)",
             reported="0.48702 private LB log loss (B7 at ~240 px, ImageNet weights)")
frame_system("tf-efficientnet-b7-ns", "1st place (Selim Seferbekov)",
             reported="0.42798 private LB log loss (7 x B7-NS at 380 px, an ensemble)")

# Sequence models and classical baselines (studies 000 and 002): `dfdc train` and the predictor
# take them by model.arch (face tracks for lstm/gru; scikit-learn on per-crop features for the
# baselines), so they are systems like the frame classifiers. They read frozen features of
# model.backbone / baseline.features (the compare profile: the crops' downscaled pixels, as a
# frozen random CNN gives constant features offline); a frozen head takes milliseconds a step,
# so the sequence models get more of them than the profile's frame budget.
HEAD_STEPS = ("train.epochs=10", "train.steps_per_epoch=10")
for _cell in ("lstm", "gru"):
    register_system(System(_cell, train_frame, predict_frame, (f"model.arch={_cell}", *HEAD_STEPS), "sequence",
                           "000, 002", description=f"frozen features per frame of a face track -> {_cell.upper()} "
                           "-> 1024 -> 2; max over a video's tracks"))
for _name, _what in (("logreg", "logistic regression"), ("svm", "linear SVM + Platt scaling"),
                     ("mlp", "one-hidden-layer MLP")):
    register_system(System(_name, train_frame, predict_frame, (f"model.arch={_name}",), "baseline", "000, 002",
                           description=f"scikit-learn {_what} on per-crop features, mean over a video's faces"))


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
        "system": system.name, "kind": system.kind, "study": system.study, "params": int(trained.params),
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
                         "error": f"{type(exc).__name__}: {exc}"})
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
    """Log loss and AUC per system: pooled OOF bar, per-fold dots, held-out diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = table["system"].tolist()
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
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
