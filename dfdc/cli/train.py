"""``python -m dfdc train``: cross-validated models -> runs/NAME/ (resumable; torchrun for DDP)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dfdc.config import Config, set_value
from dfdc.data import DataError
from dfdc.models import PretrainedWeightsError
from dfdc.runconfig import write_latest

HELP = "train one model per fold on the face crops (resumes; launch with torchrun for several GPUs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faces", type=Path, required=True, help="faces folder holding faces.csv and the crops")
    parser.add_argument("--folds", type=Path, default=Path("folds/folds.csv"), help="folds table (default folds/folds.csv)")
    parser.add_argument("--name", default=None, help="run name: outputs go to runs/NAME/ (profile: train.name)")
    parser.add_argument("--fold-list", default=None, metavar="all|0,1", help="folds to train (profile: train.folds)")
    parser.add_argument("--pretrained", default=None, metavar="PATH|none|imagenet",
                        help="backbone weights: a local state dict file, none (random init) or imagenet (download)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold (profile: train.epochs)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size per process (profile: train.batch_size)")
    parser.add_argument("--no-resume", action="store_true", help="retrain the selected folds from scratch")
    parser.add_argument("--data", type=Path, default=None,
                        help="the data root the faces came from: recorded in runs/LATEST for the later stages")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dfdc.train import train

    set_value(cfg, "train", "name", args.name)
    set_value(cfg, "train", "folds", args.fold_list)
    set_value(cfg, "model", "pretrained", args.pretrained)
    set_value(cfg, "train", "epochs", args.epochs)
    set_value(cfg, "train", "batch_size", args.batch_size)
    try:
        report = train(args.faces, args.folds, cfg, resume=not args.no_resume)
    except (DataError, PretrainedWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    latest = write_latest(cfg.train.runs_dir, {"run": report.run_dir, "profile": cfg.profile, "data": args.data,
                                               "faces": args.faces, "folds": args.folds})
    for fold in report.folds:
        state = "finished earlier" if fold.skipped else ("finished" if fold.finished else "interrupted (rerun to resume)")
        print(f"fold {fold.fold}: best validation log loss {fold.best_logloss:.4f} at epoch {fold.best_epoch} "
              f"({fold.epochs_run} epochs, {state})")
    if report.oof_logloss is not None:
        kind = "class-balanced " if cfg.train.val_balanced else ""
        print(f"OOF {kind}log loss {report.oof_logloss:.4f} (AUC {report.oof_auc:.3f}) over {report.oof_videos} videos "
              f"-> {report.run_dir}")
    print(f"{latest}: {report.run_dir} (predict, calibrate, kernel and score use it when no run is named)")
    for text in report.warnings:  # again at the end of the report, where it is read
        print(f"warning: {text}")
    if report.stopped_early:
        print("stopped by train.stop_after_epochs; rerun the same command to continue")
    return 0
