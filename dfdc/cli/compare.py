"""``python -m dfdc compare``: every listed system on the same folds -> compare.csv + compare.png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config, make_hint

HELP = "train and score every listed system (frame models, ...) on the same folds -> submissions/compare/"
DEFAULT_OUT = Path("submissions/compare")
DEFAULT_RUNS = Path("runs/compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", default="all", metavar="all|a,b,c",
                        help="systems to compare: all (the default set) or names and grid names (--list shows them)")
    parser.add_argument("--grid", default=None, metavar="NAME",
                        help="a study's grid instead of --systems, each variant its own row "
                             "(000-cnn, 000-rnn, 000-mlp)")
    parser.add_argument("--list", action="store_true", help="list the registered systems and grids and exit")
    parser.add_argument("--data", type=Path, default=None,
                        help="DFDC folder: faces in DATA/faces, held-out videos in DATA/test_videos, "
                             "labels in DATA/test_labels.csv (each where present)")
    parser.add_argument("--faces", type=Path, default=None, help="faces folder (default DATA/faces)")
    parser.add_argument("--folds", type=Path, default=Path("folds/folds.csv"), help="the shared folds (default folds/folds.csv)")
    parser.add_argument("--videos", type=Path, default=None, help="held-out videos (default DATA/test_videos)")
    parser.add_argument("--sample-submission", type=Path, default=None,
                        help="rows of the held-out submissions (default DATA/sample_submission.csv)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="filename,label 0/1 of the held-out videos (default DATA/test_labels.csv; "
                             "DFDC's public test: labels.csv)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help=f"models folder (default {DEFAULT_RUNS})")
    parser.add_argument("--no-resume", action="store_true", help="retrain every listed system from scratch")


def _default(given: Path | None, data: Path | None, name: str) -> Path | None:
    if given is not None:
        return given
    if data is not None and (data / name).exists():
        return data / name
    return None


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dfdc.compare import DEFAULT_SYSTEMS, GRIDS, SYSTEMS, compare, resolve_systems
    from dfdc.metrics import ScoreError

    if args.list:
        for system in SYSTEMS.values():
            mark = "*" if system.name in DEFAULT_SYSTEMS else " "
            print(f"{mark} {system.name:22s} {system.kind:9s} study {system.study:12s} reported: {system.reported}")
        for name, variants in GRIDS.items():
            print(f"grid {name}: {len(variants)} variants ({variants[0].name} .. {variants[-1].name})")
        print("* = in the default set (--systems all)")
        return 0
    if args.grid is not None and args.grid not in GRIDS:
        print(f"error: --grid {args.grid!r}: known grids: {', '.join(GRIDS)}", file=sys.stderr)
        return 2
    if args.grid is not None and args.systems != "all":
        print("error: give --grid or --systems, not both (--systems also takes grid names)", file=sys.stderr)
        return 2
    faces = args.faces or (args.data / "faces" if args.data is not None else None)
    if faces is None:
        print(f"error: pass {make_hint('--data DATA', 'DATA=')} (or {make_hint('--faces DIR', 'FACES=DIR')}): the face "
              "crops every system trains on", file=sys.stderr)
        return 2
    systems = resolve_systems(args.grid if args.grid is not None else args.systems)  # ConfigError: exit 2
    videos = _default(args.videos, args.data, "test_videos")
    sample = _default(args.sample_submission, args.data, "sample_submission.csv")
    labels = _default(args.labels, args.data, "test_labels.csv")
    try:
        report = compare(systems, faces, args.folds, cfg, args.out, args.runs, videos, sample, labels,
                         resume=not args.no_resume)
    except ScoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = report.table.drop(columns=["kind", "study", "study_reported", "error"]).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    print(shown)
    print(f"-> {report.csv}, {report.png}" + (f"; failed: {', '.join(report.failed)}" if report.failed else ""))
    return 1 if report.failed else 0
