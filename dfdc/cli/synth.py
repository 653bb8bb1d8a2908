"""``python -m dfdc synth``: generate the built-in mini DFDC."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from dfdc.config import Config, ConfigError, set_value

HELP = "generate the built-in mini DFDC (real faces, H.264 videos, real face swaps)"

_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _resolution(text: str) -> tuple[int, int]:
    match = _RESOLUTION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to create (e.g. data/demo)")
    parser.add_argument("--videos", type=int, help="training videos in all, REAL + FAKE")
    parser.add_argument("--test-videos", type=int, help="held-out test videos (unseen identities)")
    parser.add_argument("--parts", type=int, help="number of dfdc_train_part_N folders")
    parser.add_argument("--resolution", type=_resolution, metavar="WxH", help="frame size, up to 1920x1080")
    parser.add_argument("--seconds", type=float, help="video length in seconds")
    parser.add_argument("--fps", type=int, help="frames per second")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same data)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dfdc.synth import SynthError, generate

    set_value(cfg, "synth", "videos", args.videos)
    set_value(cfg, "synth", "test_videos", args.test_videos)
    set_value(cfg, "synth", "parts", args.parts)
    if args.resolution is not None:
        set_value(cfg, "synth", "width", args.resolution[0])
        set_value(cfg, "synth", "height", args.resolution[1])
    set_value(cfg, "synth", "seconds", args.seconds)
    set_value(cfg, "synth", "fps", args.fps)
    set_value(cfg, "synth", "seed", args.seed)
    try:
        report = generate(args.out, cfg.synth)
    except (SynthError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(report.format())
    return 0
