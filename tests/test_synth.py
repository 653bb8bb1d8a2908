"""The built-in mini DFDC (dfdc.synth, dfdc synth)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from dfdc import synth
from dfdc.cli import main
from dfdc.config import ConfigError, SynthConfig
from dfdc.synth import MARKER, SynthError, generate
from tests.conftest import TEST_SYNTH

NAME = re.compile(r"^[a-z]{10}\.mp4$")
# A very small data set for the tests that generate their own (determinism, resume, CLI).
TINY = SynthConfig(videos=3, test_videos=2, parts=1, fakes_per_real=2, width=160, height=120, seconds=0.5, fps=6, seed=3)


def _record(root: Path) -> dict:
    return json.loads((root / MARKER).read_text())


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def decoded(mini_dfdc: Path) -> dict[str, list[np.ndarray]]:
    """Every video of the mini DFDC, decoded once."""
    return {name: _frames(mini_dfdc / v["folder"] / name) for name, v in _record(mini_dfdc)["videos"].items()}


@pytest.fixture(scope="module")
def faces(decoded: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray | None]]:
    """MTCNN's best face box in the first, middle and last frame of every video (one batch)."""
    from facenet_pytorch import MTCNN

    detector = MTCNN(keep_all=True, device="cpu", min_face_size=40)  # faces here are ~80 px
    keys = [(name, k) for name, frames in decoded.items() for k in (0, len(frames) // 2, len(frames) - 1)]
    boxes, probs = detector.detect([decoded[name][k] for name, k in keys])
    found: dict[str, list[np.ndarray | None]] = {}
    for (name, _), box, prob in zip(keys, boxes, probs):
        best = None if box is None else np.asarray(box[int(np.argmax(np.asarray(prob, dtype=float)))], dtype=float)
        found.setdefault(name, []).append(best)
    return found


def test_layout_is_dfdc_shaped(mini_dfdc: Path) -> None:
    parts = sorted(p.name for p in mini_dfdc.glob("dfdc_train_part_*"))
    assert parts == [f"dfdc_train_part_{n}" for n in range(TEST_SYNTH.parts)]
    all_names: list[str] = []
    for part in parts:
        meta = json.loads((mini_dfdc / part / "metadata.json").read_text())
        files = sorted(p.name for p in (mini_dfdc / part).glob("*.mp4"))
        assert sorted(meta) == files and files, part
        for name, rec in meta.items():
            assert set(rec) == {"label", "split", "original"}
            assert rec["split"] == "train"
            assert rec["label"] in ("REAL", "FAKE")
            if rec["label"] == "REAL":
                assert rec["original"] is None
            else:  # a fake's original is a REAL video of the same part
                assert meta[rec["original"]]["label"] == "REAL"
                assert (mini_dfdc / part / rec["original"]).is_file()
        all_names += files
    test_files = sorted(p.name for p in (mini_dfdc / "test_videos").glob("*.mp4"))
    assert len(test_files) == TEST_SYNTH.test_videos
    all_names += test_files
    assert all(NAME.match(n) for n in all_names), all_names
    assert len(set(all_names)) == len(all_names) == TEST_SYNTH.videos + TEST_SYNTH.test_videos
    assert not list(mini_dfdc.rglob("*.tmp-*"))  # no temp files left
    assert not list(mini_dfdc.parent.glob(".*tmp-*"))  # the temp folder was renamed

    sample = pd.read_csv(mini_dfdc / "sample_submission.csv")
    assert list(sample.columns) == ["filename", "label"]
    assert sorted(sample.filename) == test_files and (sample.label == 0.5).all()
    labels = pd.read_csv(mini_dfdc / "test_labels.csv")
    assert list(labels.columns) == ["filename", "label", "method", "method_seen"]
    assert sorted(labels.filename) == test_files
    videos = _record(mini_dfdc)["videos"]
    for row in labels.itertuples():
        assert row.label == int(videos[row.filename]["label"] == "FAKE")
        method = videos[row.filename]["method"]
        assert (row.method if row.label else None) == method  # REAL: empty
        if row.label:
            assert row.method_seen == int(method not in TEST_SYNTH.test_methods)
    assert set(labels.label) == {0, 1}  # both classes to score


def test_about_five_fakes_per_real(mini_dfdc: Path) -> None:
    record = _record(mini_dfdc)
    train = {n: v for n, v in record["videos"].items() if v["split"] == "train"}
    reals = [n for n, v in train.items() if v["label"] == "REAL"]
    per_real = [sum(v["original"] == r for v in train.values()) for r in reals]
    assert sum(per_real) + len(reals) == TEST_SYNTH.videos
    assert all(abs(k - TEST_SYNTH.fakes_per_real) <= 1 for k in per_real), per_real
    assert record["counts"] == {
        "train_real": len(reals),
        "train_fake": sum(per_real),
        "test_real": TEST_SYNTH.test_videos // 2,
        "test_fake": TEST_SYNTH.test_videos // 2,
    }


def test_test_identities_never_in_training(mini_dfdc: Path) -> None:
    record = _record(mini_dfdc)
    used = {"train": set(), "test": set()}
    for v in record["videos"].values():
        used[v["split"]].add(v["identity"])
        if v["label"] == "FAKE":
            assert v["donor"] not in (None, v["identity"])  # a real swap: another person
            used[v["split"]].add(v["donor"])
    assert used["train"] and used["test"]
    assert not used["train"] & used["test"]
    declared = {n: i["split"] for n, i in record["identities"].items()}
    assert all(declared[n] == "train" for n in used["train"])
    assert all(declared[n] == "test" for n in used["test"])
    assert len(declared) >= 6


def test_identity_split_rule() -> None:
    idents = [synth.Identity(f"p{i}", "", "photo", np.zeros((1, 1, 3)), np.zeros(4), np.zeros((5, 2))) for i in range(7)]
    train, test = synth.split_identities(idents, 3)
    assert test == ["p2", "p5"] and train == ["p0", "p1", "p3", "p4", "p6"]
    with pytest.raises(ConfigError):
        synth.split_identities(idents, 1)


def test_videos_are_h264_of_the_configured_size(mini_dfdc: Path) -> None:
    path = next((mini_dfdc / "dfdc_train_part_0").glob("*.mp4"))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (TEST_SYNTH.width, TEST_SYNTH.height)
        assert float(stream.average_rate) == pytest.approx(TEST_SYNTH.fps)
    assert len(_frames(path)) == round(TEST_SYNTH.seconds * TEST_SYNTH.fps)


def test_mtcnn_finds_faces_in_real_and_fake_videos(mini_dfdc: Path, faces) -> None:
    record = _record(mini_dfdc)
    found = {"REAL": [], "FAKE": []}
    for name, v in record["videos"].items():
        hits = [box is not None for box in faces[name]]
        assert any(hits), f"no face in {v}"
        found[v["label"]] += hits
    for label, hits in found.items():
        assert np.mean(hits) >= 0.8, (label, hits)


def test_fake_differs_from_original_only_around_the_face(mini_dfdc: Path, decoded, faces) -> None:
    record = _record(mini_dfdc)
    checked = 0
    for name, v in record["videos"].items():
        if v["label"] != "FAKE":
            continue
        fake, real = decoded[name], decoded[v["original"]]
        assert len(fake) == len(real)
        k = len(real) // 2
        box = faces[v["original"]][1]  # the original's face box (DFDC: it fits the fake too)
        if box is None:
            continue
        cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
        near = np.zeros(real[k].shape[:2], bool)  # the face box doubled
        near[max(0, int(cy - h)) : int(cy + h), max(0, int(cx - w)) : int(cx + w)] = True
        diff = np.abs(fake[k].astype(np.float32) - real[k].astype(np.float32)).mean(2)
        outside, inside = diff[~near].mean(), diff[near].mean()
        assert np.median(diff[~near]) <= 2.0, (name, outside)  # codec noise only
        assert outside < 4.0, (name, outside)
        if v["method"] == "partial":  # the eyes or the mouth only: a small part of the doubled box
            assert np.percentile(diff[near], 99) > 2.5 * np.percentile(diff[~near], 99), (name, inside, outside)
        else:
            assert inside > 2.5 * outside and inside > 5.0, (name, inside, outside)
        checked += 1
    assert checked >= 8


def test_same_config_is_not_regenerated(mini_dfdc: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in mini_dfdc.rglob("*") if p.is_file()}
    report = generate(mini_dfdc, TEST_SYNTH)
    assert report.skipped and report.train_videos == TEST_SYNTH.videos
    assert {p: p.stat().st_mtime_ns for p in mini_dfdc.rglob("*") if p.is_file()} == stamps
    other = SynthConfig(**{**TEST_SYNTH.__dict__, "seed": TEST_SYNTH.seed + 1})
    with pytest.raises(SynthError, match="different configuration"):
        generate(mini_dfdc, other)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not an empty folder"):
        generate(tmp_path / "out", TINY)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_bad_configs_are_named() -> None:
    with pytest.raises(ConfigError, match="even"):
        synth.plan(SynthConfig(width=321), ())
    with pytest.raises(ConfigError, match="parts"):
        synth.plan(SynthConfig(videos=6, parts=2), synth.load_identities(TINY.lfw_faces))


def test_deterministic_and_resumes_after_a_kill(tmp_path: Path, monkeypatch) -> None:
    first = generate(tmp_path / "a", TINY)
    assert not first.skipped and (first.train_real, first.train_fake) == (1, 2)

    # a run killed after its first group leaves the temp folder; the rerun finishes it
    real_render = synth._render_group
    calls: list[str] = []

    def dying(group, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(group.real)
        return real_render(group, *args, **kwargs)

    monkeypatch.setattr(synth, "_render_group", dying)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "b", TINY)
    assert not (tmp_path / "b").exists()
    tmp = tmp_path / ".b.tmp-synth"
    assert tmp.is_dir() and not list(tmp.rglob("*.mp4.tmp-*"))  # no half-written video
    done = {p.name: p.stat().st_mtime_ns for p in tmp.rglob("*.mp4")}
    assert len(done) == 3

    resumed: list[str] = []
    monkeypatch.setattr(synth, "_render_group", lambda group, *a, **k: resumed.append(group.real) or real_render(group, *a, **k))
    generate(tmp_path / "b", TINY)
    assert calls[0] not in resumed and len(resumed) == 1  # the finished group was kept
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*.mp4") if p.name in done} == done

    a, b = _record(tmp_path / "a"), _record(tmp_path / "b")
    assert a["videos"] == b["videos"] and a["counts"] == b["counts"]
    for name, v in a["videos"].items():
        fa, fb = _frames(tmp_path / "a" / v["folder"] / name), _frames(tmp_path / "b" / v["folder"] / name)
        assert len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb)), name
        assert (tmp_path / "a" / v["folder"] / name).read_bytes() == (tmp_path / "b" / v["folder"] / name).read_bytes()

    other = generate(tmp_path / "c", SynthConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    assert set(other.videos) != set(a["videos"])


def test_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["synth", "--out", str(out), "--videos", "3", "--test-videos", "0", "--parts", "1",
            "--resolution", "160x120", "--seconds", "0.5", "--fps", "4", "--seed", "5"]
    assert main(argv) == 0
    assert "wrote a mini DFDC" in capsys.readouterr().out
    record = _record(out)
    assert record["config"]["width"] == 160 and record["config"]["fps"] == 4 and record["config"]["seed"] == 5
    assert not (out / "test_videos").exists() and (out / "dfdc_train_part_0" / "metadata.json").is_file()
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(argv[:-1] + ["6"]) == 1  # another seed into the same folder
    assert "different configuration" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "x"), "--resolution", "161x120"]) == 2
    assert "even" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "x"), "--resolution", "big"])


