"""``python -m dfdc``: a thin command line over the stage functions.

Each subcommand lives in ``dfdc/cli/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args, cfg) -> int``. A command that uses a trained run
also defines ``RUN_ARG`` (the argument naming the run folder): its configuration is the
run's own (``dfdc.runconfig.run_config``) and the run defaults to ``runs/LATEST``. The stage work happens in the
typed functions of ``dfdc/<stage>.py``; a command only turns flags into a ``Config`` and
paths, calls one function, and prints what it returns.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dfdc.config import DEFAULT_PROFILE, Config, ConfigError, load_config
from dfdc.io import disk_full_message, is_disk_full
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
            default=None,
            help=f"named profile (dfdc/profiles/*.yaml; one may `extends:` another) or a YAML path "
                 f"(default {DEFAULT_PROFILE}; a command using a run takes the run's own)",
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


def command_config(args: argparse.Namespace, module: object) -> Config:
    """The profile and overrides, or for a command using a run (``RUN_ARG``) the run's own
    configuration with the user's keys on top, the run found in ``runs/LATEST`` when not named."""
    run_arg = getattr(module, "RUN_ARG", None)
    if run_arg is None:
        return load_config(args.profile or DEFAULT_PROFILE, args.overrides)
    from dfdc.runconfig import resolve_run, run_config

    runs_dir = load_config(args.profile or DEFAULT_PROFILE).train.runs_dir
    run = resolve_run(getattr(args, run_arg), runs_dir, "--" + run_arg.replace("_", "-"))
    setattr(args, run_arg, run)
    return run_config(run, args.profile, args.overrides)


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    quiet_third_party_progress()
    try:
        cfg = command_config(args, modules[args.command])
        return int(modules[args.command].run(args, cfg) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk ends any stage with one line, not a traceback
        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_message(exc)}", file=sys.stderr)
        return 1
