"""``python -m dfdc meta``: validate DFDC metadata and summarise the data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config
from dfdc.metadata import MetadataError, load_metadata, summarize

HELP = "check every metadata.json under a DFDC data root and summarise the videos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder holding dfdc_train_part_*/ and/or train_sample_videos/")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any problem instead of skipping faulty rows")


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        table, report = load_metadata(args.data, strict=args.strict)
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if len(report):
        print(report.format(), file=sys.stderr)
    print(f"read {len(report.files)} metadata file(s) under {args.data}")
    print(summarize(table))
    return 0
