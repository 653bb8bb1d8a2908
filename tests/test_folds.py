"""dfdc.folds: no leak between folds, stratification, determinism, part mode, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dfdc.cli import main
from dfdc.config import FoldsConfig
from dfdc.folds import FoldsError, fold_counts, make_folds, read_folds, write_folds


def synthetic_meta(parts: int = 4, reals_per_part: int = 12, seed: int = 0) -> pd.DataFrame:
    """DFDC-like table: each REAL has 0-6 fakes in its own part (about 1 real : 3 fakes)."""
    rows = []
    n = 0
    for p in range(parts):
        part = f"dfdc_train_part_{p}"
        for r in range(reals_per_part):
            real = f"r{p:02d}{r:03d}.mp4"
            rows.append({"video": real, "part": part, "label": "REAL", "original": None})
            for _ in range((r * 7 + p * 3 + seed) % 7):
                n += 1
                rows.append({"video": f"f{n:05d}.mp4", "part": part, "label": "FAKE", "original": real})
    return pd.DataFrame(rows)


def assert_no_leak(folds: pd.DataFrame) -> None:
    assert (folds.groupby("group")["fold"].nunique() == 1).all(), "a group spans two folds"
    fold_of = dict(zip(folds["video"], folds["fold"]))
    fakes = folds[(folds["label"] == "FAKE") & folds["original"].isin(fold_of)]
    assert len(fakes) > 0
    assert (fakes["original"].map(fold_of) == fakes["fold"]).all(), "a fake is not in its original's fold"


def test_group_by_original_no_leak_and_balanced() -> None:
    meta = synthetic_meta()
    folds = make_folds(meta, FoldsConfig(n_folds=5, group_by="original", seed=42))
    assert list(folds.columns) == ["video", "part", "label", "original", "group", "fold"]
    assert list(folds["video"]) == list(meta["video"])
    assert set(folds["fold"]) == set(range(5))
    assert_no_leak(folds)
    real = folds[folds["label"] == "REAL"]
    assert (real["group"] == real["video"]).all()
    counts = fold_counts(folds)
    overall = (meta["label"] == "FAKE").mean()
    assert (counts["fake_share"] - overall).abs().max() < 0.1, counts
    assert counts["videos"].max() - counts["videos"].min() <= 0.35 * counts["videos"].mean(), counts


def test_deterministic_and_seed_dependent() -> None:
    meta = synthetic_meta()
    a = make_folds(meta, FoldsConfig(n_folds=5, seed=1))
    b = make_folds(meta, FoldsConfig(n_folds=5, seed=1))
    c = make_folds(meta, FoldsConfig(n_folds=5, seed=2))
    assert a["fold"].tolist() == b["fold"].tolist()
    assert a["fold"].tolist() != c["fold"].tolist()


def test_group_by_part() -> None:
    meta = synthetic_meta(parts=6, reals_per_part=4)
    folds = make_folds(meta, FoldsConfig(n_folds=3, group_by="part", seed=0))
    assert (folds["group"] == folds["part"]).all()
    assert (folds.groupby("part")["fold"].nunique() == 1).all()
    assert folds.groupby("fold")["part"].nunique().tolist() == [2, 2, 2]
    assert_no_leak(folds)


def test_part_mode_merges_parts_linked_by_a_cross_part_original() -> None:
    meta = synthetic_meta(parts=4, reals_per_part=4)
    meta.loc[len(meta)] = {"video": "cross.mp4", "part": "dfdc_train_part_3", "label": "FAKE", "original": "r00000.mp4"}
    folds = make_folds(meta, FoldsConfig(n_folds=3, group_by="part"))
    assert folds.set_index("video").loc["cross.mp4", "group"] == "dfdc_train_part_0+dfdc_train_part_3"
    assert_no_leak(folds)


def test_fake_chains_and_missing_originals() -> None:
    meta = pd.DataFrame(
        [
            {"video": "r1.mp4", "part": "p", "label": "REAL", "original": None},
            {"video": "f1.mp4", "part": "p", "label": "FAKE", "original": "r1.mp4"},
            {"video": "f2.mp4", "part": "p", "label": "FAKE", "original": "f1.mp4"},  # a fake of a fake
            {"video": "f3.mp4", "part": "p", "label": "FAKE", "original": "gone.mp4"},
            {"video": "f4.mp4", "part": "p", "label": "FAKE", "original": "gone.mp4"},
            {"video": "f5.mp4", "part": "p", "label": "FAKE", "original": None},
            {"video": "r2.mp4", "part": "p", "label": "REAL", "original": None},
        ]
    )
    folds = make_folds(meta, FoldsConfig(n_folds=2)).set_index("video")
    assert folds.loc["f2.mp4", "group"] == "r1.mp4"
    assert folds.loc["f3.mp4", "group"] == folds.loc["f4.mp4", "group"] == "gone.mp4"
    assert folds.loc["f5.mp4", "group"] == "f5.mp4"
    assert folds.loc["f3.mp4", "fold"] == folds.loc["f4.mp4", "fold"]
    assert folds.loc["f2.mp4", "fold"] == folds.loc["r1.mp4", "fold"]


def test_too_few_groups_is_a_clear_error() -> None:
    meta = synthetic_meta(parts=2, reals_per_part=3)
    with pytest.raises(FoldsError, match=r"only 2 group\(s\) \(part folders.*for 5 folds.*--n-folds 2"):
        make_folds(meta, FoldsConfig(n_folds=5, group_by="part"))
    with pytest.raises(FoldsError, match="only 6 group"):
        make_folds(meta, FoldsConfig(n_folds=7, group_by="original"))
    with pytest.raises(FoldsError, match="group_by"):
        make_folds(meta, FoldsConfig(group_by="video"))
    with pytest.raises(FoldsError, match="at least 2"):
        make_folds(meta, FoldsConfig(n_folds=1))


def test_write_read_round_trip(tmp_path: Path) -> None:
    folds = make_folds(synthetic_meta(), FoldsConfig(n_folds=4))
    path = tmp_path / "sub" / "folds.csv"
    write_folds(folds, path)
    back = read_folds(path)
    assert back["fold"].tolist() == folds["fold"].tolist()
    assert back["original"].tolist() == folds["original"].tolist()
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp files left
    (tmp_path / "bad.csv").write_text("video,fold\na.mp4,0\n")
    with pytest.raises(FoldsError, match="bad.csv: missing column"):
        read_folds(tmp_path / "bad.csv")
    with pytest.raises(FoldsError, match="not found"):
        read_folds(tmp_path / "none.csv")


def test_cli_folds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for p in range(3):
        part = tmp_path / "data" / f"dfdc_train_part_{p}"
        part.mkdir(parents=True)
        records = {}
        for r in range(3):
            records[f"r{p}{r}.mp4"] = {"label": "REAL", "split": "train", "original": None}
            records[f"f{p}{r}.mp4"] = {"label": "FAKE", "split": "train", "original": f"r{p}{r}.mp4"}
        (part / "metadata.json").write_text(json.dumps(records))
        for name in records:
            (part / name).write_bytes(b"")
    out = tmp_path / "folds" / "folds.csv"
    assert main(["folds", "--data", str(tmp_path / "data"), "--out", str(out), "--n-folds", "3", "--group-by", "part"]) == 0
    text = capsys.readouterr().out
    assert "18 videos, 3 groups (group_by=part), 3 folds" in text and "fake_share" in text
    folds = read_folds(out)
    assert (folds.groupby("part")["fold"].nunique() == 1).all() and folds["fold"].nunique() == 3
    assert main(["folds", "--data", str(tmp_path / "data"), "--out", str(out), "--n-folds", "4", "--group-by", "part"]) == 1
    assert "only 3 group(s)" in capsys.readouterr().err


def test_mini_dfdc_metadata_and_folds(mini_dfdc: Path) -> None:
    from dfdc.metadata import load_metadata

    meta, report = load_metadata(mini_dfdc)
    assert len(report) == 0 and len(meta) == 12
    assert meta["path"].map(lambda p: Path(p).is_file()).all()
    for group_by in ("original", "part"):
        folds = make_folds(meta, FoldsConfig(n_folds=2, group_by=group_by))
        assert folds["fold"].nunique() == 2
        assert_no_leak(folds)
