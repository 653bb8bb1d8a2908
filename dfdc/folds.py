"""Cross-validation folds with no fake apart from its original.

Folds come from scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded), stratified on
REAL/FAKE and grouped so that a group never spans two folds:

- ``group_by="original"``: a FAKE's group is the name of its source video (followed to the
  root if an original is itself a fake), a REAL's group is its own name. A fake therefore
  always shares its original's fold, and all fakes of one original share one fold.
- ``group_by="part"``: the group is the ``dfdc_train_part_N`` folder (the top solutions'
  choice). Parts linked by a fake whose original lives in another part are merged into
  one group, so the guarantee above holds there too.
- ``group_by="identity"``: the group is the identity of the source video (``identity_of``:
  original -> identity, from face clusters, ``dfdc.identity``), so all originals of one actor
  and their fakes share one fold; an original without an identity is a group of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from dfdc.config import FoldsConfig, warn
from dfdc.io import atomic_write_csv, read_table
from dfdc.metadata import MetadataReport, load_metadata

GROUP_BY = ("original", "part", "identity")
COLUMNS = ["video", "part", "label", "original", "group", "fold"]
NEEDED = ["video", "part", "label", "original"]


class FoldsError(ValueError):
    """Folds that cannot be made, or a folds file that cannot be read; says what to do."""


def _root(name: str, parent: dict[str, str]) -> str:
    """Follow ``original`` links to the source video (guarding against cycles)."""
    seen = [name]
    while seen[-1] in parent and parent[seen[-1]] not in seen:
        seen.append(parent[seen[-1]])
    if seen[-1] in parent:  # a cycle: name it by its smallest member
        start = seen.index(parent[seen[-1]])
        return min(seen[start:])
    return seen[-1]


def _groups_by_original(meta: pd.DataFrame) -> list[str]:
    parent = {
        v: o
        for v, label, o in zip(meta["video"], meta["label"], meta["original"])
        if label == "FAKE" and isinstance(o, str) and o
    }
    return [_root(v, parent) for v in meta["video"]]


def _groups_by_part(meta: pd.DataFrame) -> list[str]:
    part_of = dict(zip(meta["video"], meta["part"]))
    leader = {p: p for p in meta["part"].unique()}

    def find(p: str) -> str:
        while leader[p] != p:
            leader[p] = leader[leader[p]]
            p = leader[p]
        return p

    linked = 0
    for v, part, o in zip(meta["video"], meta["part"], meta["original"]):
        other = part_of.get(o) if isinstance(o, str) else None
        if other is not None and other != part:
            linked += 1
            a, b = find(part), find(other)
            if a != b:
                leader[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for p in leader:
        members.setdefault(find(p), []).append(p)
    name = {p: "+".join(sorted(members[find(p)])) for p in leader}
    if linked:
        warn(f"{linked} fake(s) have their original in another part; those parts form one group")
    return [name[p] for p in meta["part"]]


def _groups_by_identity(meta: pd.DataFrame, identity_of: dict[str, str]) -> list[str]:
    return [identity_of.get(root, root) for root in _groups_by_original(meta)]


def make_folds(meta: pd.DataFrame, cfg: FoldsConfig, identity_of: dict[str, str] | None = None) -> pd.DataFrame:
    """Assign every video a fold, keeping each fake in its original's fold.

    Args:
        meta: the table of ``dfdc.metadata.load_metadata`` (columns ``video, part, label,
            original`` at least; label REAL/FAKE).
        cfg: ``n_folds`` (>= 2), ``group_by`` (``original``, ``part`` or ``identity``), ``seed``.
        identity_of: ``group_by="identity"`` only: source (REAL) video -> identity name.

    Returns:
        ``video, part, label, original, group, fold`` in the input's row order, folds
        numbered ``0 .. n_folds - 1``.

    Raises:
        FoldsError: missing columns, unknown ``group_by``, fewer groups than folds, or a
        fold left empty.
    """
    missing = [c for c in NEEDED if c not in meta.columns]
    if missing:
        raise FoldsError(f"metadata table lacks column(s) {missing}; build it with dfdc.metadata.load_metadata")
    if cfg.group_by not in GROUP_BY:
        raise FoldsError(f"folds.group_by={cfg.group_by!r}: use one of {', '.join(GROUP_BY)}")
    if cfg.n_folds < 2:
        raise FoldsError(f"folds.n_folds={cfg.n_folds}: cross-validation needs at least 2 folds")
    if meta["video"].duplicated().any():
        dup = meta.loc[meta["video"].duplicated(), "video"].tolist()[:5]
        raise FoldsError(f"video names listed twice in the metadata table: {dup}")
    out = meta[NEEDED].copy().reset_index(drop=True)
    out["original"] = out["original"].where(out["original"].notna(), None)
    if cfg.group_by == "identity":
        if identity_of is None:
            raise FoldsError("folds.group_by=identity needs the identity of each original (face clusters of "
                             "`dfdc embed` embeddings: --embeddings DIR)")
        out["group"] = _groups_by_identity(out, identity_of)
    elif cfg.group_by == "part":
        out["group"] = _groups_by_part(out)
    else:
        out["group"] = _groups_by_original(out)
    n_groups = out["group"].nunique()
    if n_groups < cfg.n_folds:
        what = {"part": "part folders (or linked part sets)", "identity": "identities"}.get(cfg.group_by, "source videos")
        hint = " or --group-by original" if cfg.group_by != "original" else ""
        raise FoldsError(
            f"only {n_groups} group(s) ({what}) for {cfg.n_folds} folds; "
            f"use --n-folds {max(n_groups, 2)} or fewer{hint}, or add data"
        )
    y = (out["label"] == "FAKE").to_numpy(dtype=int)
    splitter = StratifiedGroupKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.seed)
    fold = np.full(len(out), -1, dtype=int)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(out)), y, groups=out["group"].to_numpy())):
        fold[val] = k
    empty = sorted(set(range(cfg.n_folds)) - set(fold.tolist()))
    if empty:
        raise FoldsError(f"fold(s) {empty} received no video ({n_groups} groups); use fewer folds")
    out["fold"] = fold
    return out[COLUMNS]


def fold_counts(folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold: videos, REAL, FAKE, groups and the FAKE share."""
    table = pd.crosstab(folds["fold"], folds["label"]).reindex(columns=["REAL", "FAKE"], fill_value=0)
    table.insert(0, "videos", table.sum(axis=1))
    table["groups"] = folds.groupby("fold")["group"].nunique()
    table["fake_share"] = (table["FAKE"] / table["videos"]).round(3)
    return table