def test_swap_methods_held_out_of_training() -> None:
    """Training fakes take the methods not in synth.test_methods in turn; the test fakes hold
    test_unseen_share of held-out ones and the rest from the training methods."""
    cfg = SynthConfig(fakes_per_real=3)
    groups, _, _ = synth.plan(cfg, synth.load_identities(cfg.lfw_faces, cfg.lfw_sharpen))
    train = [m for g in groups if g.folder != synth.TEST_FOLDER for _, _, m in g.fakes]
    test = [m for g in groups if g.folder == synth.TEST_FOLDER for _, _, m in g.fakes]
    seen = [m for m in cfg.methods if m not in cfg.test_methods]
    assert set(train) == set(seen) and not set(train) & set(cfg.test_methods)
    counts = pd.Series(train).value_counts()
    assert counts.max() - counts.min() <= 1  # in turn: equal shares
    unseen = sum(m in cfg.test_methods for m in test)
    assert unseen == round(len(test) * cfg.test_unseen_share) and set(test) - set(cfg.test_methods) <= set(seen)
    assert len(set(test) - set(cfg.test_methods)) >= 3  # seen methods are scored too
    with pytest.raises(ConfigError, match="no FAKE is left for training"):
        synth.plan(dataclasses.replace(cfg, test_methods=cfg.methods), synth.load_identities(0))
    with pytest.raises(ConfigError, match="synth.methods"):
        synth.plan(dataclasses.replace(cfg, methods=("blend", "deepfake")), synth.load_identities(0))


