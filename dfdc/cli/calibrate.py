"""``python -m dfdc calibrate``: fit aggregation, temperature and clip on a run's OOF faces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.calibrate import CALIBRATION, CalibrationError, calibrate
from dfdc.config import Config

HELP = "choose aggregation, temperature and clip on out-of-fold predictions -> RUN/calibration.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder holding oof_faces.csv")


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        result = calibrate(args.run, cfg.predict)
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{result['videos']} out-of-fold videos ({result['faces']} faces)"
          + (f"; fewer than {cfg.predict.calib_min_videos}: only softening allowed" if result["guarded"] else ""))
    print(f"OOF log loss before {result['oof_logloss_before']:.5f} (mean, T 1, clip {cfg.predict.clip:g})")
    print(f"OOF log loss after  {result['oof_logloss_after']:.5f} ({result['aggregation']}, "
          f"T {result['temperature']:.4g}, clip {result['clip']:.4g})")
    print(f"-> {args.run / CALIBRATION}")
    return 0
