"""``python -m dfdc kernel``: a run's models -> offline Kaggle kernel bundle [-> push | local run]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.aggregate import explicit_keys
from dfdc.config import Config, make_hint, set_value
from dfdc.kaggle import KernelError, build_bundle, find_credentials, local_inputs, push_bundle, resolve_username, run_local

HELP = "build the offline Kaggle kernel + weights dataset of a run; --push uploads it, --local runs it here"

RUN_ARG = "models"  # the run folder: its own configuration is the bundle's (dfdc.runconfig)
PLACEHOLDER_USER = "your-kaggle-username"  # build-only bundles when no username is known


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, default=None,
                        help="run folder with fold*/best.pt (runs/NAME; default: the run in runs/LATEST)")
    parser.add_argument("--out", type=Path, default=None, help="bundle folder (default: kernel.build_dir, kernels/build)")
    parser.add_argument("--push", action="store_true",
                        help="upload the dataset, wait until Kaggle has processed it, push the kernel")
    parser.add_argument(
        "--local", type=Path, default=None, metavar="DATA_ROOT",
        help="run the kernel here, offline, in a Kaggle-image-like interpreter, on DATA_ROOT/test_videos + "
        "sample_submission.csv",
    )
    parser.add_argument("--labels", type=Path, default=None,
                        help="with --local: score the local submission against these labels (filename,label)")
    parser.add_argument("--slug", default=None, help="kernel slug (kernel.slug)")
    parser.add_argument("--dataset-slug", default=None, help="weights dataset slug, 6-50 chars (kernel.dataset_slug)")
    parser.add_argument("--username", default=None, help="Kaggle user owning both (default: from the credentials)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per kaggle CLI call (kernel.push_timeout)")
    parser.add_argument("--public", action="store_true", default=None, help="make the kernel public (default private)")


def score_local(submission: Path, labels: Path) -> str:
    """The local kernel run's submission scored as ``dfdc score`` does (report beside it)."""
    from dfdc.metrics import ScoreError, format_value, read_labels, score_submission

    try:
        report = score_submission(submission, read_labels(labels), submission.parent)
    except ScoreError as exc:
        raise KernelError(f"cannot score the local submission {submission} against {labels}: {exc}") from None
    m = report["metrics"]
    return (f"local kernel submission: log loss {m['logloss']:.5f} on {m['videos']} videos "
            f"(AUC {format_value(m['auc'])}) "
            f"against {labels}; report {submission.parent / 'report.md'}")


def run(args: argparse.Namespace, cfg: Config) -> int:
    set_value(cfg, "kernel", "slug", args.slug)
    set_value(cfg, "kernel", "dataset_slug", args.dataset_slug)
    set_value(cfg, "kernel", "push_timeout", args.timeout)
    if args.public:
        set_value(cfg, "kernel", "private", False)
    try:
        if args.push:
            find_credentials()  # before any work: nothing is built or sent without them
        if args.local is not None:
            local_inputs(args.local)  # fail before the build, not after
        if args.labels is not None and args.local is None:
            print("error: --labels scores the local run's submission: use it with --local DATA_ROOT", file=sys.stderr)
            return 2
        if args.labels is not None and not args.labels.is_file():
            print(f"error: labels {args.labels} not found; pass a filename,label CSV or leave --labels out",
                  file=sys.stderr)
            return 2
        username = resolve_username(args.username)
        if username is None:
            if args.push:
                print(f"error: no Kaggle username: pass {make_hint('--username NAME', 'USERNAME=NAME')} "
                      "or set KAGGLE_USERNAME", file=sys.stderr)
                return 2
            username = PLACEHOLDER_USER
            print(f"note: no Kaggle username known; the bundle uses {username!r} "
                  f"(pass {make_hint('--username NAME', 'USERNAME=NAME')})", file=sys.stderr)
        out = args.out or Path(cfg.kernel.build_dir)
        bundle = build_bundle(args.models, out, cfg, username, explicit_keys(args.overrides))
        print(
            f"bundle: {bundle.dataset_dir} ({len(bundle.folds)} folds, {bundle.weights_bytes / 1e6:.1f} MB fp16 weights) "
            f"and {bundle.kernel_dir}; dataset {bundle.dataset_id}, kernel {bundle.kernel_id}"
            + (f", accelerator {cfg.kernel.machine_shape}" if cfg.kernel.machine_shape else "")
        )
        for wheel in bundle.wheels:
            print(f"  wheel {wheel['file']}: {wheel['reason']}")
        if args.local is not None:
            local = run_local(bundle, args.local, cfg)
            print(f"local kernel run: STATUS: {local.status}" + (f" ({local.reasons})" if local.reasons else "")
                  + f"; exit {local.returncode}; {local.rows} rows, {local.fallback_rows} at the fallback, "
                  f"{local.seconds:.1f} s; {local.submission} (log {local.log})")
            if args.labels is not None:
                print(score_local(local.submission, args.labels))
            if local.status != "ok":
                print(f"error: the kernel failed (STATUS: failed); see {local.log}", file=sys.stderr)
                return 1
        if args.push:
            report = push_bundle(bundle, cfg)
            print(f"dataset {bundle.dataset_id}: {report.dataset_action}d, version {report.dataset_version} "
                  f"{report.dataset_status}")
            print(f"kernel {bundle.kernel_id} version {report.kernel_version} pushed"
                  + (f": {report.kernel_url}" if report.kernel_url else "") + f" (recorded in {report.record})")
            print("when it has run on Kaggle: make submit")
    except KernelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
