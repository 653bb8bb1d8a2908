"""``python -m dfdc faces``: DFDC videos -> class-balanced face crops + faces.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config, set_value
from dfdc.extract import build_faces, merge_faces, parse_shard
from dfdc.metadata import MetadataError, load_metadata

HELP = "detect faces (REAL videos only, boxes reused for fakes) and write class-balanced crops + faces.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder holding dfdc_train_part_*/ and/or train_sample_videos/")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default DATA/faces); a rerun resumes")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default faces.workers)")
    parser.add_argument("--shard", default="0/1", help="i/N: this machine's share of the work units (default 0/1); "
                        "writes faces_<i>of<N>.csv, joined by --merge")
    parser.add_argument("--merge", action="store_true",
                        help="after all --shard i/N runs: build OUT/faces.csv from the shard indexes, checking that "
                             "no video is missing or duplicated")
    parser.add_argument("--shards", type=int, default=0, help="with --merge: N (default: the N of the shard files found)")
    parser.add_argument("--margin", type=float, default=None, help="crop margin: side * (1 + margin) (recipe 0.5-0.7)")
    parser.add_argument("--size", type=int, default=None, help="crop side in pixels")
    parser.add_argument("--frames-real", type=int, default=None, help="frames per REAL video")
    parser.add_argument("--frames-fake", type=int, default=None, help="frames per FAKE video")
    parser.add_argument("--max-faces", type=int, default=None, help="faces kept per frame")
    parser.add_argument("--device", default=None, help="detector device (default cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, cfg: Config) -> int:
    for key in ("margin", "size", "frames_real", "frames_fake", "max_faces", "workers"):
        set_value(cfg, "faces", key, getattr(args, key))
    try:
        shard = parse_shard(args.shard)
        table, problems = load_metadata(args.data)
    except (ValueError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(problems):
        print(problems.format(), file=sys.stderr)
    out = args.out if args.out is not None else Path(args.data) / "faces"
    if args.merge:
        try:
            print(merge_faces(table, out, args.shards).format())
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        report = build_faces(
            table, out, cfg.faces, shard=shard, workers=cfg.faces.workers,
            progress=not args.no_progress, config=cfg, device=args.device,
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 1 if report.videos and report.failed == report.videos else 0
