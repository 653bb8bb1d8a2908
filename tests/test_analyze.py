"""dfdc.analyze: PCA -> t-SNE -> HDBSCAN recovers known clusters; outputs; purity; CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dfdc.analyze import AnalysisError, analyze, cluster_table, embed_map, purity
from dfdc.cli import main
from dfdc.config import AnalyzeConfig
from dfdc.embed import ARRAY_FILE, INDEX_COLUMNS, INDEX_FILE, META_FILE

# few points: one t-SNE thread (OpenMP threads spin on a loaded 2-core machine)
CFG = AnalyzeConfig(threads=1, min_cluster_size=10, gallery_clusters=2, gallery_faces=4)
CENTRES = 4


def _blobs(n: int = 240, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    x, truth = make_blobs(n_samples=n, n_features=dim, centers=CENTRES, cluster_std=1.0, center_box=(-8, 8),
                          random_state=seed)
    return x.astype(np.float32), truth


def _embeddings_folder(root: Path, x: np.ndarray, truth: np.ndarray) -> Path:
    """An embeddings folder as ``dfdc embed`` writes it: one video per true cluster and
    label, real crop files (for the galleries)."""
    emb, faces = root / "emb", root / "faces"
    emb.mkdir(parents=True)
    rows = []
    for i, c in enumerate(truth):
        label = "REAL" if i % 2 else "FAKE"
        video = f"v{c}_{label}.mp4"
        path = f"crops/{video[:-4]}/{i}_0.png"
        (faces / path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(faces / path), np.full((16, 16, 3), 40 * c, np.uint8))
        rows.append({"video": video, "label": label, "original": None if label == "REAL" else f"v{c}_REAL.mp4",
                     "part": f"dfdc_train_part_{c % 2}", "frame": i, "face": 0, "track": 0, "path": path})
    np.save(emb / ARRAY_FILE, x.astype(np.float16))
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(emb / INDEX_FILE, index=False)
    (emb / META_FILE).write_text(json.dumps({"dim": x.shape[1], "faces_dir": str(faces)}))
    return emb


def test_known_clusters_are_recovered() -> None:
    from sklearn.metrics import adjusted_rand_score

    x, truth = _blobs()
    for space in ("tsne", "pca"):
        result = embed_map(x, dataclasses.replace(CFG, cluster_space=space))
        clustered = result.labels >= 0
        assert result.map2d.shape == (len(x), 2) and result.pca.shape == (len(x), 50)
        assert len(set(result.labels[clustered])) == CENTRES, space
        assert clustered.mean() >= 0.9, space
        assert adjusted_rand_score(truth[clustered], result.labels[clustered]) >= 0.95, space
    clusters_only = embed_map(x, dataclasses.replace(CFG, cluster_space="pca"), with_map=False)
    assert clusters_only.map2d is None and len(set(clusters_only.labels) - {-1}) == CENTRES


def test_purity_and_cluster_table() -> None:
    labels = np.array([0, 0, 0, 1, 1, -1])
    assert purity(labels, ["a", "a", "b", "c", "c", "z"]) == pytest.approx(4 / 5)
    assert np.isnan(purity(np.array([-1, -1]), ["a", "b"]))
    index = pd.DataFrame({"video": ["r.mp4", "f.mp4", "q.mp4"], "label": ["REAL", "FAKE", "REAL"],
                          "original": [None, "r.mp4", None], "part": ["p0", "p0", "p1"]})
    table = cluster_table(index, np.array([0, 0, 1]))
    first = table.iloc[0]
    assert (first["faces"], first["videos"], first["originals"], first["fake_share"]) == (2, 2, 1, 0.5)
    assert first["purity_original"] == 1.0  # a fake counts as its original


def test_analyze_writes_clusters_summary_and_pictures(tmp_path: Path) -> None:
    x, truth = _blobs()
    emb = _embeddings_folder(tmp_path, x, truth)
    report = analyze(emb, tmp_path / "out", CFG)
    out = tmp_path / "out"
    clusters = pd.read_csv(out / "clusters.csv")
    assert len(clusters) == len(x) and {"cluster", "x", "y", "video", "path"} <= set(clusters.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clusters"] == report.clusters == CENTRES
    assert summary["purity_original"] >= 0.95  # a cluster is one true centre = one original
    for name in ["map.png", "pca_variance.png"] + [f for f in report.files if f.startswith("gallery_")]:
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 50, name
    assert len([f for f in report.files if f.startswith("gallery_")]) == 2
    assert not list(out.glob("*.tmp-*"))


def test_summary_is_strict_json_without_clusters(tmp_path: Path) -> None:
    """No cluster found: the purities are undefined -> null, never NaN (not JSON)."""
    x, truth = _blobs(n=60)
    emb = _embeddings_folder(tmp_path, x, truth)
    report = analyze(emb, tmp_path / "out", dataclasses.replace(CFG, min_cluster_size=60, cluster_space="pca"))
    assert report.clusters == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["purity_original"] is None and summary["purity_part"] is None and summary["clusters"] == 0


def test_three_d_map_is_optional(tmp_path: Path) -> None:
    x, truth = _blobs(n=120)
    emb = _embeddings_folder(tmp_path, x, truth)
    analyze(emb, tmp_path / "out", dataclasses.replace(CFG, tsne_3d=True))
    clusters = pd.read_csv(tmp_path / "out" / "clusters.csv")
    assert {"z1", "z2", "z3"} <= set(clusters.columns) and (tmp_path / "out" / "map3d.png").is_file()


def test_bad_settings_are_named(tmp_path: Path) -> None:
    x, _ = _blobs(n=40)
    with pytest.raises(AnalysisError, match="analyze.tsne"):
        embed_map(x, dataclasses.replace(CFG, tsne="umap"))
    with pytest.raises(AnalysisError, match="cluster_space: pca"):
        embed_map(x, CFG, with_map=False)
    with pytest.raises(AnalysisError, match="too few"):
        embed_map(x[:3], CFG)


def test_cli(tmp_path: Path, capsys) -> None:
    x, truth = _blobs(n=160)
    emb = _embeddings_folder(tmp_path, x, truth)
    argv = ["analyze", "--embeddings", str(emb), "--min-cluster-size", "10", "--set", "analyze.threads=1"]
    assert main(argv) == 0
    assert f"-> {CENTRES} clusters" in capsys.readouterr().out
    assert (tmp_path / "analysis" / "clusters.csv").is_file()
    assert main(["analyze", "--embeddings", str(tmp_path / "none")]) == 1
    assert "no finished embeddings" in capsys.readouterr().err


def test_study004_setting_clusters_the_3d_map() -> None:
    """Profile study004 is 004's analysis: PCA(50) -> scikit-learn TSNE(perplexity=50,
    n_components=3) -> HDBSCAN on that 3-D map."""
    from sklearn.metrics import adjusted_rand_score

    from dfdc.analyze import hdbscan_labels
    from dfdc.config import load_config

    study = load_config("study004").analyze
    assert (study.pca_components, study.tsne, study.perplexity, study.tsne_3d, study.cluster_space) == (
        50, "sklearn", 50.0, True, "tsne3d")
    x, truth = _blobs(n=160)  # perplexity 50 stays under its cap of (n - 1) / 3
    # openTSNE for speed here (scikit-learn's two maps took ~3 min of this test on a loaded machine)
    cfg = dataclasses.replace(study, tsne="opentsne", threads=1, min_cluster_size=10)
    result = embed_map(x, cfg)
    assert result.map3d.shape == (len(x), 3)
    assert (result.labels == hdbscan_labels(result.map3d, cfg)).all()  # the 3-D map's clusters, not the 2-D one's
    clustered = result.labels >= 0
    assert len(set(result.labels[clustered])) == CENTRES and adjusted_rand_score(truth[clustered],
                                                                                 result.labels[clustered]) >= 0.95
    with pytest.raises(AnalysisError, match="tsne_3d"):
        embed_map(x, dataclasses.replace(cfg, tsne_3d=False))
