"""dfdc.metadata: layouts, every validation case, strict mode, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dfdc.cli import main
from dfdc.metadata import MetadataError, load_metadata, summarize


def make_part(folder: Path, records: dict, files: list[str] | None = None, raw: str | None = None) -> Path:
    """A part folder with metadata.json and placeholder mp4s (all listed names unless ``files``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(raw if raw is not None else json.dumps(records))
    for name in records if files is None else files:
        if name and "/" not in name and not name.startswith("."):
            (folder / name).write_bytes(b"")
    return folder


def fake(original: str | None) -> dict:
    return {"label": "FAKE", "split": "train", "original": original}


REAL = {"label": "REAL", "split": "train", "original": None}


def good_part(folder: Path, prefix: str) -> Path:
    return make_part(
        folder,
        {f"{prefix}r1.mp4": REAL, f"{prefix}f1.mp4": fake(f"{prefix}r1.mp4"), f"{prefix}f2.mp4": fake(f"{prefix}r1.mp4"),
         f"{prefix}r2.mp4": REAL, f"{prefix}f3.mp4": fake(f"{prefix}r2.mp4")},
    )


def kinds(report) -> list[str]:
    return [p.kind for p in report.problems]


def test_mixed_layout_table(tmp_path: Path) -> None:
    good_part(tmp_path / "dfdc_train_part_10", "b")
    good_part(tmp_path / "dfdc_train_part_2", "a")
    good_part(tmp_path / "train_sample_videos", "s")
    (tmp_path / "test_videos").mkdir()  # unlabelled, ignored
    df, report = load_metadata(tmp_path)
    assert len(report) == 0 and len(report.files) == 3
    assert list(df.columns) == ["video", "path", "part", "label", "original", "split"]
    assert len(df) == 15
    # numeric part order, then the sample
    assert list(dict.fromkeys(df["part"])) == ["dfdc_train_part_2", "dfdc_train_part_10", "train_sample_videos"]
    row = df.set_index("video").loc["af1.mp4"]
    assert row["label"] == "FAKE" and row["original"] == "ar1.mp4" and row["split"] == "train"
    assert Path(row["path"]).is_absolute() and Path(row["path"]) == (tmp_path / "dfdc_train_part_2" / "af1.mp4")
    assert df.loc[df["label"] == "REAL", "original"].isna().all()
    text = summarize(df)
    assert "REAL 6, FAKE 9" in text
    assert "mean 1.50, min 1, max 2" in text


def test_root_is_a_part_folder(tmp_path: Path) -> None:
    part = good_part(tmp_path / "dfdc_train_part_0", "a")
    df, report = load_metadata(part)
    assert len(df) == 5 and set(df["part"]) == {"dfdc_train_part_0"} and len(report) == 0


def test_no_metadata_at_all(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    with pytest.raises(MetadataError, match="no metadata.json found under .*dfdc_train_part_N"):
        load_metadata(tmp_path)
    with pytest.raises(MetadataError, match="not a folder"):
        load_metadata(tmp_path / "nope")
    good_part(tmp_path / "inner" / "dfdc_train_part_0", "a")
    with pytest.raises(MetadataError, match="did you mean --data .*inner"):
        load_metadata(tmp_path)


def test_missing_mp4_skipped_and_counted(tmp_path: Path) -> None:
    records = {f"v{i}.mp4": REAL for i in range(8)}
    make_part(tmp_path / "dfdc_train_part_0", records, files=["v0.mp4", "v1.mp4"])
    df, report = load_metadata(tmp_path)
    assert sorted(df["video"]) == ["v0.mp4", "v1.mp4"]
    assert kinds(report) == ["missing_video"]
    msg = report.problems[0].message
    assert "6 listed video(s) not on disk" in msg and "v2.mp4" in msg and "(1 more)" in msg
    assert report.problems[0].file.endswith("metadata.json")


def test_malformed_json_names_line_and_column_and_goes_on(tmp_path: Path) -> None:
    good_part(tmp_path / "dfdc_train_part_0", "a")
    make_part(tmp_path / "dfdc_train_part_1", {}, raw='{\n  "x.mp4": {"label": "REAL",}\n}')
    df, report = load_metadata(tmp_path)
    assert set(df["part"]) == {"dfdc_train_part_0"}
    assert kinds(report) == ["bad_json"]
    problem = report.problems[0]
    assert "dfdc_train_part_1" in problem.file and "line 2 column" in problem.message and "re-extract" in problem.message
    with pytest.raises(MetadataError, match=r"dfdc_train_part_1.*line 2 column"):
        load_metadata(tmp_path, strict=True)


def test_json_not_a_mapping(tmp_path: Path) -> None:
    good_part(tmp_path / "dfdc_train_part_0", "a")
    make_part(tmp_path / "dfdc_train_part_1", {}, raw='["x.mp4"]')
    _, report = load_metadata(tmp_path)
    assert kinds(report) == ["bad_json"] and "got list" in report.problems[0].message


def test_bad_label_and_bad_record(tmp_path: Path) -> None:
    records = {"a.mp4": REAL, "b.mp4": {"label": "fake?", "original": "a.mp4"}, "c.mp4": "FAKE", "d.mp4": {"split": "train"}}
    make_part(tmp_path / "dfdc_train_part_0", records)
    df, report = load_metadata(tmp_path)
    assert list(df["video"]) == ["a.mp4"]
    assert sorted(kinds(report)) == ["bad_label", "bad_label", "bad_record"]
    assert any("'fake?'" in p.message for p in report.problems)
    with pytest.raises(MetadataError, match="dfdc_train_part_0"):
        load_metadata(tmp_path, strict=True)


@pytest.mark.parametrize("name", ["../x.mp4", "/etc/x.mp4", "sub/x.mp4", "..", "a\\b.mp4", ".hidden.mp4", ""])
def test_names_escaping_the_folder_rejected(tmp_path: Path, name: str) -> None:
    make_part(tmp_path / "dfdc_train_part_0", {"ok.mp4": REAL, name: REAL})
    (tmp_path / "x.mp4").write_bytes(b"")  # would be reachable through ../x.mp4
    df, report = load_metadata(tmp_path)
    assert list(df["video"]) == ["ok.mp4"]
    assert kinds(report) == ["bad_name"]
    with pytest.raises(MetadataError, match="not a plain file name"):
        load_metadata(tmp_path, strict=True)


def test_bad_original_name_is_dropped_not_the_fake(tmp_path: Path) -> None:
    make_part(tmp_path / "dfdc_train_part_0", {"r.mp4": REAL, "f.mp4": fake("../r.mp4")})
    df, report = load_metadata(tmp_path)
    assert len(df) == 2 and df.set_index("video").loc["f.mp4", "original"] is None
    assert "bad_name" in kinds(report)


def test_fake_whose_original_is_not_in_the_data_is_kept(tmp_path: Path) -> None:
    make_part(tmp_path / "dfdc_train_part_0", {"r.mp4": REAL, "f.mp4": fake("gone.mp4"), "g.mp4": fake("r.mp4")})
    df, report = load_metadata(tmp_path)
    assert len(df) == 3 and df.set_index("video").loc["f.mp4", "original"] == "gone.mp4"
    assert kinds(report) == ["missing_original"] and "f.mp4 -> gone.mp4" in report.problems[0].message
    with pytest.raises(MetadataError, match="gone.mp4"):
        load_metadata(tmp_path, strict=True)


def test_original_missing_on_disk_counts_as_not_in_data(tmp_path: Path) -> None:
    make_part(tmp_path / "dfdc_train_part_0", {"r.mp4": REAL, "f.mp4": fake("r.mp4")}, files=["f.mp4"])
    df, report = load_metadata(tmp_path)
    assert list(df["video"]) == ["f.mp4"]
    assert sorted(kinds(report)) == ["missing_original", "missing_video"]


def test_same_video_in_two_parts(tmp_path: Path) -> None:
    make_part(tmp_path / "dfdc_train_part_0", {"same.mp4": REAL, "a.mp4": REAL})
    make_part(tmp_path / "dfdc_train_part_1", {"same.mp4": REAL, "b.mp4": REAL})
    df, report = load_metadata(tmp_path)
    assert sorted(df["video"]) == ["a.mp4", "b.mp4", "same.mp4"]
    assert df.set_index("video").loc["same.mp4", "part"] == "dfdc_train_part_0"
    assert kinds(report) == ["duplicate"]
    assert "dfdc_train_part_1" in report.problems[0].file and "dfdc_train_part_0" in report.problems[0].message
    with pytest.raises(MetadataError, match="dfdc_train_part_1"):
        load_metadata(tmp_path, strict=True)


def test_same_name_twice_in_one_file(tmp_path: Path) -> None:
    raw = '{"a.mp4": {"label": "REAL", "original": null}, "a.mp4": {"label": "REAL", "original": null}}'
    make_part(tmp_path / "dfdc_train_part_0", {}, files=["a.mp4"], raw=raw)
    df, report = load_metadata(tmp_path)
    assert len(df) == 1 and kinds(report) == ["duplicate"]


def test_part_folder_without_metadata(tmp_path: Path) -> None:
    good_part(tmp_path / "dfdc_train_part_0", "a")
    (tmp_path / "dfdc_train_part_1").mkdir()
    df, report = load_metadata(tmp_path)
    assert len(df) == 5 and kinds(report) == ["no_metadata"]


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    make_part(tmp_path / "dfdc_train_part_0", {}, raw="{oops")
    with pytest.raises(MetadataError, match="no usable videos"):
        load_metadata(tmp_path)


def test_cli_meta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_part(tmp_path / "dfdc_train_part_0", "a")
    assert main(["meta", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5 videos in 1 part(s)" in out and "REAL 2, FAKE 3" in out
    make_part(tmp_path / "dfdc_train_part_1", {"x.mp4": {"label": "MAYBE"}})
    assert main(["meta", "--data", str(tmp_path)]) == 0
    assert "bad_label" in capsys.readouterr().err
    assert main(["meta", "--data", str(tmp_path), "--strict"]) == 1
    assert "MAYBE" in capsys.readouterr().err


def test_table_round_trips_through_csv(tmp_path: Path) -> None:
    good_part(tmp_path / "dfdc_train_part_0", "a")
    df, _ = load_metadata(tmp_path)
    df.to_csv(tmp_path / "m.csv", index=False)
    back = pd.read_csv(tmp_path / "m.csv")
    assert back["original"].isna().sum() == 2
