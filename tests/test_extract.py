"""The class-balanced face dataset builder (dfdc.extract) on a tiny hand-made DFDC part."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
import torch
from test_video import astronaut_frames, make_clip

from dfdc.cli import main
from dfdc.config import FacesConfig, read_config
from dfdc.extract import (
    MANIFEST_COLUMNS,
    build_faces,
    manifest_path,
    merge_faces,
    parse_shard,
    plan_units,
    unit_shard,
)
from dfdc.faces import FaceDetector
from dfdc.metadata import load_metadata

CFG = FacesConfig(size=64, frames_real=6, frames_fake=2, max_faces=2, detect_batch=8)
N_FRAMES = 12
W, H, FACE = 192, 144, 120  # small frames keep MTCNN fast; the face is still ~20 px wide


def swap_face_colours(frames: list[np.ndarray]) -> list[np.ndarray]:
    """A 'deepfake': the astronaut region's channels reversed, background untouched."""
    out = []
    for f in frames:
        g = f.copy()
        mask = (np.abs(f.astype(int) - f[0, 0].astype(int)).sum(-1) > 60)  # not background
        g[mask] = f[mask][:, ::-1]
        out.append(g)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dfdc")
    part = root / "dfdc_train_part_0"
    part.mkdir()
    real = astronaut_frames(N_FRAMES, W, H, FACE, seed=1)
    make_clip(part / "realaaaaaa.mp4", real)
    make_clip(part / "fakeswapaa.mp4", swap_face_colours(real))  # manipulated face
    make_clip(part / "fakesameaa.mp4", real)  # audio-only fake: pixels identical to the original
    make_clip(part / "fakeorphan.mp4", astronaut_frames(N_FRAMES, W, H, FACE, seed=2))  # original absent
    make_clip(part / "fakeofbadx.mp4", astronaut_frames(N_FRAMES, W, H, FACE, seed=3))  # original corrupt
    make_clip(part / "realnoface.mp4", [np.full((H, W, 3), 120, np.uint8)] * N_FRAMES)
    (part / "realcorrup.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (part / "fakeempty0.mp4").write_bytes(b"")
    meta = {
        "realaaaaaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "fakeswapaa.mp4": {"label": "FAKE", "split": "train", "original": "realaaaaaa.mp4"},
        "fakesameaa.mp4": {"label": "FAKE", "split": "train", "original": "realaaaaaa.mp4"},
        "fakeempty0.mp4": {"label": "FAKE", "split": "train", "original": "realaaaaaa.mp4"},
        "fakeorphan.mp4": {"label": "FAKE", "split": "train", "original": "notthereaa.mp4"},
        "realcorrup.mp4": {"label": "REAL", "split": "train", "original": None},
        "fakeofbadx.mp4": {"label": "FAKE", "split": "train", "original": "realcorrup.mp4"},
        "realnoface.mp4": {"label": "REAL", "split": "train", "original": None},
    }
    (part / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def meta(data: Path) -> pd.DataFrame:
    table, _ = load_metadata(data)
    return table


@pytest.fixture(scope="module")
def built(meta: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("faces")
    report = build_faces(meta, out, CFG, progress=False, device="cpu")
    return out, report


def test_counts_class_balance_and_failures(built) -> None:
    out, report = built
    faces = pd.read_csv(out / "faces.csv")
    assert list(faces.columns) == MANIFEST_COLUMNS
    per_video = faces.groupby("video").size().to_dict()
    # 6 frames of the REAL video, 2 per FAKE; the identical fake's crops are all dropped
    assert per_video == {"realaaaaaa.mp4": 6, "fakeswapaa.mp4": 2, "fakeorphan.mp4": 2, "fakeofbadx.mp4": 2}
    assert report.real_crops == 6 and report.fake_crops == 6
    assert report.dropped_identical == 2
    assert report.videos == 8 and report.done == 5 and report.failed == 3 and report.skipped == 0
    assert report.fakes_detected_on_self == 2  # orphan + fake of the corrupt original
    reasons = dict(report.failures)
    assert set(reasons) == {"realcorrup.mp4", "fakeempty0.mp4", "realnoface.mp4"}
    assert "zero-byte" in reasons["fakeempty0.mp4"] and "no face" in reasons["realnoface.mp4"]
    assert "realcorrup.mp4" in reasons["realcorrup.mp4"]
    failures = pd.read_csv(out / "failures.csv")
    assert set(failures["video"]) == set(reasons) and failures["reason"].notna().all()
    assert read_config(out / "config.yaml").faces == CFG
    assert "REAL 6, FAKE 6" in report.format()


def test_crops_on_disk_and_rows(built) -> None:
    out, _ = built
    faces = pd.read_csv(out / "faces.csv", keep_default_na=False)
    assert not faces.duplicated(["video", "frame", "face"]).any()
    for row in faces.itertuples():
        image = cv2.imread(str(out / row.path))
        assert image is not None and image.shape == (CFG.size, CFG.size, 3), row.path
        assert row.path == f"crops/dfdc_train_part_0/{Path(row.video).stem}/{row.frame}_{row.face}.{CFG.image_format}"
        x1, y1, x2, y2 = map(float, row.box.split())
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H and row.prob >= CFG.min_prob
    assert set(faces.loc[faces.label == "REAL", "original"]) == {""}
    assert set(faces.loc[faces.video == "fakeswapaa.mp4", "original"]) == {"realaaaaaa.mp4"}


def test_fake_reuses_original_boxes(built) -> None:
    out, _ = built
    faces = pd.read_csv(out / "faces.csv")
    real = faces[faces.video == "realaaaaaa.mp4"].set_index(["frame", "face"])
    fake = faces[faces.video == "fakeswapaa.mp4"].set_index(["frame", "face"])
    assert set(fake.index) <= set(real.index)  # a subset of the original's frames ...
    assert (fake["box"] == real.loc[fake.index, "box"]).all()  # ... at exactly its boxes
    frames = sorted(f for f, _ in fake.index)
    assert frames[0] != frames[-1]  # spread out, not one frame twice
    boxes = json.loads((out / "boxes/dfdc_train_part_0/realaaaaaa.json").read_text())
    assert len(boxes["frames"]) == CFG.frames_real and boxes["width"] == W
    assert not (out / "boxes/dfdc_train_part_0/fakeswapaa.json").exists()  # no detection on it
    assert (out / "boxes/dfdc_train_part_0/fakeorphan.json").exists()  # detected on itself
    # the fake crop really differs from the original's at the same frame and box
    frame, face = fake.index[0]
    a = cv2.imread(str(out / real.loc[(frame, face), "path"])).astype(int)
    b = cv2.imread(str(out / fake.loc[(frame, face), "path"])).astype(int)
    assert np.abs(a - b).mean() > CFG.same_face_tolerance


def test_identical_fake_is_dropped_and_finished(built) -> None:
    out, _ = built
    data = json.loads(manifest_path(out, "dfdc_train_part_0", "fakesameaa.mp4").read_text())
    assert data["rows"] == [] and data["dropped_identical"] == 2
    assert not any((out / "crops/dfdc_train_part_0/fakesameaa").glob("*"))


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["video", "frame", "face"]).reset_index(drop=True)


def test_resume_after_interruption(built, meta: pd.DataFrame, tmp_path: Path) -> None:
    src, _ = built
    out = tmp_path / "faces"
    shutil.copytree(src, out)
    first = _sorted(pd.read_csv(out / "faces.csv"))
    done = (out / "done.csv").read_text().splitlines()
    # simulate kill -9 at each point of a video's commit:
    # - fakeswapaa: crops half written, no manifest, not indexed
    # - fakesameaa: manifest written, killed before the index heard of it
    # - fakeorphan: rows appended, killed before its done line (then a torn half line)
    order = [line.split(",")[0] for line in done[1:]]
    last = order[-1]
    keep = [line for line in done if line.split(",")[0] not in ("fakeswapaa.mp4", "fakesameaa.mp4")]
    rows = pd.read_csv(out / "faces.csv", keep_default_na=False)
    committed = rows[~rows["video"].isin(["fakeswapaa.mp4", "fakesameaa.mp4", last])]
    uncommitted = rows[rows["video"] == last]
    committed.to_csv(out / "faces.csv", index=False)
    with open(out / "faces.csv", "a") as handle:
        handle.write(uncommitted.to_csv(header=False, index=False))
    # the done file: every committed video's line with the true end offsets, then a torn line
    from dfdc.faceindex import ShardIndex

    (out / "done.csv").unlink()
    (out / "faces.csv").rename(out / "rows.tmp")
    index = ShardIndex(out).open()
    for video, group in committed.groupby("video", sort=False):
        index.append(video, str(group["part"].iloc[0]), str(group["label"].iloc[0]), group.to_dict("records"), 0)
    with open(out / "faces.csv", "a") as handle:
        handle.write(uncommitted.to_csv(header=False, index=False))
    with open(out / "done.csv", "a") as handle:
        handle.write(f"{last},dfdc_train_pa")
    (out / "rows.tmp").unlink()
    manifest_path(out, "dfdc_train_part_0", "fakeswapaa.mp4").unlink()
    stray = out / f"crops/dfdc_train_part_0/fakeswapaa/999_0.{CFG.image_format}"
    stray.write_bytes(b"half")
    temps = [out / ".failures.csv.tmp-abc123", out / "manifests/dfdc_train_part_0/.fakeswapaa.json.tmp-xyz"]
    for t in temps:
        t.write_text("partial")
    other = out / "manifests/dfdc_train_part_0/.othershard.json.tmp-xyz"  # another shard's, in flight
    other.write_text("partial")
    report = build_faces(meta, out, CFG, progress=False, device="cpu")
    pd.testing.assert_frame_equal(_sorted(pd.read_csv(out / "faces.csv")), first)
    assert report.done == 1 and report.failed == 3  # fakeswapaa redone; failures are retried
    assert report.indexed_from_manifests == 2  # fakesameaa and the uncommitted last video, from their manifests
    assert report.skipped == 4 and report.dropped_identical == 2  # fakesameaa's 2, from its manifest
    assert report.fakes_detected_on_self == 0  # boxes came from boxes/realaaaaaa.json
    assert not stray.exists() and not any(t.exists() for t in temps)
    assert other.exists()  # not this shard's: left alone
    # a third run has nothing left to do, changes nothing, and reads no manifest
    for path in (out / "manifests").rglob("*.json"):
        path.unlink()
    report = build_faces(meta, out, CFG, progress=False, device="cpu")
    assert report.done == 0 and report.skipped == 5 and report.indexed_from_manifests == 0
    pd.testing.assert_frame_equal(_sorted(pd.read_csv(out / "faces.csv")), first)
    # other crop settings into the same folder: refused, nothing mixed
    with pytest.raises(ValueError, match="margin"):
        build_faces(meta, out, dataclasses.replace(CFG, margin=0.5), progress=False)


def test_index_of_an_older_kit_is_rebuilt_from_the_manifests(built, meta: pd.DataFrame, tmp_path: Path) -> None:
    src, _ = built
    out = tmp_path / "faces"
    shutil.copytree(src, out)
    first = _sorted(pd.read_csv(out / "faces.csv"))
    (out / "done.csv").unlink()  # faces.csv assembled by an older kit (or a merge), no done file
    report = build_faces(meta, out, CFG, progress=False, device="cpu")
    assert "has no done.csv" in report.index_rebuilt and "rebuilt from the manifests" in report.format()
    assert report.done == 0 and report.indexed_from_manifests == 5 and report.skipped == 5
    pd.testing.assert_frame_equal(_sorted(pd.read_csv(out / "faces.csv")), first)


def test_label_cleaning_uses_video_pixels_not_saved_crops(meta: pd.DataFrame, tmp_path: Path) -> None:
    """An original finished by an earlier run: its fakes are compared with its frames decoded
    again, not with its (lossy) crop files -- here overwritten with noise to prove it."""
    out = tmp_path / "faces"
    build_faces(meta[meta.video == "realaaaaaa.mp4"], out, CFG, progress=False, device="cpu")
    rng = np.random.default_rng(0)
    for crop in (out / "crops/dfdc_train_part_0/realaaaaaa").iterdir():
        cv2.imwrite(str(crop), rng.integers(0, 256, (CFG.size, CFG.size, 3), dtype=np.uint8))
    report = build_faces(meta, out, CFG, progress=False, device="cpu")
    assert report.dropped_identical == 2  # fakesameaa's two crops equal the original's pixels
    faces = pd.read_csv(out / "faces.csv")
    assert (faces["video"] == "fakeswapaa.mp4").sum() == 2 and not (faces["video"] == "fakesameaa.mp4").any()


def test_crop_formats_keep_the_rows_and_shrink_the_files(built, meta: pd.DataFrame, tmp_path: Path) -> None:
    src, _ = built
    rows = {}
    sizes = {}
    for fmt in ("png", "webp"):
        out = tmp_path / fmt
        report = build_faces(meta, out, dataclasses.replace(CFG, image_format=fmt), progress=False, device="cpu")
        assert report.dropped_identical == 2  # the label cleaning does not depend on the format
        rows[fmt] = _sorted(pd.read_csv(out / "faces.csv"))
        sizes[fmt] = sum(p.stat().st_size for p in (out / "crops").rglob(f"*.{fmt}"))
    jpg = _sorted(pd.read_csv(src / "faces.csv"))
    sizes["jpg"] = sum(p.stat().st_size for p in (src / "crops").rglob("*.jpg"))
    for fmt in ("png", "webp"):
        pd.testing.assert_frame_equal(rows[fmt].drop(columns="path"), jpg.drop(columns="path"))
    assert sizes["jpg"] < sizes["png"] / 2 and sizes["webp"] < sizes["png"] / 2, sizes
    with pytest.raises(ValueError, match="image_format 'gif'"):
        build_faces(meta, tmp_path / "gif", dataclasses.replace(CFG, image_format="gif"), progress=False)


def test_workers_and_shards_match_single_process(built, meta: pd.DataFrame, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = built
    expected = _sorted(pd.read_csv(src / "faces.csv"))
    out = tmp_path / "faces"
    assert sum(unit_shard(u.key, 2) == 1 for u in plan_units(meta)) >= 2  # so shard 1 really uses 2 processes
    r0 = build_faces(meta, out, CFG, shard=(0, 2), workers=1, progress=False, device="cpu")
    assert main(["faces", "--data", str(meta.path.iloc[0]).rsplit("/dfdc_train_part_0", 1)[0], "--out", str(out),
                 "--merge"]) == 1  # shard 1 has not run
    assert "shard 1/2 has no index" in capsys.readouterr().err and not (out / "faces.csv").exists()
    r1 = build_faces(meta, out, CFG, shard=(1, 2), workers=2, progress=False, device="cpu")
    assert r0.videos + r1.videos == 8 and r0.videos > 0 and r1.videos > 0
    for name in ("failures_0of2.csv", "failures_1of2.csv", "faces_0of2.csv", "faces_1of2.csv"):
        assert (out / name).exists(), name
    merged = merge_faces(meta, out)
    assert merged.shards == 2 and merged.videos == 5 and merged.failed == 3
    got = pd.read_csv(out / "faces.csv")
    pd.testing.assert_frame_equal(got, _sorted(got))  # the merged index is in canonical order
    pd.testing.assert_frame_equal(got[["video", "frame", "face", "box"]], expected[["video", "frame", "face", "box"]])
    # `make train` runs an unsharded `dfdc faces` next: it finds every video in the merged index
    again = build_faces(meta, out, CFG, progress=False, device="cpu")
    assert again.done == 0 and again.skipped == 5 and again.indexed_from_manifests == 0 and not again.index_rebuilt
    pd.testing.assert_frame_equal(pd.read_csv(out / "faces.csv"), got)


def test_merge_refuses_missing_and_duplicated(built, meta: pd.DataFrame, tmp_path: Path) -> None:
    src, _ = built
    out = tmp_path / "faces"
    for i in (0, 1):
        build_faces(meta, out, CFG, shard=(i, 2), progress=False, device="cpu")
    merge_faces(meta, out)
    ok = (out / "faces.csv").read_bytes()
    victim = "fakeswapaa.mp4"
    shard = next(i for i in (0, 1) if victim in (out / f"done_{i}of2.csv").read_text())
    lines = (out / f"done_{shard}of2.csv").read_text().splitlines(keepends=True)
    (out / f"done_{shard}of2.csv").write_text("".join(x for x in lines if not x.startswith(victim)))
    with pytest.raises(ValueError, match=f"shard {shard}/2 is missing 1 of its .* videos .*{victim}"):
        merge_faces(meta, out)
    assert (out / "faces.csv").read_bytes() == ok  # nothing written
    line = next(x for x in lines if x.startswith(victim))
    torn = "".join(x for x in lines if x != line) + line[: line.rfind(",") + 1]  # killed while writing its end
    (out / f"done_{shard}of2.csv").write_text(torn)
    with pytest.raises(ValueError, match=f"shard {shard}/2 is missing 1 .*{victim}\\): rerun `dfdc faces --shard {shard}/2`"):
        merge_faces(meta, out)  # a torn line commits nothing
    assert (out / "faces.csv").read_bytes() == ok
    (out / f"done_{shard}of2.csv").write_text("".join(lines))
    other = 1 - shard
    with open(out / f"done_{other}of2.csv", "a") as handle:  # the same video claimed by the other shard too
        handle.write(next(x for x in lines if x.startswith(victim)))
    with pytest.raises(ValueError, match=f"indexes 1 videos shard {other}/2 was not to do"):
        merge_faces(meta, out)
    with pytest.raises(ValueError, match="cannot tell the shard count"):
        build_faces(meta, out, CFG, shard=(0, 3), progress=False, device="cpu")
        merge_faces(meta, out)


def test_units_and_shards(meta: pd.DataFrame) -> None:
    units = plan_units(meta)
    by_key = {u.key: u for u in units}
    assert {j.video for j in by_key["realaaaaaa.mp4"].fakes} == {"fakeswapaa.mp4", "fakesameaa.mp4", "fakeempty0.mp4"}
    assert by_key["fakeorphan.mp4"].original is None
    assert sorted(j.video for u in units for j in u.jobs) == sorted(meta["video"])
    for n in (1, 3):
        parts = [{u.key for u in units if unit_shard(u.key, n) == i} for i in range(n)]
        assert sum(map(len, parts)) == len(units) and set().union(*parts) == set(by_key)
    assert unit_shard("abc.mp4", 7) == unit_shard("abc.mp4", 7)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="lacks column"):
        plan_units(meta.drop(columns=["original"]))


def test_cli_faces(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["faces", "--data", str(data), "--out", str(out), "--profile", "smoke-random", "--size", "48",
                 "--frames-real", "3", "--frames-fake", "1", "--workers", "1", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "REAL 3, FAKE 3" in printed and "failed 3" in printed
    faces = pd.read_csv(out / "faces.csv")
    assert len(faces) == 6 and cv2.imread(str(out / faces.path[0])).shape == (48, 48, 3)
    saved = read_config(out / "config.yaml")
    assert saved.profile == "smoke-random" and saved.faces.frames_real == 3
    # the extraction settings only, and left as they are by a resuming run with other training settings
    assert set(yaml.safe_load((out / "config.yaml").read_text())) == {"profile", "faces"}
    stamp = (out / "config.yaml").stat().st_mtime_ns
    assert main(["faces", "--data", str(data), "--out", str(out), "--profile", "smoke-random", "--size", "48",
                 "--frames-real", "3", "--frames-fake", "1", "--workers", "1", "--no-progress", "--device", "cpu",
                 "--set", "train.epochs=1"]) == 0  # fmt: skip
    assert (out / "config.yaml").stat().st_mtime_ns == stamp
    assert main(["faces", "--data", str(data), "--out", str(out), "--shard", "2/2"]) == 2



def test_end_to_end_on_mini_dfdc(mini_dfdc: Path, tmp_path: Path) -> None:
    """The generated mini DFDC (real face photos, face-swapped fakes): every video yields crops."""
    table, _ = load_metadata(mini_dfdc)
    cfg = FacesConfig(size=48, frames_real=4, frames_fake=2)
    report = build_faces(table, tmp_path, cfg, progress=False, device="cpu")
    assert report.failed == 0, report.failures
    faces = pd.read_csv(tmp_path / "faces.csv", keep_default_na=False)
    per = faces.groupby("video").size()
    reals, fakes = table[table.label == "REAL"], table[table.label == "FAKE"]
    assert set(faces.video) == set(table.video)
    assert (per[list(reals.video)] >= cfg.frames_real).all()  # a face in every sampled frame
    assert (per[list(fakes.video)] >= cfg.frames_fake).all()  # swapped faces are not dropped
    assert report.dropped_identical == 0
    assert report.real_crops == int(per[list(reals.video)].sum()) and report.fake_crops == int(per[list(fakes.video)].sum())
    boxes = faces.set_index(["video", "frame", "face"])["box"]
    for fake in fakes.itertuples():
        mine = faces[faces.video == fake.video]
        assert [boxes[(fake.original, f, k)] for f, k in zip(mine.frame, mine.face)] == list(mine.box)


def test_subtle_swap_inside_the_face_is_kept(tmp_path: Path) -> None:
    """A fake that changes only the detected face box a little (+8 levels) keeps its crops:
    label cleaning compares inside the face box, not over the whole margin crop."""
    torch.set_num_threads(2)
    part = tmp_path / "data" / "dfdc_train_part_0"
    part.mkdir(parents=True)
    real = astronaut_frames(N_FRAMES, W, H, FACE, seed=1)
    detections = FaceDetector(CFG, device="cpu").detect(real)
    subtle = []
    for frame, dets in zip(real, detections):
        changed = frame.copy()
        for det in dets:
            x1, y1, x2, y2 = (int(round(v)) for v in det.box)
            changed[max(y1, 0):y2, max(x1, 0):x2] = np.clip(changed[max(y1, 0):y2, max(x1, 0):x2].astype(int) + 8,
                                                            0, 255)
        subtle.append(changed)
    make_clip(part / "realaaaaaa.mp4", real)
    make_clip(part / "fakesubtle.mp4", subtle)
    (part / "metadata.json").write_text(json.dumps({
        "realaaaaaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "fakesubtle.mp4": {"label": "FAKE", "split": "train", "original": "realaaaaaa.mp4"},
    }))
    table, _ = load_metadata(tmp_path / "data")
    report = build_faces(table, tmp_path / "faces", CFG, progress=False, device="cpu")
    assert report.dropped_identical == 0 and report.fake_crops == CFG.frames_fake


def test_shard_start_up_cleans_only_its_own_temp_files(meta: pd.DataFrame, tmp_path: Path) -> None:
    """Shards sharing a faces folder start together: one must not delete another's config.yaml
    write in flight; an unsharded run or the merge clears a stale one."""
    from dfdc.extract import _clean_temps

    out = tmp_path / "faces"
    out.mkdir()
    config_temp, own, other = (out / ".config.yaml.tmp-abcd", out / ".done_0of2.csv.tmp-1234",
                               out / ".done_1of2.csv.tmp-5678")
    for path in (config_temp, own, other):
        path.write_text("x")
    units = [u for u in plan_units(meta) if unit_shard(u.key, 2) == 0]
    assert _clean_temps(out, units, (0, 2)) == 1 and not own.exists() and other.exists() and config_temp.exists()
    assert _clean_temps(out, plan_units(meta), (0, 1)) == 1  # an unsharded run: the folder's config is its own
    assert not config_temp.exists() and other.exists()


def test_a_manifest_without_rows_is_redone(meta: pd.DataFrame, tmp_path: Path) -> None:
    from dfdc.extract import _index_missed
    from dfdc.faceindex import ShardIndex

    out = tmp_path / "faces"
    units = plan_units(meta)
    job = units[0].jobs[0]
    path = manifest_path(out, job.part, job.video)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"video": job.video}))  # written by another kit version, or damaged
    index = ShardIndex(out).open()
    assert _index_missed(index, units, out) == 0 and not path.exists() and job.video not in index.done


def test_a_full_disk_ends_the_stage_with_one_line_and_the_rerun_resumes_exactly(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC injected into the atomic writer after 3 files: `dfdc faces` ends with one line
    naming the folder and "free space and rerun: it resumes" (no traceback); the rerun after
    "freeing space" gives the same crops, byte for byte, as a run that never filled the disk."""
    import contextlib
    import errno

    from dfdc import io

    argv = ["faces", "--data", str(data), "--profile", "smoke", "--size", "48", "--frames-real", "3",
            "--frames-fake", "1", "--workers", "1", "--no-progress", "--device", "cpu"]
    reference, out = tmp_path / "reference", tmp_path / "faces"
    assert main([*argv, "--out", str(reference)]) == 0
    real, writes = io.atomic_open, []

    @contextlib.contextmanager
    def filling(path, mode="w", **kwargs):  # noqa: ANN001, ANN003, ANN202
        with real(path, mode, **kwargs) as handle:
            writes.append(path)
            if len(writes) > 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            yield handle

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(io, "atomic_open", filling)
        assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    full = Path(writes[-1]).parent
    (line,) = [line for line in err.splitlines() if "space" in line]  # one line, the stage's last
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err
    assert line.startswith(f"error: {full}: no space left on the device; it needed ")
    assert line.endswith(" bytes; free space and rerun: it resumes")
    assert main([*argv, "--out", str(out)]) == 0  # space freed: the same command resumes
    want, got = (_sorted(pd.read_csv(folder / "faces.csv")) for folder in (reference, out))
    pd.testing.assert_frame_equal(got, want)
    assert len(got) > 0 and not got.duplicated(["video", "frame", "face"]).any()
    assert all((out / p).read_bytes() == (reference / p).read_bytes() for p in got["path"])