def _scene_and_swap(method: str, seed: int):
    identities = synth.load_identities(2)
    target, donor = identities[0], identities[-1]
    cfg = SynthConfig()
    face_px = float(target.box[3] - target.box[1])
    swap = synth._prepare_swap(donor, target.landmarks, face_px, cfg, method, np.random.default_rng(seed))
    grain = np.random.default_rng(seed).normal(0, cfg.noise, target.image.shape).astype(np.float32)
    return synth._swap_frame(target.image, swap, np.eye(3), target.landmarks, face_px, cfg, grain), swap


@pytest.mark.parametrize("method", list(synth.SWAP_METHODS))
def test_each_swap_method_is_deterministic_and_distinct(method: str) -> None:
    frame, swap = _scene_and_swap(method, seed=5)
    again, _ = _scene_and_swap(method, seed=5)
    assert np.array_equal(frame, again)  # the same seed, the same pixels
    target = synth.load_identities(2)[0].image
    changed = np.abs(frame.astype(int) - target.astype(int)).max(axis=2) > 0
    assert changed.any()  # a swap happened
    for other in synth.SWAP_METHODS:
        if other != method:
            assert not np.array_equal(frame, _scene_and_swap(other, seed=5)[0]), other
    if method == "partial":  # the eyes or the mouth only: a much smaller area than a whole-face swap
        whole = np.abs(_scene_and_swap("blend", 5)[0].astype(int) - target.astype(int)).max(axis=2) > 0
        assert changed.sum() < 0.5 * whole.sum() and swap.part in synth.PARTIAL_REGIONS
    if method == "sharp":
        assert swap.canvas > _scene_and_swap("blend", 5)[1].canvas  # a higher-resolution generator


