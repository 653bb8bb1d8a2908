"""The study's analysis of face embeddings: PCA -> t-SNE -> HDBSCAN, summary and pictures.

``analyze(embeddings_dir, out, cfg)`` reads an embeddings folder (``dfdc embed``) and writes
into ``out``::

    clusters.csv         one row per crop: video, label, original, part, frame, face, track,
                         path, cluster (-1 = noise), x, y (the 2-D map; z1..z3 with the 3-D map)
    summary.json         clusters, noise share, purity by original and by part (null without
                         clusters), timings; strict JSON
    clusters_summary.csv per cluster: faces, videos, originals, parts, REAL / FAKE share, purity
    map.png              the 2-D t-SNE map coloured by cluster and by label (two panels)
    pca_variance.png     explained variance of the PCA components (and its running sum)
    gallery_cluster_K.png  a grid of face crops of each of the largest clusters
    map3d.png            with ``analyze.tsne_3d``: the 3-D map coloured by cluster

The pipeline (study 004: B7 embeddings -> ``PCA(n_components=50)`` -> ``TSNE(perplexity=50,
n_components=3)`` -> HDBSCAN, 520 clusters from 130,000 faces in 45 minutes): scikit-learn's
``PCA`` (randomized SVD on large inputs) to ``analyze.pca_components``; t-SNE with openTSNE
(FFT-interpolated gradients; the 2-D map) or scikit-learn's Barnes-Hut;
``sklearn.cluster.HDBSCAN`` on the 2-D map (the kit's default), on the 3-D map
(``analyze.cluster_space: tsne3d``, with ``analyze.tsne_3d``) or on the PCA scores
(``analyze.cluster_space: pca``). The study's own setting -- scikit-learn's t-SNE at
perplexity 50 in 3-D, HDBSCAN on that map -- is the profile ``study004``
(``dfdc analyze --profile study004``). ``embed_map`` is the same pipeline as a function of an
array (identity folds use it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.config import AnalyzeConfig
from dfdc.io import atomic_open, atomic_write_csv, atomic_write_json
from dfdc.threads import available_cores

TSNE_BACKENDS = ("opentsne", "sklearn")
CLUSTER_SPACES = ("tsne", "tsne3d", "pca")  # HDBSCAN on: the 2-D map, the 3-D map (study 004), the PCA scores
NOISE = -1  # HDBSCAN's label of points in no cluster
LARGE_PCA = 20_000  # rows from which PCA uses the randomized solver (exact SVD is slow there)
MIN_TSNE_POINTS = 4  # t-SNE needs a handful of points (perplexity < (n - 1) / 3)
PLOT_DPI = 100
GALLERY_TILE = 64  # px per face in a gallery image


class AnalysisError(ValueError):
    """Embeddings that cannot be analysed as asked (the message says what to do)."""


@dataclass
class MapResult:
    """What ``embed_map`` computed for one array."""

    pca: np.ndarray  # N x k PCA scores
    explained: np.ndarray  # k explained-variance ratios
    map2d: np.ndarray | None  # N x 2 t-SNE (None: not asked for, ``with_map=False``)
    labels: np.ndarray  # N HDBSCAN labels (NOISE = -1)
    map3d: np.ndarray | None = None  # N x 3 t-SNE (analyze.tsne_3d)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class AnalysisReport:
    out: Path
    rows: int
    clusters: int
    noise_share: float
    purity_original: float
    purity_part: float
    seconds: dict[str, float]
    files: list[str]

    def format(self) -> str:
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return (f"{self.rows} crops -> {self.clusters} clusters, noise {self.noise_share:.1%}, purity by original "
                f"{self.purity_original:.3f}, by part {self.purity_part:.3f} ({timing}) -> {self.out}")


# ----------------------------------------------------------------------------- the pipeline


def _threads(cfg: AnalyzeConfig) -> int:
    return cfg.threads if cfg.threads > 0 else available_cores()


def check_config(cfg: AnalyzeConfig) -> None:
    if cfg.tsne not in TSNE_BACKENDS:
        raise AnalysisError(f"analyze.tsne={cfg.tsne!r}: use one of {', '.join(TSNE_BACKENDS)}")
    if cfg.cluster_space not in CLUSTER_SPACES:
        raise AnalysisError(f"analyze.cluster_space={cfg.cluster_space!r}: use one of {', '.join(CLUSTER_SPACES)}")
    if cfg.cluster_space == "tsne3d" and not cfg.tsne_3d:
        raise AnalysisError("analyze.cluster_space=tsne3d clusters the 3-D map: set analyze.tsne_3d: true too")
    if cfg.pca_components < 2 or cfg.min_cluster_size < 2 or cfg.perplexity <= 0:
        raise AnalysisError("analyze.pca_components and analyze.min_cluster_size must be >= 2, perplexity > 0")


def pca_scores(x: np.ndarray, components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA to ``components`` (fewer when the data has fewer): (scores, explained-variance ratios)."""
    from sklearn.decomposition import PCA

    k = max(1, min(components, x.shape[0], x.shape[1]))
    solver = "randomized" if x.shape[0] >= LARGE_PCA and k < min(x.shape) else "full"
    pca = PCA(n_components=k, svd_solver=solver, random_state=seed)
    scores = pca.fit_transform(np.asarray(x, dtype=np.float32))
    return scores.astype(np.float32), pca.explained_variance_ratio_


