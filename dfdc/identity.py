"""Who is in each original video: identities from face clusters, and the identity leak of folds.

DFDC filmed each paid actor in many original videos, so folds grouped by original still put
one actor's face in training and in validation. ``cluster_identities`` clusters the faces of
the originals (their REAL crops: a fake's face is another person's) with the analysis
pipeline's PCA and HDBSCAN (``dfdc.analyze.embed_map``; HDBSCAN on the PCA scores, no t-SNE:
on the mini DFDC that recovered the recorded identities exactly where clustering the t-SNE
map merged two, and it skips t-SNE's minutes) and gives each original the majority cluster
of its crops; originals with the same cluster are one identity (an original
whose crops are all noise is an identity of its own). ``dfdc.folds`` groups by it.

``fold_leak`` reports how many identities of a folds table span more than one fold, by the
clustering or by ground truth (``synth_identities``: the mini DFDC records each video's
identity in ``.synth.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc.config import AnalyzeConfig

CLUSTER_PREFIX = "identity_"  # identity names from clusters: identity_<cluster>


class IdentityError(ValueError):
    """Identities that cannot be derived as asked (the message says what to do)."""


@dataclass
class IdentityReport:
    """Identity per original video from face clusters, and how well it fits a ground truth."""

    table: pd.DataFrame  # original, identity, crops, share (of its crops in that cluster; 0 = all noise)
    clusters: int
    noise_share: float  # share of the originals' crops HDBSCAN left in no cluster

    @property
    def identity_of(self) -> dict[str, str]:
        return dict(zip(self.table["original"], self.table["identity"]))

    def merged_originals(self) -> int:
        """Originals that share their identity with at least one other original."""
        sizes = self.table["identity"].map(self.table["identity"].value_counts())
        return int((sizes > 1).sum())

    def format(self) -> str:
        return (f"{len(self.table)} originals -> {self.table['identity'].nunique()} identities "
                f"({self.clusters} face clusters, {self.noise_share:.0%} of their crops noise); "
                f"{self.merged_originals()} originals in multi-video identities")


def cluster_identities(embeddings: np.ndarray, index: pd.DataFrame, cfg: AnalyzeConfig,
                       min_cluster: int = 0, crops: int = 0) -> IdentityReport:
    """Identity of every original (REAL) video in ``index`` from its crops' embeddings.

    ``min_cluster`` is HDBSCAN's min_cluster_size (0 = the median crops per original, so a
    cluster holds at least about one video's faces); ``crops`` caps the crops per original
    (evenly spaced; 0 = all)."""
    from dfdc.analyze import NOISE, embed_map

    from dfdc.faceindex import spaced_rows

    index = index.reset_index(drop=True)
    real = spaced_rows(index, "REAL", crops)  # the rule `dfdc embed` (embed.select identity) embeds by
    if real.sum() == 0:
        raise IdentityError("the embeddings hold no crop of a REAL video: identities come from the originals' faces")
    videos = index.loc[real, "video"].astype(str).to_numpy()
    per_video = pd.Series(videos).value_counts()
    size = min_cluster or max(2, int(per_video.median()))
    if real.sum() < 2 * size:
        labels = np.full(int(real.sum()), NOISE)  # too few faces to cluster: every original alone
    else:
        labels = embed_map(embeddings[real], dataclasses.replace(cfg, cluster_space="pca", tsne_3d=False), size,
                           with_map=False).labels
    frame = pd.DataFrame({"original": videos, "cluster": labels})
    rows = []
    for original, group in frame.groupby("original", sort=True):
        counts = group.loc[group["cluster"] != NOISE, "cluster"].value_counts()
        if counts.empty:
            rows.append((original, original, len(group), 0.0))
        else:
            rows.append((original, f"{CLUSTER_PREFIX}{int(counts.index[0])}", len(group), round(counts.iloc[0] / len(group), 3)))
    table = pd.DataFrame(rows, columns=["original", "identity", "crops", "share"])
    return IdentityReport(table, int(len(set(labels.tolist()) - {NOISE})), float(np.mean(labels == NOISE)))


def identities_from_embeddings(path: Path, cfg: AnalyzeConfig, min_cluster: int = 0, crops: int = 0) -> IdentityReport:
    """``cluster_identities`` of an embeddings folder written by ``dfdc embed`` (all crops, or
    with ``embed.select`` identity the ones clustered here: a selection of fewer crops per
    video than ``crops`` is named in a warning)."""
    from dfdc.config import warn
    from dfdc.embed import embeddings_meta, load_embeddings

    array, index = load_embeddings(path)
    kept = embeddings_meta(path).get("selection", {}).get("per_video", 0)
    if kept and (crops <= 0 or kept < crops):
        warn(f"{path} holds at most {kept} REAL crops per video (embed.select identity), fewer than "
             f"folds.identity_crops={crops or 'all'}: clustering those; re-embed to use more")
    return cluster_identities(array, index, cfg, min_cluster, crops)


def synth_identities(data_root: Path) -> dict[str, str] | None:
    """Ground truth of the mini DFDC: video -> filmed identity (None for other data)."""
    from dfdc.synth import read_marker

    marker = read_marker(Path(data_root))
    if not marker or "videos" not in marker:
        return None
    return {name: v["identity"] for name, v in marker["videos"].items() if v.get("identity")}


def agreement(identity_of: dict[str, str], truth: dict[str, str]) -> dict[str, float]:
    """How well clustered identities of originals match ground truth: purity (each found
    identity holds one true person), completeness (each true person in one found identity) and
    the adjusted Rand index (scikit-learn's; 1 = the same partition, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    common = sorted(set(identity_of) & set(truth))
    if not common:
        return {"originals": 0, "purity": float("nan"), "completeness": float("nan"), "ari": float("nan")}
    frame = pd.DataFrame({"found": [identity_of[v] for v in common], "true": [truth[v] for v in common]})

    def majority_share(by: str, of: str) -> float:
        return float(frame.groupby(by)[of].agg(lambda s: s.value_counts().iloc[0]).sum() / len(frame))

    return {"originals": len(common), "purity": round(majority_share("found", "true"), 3),
            "completeness": round(majority_share("true", "found"), 3),
            "ari": round(float(adjusted_rand_score(frame["true"], frame["found"])), 3)}


@dataclass
class LeakReport:
    """Identities of a folds table that appear in more than one fold."""

    source: str  # where the identities came from
    identities: int
    spanning: int  # identities in more than one fold
    videos_spanning: int  # videos of those identities
    videos: int
    examples: list[str]
    without_crops: int = 0  # videos left out: no face crop of theirs reaches training or validation

    def format(self) -> str:
        head = (f"identity leak ({self.source}): {self.spanning} of {self.identities} identities span more than one "
                f"fold ({self.videos_spanning} of {self.videos} videos)")
        if self.without_crops:
            head += f" [{self.without_crops} videos without face crops left out]"
        return head + (f", e.g. {', '.join(self.examples)}" if self.examples else "")


def fold_leak(folds: pd.DataFrame, identity_of: dict[str, str], source: str,
              with_crops: set[str] | None = None) -> LeakReport:
    """Identities (``identity_of``: a video or its original -> identity) spanning folds.

    A video's identity is its own entry, else its original's; videos with neither are
    left out, and so are videos outside ``with_crops`` when it is given (the videos of the
    faces table: a video without crops never reaches training or validation)."""
    without = 0
    if with_crops is not None:
        keep = folds["video"].isin(with_crops)
        without = int((~keep).sum())
        folds = folds[keep]
    original = folds["original"].where(folds["original"].notna(), None)
    ident = [identity_of.get(v) or (identity_of.get(o) if o else None) for v, o in zip(folds["video"], original)]
    frame = folds.assign(identity=ident).dropna(subset=["identity"])
    spread = frame.groupby("identity")["fold"].nunique()
    spanning = spread[spread > 1]
    examples = [f"{name} in folds {sorted(set(frame.loc[frame['identity'] == name, 'fold'].tolist()))}"
                for name in spanning.index[:3]]
    return LeakReport(source, int(len(spread)), int(len(spanning)),
                      int(frame["identity"].isin(spanning.index).sum()), int(len(frame)), examples, without)
