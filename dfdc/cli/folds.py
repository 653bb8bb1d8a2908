"""``python -m dfdc folds``: leak-free cross-validation folds -> folds.csv; ``--check`` reports
the identity leak of any folds table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.analyze import AnalysisError
from dfdc.config import Config, set_value
from dfdc.folds import GROUP_BY, FoldsError, fold_counts, folds_from_data, largest_group_share, read_folds
from dfdc.identity import IdentityError
from dfdc.metadata import MetadataError

HELP = ("assign videos to folds (StratifiedGroupKFold; a fake always shares its original's fold, "
        "--group-by identity keeps each actor in one fold); --check reports a folds table's identity leak")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder holding dfdc_train_part_*/ and/or train_sample_videos/")
    parser.add_argument("--out", type=Path, default=Path("folds/folds.csv"), help="output CSV (default folds/folds.csv)")
    parser.add_argument("--n-folds", type=int, default=None, help="number of folds (profile: folds.n_folds)")
    parser.add_argument("--group-by", choices=GROUP_BY, default=None,
                        help="keep together: a fake with its original, whole part folders, or all originals of one face identity")
    parser.add_argument("--embeddings", type=Path, default=None,
                        help="identity: the crops' embeddings (`dfdc embed`; profile folds.embeddings, default DATA/embeddings)")
    parser.add_argument("--faces", type=Path, default=None,
                        help="faces folder (default DATA/faces when present): the leak report counts videos with crops only")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed (profile: folds.seed)")
    parser.add_argument("--strict", action="store_true", help="stop on any metadata problem")
    parser.add_argument("--check", type=Path, default=None, metavar="FOLDS_CSV",
                        help="make nothing: report how many identities of this folds table span more than one fold "
                             "(ground truth when the data records it, and the face clusters of --embeddings when given)")


def _embeddings_dir(args: argparse.Namespace, cfg: Config) -> Path:
    if args.embeddings is not None:
        return args.embeddings
    return Path(cfg.folds.embeddings) if cfg.folds.embeddings else args.data / "embeddings"


def _leaks(folds, args: argparse.Namespace, cfg: Config, clusters) -> list[str]:
    """Leak lines: against the data's ground truth and against face clusters (when known)."""
    from dfdc.identity import agreement, fold_leak, synth_identities

    from dfdc.embed import EmbedError, read_faces_index

    lines = []
    faces = args.faces or args.data / "faces"
    try:
        with_crops = set(read_faces_index(faces)["video"]) if (faces / "faces.csv").is_file() else None
    except EmbedError as exc:
        raise FoldsError(str(exc)) from None
    truth = synth_identities(args.data)
    if truth:
        lines.append(fold_leak(folds, truth, "ground truth: .synth.json", with_crops).format())
    if clusters is not None:
        lines.append(fold_leak(folds, clusters.identity_of, "face clusters", with_crops).format())
        if truth:
            agree = agreement(clusters.identity_of, truth)
            lines.append(f"face-cluster identities vs ground truth over {agree['originals']} originals: purity "
                         f"{agree['purity']:.3f}, completeness {agree['completeness']:.3f}, ARI {agree['ari']:.3f}")
    if not lines:
        lines.append("identity leak: unknown (no ground truth in the data; pass --embeddings to use face clusters)")
    return lines


def _clusters(args: argparse.Namespace, cfg: Config, needed: bool):
    """Face-cluster identities: when identity folds need them, or when ``--embeddings`` asks for
    them (the leak report); an unreadable embeddings folder is then an error, never a silent
    report on ground truth alone."""
    from dfdc.embed import EmbedError
    from dfdc.identity import identities_from_embeddings

    if not needed and args.embeddings is None:  # the leak report uses face clusters when asked to
        return None
    path = _embeddings_dir(args, cfg)
    try:
        return identities_from_embeddings(path, cfg.analyze, cfg.folds.identity_min_cluster, cfg.folds.identity_crops)
    except EmbedError as exc:
        why = "identity folds need face embeddings" if needed else f"--embeddings {path}: cannot read the face clusters"
        raise FoldsError(f"{why}: {exc}") from None


def run(args: argparse.Namespace, cfg: Config) -> int:
    set_value(cfg, "folds", "n_folds", args.n_folds)
    set_value(cfg, "folds", "group_by", args.group_by)
    set_value(cfg, "folds", "seed", args.seed)
    try:
        if args.check is not None:
            folds = read_folds(args.check)
            clusters = _clusters(args, cfg, needed=False)
            print(f"{args.check}: {len(folds)} videos, {folds['group'].nunique()} groups, {folds['fold'].nunique()} folds")
            print("\n".join(_leaks(folds, args, cfg, clusters)))
            return 0
        clusters = _clusters(args, cfg, needed=cfg.folds.group_by == "identity")
        identity_of = clusters.identity_of if clusters is not None else None
        folds, report = folds_from_data(args.data, args.out, cfg.folds, strict=args.strict, identity_of=identity_of)
        leaks = _leaks(folds, args, cfg, clusters)
    except (MetadataError, FoldsError, IdentityError, AnalysisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if len(report):
        print(report.format(), file=sys.stderr)
    print(f"{len(folds)} videos, {folds['group'].nunique()} groups (group_by={cfg.folds.group_by}), "
          f"{cfg.folds.n_folds} folds -> {args.out}")
    if cfg.folds.group_by == "identity":
        print(f"{clusters.format()}; largest group {largest_group_share(folds):.1%} of the videos")
    print(fold_counts(folds).to_string())
    print("\n".join(leaks))
    return 0