def tsne(x: np.ndarray, dims: int, cfg: AnalyzeConfig) -> np.ndarray:
    """A ``dims``-D t-SNE map of ``x`` (PCA-initialised, perplexity capped for small inputs)."""
    n = x.shape[0]
    if n < MIN_TSNE_POINTS:
        raise AnalysisError(f"{n} points are too few for t-SNE (at least {MIN_TSNE_POINTS})")
    perplexity = min(cfg.perplexity, (n - 1) / 3)
    x = np.ascontiguousarray(x, dtype=np.float64 if cfg.tsne == "sklearn" else np.float32)
    if cfg.tsne == "opentsne":
        from openTSNE import TSNE

        # openTSNE's own rule for 2-D ("auto"): Barnes-Hut below 10,000 points (FFT's fixed grid
        # cost dominates there: 300 points took 38 s with FFT, 3.4 s with BH, measured), FFT above;
        # FFT-interpolated gradients exist for 1-D and 2-D maps only, so 3-D is Barnes-Hut
        method = "auto" if dims <= 2 else "bh"
        model = TSNE(n_components=dims, perplexity=perplexity, n_jobs=_threads(cfg), random_state=cfg.seed,
                     negative_gradient_method=method, initialization="pca", verbose=False)
        return np.asarray(model.fit(x), dtype=np.float32)
    from sklearn.manifold import TSNE

    model = TSNE(n_components=dims, perplexity=perplexity, init="pca", method="barnes_hut",
                 random_state=cfg.seed, n_jobs=_threads(cfg))
    return model.fit_transform(x).astype(np.float32)


def hdbscan_labels(x: np.ndarray, cfg: AnalyzeConfig, min_cluster_size: int | None = None) -> np.ndarray:
    """``sklearn.cluster.HDBSCAN`` labels of the rows of ``x`` (NOISE = -1)."""
    from sklearn.cluster import HDBSCAN

    size = min_cluster_size or cfg.min_cluster_size
    size = max(2, min(size, x.shape[0]))
    samples = min(cfg.min_samples or size, x.shape[0])
    return HDBSCAN(min_cluster_size=size, min_samples=samples, copy=True).fit_predict(x).astype(int)


