"""The run folder's bookkeeping, shared by every system that trains or fits per fold
(``dfdc.train``: torch models; ``dfdc.baselines``: scikit-learn estimators) and read by
``dfdc.calibrate`` and ``dfdc.compare``.

Layout under ``<runs_dir>/<name>/``::

    config.yaml                     the resolved configuration
    fold{k}/inputs.json             fingerprints of the folds table and faces index the fold trains on
    fold{k}/status.json             {"finished": true, ...} once the fold is done (skipped on rerun)
    fold{k}/best.pt, last.pt, oof.csv, oof_<units>.csv, estimator.joblib   the fold's state
    fold{k}/tensorboard/            TensorBoard event files of the fold's epochs (torch models)
    metrics.csv, curves.png         per fold and epoch
    oof.csv, oof_<units>.csv        out-of-fold predictions of every finished fold

The invariant that keeps a run honest: **every state file of a fold folder was made from the
inputs its ``inputs.json`` records.** A fold starting afresh (``reset_fold``) removes its old
state *before* it writes the new fingerprints, so a kill at any point leaves either the old
fingerprints (and no state, or the old state) or the new ones with nothing but new state.
A fold resumed, skipped or merged is checked against today's inputs first
(``check_inputs``); ``check_run`` checks every fold of a run before any work starts.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.aggregate import clip as clip_probability
from dfdc.aggregate import constant_models
from dfdc.config import ConfigError, make_hint
from dfdc.io import atomic_open, atomic_write_csv, atomic_write_json
from dfdc.metrics import video_metrics
from dfdc.models.checkpoint import FOLD_DIR

METRICS_COLUMNS = ["fold", "epoch", "train_loss", "val_loss", "val_logloss", "val_auc", "lr", "seconds"]
OOF_COLUMNS = ["video", "label", "fold", "pred", "n_faces"]
OOF_FACES = ("oof_faces.csv", ["video", "label", "fold", "frame", "face", "prob"])  # frame models: one row per face
OOF_TRACKS = ("oof_tracks.csv", ["video", "label", "fold", "track", "prob"])  # sequence models: one row per track read
INPUTS = "inputs.json"  # per fold: fingerprints of the folds table and faces index it trained on
STATUS = "status.json"
INPUT_NAMES = {"folds": "folds table", "faces": "faces index"}
# a fold's state: everything made from its inputs (status first: a fold without it is never skipped)
FOLD_STATE = (STATUS, "last.pt", "best.pt", "oof.csv", OOF_FACES[0], OOF_TRACKS[0], "estimator.joblib")
def retrain_advice() -> str:
    """How to get past a fold trained on other inputs (make variables when run through make)."""
    return (f"use another {make_hint('--name', 'RUN=')} (a new run), or {make_hint('--no-resume', 'NO_RESUME=1')} "
            f"to retrain the fold(s) on today's inputs ({make_hint('--fold-list', 'FOLDS=')} with every fold "
            "trained on the old ones)")
TENSORBOARD_DIR = "tensorboard"  # per fold: TensorBoard event files (``tensorboard --logdir runs/NAME``)


class InputsChangedError(ConfigError):
    """A fold recorded other input fingerprints than today's folds table / faces index."""


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
    oof_logloss: float | None = None  # over every finished fold's OOF videos, clipped at val_clip
    # (class-balanced with train.val_balanced)
    oof_auc: float | None = None
    oof_videos: int = 0
    stopped_early: bool = False  # stop_after_epochs ended this invocation before all folds finished
    warnings: list[str] = field(default_factory=list)  # said on stderr at the end (a constant model)


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold{fold}"


def fold_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(k, folder)`` of every ``fold{k}`` folder of a run, by k."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("fold*") if p.is_dir() and (m := FOLD_DIR.fullmatch(p.name))]
    return sorted(found)


# ----------------------------------------------------------------------------- inputs


def read_inputs(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / INPUTS).read_text())
    except (OSError, ValueError):
        return None


