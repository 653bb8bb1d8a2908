"""dfdc.identity and folds --group-by identity: actors recovered from face clusters, leak
reports; on a mini DFDC with repeated actors, original-grouped folds leak and identity
folds do not (against the identities synth recorded)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dfdc.cli import main
from dfdc.config import AnalyzeConfig, SynthConfig
from dfdc.identity import agreement, fold_leak, identities_from_embeddings, synth_identities

# 6 REAL videos: 3 identities x 2 takes (another background, camera and light each), 1 fake each
ACTORS = SynthConfig(videos=12, test_videos=0, parts=2, fakes_per_real=1, width=320, height=240, seconds=0.6,
                     fps=5, seed=11)
FACE_ONLY = "0.5"  # embed.center: the inner 80 % of the face box (a crop with margin 0.6 is 1.6 boxes wide)


@pytest.fixture(scope="module")
def actors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini DFDC with repeated actors, its faces and pixel embeddings of the face boxes."""
    from dfdc.synth import generate

    data = tmp_path_factory.mktemp("actors") / "data"
    generate(data, ACTORS)
    assert main(["faces", "--data", str(data), "--profile", "smoke-random", "--workers", "1", "--frames-real", "3",
                 "--frames-fake", "2", "--no-progress"]) == 0
    assert main(["embed", "--faces", str(data / "faces"), "--model", "grey-pixels", "--center", FACE_ONLY,
                 "--profile", "smoke-random", "--set", "embed.loader_workers=0"]) == 0
    return data


def test_synth_records_repeated_actors(actors: Path) -> None:
    truth = synth_identities(actors)
    from dfdc.synth import read_marker

    videos = read_marker(actors)["videos"]
    reals = {n: v for n, v in videos.items() if v["label"] == "REAL"}
    per_identity = pd.Series([v["identity"] for v in reals.values()]).value_counts()
    assert (per_identity == ACTORS.videos_per_identity).all() and len(per_identity) == 3
    for name, v in videos.items():  # a fake's identity is its original's
        assert truth[name] == (v["identity"] if v["label"] == "REAL" else videos[v["original"]]["identity"])


def test_face_clusters_recover_the_recorded_identities(actors: Path) -> None:
    report = identities_from_embeddings(actors / "embeddings", AnalyzeConfig(threads=1))
    agree = agreement(report.identity_of, synth_identities(actors))
    assert agree == {"originals": 6, "purity": 1.0, "completeness": 1.0, "ari": 1.0}
    assert report.merged_originals() == 6


def test_identity_folds_do_not_leak_where_original_folds_do(actors: Path, tmp_path: Path, capsys) -> None:
    truth = synth_identities(actors)
    common = ["--data", str(actors), "--n-folds", "2", "--profile", "smoke-random", "--set", "analyze.threads=1"]
    assert main(["folds", *common, "--out", str(tmp_path / "orig.csv"), "--group-by", "original"]) == 0
    assert main(["folds", *common, "--out", str(tmp_path / "ident.csv"), "--group-by", "identity"]) == 0
    out = capsys.readouterr().out
    assert "6 originals in multi-video identities" in out and "largest group" in out
    by_original = pd.read_csv(tmp_path / "orig.csv")
    by_identity = pd.read_csv(tmp_path / "ident.csv")
    assert fold_leak(by_original, truth, "truth").spanning >= 1  # an actor in both folds
    leak = fold_leak(by_identity, truth, "truth")
    assert leak.spanning == 0 and leak.identities == 3
    assert by_identity.groupby("group")["fold"].nunique().max() == 1
    fake = by_identity[by_identity["label"] == "FAKE"].iloc[0]  # fakes stay with their originals
    assert fake["fold"] == by_identity.set_index("video").loc[fake["original"], "fold"]

    assert main(["folds", *common, "--check", str(tmp_path / "orig.csv")]) == 0
    assert "identity leak (ground truth: .synth.json): " in capsys.readouterr().out
    assert main(["folds", *common, "--check", str(tmp_path / "ident.csv"), "--embeddings", str(actors / "embeddings")]) == 0
    report = capsys.readouterr().out
    assert "0 of 3 identities span more than one fold" in report
    assert "face clusters): 0 of 3" in report


def test_identity_folds_need_embeddings(actors: Path, tmp_path: Path, capsys) -> None:
    assert main(["folds", "--data", str(actors), "--out", str(tmp_path / "f.csv"), "--group-by", "identity",
                 "--embeddings", str(tmp_path / "none"), "--profile", "smoke-random"]) == 1
    assert "need face embeddings" in capsys.readouterr().err


def test_folds_cli_errors_end_in_a_message_not_a_traceback(actors: Path, tmp_path: Path, capsys) -> None:
    """IdentityError / AnalysisError are `error: ...` (exit 1); --check with an --embeddings folder
    that cannot be read is an error, not a silent report on ground truth alone."""
    import shutil

    common = ["folds", "--data", str(actors), "--out", str(tmp_path / "f.csv"), "--n-folds", "2", "--profile", "smoke-random"]
    assert main([*common, "--group-by", "identity", "--set", "analyze.pca_components=1"]) == 1
    assert "error: analyze.pca_components" in capsys.readouterr().err
    fakes_only = tmp_path / "fakes_only"
    shutil.copytree(actors / "embeddings", fakes_only)
    index = pd.read_csv(fakes_only / "index.csv")
    index.assign(label="FAKE").to_csv(fakes_only / "index.csv", index=False)
    assert main([*common, "--group-by", "identity", "--embeddings", str(fakes_only)]) == 1
    assert "error: the embeddings hold no crop of a REAL video" in capsys.readouterr().err
    assert main([*common, "--group-by", "original"]) == 0
    capsys.readouterr()
    check = ["folds", "--data", str(actors), "--profile", "smoke-random", "--check", str(tmp_path / "f.csv")]
    assert main([*check, "--embeddings", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert f"error: --embeddings {tmp_path / 'missing'}: cannot read the face clusters" in err
    assert main(check) == 0  # without --embeddings: ground truth alone, as asked
    assert "identity leak (ground truth: .synth.json)" in capsys.readouterr().out


def test_fold_leak_counts_identities_across_folds() -> None:
    folds = pd.DataFrame({
        "video": ["a.mp4", "fa.mp4", "b.mp4", "c.mp4", "d.mp4"],
        "label": ["REAL", "FAKE", "REAL", "REAL", "REAL"],
        "original": [None, "a.mp4", None, None, None],
        "fold": [0, 0, 1, 0, 1],
    })
    identity_of = {"a.mp4": "ann", "b.mp4": "ann", "c.mp4": "cid", "d.mp4": "dee"}
    leak = fold_leak(folds, identity_of, "t")
    assert (leak.identities, leak.spanning, leak.videos_spanning, leak.videos) == (3, 1, 3, 5)
    assert "ann in folds [0, 1]" in leak.format()
    no_b = fold_leak(folds, identity_of, "t", with_crops={"a.mp4", "fa.mp4", "c.mp4", "d.mp4"})
    assert no_b.spanning == 0 and no_b.without_crops == 1