def embed_map(x: np.ndarray, cfg: AnalyzeConfig, min_cluster_size: int | None = None,
              with_map: bool = True) -> MapResult:
    """PCA -> t-SNE (2-D, and 3-D when ``cfg.tsne_3d``) -> HDBSCAN (on ``cfg.cluster_space``)
    of an N x D array (``with_map=False`` with ``cluster_space: pca``: clusters only, no t-SNE)."""
    check_config(cfg)
    if not with_map and cfg.cluster_space != "pca":
        raise AnalysisError("clusters without the t-SNE map need analyze.cluster_space: pca")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    scores, explained = pca_scores(x, cfg.pca_components, cfg.seed)
    seconds["pca"] = time.perf_counter() - t0
    map2d = map3d = None
    if with_map:
        t0 = time.perf_counter()
        map2d = tsne(scores, 2, cfg)
        seconds["tsne_2d"] = time.perf_counter() - t0
    if with_map and cfg.tsne_3d:
        t0 = time.perf_counter()
        map3d = tsne(scores, 3, cfg)
        seconds["tsne_3d"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    space = {"tsne": map2d, "tsne3d": map3d, "pca": scores}[cfg.cluster_space]
    labels = hdbscan_labels(space, cfg, min_cluster_size)
    seconds["hdbscan"] = time.perf_counter() - t0
    return MapResult(scores, explained, map2d, labels, map3d, seconds)


# ----------------------------------------------------------------------------- the summary


def purity(labels: np.ndarray, truth: pd.Series | np.ndarray) -> float:
    """Share of clustered (non-noise) points that belong to their cluster's most common
    ``truth`` value (1.0 = every cluster holds one value only; NaN without clusters)."""
    frame = pd.DataFrame({"c": np.asarray(labels), "t": np.asarray(truth, dtype=object)})
    frame = frame[frame["c"] != NOISE]
    if frame.empty:
        return float("nan")
    top = frame.groupby("c")["t"].agg(lambda s: s.value_counts().iloc[0])
    return float(top.sum() / len(frame))


def source_video(index: pd.DataFrame) -> pd.Series:
    """The original (REAL source) video of each row: a FAKE's ``original``, else its own name."""
    original = index["original"].where(index["original"].notna() & (index["original"].astype(str) != ""), None)
    return original.fillna(index["video"]).astype(str)


def cluster_table(index: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Per cluster (noise excluded): faces, videos, originals, parts, REAL/FAKE share, purities."""
    frame = index.assign(cluster=labels, source=source_video(index).to_numpy())
    frame = frame[frame["cluster"] != NOISE]
    rows = []
    for c, group in frame.groupby("cluster"):
        rows.append({
            "cluster": int(c),
            "faces": len(group),
            "videos": group["video"].nunique(),
            "originals": group["source"].nunique(),
            "parts": group["part"].nunique(),
            "real_share": round(float((group["label"] == "REAL").mean()), 4),
            "fake_share": round(float((group["label"] == "FAKE").mean()), 4),
            "purity_original": round(float(group["source"].value_counts().iloc[0] / len(group)), 4),
            "purity_part": round(float(group["part"].astype(str).value_counts().iloc[0] / len(group)), 4),
        })
    columns = ["cluster", "faces", "videos", "originals", "parts", "real_share", "fake_share",
               "purity_original", "purity_part"]
    return pd.DataFrame(rows, columns=columns).sort_values("faces", ascending=False).reset_index(drop=True)


def summarize(index: pd.DataFrame, labels: np.ndarray) -> dict[str, Any]:
    clustered = labels != NOISE
    return {
        "crops": int(len(labels)),
        "clusters": int(len(set(labels.tolist()) - {NOISE})),
        "noise_share": round(float(1 - clustered.mean()), 4) if len(labels) else 0.0,
        "purity_original": round(purity(labels, source_video(index)), 4),
        "purity_part": round(purity(labels, index["part"].astype(str)), 4),
        "real_share_clustered": round(float((index.loc[clustered, "label"] == "REAL").mean()), 4) if clustered.any() else None,
    }


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (a purity without clusters is NaN) as ``None``:
    summary.json stays strict JSON (``null``), which every JSON reader accepts, not ``NaN``."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- pictures


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    plt.close(fig)


def _cluster_colours(labels: np.ndarray) -> np.ndarray:
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    ids = sorted(set(labels.tolist()) - {NOISE})
    rank = {c: i for i, c in enumerate(ids)}
    colours = np.array([palette(rank[c] % palette.N) if c != NOISE else (0.75, 0.75, 0.75, 1.0) for c in labels])
    return colours


def plot_map(map2d: np.ndarray, labels: np.ndarray, index: pd.DataFrame, path: Path, cfg: AnalyzeConfig) -> None:
    """Two panels: the 2-D map coloured by cluster (noise grey) and by REAL/FAKE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.arange(len(labels))
    if len(keep) > cfg.max_plot_points:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(keep, cfg.max_plot_points, replace=False))
    point = max(0.5, min(12.0, 6000.0 / max(1, len(keep)) ** 0.75))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    xy, lab = map2d[keep], labels[keep]
    n_clusters = len(set(labels.tolist()) - {NOISE})
    axes[0].scatter(xy[:, 0], xy[:, 1], c=_cluster_colours(lab), s=point, linewidths=0, rasterized=True)
    axes[0].set_title(f"HDBSCAN: {n_clusters} clusters, noise {np.mean(labels == NOISE):.0%} (grey)")
    fake = (index["label"].to_numpy()[keep] == "FAKE")
    for mask, colour, name in ((~fake, "tab:blue", "REAL"), (fake, "tab:red", "FAKE")):
        axes[1].scatter(xy[mask, 0], xy[mask, 1], c=colour, s=point, linewidths=0, alpha=0.6, label=name, rasterized=True)
    axes[1].legend(markerscale=max(1.0, 6 / point), loc="best")
    axes[1].set_title("label")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of {len(labels)} face embeddings")
    _save_figure(fig, path)


def plot_map3d(map3d: np.ndarray, labels: np.ndarray, path: Path, cfg: AnalyzeConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.arange(len(labels))
    if len(keep) > cfg.max_plot_points:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(keep, cfg.max_plot_points, replace=False))
    fig = plt.figure(figsize=(7, 6))
    ax = fig.add_subplot(projection="3d")
    ax.scatter(*map3d[keep].T, c=_cluster_colours(labels[keep]), s=2, linewidths=0)
    ax.set_title("3-D t-SNE coloured by cluster")
    _save_figure(fig, path)


def plot_variance(explained: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.arange(1, len(explained) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(k, explained, color="tab:blue", label="per component")
    ax.plot(k, np.cumsum(explained), color="tab:orange", marker=".", label="cumulative")
    ax.set_xlabel("PCA component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"PCA: {len(explained)} components explain {np.sum(explained):.1%}")
    _save_figure(fig, path)


def gallery(files: list[str], path: Path, title: str, tile: int = GALLERY_TILE) -> None:
    """A square grid of the face crops ``files`` (missing files left black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dfdc.data import read_rgb
    from dfdc.preprocess import resize_pad

    side = max(1, math.ceil(math.sqrt(len(files))))
    grid = np.zeros((side * tile, side * tile, 3), np.uint8)
    for i, file in enumerate(files):
        if not Path(file).is_file():
            continue
        r, c = divmod(i, side)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = resize_pad(read_rgb(file), tile)
    fig, ax = plt.subplots(figsize=(side * tile / PLOT_DPI + 0.2, side * tile / PLOT_DPI + 0.5))
    ax.imshow(grid)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    _save_figure(fig, path)


# ----------------------------------------------------------------------------- the stage


def analyze(embeddings_dir: Path, out: Path, cfg: AnalyzeConfig, faces_dir: Path | None = None) -> AnalysisReport:
    """PCA -> t-SNE -> HDBSCAN of an embeddings folder; writes the files of the module
    docstring into ``out``. ``faces_dir`` (default: the one recorded by ``dfdc embed``)
    holds the crops for the galleries."""
    from dfdc.embed import embeddings_meta, load_embeddings

    embeddings_dir, out = Path(embeddings_dir), Path(out)
    array, index = load_embeddings(embeddings_dir)
    if not np.isfinite(array).all():
        raise AnalysisError(f"{embeddings_dir}: embeddings hold NaN or inf values; re-embed with another model or dtype")
    result = embed_map(array, cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = index.assign(cluster=result.labels, x=result.map2d[:, 0], y=result.map2d[:, 1])
    if result.map3d is not None:
        table = table.assign(z1=result.map3d[:, 0], z2=result.map3d[:, 1], z3=result.map3d[:, 2])
    atomic_write_csv(out / "clusters.csv", table)
    per_cluster = cluster_table(index, result.labels)
    atomic_write_csv(out / "clusters_summary.csv", per_cluster)
    files = ["clusters.csv", "clusters_summary.csv", "map.png", "pca_variance.png"]
    plot_map(result.map2d, result.labels, index, out / "map.png", cfg)
    plot_variance(result.explained, out / "pca_variance.png")
    if result.map3d is not None:
        plot_map3d(result.map3d, result.labels, out / "map3d.png", cfg)
        files.append("map3d.png")
    faces_root = Path(faces_dir) if faces_dir else Path(embeddings_meta(embeddings_dir).get("faces_dir", ""))
    rng = np.random.default_rng(cfg.seed)
    for row in per_cluster.head(cfg.gallery_clusters).itertuples():
        members = np.flatnonzero(result.labels == row.cluster)
        chosen = np.sort(rng.choice(members, min(cfg.gallery_faces, len(members)), replace=False))
        name = f"gallery_cluster_{row.cluster}.png"
        gallery([str(faces_root / p) for p in index["path"].to_numpy()[chosen]], out / name,
                f"cluster {row.cluster}: {row.faces} faces, {row.videos} videos, FAKE {row.fake_share:.0%}")
        files.append(name)
    seconds = {k: round(v, 2) for k, v in result.seconds.items()}
    seconds["outputs"] = round(time.perf_counter() - t0, 2)
    summary = summarize(index, result.labels)
    summary.update({"embeddings": str(embeddings_dir), "pca_components": int(result.pca.shape[1]),
                    "explained_variance": round(float(np.sum(result.explained)), 4), "tsne": cfg.tsne,
                    "perplexity": cfg.perplexity, "tsne_3d": cfg.tsne_3d,
                    "cluster_space": cfg.cluster_space, "min_cluster_size": cfg.min_cluster_size, "seconds": seconds})
    atomic_write_json(out / "summary.json", strict_json(summary))
    files.insert(2, "summary.json")
    return AnalysisReport(out, len(index), summary["clusters"], summary["noise_share"], summary["purity_original"],
                          summary["purity_part"], seconds, files)
