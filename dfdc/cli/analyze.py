"""``python -m dfdc analyze``: PCA -> t-SNE -> HDBSCAN of face embeddings -> clusters.csv, summary, PNGs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config, set_value

HELP = "the study's analysis of face embeddings: PCA -> t-SNE -> HDBSCAN, clusters.csv, summary, maps and galleries"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", type=Path, required=True, help="embeddings folder written by `dfdc embed`")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the embeddings folder's sibling analysis/)")
    parser.add_argument("--faces", type=Path, default=None, help="faces folder for the galleries (default: the one embedded)")
    parser.add_argument("--tsne", choices=("opentsne", "sklearn"), default=None, help="t-SNE library (profile: analyze.tsne)")
    parser.add_argument("--tsne-3d", action="store_true", default=None, help="also the 3-D t-SNE map (several times slower)")
    parser.add_argument("--cluster-space", choices=("tsne", "tsne3d", "pca"), default=None, help="what HDBSCAN clusters")
    parser.add_argument("--min-cluster-size", type=int, default=None, help="HDBSCAN min_cluster_size (faces)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dfdc.analyze import AnalysisError, analyze
    from dfdc.embed import EmbedError

    set_value(cfg, "analyze", "tsne", args.tsne)
    set_value(cfg, "analyze", "tsne_3d", args.tsne_3d)
    set_value(cfg, "analyze", "cluster_space", args.cluster_space)
    set_value(cfg, "analyze", "min_cluster_size", args.min_cluster_size)
    out = args.out or args.embeddings.parent / "analysis"
    try:
        report = analyze(args.embeddings, out, cfg.analyze, faces_dir=args.faces)
    except (AnalysisError, EmbedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.format())
    print("wrote " + ", ".join(report.files))
    return 0