def inputs_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two input fingerprint records, in words (only the inputs ``new``
    names: a check given the folds table alone compares the folds table alone)."""
    changes = []
    for key, name in INPUT_NAMES.items():
        if key not in new:
            continue
        a, b = old.get(key) or {}, new.get(key) or {}
        if a.get("sha256") != b.get("sha256"):
            changes.append(f"the {name} {b.get('file')} had {a.get('rows')} rows of {a.get('videos')} videos "
                           f"(sha256 {a.get('sha256')}), now {b.get('rows')} rows of {b.get('videos')} videos "
                           f"(sha256 {b.get('sha256')})")
    return changes


def check_inputs(folder: Path, fold: int, current: dict[str, Any], doing: str, advice: str | None = None) -> None:
    """Refuse to ``doing`` (resume, skip, merge, calibrate) a fold trained on other inputs."""
    old = read_inputs(folder)
    if old is None:
        return  # a fold of an older kit version: nothing recorded to compare
    changes = inputs_changes(old, current)
    if changes:
        raise InputsChangedError(
            f"cannot {doing} fold {fold} of {Path(folder).parent}: it was trained on other inputs -- "
            + "; ".join(changes) + ". Mixing them would train or score one model on two splits or crop "
            f"sets: {advice or retrain_advice()}")


def has_state(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in FOLD_STATE)


def check_run(run_dir: Path, current: dict[str, Any], available: list[int], retrained: set[int] = frozenset(),
              resumed: set[int] = frozenset()) -> None:
    """Before any work: every fold folder of the run whose state will be used -- resumed or
    skipped (``resumed``), or merged into the OOF files (every other fold of today's table,
    ``available``, that finished) -- was trained on ``current`` inputs. Folds in
    ``retrained`` start afresh and are not checked. ``InputsChangedError`` otherwise."""
    for fold, folder in fold_dirs(run_dir):
        if fold in retrained or fold not in available or not has_state(folder):
            continue
        if fold in resumed:
            finished = fold_status(run_dir, fold) is not None
            check_inputs(folder, fold, current, "skip (as finished)" if finished else "resume")
        elif fold_status(run_dir, fold) is not None:
            check_inputs(folder, fold, current, "merge the OOF predictions of")


def reset_fold(folder: Path, fingerprints: dict[str, Any]) -> None:
    """Start a fold afresh on ``fingerprints``: its old state goes first, then the new
    ``inputs.json`` (module docstring: the invariant)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in FOLD_STATE:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / TENSORBOARD_DIR, ignore_errors=True)
    atomic_write_json(folder / INPUTS, fingerprints)


# ----------------------------------------------------------------------------- fold status


def fold_status(run_dir: Path, fold: int) -> dict[str, Any] | None:
    """``status.json`` of a finished fold (with its ``best.pt``), else None."""
    folder = fold_dir(run_dir, fold)
    status = folder / STATUS
    if not (status.is_file() and (folder / "best.pt").is_file()):
        return None
    try:
        data = json.loads(status.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("finished") else None


def warn_unfinished(run_dir: Path, folds: list[int], use: str) -> list[int]:
    """Warn (stderr) about the ``folds`` of ``run_dir`` whose training has not finished (stopped
    by ``train.stop_after_epochs``, killed, or still running): ``use`` takes their best epoch
    so far. Returns them."""
    from dfdc.config import warn

    unfinished = [fold for fold in folds if fold_status(run_dir, fold) is None]
    if unfinished:
        warn(f"{run_dir}: fold(s) {', '.join(map(str, unfinished))} have not finished training (no finished "
             f"status.json); {use} their best epoch so far. Finish them with `dfdc train` (it resumes) or remove "
             "their folders")
    return unfinished


def finish_fold(folder: Path, best_logloss: float, best_epoch: int, epochs_run: int) -> None:
    """Mark a fold finished (its state is complete): later runs skip and merge it."""
    atomic_write_json(Path(folder) / STATUS, {"finished": True, "best_logloss": best_logloss,
                                              "best_epoch": best_epoch, "epochs_run": epochs_run})


def skipped_result(fold: int, status: dict[str, Any]) -> FoldResult:
    return FoldResult(fold, float(status["best_logloss"]), int(status["best_epoch"]), int(status["epochs_run"]),
                      skipped=True)


def parse_folds(spec: str, available: list[int]) -> list[int]:
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


# ----------------------------------------------------------------------------- scores and curves


def video_logloss(videos: pd.DataFrame, clip: float, balanced: bool = True) -> tuple[float, float]:
    """(log loss of ``pred`` clipped at ``clip``, ROC AUC or nan) against ``label``
    (``dfdc.metrics.video_metrics``, the scorer of submissions and of ``dfdc compare``):
    ``balanced`` (``train.val_balanced``) the class-balanced loss, else Kaggle's plain one."""
    m = video_metrics(videos["label"].to_numpy(dtype=int), clip_probability(videos["pred"].to_numpy(dtype=float), clip))
    loss = m["logloss_balanced"] if balanced and m["logloss_balanced"] is not None else m["logloss"]
    return loss, float("nan") if m["auc"] is None else m["auc"]


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


def update_metrics(run_dir: Path, fold: int, history: list[dict[str, Any]]) -> pd.DataFrame:
    """Replace fold ``fold``'s rows of ``metrics.csv`` by ``history``; redraw ``curves.png``."""
    path = Path(run_dir) / "metrics.csv"
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=METRICS_COLUMNS)
    old = old[old["fold"] != fold]
    new = pd.DataFrame(history, columns=METRICS_COLUMNS)
    table = new if old.empty else pd.concat([old, new], ignore_index=True)
    table = table.sort_values(["fold", "epoch"]).reset_index(drop=True)
    atomic_write_csv(path, table)
    _write_curves(table, Path(run_dir) / "curves.png")
    return table