def test_each_filmed_identity_has_several_takes() -> None:
    cfg = SynthConfig(fakes_per_real=3)  # 12 REAL training videos
    identities = synth.load_identities(cfg.lfw_faces, cfg.lfw_sharpen)
    groups, train_ids, test_ids = synth.plan(cfg, identities)
    kinds = {ident.name: ident.kind for ident in identities}
    for split_ids in (train_ids, test_ids):
        mine = [g for g in groups if g.target in split_ids]
        takes = pd.Series([g.target for g in mine]).value_counts()
        assert (takes == cfg.videos_per_identity).all(), takes
        for target in takes.index:
            shots = [g for g in mine if g.target == target]
            assert sorted(g.take for g in shots) == list(range(cfg.videos_per_identity))
            scenes = [g.scene for g in shots]
            assert len(set(scenes)) == len(scenes)  # another background every take
            assert (scenes[0] == synth.OWN_PHOTO) == (kinds[target] == "photo")
    assert all(g.folder != synth.TEST_FOLDER or g.target in test_ids for g in groups)
    again, _, _ = synth.plan(cfg, identities)
    assert [(g.real, g.target, g.take, g.scene) for g in again] == [(g.real, g.target, g.take, g.scene) for g in groups]
    one, _, _ = synth.plan(dataclasses.replace(cfg, videos_per_identity=1), identities)
    assert len({g.target for g in one if g.folder != synth.TEST_FOLDER}) == 12  # one take each
