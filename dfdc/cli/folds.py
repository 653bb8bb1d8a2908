"""``python -m dfdc folds``: leak-free cross-validation folds -> folds.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config, set_value
from dfdc.folds import GROUP_BY, FoldsError, fold_counts, folds_from_data
from dfdc.metadata import MetadataError

HELP = "assign videos to folds (StratifiedGroupKFold; a fake always shares its original's fold)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder holding dfdc_train_part_*/ and/or train_sample_videos/")
    parser.add_argument("--out", type=Path, default=Path("folds/folds.csv"), help="output CSV (default folds/folds.csv)")
    parser.add_argument("--n-folds", type=int, default=None, help="number of folds (profile: folds.n_folds)")
    parser.add_argument("--group-by", choices=GROUP_BY, default=None, help="keep together: a fake with its original, or whole part folders")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed (profile: folds.seed)")
    parser.add_argument("--strict", action="store_true", help="stop on any metadata problem")


def run(args: argparse.Namespace, cfg: Config) -> int:
    set_value(cfg, "folds", "n_folds", args.n_folds)
    set_value(cfg, "folds", "group_by", args.group_by)
    set_value(cfg, "folds", "seed", args.seed)
    try:
        folds, report = folds_from_data(args.data, args.out, cfg.folds, strict=args.strict)
    except (MetadataError, FoldsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if len(report):
        print(report.format(), file=sys.stderr)
    print(f"{len(folds)} videos, {folds['group'].nunique()} groups (group_by={cfg.folds.group_by}), "
          f"{cfg.folds.n_folds} folds -> {args.out}")
    print(fold_counts(folds).to_string())
    return 0