# ----------------------------------------------------------------------------- OOF files


def write_fold_oof(folder: Path, units: pd.DataFrame, videos: pd.DataFrame, unit_file: tuple[str, list[str]]) -> None:
    """A fold's OOF files: per video (``oof.csv``) and per unit (``unit_file``: name, columns)."""
    name, columns = unit_file
    atomic_write_csv(Path(folder) / "oof.csv", videos[OOF_COLUMNS])
    atomic_write_csv(Path(folder) / name, units[columns])


def merge_oof(run_dir: Path, unit_file: tuple[str, list[str]], clip: float, fingerprints: dict[str, Any],
              available: list[int], balanced: bool = True) -> tuple[float | None, float | None, int]:
    """The run's ``oof.csv`` and per-unit file from the folds of today's table (``available``)
    that finished on today's inputs; returns (log loss, AUC, videos) of the merged OOF. A fold
    still training (stopped or killed) is left out until it finishes; a fold folder that is not
    a fold of today's table (an earlier split with more folds) is left out with a warning."""
    name, columns = unit_file
    videos, units = [], []
    for fold, folder in fold_dirs(run_dir):
        if fold_status(run_dir, fold) is None or not (folder / "oof.csv").is_file() or not (folder / name).is_file():
            continue
        if fold not in available:
            print(f"warning: {folder} is not a fold of today's folds table (folds {available}); "
                  "left out of the OOF files", file=sys.stderr)
            continue
        check_inputs(folder, fold, fingerprints, "merge the OOF predictions of")
        videos.append(pd.read_csv(folder / "oof.csv", dtype={"video": str}))
        units.append(pd.read_csv(folder / name, dtype={"video": str}))
    if not videos:
        return None, None, 0
    oof = pd.concat(videos, ignore_index=True)[OOF_COLUMNS].sort_values(["fold", "video"])
    atomic_write_csv(Path(run_dir) / "oof.csv", oof)
    atomic_write_csv(Path(run_dir) / name, pd.concat(units, ignore_index=True)[columns].sort_values(columns[:-1]))
    loss, auc = video_logloss(oof, clip, balanced)
    return loss, auc, len(oof)


def constant_folds(run_dir: Path, unit_file: tuple[str, list[str]]) -> list[str]:
    """A warning per fold of the merged OOF whose every unit got the same P(FAKE)
    (``dfdc.aggregate.constant_models``)."""
    path = Path(run_dir) / unit_file[0]
    if not path.is_file():
        return []
    units = pd.read_csv(path, usecols=["fold", "prob"])
    unit = "track" if unit_file[0] == OOF_TRACKS[0] else "face"
    return [text for fold, probs in units.groupby("fold")["prob"]
            for text in constant_models([f"fold{fold}"], np.array([[probs.min(), probs.max()]]), len(probs), unit)]


def recorded_folds(run_dir: Path) -> list[int]:
    """The folds of a run that recorded their inputs (``inputs.json``)."""
    return [fold for fold, folder in fold_dirs(run_dir) if (folder / INPUTS).is_file()]


def check_folds_of_run(run_dir: Path, current: dict[str, Any], doing: str, advice: str) -> None:
    """Every fold of ``run_dir`` that recorded its inputs against ``current`` (e.g. only the
    folds table, for ``dfdc calibrate``)."""
    for fold in recorded_folds(run_dir):
        check_inputs(fold_dir(run_dir, fold), fold, current, doing, advice)

