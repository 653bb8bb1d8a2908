"""Benchmark of ``dfdc analyze`` (PCA -> t-SNE -> HDBSCAN + outputs) on synthetic embeddings.

Synthetic clustered embeddings (scikit-learn's ``make_blobs``: ``--n`` points in ``--dim``
dimensions around ``--centers`` centres, the study's scale by default: 130,000 faces, 520
clusters, 512-D as EfficientNet-B0's features) are written as an embeddings folder and
analysed end to end by ``dfdc.analyze.analyze``. Prints the time of each stage, the total,
and how well the clusters were recovered (adjusted Rand index against the true centres).

    python bench/bench_analyze.py                       # full size, openTSNE (the default)
    python bench/bench_analyze.py --n 20000 --compare   # both t-SNE libraries side by side
    python bench/bench_analyze.py --n 20000 --tsne-3d   # with the 3-D map
    python bench/bench_analyze.py --n 3000 --profiles b7,study004   # the kit's default vs study 004's

Target: 130,000 x 512 in <= 9 minutes on 2 CPU cores (the study: 45 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfdc.analyze import analyze  # noqa: E402
from dfdc.config import AnalyzeConfig  # noqa: E402
from dfdc.embed import ARRAY_FILE, INDEX_COLUMNS, INDEX_FILE, META_FILE  # noqa: E402

TARGET_SECONDS = 9 * 60  # the target for 130,000 x 512 on 2 cores
CLUSTER_STD = 4.0  # blob spread: neighbouring blobs overlap a little, as face clusters do


def synthetic_embeddings(folder: Path, n: int, dim: int, centers: int, seed: int,
                         cluster_std: float = CLUSTER_STD) -> np.ndarray:
    """Write an embeddings folder of ``make_blobs`` points; returns the true centre per row."""
    from sklearn.datasets import make_blobs

    x, truth = make_blobs(n_samples=n, n_features=dim, centers=centers, cluster_std=cluster_std,
                          center_box=(-10.0, 10.0), random_state=seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / ARRAY_FILE, x.astype(np.float16))
    videos = [f"v{c:04d}_{i % 8}.mp4" for i, c in enumerate(truth)]  # 8 videos per cluster
    index = pd.DataFrame({
        "video": videos, "label": np.where(np.arange(n) % 6 == 0, "REAL", "FAKE"), "original": None,
        "part": [f"dfdc_train_part_{c % 50}" for c in truth], "frame": np.arange(n) % 300, "face": 0,
        "track": 0, "path": [f"crops/{v}/{i}.png" for i, v in enumerate(videos)],
    })[INDEX_COLUMNS]
    index.to_csv(folder / INDEX_FILE, index=False)
    (folder / META_FILE).write_text(json.dumps({"dim": dim, "faces_dir": str(folder / "no-crops")}))
    return truth


def run_once(emb: Path, out: Path, truth: np.ndarray, cfg: AnalyzeConfig, setting: str = "") -> dict:
    from sklearn.metrics import adjusted_rand_score

    started = time.perf_counter()
    report = analyze(emb, out, cfg)
    total = time.perf_counter() - started
    labels = pd.read_csv(out / "clusters.csv")["cluster"].to_numpy()
    clustered = labels >= 0
    return {**({"setting": setting} if setting else {}), "tsne": cfg.tsne, **report.seconds, "total": round(total, 1), "clusters": report.clusters,
            "noise": round(report.noise_share, 3), "ari_clustered": round(adjusted_rand_score(truth[clustered], labels[clustered]), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=130_000, help="points (default the study's 130,000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    parser.add_argument("--centers", type=int, default=0, help="true clusters (default n / 250, the study's average)")
    parser.add_argument("--tsne", choices=("opentsne", "sklearn"), default=None, help="t-SNE library (default: the config's)")
    parser.add_argument("--compare", action="store_true", help="run both t-SNE libraries on the same data")
    parser.add_argument("--profiles", default="", metavar="A,B",
                        help="run the analyze settings of these profiles on the same data (e.g. b7,study004)")
    parser.add_argument("--tsne-3d", action="store_true", help="also the 3-D map")
    parser.add_argument("--cluster-std", type=float, default=CLUSTER_STD,
                        help=f"blob spread (default {CLUSTER_STD}; larger: clusters overlap more, harder to recover)")
    parser.add_argument("--threads", type=int, default=0, help="t-SNE threads (0 = all cores)")
    parser.add_argument("--min-cluster-size", type=int, default=0, help="HDBSCAN min_cluster_size (default the config's)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default a temp folder)")
    args = parser.parse_args()

    centers = args.centers or max(2, round(args.n / 250))
    base = AnalyzeConfig()
    cfg = dataclasses.replace(base, tsne_3d=args.tsne_3d, threads=args.threads,
                              min_cluster_size=args.min_cluster_size or base.min_cluster_size)
    backends = ["opentsne", "sklearn"] if args.compare else [args.tsne or cfg.tsne]
    settings = [(b, dataclasses.replace(cfg, tsne=b)) for b in backends]
    if args.profiles:
        from dfdc.config import load_config

        settings = [(name, dataclasses.replace(load_config(name).analyze, threads=args.threads,
                                               min_cluster_size=args.min_cluster_size or base.min_cluster_size))
                    for name in args.profiles.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        work = args.out or Path(tmp)
        t0 = time.perf_counter()
        truth = synthetic_embeddings(work / "embeddings", args.n, args.dim, centers, seed=0,
                                     cluster_std=args.cluster_std)
        print(f"synthetic embeddings: {args.n} x {args.dim}, {centers} clusters, std {args.cluster_std} "
              f"({time.perf_counter() - t0:.1f} s to make)")
        rows = [run_once(work / "embeddings", work / f"analysis-{name}", truth, setting,
                         name if args.profiles else "") for name, setting in settings]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if len(rows) == 2 and not args.profiles:
        print(f"sklearn / openTSNE t-SNE 2-D time: {rows[1]['tsne_2d'] / rows[0]['tsne_2d']:.2f}x")
    if args.n == 130_000 and args.dim == 512:
        for row in rows:
            verdict = "meets" if row["total"] <= TARGET_SECONDS else "misses"
            print(f"{row['tsne']}: {row['total']:.0f} s total, {verdict} the {TARGET_SECONDS} s target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