def largest_group_share(folds: pd.DataFrame) -> float:
    """Share of all videos in the largest group (one fold must hold at least that much)."""
    return float(folds["group"].value_counts().iloc[0] / len(folds)) if len(folds) else 0.0


def write_folds(df: pd.DataFrame, path: Path) -> None:
    """Write the folds table as CSV atomically."""
    atomic_write_csv(Path(path), df[COLUMNS])


def read_folds(path: Path) -> pd.DataFrame:
    """Read a folds CSV written by ``write_folds``, with clear errors."""
    path = Path(path)
    df = read_table(path, COLUMNS, error=FoldsError, what="folds file",
                    fix=f"make it with `python -m dfdc folds --data ROOT --out {path}`",
                    dtype={"video": str, "part": str, "label": str, "original": object, "group": str})
    if not pd.api.types.is_integer_dtype(df["fold"]):
        raise FoldsError(f"{path}: column fold must hold integers; regenerate it with `python -m dfdc folds`")
    bad = sorted(set(df["label"]) - {"REAL", "FAKE"})
    if bad:
        raise FoldsError(f"{path}: labels {bad} are not REAL/FAKE; regenerate it with `python -m dfdc folds`")
    df["original"] = df["original"].where(df["original"].notna(), None)
    return df


def folds_from_data(root: Path, out: Path, cfg: FoldsConfig, strict: bool = False,
                    identity_of: dict[str, str] | None = None) -> tuple[pd.DataFrame, MetadataReport]:
    """Load the metadata under ``root``, make folds and write them to ``out``.

    Returns ``(folds, metadata report)``.
    """
    meta, report = load_metadata(root, strict=strict)
    folds = make_folds(meta, cfg, identity_of)
    write_folds(folds, out)
    return folds, report
