"""``python -m dfdc submit``: submit the pushed kernel version to the competition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config
from dfdc.kaggle import KernelError, submit_kernel

HELP = "submit the kernel version pushed by `dfdc kernel --push` to the competition (code submission)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", type=Path, default=None,
                        help="bundle folder holding push.json (default: kernel.build_dir, kernels/build)")
    parser.add_argument("--version", type=int, default=None, help="kernel version to submit (default: the pushed one)")
    parser.add_argument("--message", "-m", default=None, help="submission description")


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        answer = submit_kernel(args.build or Path(cfg.kernel.build_dir), cfg, args.message, args.version)
    except KernelError as exc:
        print(f"error: cannot submit: {exc}", file=sys.stderr)
        return 1
    print(answer)
    return 0
