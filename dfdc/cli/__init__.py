"""``python -m dfdc``: a thin command line over the stage functions.

Each subcommand lives in ``dfdc/cli/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args, cfg) -> int``. The stage work happens in the
typed functions of ``dfdc/<stage>.py``; a command only turns flags into a ``Config`` and
paths, calls one function, and prints what it returns.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dfdc.config import DEFAULT_PROFILE, ConfigError, load_config
from dfdc.progress import quiet_third_party_progress

# Pipeline order; `python -m dfdc --help` lists them in this order.
COMMANDS = ("synth", "meta", "faces", "embed", "analyze", "folds", "train", "predict", "score", "calibrate", "kernel",
            "submit", "compare")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="python -m dfdc",
        description="dfdc-kit: DFDC videos -> face crops -> folds -> models -> submission.csv",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dfdc.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dfdc.cli.{name}":
                continue  # command not part of this build
            raise
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        cmd.add_argument(
            "--profile",
            default=DEFAULT_PROFILE,
            help=f"named profile (dfdc/profiles/*.yaml; one may `extends:` another) or a YAML path "
                 f"(default {DEFAULT_PROFILE})",
        )
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override any configuration key, e.g. --set train.epochs=3 (repeatable)",
        )
        module.add_arguments(cmd)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    quiet_third_party_progress()
    try:
        cfg = load_config(args.profile, args.overrides)
        return int(modules[args.command].run(args, cfg) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
