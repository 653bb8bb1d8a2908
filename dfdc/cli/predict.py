"""``python -m dfdc predict``: videos + a run's fold models -> submission.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config, set_value
from dfdc.aggregate import explicit_keys
from dfdc.predict import PredictError, predict_videos
from dfdc.runconfig import default_submission

RUN_ARG = "models"  # the run folder: its own configuration shapes the crops and defaults (dfdc.runconfig)
HELP = "predict P(FAKE) per video with every fold model of a run -> submission.csv"

# flag dest -> PredictConfig field
FLAGS = {
    "frames": "frames",
    "tta_flip": "tta_flip",
    "aggregation": "aggregation",
    "clip": "clip",
    "temperature": "temperature",
    "fallback": "fallback",
    "time_budget": "time_budget",
    "workers": "workers",
    "batch_size": "batch_size",
    "video_timeout": "video_timeout",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, required=True, help="folder of the .mp4 videos to predict")
    parser.add_argument("--models", type=Path, default=None,
                        help="run folder with fold*/best.pt (runs/NAME; default: the run in runs/LATEST)")
    parser.add_argument("--out", type=Path, default=None,
                        help="submission CSV to write (filename,label; default submissions/NAME/submission.csv)")
    parser.add_argument(
        "--sample-submission",
        type=Path,
        default=None,
        help="rows and order of the output (default: VIDEOS/../sample_submission.csv if present, "
        "else every mp4 of VIDEOS sorted)",
    )
    parser.add_argument("--frames", type=int, default=None, help="evenly spaced frames per video")
    parser.add_argument("--tta-flip", action="store_true", default=None, help="average with horizontally flipped faces")
    parser.add_argument("--aggregation", choices=("mean", "confident"), default=None, help="per-video aggregation")
    parser.add_argument("--clip", type=float, default=None, help="clip predictions to [C, 1-C]")
    parser.add_argument("--temperature", type=float, default=None, help="temperature applied to the video P(FAKE)")
    parser.add_argument("--fallback", type=float, default=None, help="prediction for a video that fails")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run (0 = no limit)")
    parser.add_argument("--workers", type=int, default=None, help="decode+detect processes (0 = inline)")
    parser.add_argument("--batch-size", type=int, default=None, help="face crops per model forward")
    parser.add_argument("--video-timeout", type=float, default=None,
                        help="seconds a video's decode + detection may take before its fallback (0 = no limit)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, or a list such as cuda:0,cuda:1 that the fold models are spread over "
                        "(default: every visible GPU, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _explicit_keys(args: argparse.Namespace) -> set[str]:
    """Calibration keys the user set by flag or --set: calibration.json must not override them."""
    return explicit_keys(args.overrides, {field for dest, field in FLAGS.items() if getattr(args, dest) is not None})


def run(args: argparse.Namespace, cfg: Config) -> int:
    for dest, key in FLAGS.items():
        set_value(cfg, "predict", key, getattr(args, dest))
    out = args.out if args.out is not None else default_submission(args.models)
    sample = args.sample_submission
    if sample is None:
        guess = args.videos.parent / "sample_submission.csv"
        sample = guess if guess.is_file() else None
    try:
        report = predict_videos(
            args.videos,
            args.models,
            out,
            cfg,
            sample_submission=sample,
            device=args.device,
            explicit=_explicit_keys(args),
            progress=not args.no_progress,
        )
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
