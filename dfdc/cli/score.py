"""``python -m dfdc score``: local Kaggle log loss of a submission.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config
from dfdc.folds import FoldsError
from dfdc.runconfig import default_submission, resolve_run
from dfdc.metrics import ScoreError, format_value, labels_from_folds, read_labels, score_submission

HELP = "score a submission.csv against labels (log loss as Kaggle, AUC, plots) -> report.json/md beside it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", type=Path, default=None,
                        help="submission.csv (filename,label; default: submissions/NAME/submission.csv of the run "
                        "in runs/LATEST)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", type=Path, help="filename,label CSV with 0/1 (test_labels.csv, DFDC's labels.csv)")
    source.add_argument("--folds", type=Path, help="folds.csv: score against one held-out fold (with --fold)")
    parser.add_argument("--fold", type=int, default=None, help="the held-out fold of --folds")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: beside the submission)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.submission is None:
        args.submission = default_submission(resolve_run(None, cfg.train.runs_dir, "--submission"))
    try:
        if args.folds is not None:
            if args.fold is None:
                print("error: --folds needs --fold K (the held-out fold to score)", file=sys.stderr)
                return 2
            labels = labels_from_folds(args.folds, args.fold)
        else:
            labels = read_labels(args.labels)
        report = score_submission(args.submission, labels, args.out)
    except (ScoreError, FoldsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m, fb = report["metrics"], report["fallbacks"]
    out = args.out or args.submission.parent
    print(f"log loss {m['logloss']:.5f} on {m['videos']} videos ({m['real']} REAL, {m['fake']} FAKE)")
    print(f"  log loss REAL {format_value(m['logloss_real'])}, FAKE {format_value(m['logloss_fake'])}; "
          f"AUC {format_value(m['auc'])}; accuracy {m['accuracy']:.4f}")
    print(f"  class-balanced log loss {format_value(m['logloss_balanced'])} (what a 50 % FAKE test set scores)")
    for row in report.get("methods", {}).get("rows", []):
        seen = {"yes": "seen in training", "no": "UNSEEN in training"}.get(row.get("seen", ""), "")
        print(f"  method {row['method']:<10} {row['fakes']:>4} fakes: log loss {row['logloss_fake']:.5f}, with REAL "
              f"{format_value(row['logloss_with_real'])} (AUC {format_value(row['auc_with_real'])}) {seen}".rstrip())
    for group, g in report.get("methods", {}).get("groups", {}).items():
        print(f"  REAL + {group} methods: log loss {g['logloss']:.5f} on {g['videos']} videos "
              f"(class-balanced {format_value(g['logloss_balanced'])}, AUC {format_value(g['auc'])})")
    print(f"  fallbacks {'unknown' if fb is None else fb['count']}, extra rows {report['extra_rows']}")
    print(f"report: {out / 'report.md'}")
    return 0
