"""``python -m dfdc calibrate``: fit aggregation, temperature and clip on the run's held-out videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.aggregate import CALIBRATION, CalibrationError
from dfdc.calibrate import calibrate
from dfdc.config import Config

RUN_ARG = "run"  # the run folder: its own configuration is used (dfdc.runconfig)
HELP = ("choose aggregation, temperature and clip on each fold's model predicting its held-out training videos "
        "-> RUN/calibration.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, default=None,
                        help="training run folder holding fold*/best.pt (default: the run in runs/LATEST)")
    parser.add_argument("--data", type=Path, required=True, help="the data root the folds were made from (metadata.json)")
    parser.add_argument("--folds", type=Path, required=True, help="the folds table the run was trained on")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:0,cuda:1 (default: every GPU, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def format_result(result: dict, cfg: Config) -> str:
    unit = result.get("unit", "face")  # a sequence model's units are tracks
    lines = [f"{result['videos']} held-out videos ({result[f'{unit}s']} {unit}s, {result['frames']} frames per video)"
             + (f"; left out (fallback at test time): {result['fallbacks']}" if result.get("fallbacks") else "")]
    halves = result.get("halves") or {}
    for part in ("fit", "holdout"):
        if part in halves:
            h = halves[part]
            lines.append(f"  {part:<7} half, {h['videos']} videos: before {h['before']:.5f}, "
                         f"free choice {h['free']:.5f}, softening-only {h['soft']:.5f}")
    if "free_setting" in halves:
        f, s = halves["free_setting"], halves["soft_setting"]
        lines.append(f"  (fit-half choices: free {f['aggregation']} T {f['temperature']:.4g} clip {f['clip']:.4g}; "
                     f"softening-only {s['aggregation']} T {s['temperature']:.4g} clip {s['clip']:.4g})")
    lines.append(f"guard: {result['guard']}")
    lines.append(f"log loss before {result['logloss_before']:.5f} ({result['baseline']['aggregation']}, T 1, "
                 f"clip {cfg.predict.clip:g})")
    lines.append(f"log loss after  {result['logloss_after']:.5f} ({result['aggregation']}, "
                 f"T {result['temperature']:.4g}, clip {result['clip']:.4g})")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        result = calibrate(args.run, args.data, args.folds, cfg, device=args.device, progress=not args.no_progress)
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_result(result, cfg))
    print(f"-> {args.run / CALIBRATION}")
    return 0
