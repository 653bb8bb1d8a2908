"""The per-video predictor (dfdc.predict) and its command (dfdc.cli.predict)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_video import astronaut_frames, make_clip

from dfdc.cli import main as cli_main
from dfdc.config import Config, load_config
from dfdc.models import create_model, save_checkpoint
from dfdc.predict import PredictError, VideoFaces, WorkerSetup, fits_budget, predict_videos, process_video, start_worker

CLIP = 0.02  # a clip bound other than the default, so the test sees it applied
OVERRIDES = ["model.arch=tiny-cnn", "faces.size=48", "train.size=48", "predict.frames=4", f"predict.clip={CLIP}"]
GOOD = ["good0.mp4", "good1.mp4", "short.mp4"]  # short.mp4: truncated but still readable
BAD = {  # file -> reason prefix in predictions.csv
    "zero.mp4": "empty file",
    "garbage.mp4": "unreadable",
    "cut.mp4": "unreadable",  # truncated before its index (moov atom at the end)
    "blank.mp4": "no face",
    "absent.mp4": "missing",
}


def tiny_cfg(*extra: str) -> Config:
    return load_config("smoke-random", OVERRIDES + list(extra))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Videos (good and bad), a sample submission in a shuffled order, a 2-fold run."""
    root = tmp_path_factory.mktemp("predict")
    videos = root / "test_videos"
    videos.mkdir()
    make_clip(videos / "good0.mp4", astronaut_frames(8, seed=1))
    make_clip(videos / "good1.mp4", astronaut_frames(8, seed=2))
    short = make_clip(root / "short_full.mp4", astronaut_frames(12, seed=3), faststart=True).read_bytes()
    (videos / "short.mp4").write_bytes(short[: len(short) * 2 // 3])
    cut = make_clip(root / "cut_full.mp4", astronaut_frames(8, seed=4)).read_bytes()
    (videos / "cut.mp4").write_bytes(cut[: len(cut) // 2])
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    make_clip(videos / "blank.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 8)
    (videos / "extra.mp4").write_bytes(b"not in the sample submission")
    order = ["blank.mp4", "good1.mp4", "absent.mp4", "zero.mp4", "short.mp4", "garbage.mp4", "good0.mp4", "cut.mp4"]
    sample = root / "sample_submission.csv"
    pd.DataFrame({"filename": order, "label": 0.5}).to_csv(sample, index=False)
    run = root / "run"
    cfg = tiny_cfg()
    for fold in range(2):
        save_checkpoint(run / f"fold{fold}" / "best.pt", create_model(cfg.model), cfg, {"fold": fold})
    return {"root": root, "videos": videos, "sample": sample, "run": run}


@pytest.fixture(scope="module")
def with_workers(inputs: dict[str, Path]):
    out = inputs["root"] / "sub_w1" / "submission.csv"
    report = predict_videos(
        inputs["videos"], inputs["run"], out, tiny_cfg("predict.workers=1"), inputs["sample"], "cpu", progress=False
    )
    return report, out


def read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(out), pd.read_csv(out.parent / "predictions.csv", keep_default_na=False)


def test_one_row_per_sample_row_in_order(inputs: dict[str, Path], with_workers) -> None:
    report, out = with_workers
    sub, pred = read(out)
    sample = pd.read_csv(inputs["sample"])
    assert list(sub.columns) == ["filename", "label"]
    assert sub["filename"].tolist() == sample["filename"].tolist()  # extra.mp4 on disk is not listed
    assert list(pred.columns) == ["filename", "label", "raw", "n_faces", "reason"]
    assert pred["filename"].tolist() == sample["filename"].tolist()
    assert report.videos == len(sample) and report.models == 2
    saved = yaml.safe_load((out.parent / "config.yaml").read_text())
    assert saved["predict"]["clip"] == CLIP and saved["predict"]["workers"] == 1


def test_bad_inputs_fall_back_with_their_reason(with_workers) -> None:
    report, out = with_workers
    sub, pred = read(out)
    pred = pred.set_index("filename")
    for name, reason in BAD.items():
        assert pred.loc[name, "reason"].split(":")[0] == reason, (name, pred.loc[name, "reason"])
        assert pred.loc[name, "label"] == 0.5
        assert report.fallbacks[name].startswith(reason)
    for name in GOOD:  # short.mp4 is predicted from the part that decoded, and says so
        want = "partial decode: 7 of the 12 frames the container claims decoded; 4 read" if name == "short.mp4" else ""
        assert pred.loc[name, "reason"] == want, name
        assert pred.loc[name, "n_faces"] >= 1 and float(pred.loc[name, "raw"]) >= 0
    assert report.notes == {"short.mp4": pred.loc["short.mp4", "reason"]} and "partial decode: 1" in report.summary()
    assert pred.loc["good0.mp4", "n_faces"] >= 4  # a face in each of the 4 frames
    assert report.predicted == len(GOOD) and len(report.fallbacks) == len(BAD)
    assert report.faces == pred["n_faces"].astype(int).sum()


def test_a_full_disk_ends_predict_with_one_line(inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while writing the submission: one line naming the folder and what to do, no
    traceback; the same command with space again writes the submission."""
    import contextlib
    import errno

    from dfdc import io

    out = tmp_path / "sub" / "submission.csv"
    two = tmp_path / "two.csv"
    pd.DataFrame({"filename": ["blank.mp4", "good1.mp4"], "label": 0.5}).to_csv(two, index=False)
    argv = ["predict", "--profile", "smoke-random", *[x for o in OVERRIDES for x in ("--set", o)], "--videos",
            str(inputs["videos"]), "--models", str(inputs["run"]), "--workers", "0", "--device", "cpu",
            "--no-progress", "--sample-submission", str(two), "--out", str(out)]
    real = io.atomic_open

    @contextlib.contextmanager
    def full(path, mode="w", **kwargs):  # noqa: ANN001, ANN003, ANN202
        with real(path, mode, **kwargs) as handle:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
            yield handle

    with monkeypatch.context() as patch:
        patch.setattr(io, "atomic_open", full)
        assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"error: {out.parent}: no space left on the device; free space and rerun: it resumes")
    assert cli_main(argv) == 0 and read(out)[0]["filename"].tolist() == ["blank.mp4", "good1.mp4"]


def test_values_are_clipped_probabilities(with_workers) -> None:
    _, out = with_workers
    sub, pred = read(out)
    assert sub["label"].between(CLIP, 1 - CLIP).all()
    ok = pred[pred["reason"] == ""]
    raw = ok["raw"].astype(float)
    assert raw.between(0, 1).all()
    assert np.allclose(ok["label"].astype(float), raw.clip(CLIP, 1 - CLIP))  # temperature 1: clip only


def test_ensemble_is_the_mean_of_the_folds(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Each fold alone, then both: with mean aggregation the 2-fold video P(FAKE) (mean over
    faces of the folds' mean) is the mean of the single folds' video P(FAKE)."""
    one = tmp_path / "one.csv"
    pd.DataFrame({"filename": ["good0.mp4"], "label": 0.5}).to_csv(one, index=False)
    raws = []
    for fold in (0, 1, None):
        run = inputs["run"]
        if fold is not None:
            run = tmp_path / f"only{fold}"
            (run / f"fold{fold}").mkdir(parents=True)
            os.link(inputs["run"] / f"fold{fold}" / "best.pt", run / f"fold{fold}" / "best.pt")
        sub = tmp_path / f"sub{fold}" / "submission.csv"
        cfg = tiny_cfg("predict.workers=0", "predict.aggregation=mean")
        report = predict_videos(inputs["videos"], run, sub, cfg, one, "cpu", progress=False)
        assert report.models == (2 if fold is None else 1) and report.predicted == 1
        raws.append(float(read(sub)[1].loc[0, "raw"]))
    assert raws[0] != pytest.approx(raws[1], abs=1e-9)  # the folds differ
    assert raws[2] == pytest.approx((raws[0] + raws[1]) / 2, abs=1e-6)


def test_inline_cli_matches_workers_and_tta_is_structural(inputs: dict[str, Path], with_workers, capsys) -> None:
    _, out_w1 = with_workers
    out = inputs["root"] / "sub_cli" / "submission.csv"
    sets = [x for o in OVERRIDES for x in ("--set", o)]
    base = ["predict", "--profile", "smoke-random", *sets, "--videos", str(inputs["videos"]), "--models", str(inputs["run"])]
    base += ["--workers", "0", "--device", "cpu", "--no-progress"]
    assert cli_main(base + ["--out", str(out)]) == 0  # sample_submission.csv beside the videos folder is found
    printed = capsys.readouterr().out
    assert "calibration: aggregation=confident" in printed and "fallbacks: 5" in printed
    w1, w0 = read(out_w1)[1], read(out)[1]
    assert w0["filename"].tolist() == w1["filename"].tolist()
    assert w0["reason"].tolist() == w1["reason"].tolist()
    assert np.allclose(w0["label"].astype(float), w1["label"].astype(float), atol=1e-5)

    two = inputs["root"] / "two.csv"
    pd.DataFrame({"filename": ["blank.mp4", "good1.mp4"], "label": 0.5}).to_csv(two, index=False)
    out_tta = inputs["root"] / "sub_tta" / "submission.csv"
    assert cli_main(base + ["--out", str(out_tta), "--tta-flip", "--sample-submission", str(two)]) == 0
    tta = read(out_tta)[1]
    same = w0.set_index("filename").loc[["blank.mp4", "good1.mp4"]].reset_index()
    assert tta[["filename", "reason", "n_faces"]].equals(same[["filename", "reason", "n_faces"]])
    assert tta["label"].astype(float).between(CLIP, 1 - CLIP).all()
    saved = yaml.safe_load((out_tta.parent / "config.yaml").read_text())
    assert saved["predict"]["tta_flip"] is True


def test_zero_time_budget_gives_all_fallbacks_and_a_file(inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=1", "predict.time_budget=1e-9")
    report = predict_videos(inputs["videos"], inputs["run"], out, cfg, inputs["sample"], "cpu", progress=False)
    sub, pred = read(out)
    assert len(sub) == 8 and (sub["label"] == 0.5).all()
    assert report.predicted == 0
    reasons = pred.set_index("filename")["reason"]
    for name in GOOD + ["blank.mp4", "garbage.mp4", "cut.mp4"]:
        assert reasons[name].startswith("time budget")
    assert reasons["absent.mp4"] == "missing"
    assert "time budget" in capsys.readouterr().err


def test_calibration_file_is_used_unless_overridden(inputs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    os.link(inputs["run"] / "fold0" / "best.pt", run / "fold0" / "best.pt")
    (run / "calibration.json").write_text(json.dumps({"aggregation": "mean", "temperature": 2.0, "clip": 0.05}))
    cfg = tiny_cfg("predict.time_budget=1e-9", "predict.workers=0")
    out = tmp_path / "a" / "submission.csv"
    report = predict_videos(inputs["videos"], run, out, cfg, inputs["sample"], "cpu", progress=False)
    assert report.calibration == {"aggregation": "mean", "temperature": 2.0, "clip": 0.05,
                                  "bias": 0.0,  # a file written before predict.bias existed: no offset
                                  "source": str(run / "calibration.json")}
    assert "temperature=2" in report.summary()
    cfg = tiny_cfg("predict.time_budget=1e-9", "predict.workers=0")
    report = predict_videos(inputs["videos"], run, out, cfg, inputs["sample"], "cpu", progress=False,
                            explicit={"clip"})
    assert report.calibration["clip"] == CLIP and report.calibration["temperature"] == 2.0
    cfg = tiny_cfg("predict.time_budget=1e-9", "predict.workers=0", "predict.calibration=none")
    report = predict_videos(inputs["videos"], run, out, cfg, inputs["sample"], "cpu", progress=False)
    assert report.calibration["aggregation"] == "confident" and report.calibration["temperature"] == 1.0
    (run / "calibration.json").write_text("{not json")
    with pytest.raises(PredictError, match="calibration.json"):
        predict_videos(inputs["videos"], run, out, tiny_cfg(), inputs["sample"], "cpu", progress=False)


def test_a_calibration_fitted_at_other_frames_is_applied_with_a_warning(inputs: dict[str, Path], tmp_path: Path,
                                                                         capsys) -> None:
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    os.link(inputs["run"] / "fold0" / "best.pt", run / "fold0" / "best.pt")
    fitted = {"aggregation": "mean", "temperature": 2.0, "clip": 0.05, "frames": 32}
    (run / "calibration.json").write_text(json.dumps(fitted))
    cfg = tiny_cfg("predict.time_budget=1e-9", "predict.workers=0")  # 4 frames
    report = predict_videos(inputs["videos"], run, tmp_path / "a" / "submission.csv", cfg, inputs["sample"], "cpu",
                            progress=False)
    assert report.calibration["temperature"] == 2.0  # applied all the same ...
    (said,) = report.warnings  # ... and said, on stderr and in the summary the kernel logs
    assert "fitted at 32 frames per video and is applied at 4" in said
    assert said in capsys.readouterr().err and f"warning: {said}" in report.summary()
    (run / "calibration.json").write_text(json.dumps({**fitted, "frames": 4}))
    report = predict_videos(inputs["videos"], run, tmp_path / "b" / "submission.csv", cfg, inputs["sample"], "cpu",
                            progress=False)
    assert report.warnings == []


def test_clear_errors_for_unusable_run_inputs(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub.csv"
    with pytest.raises(PredictError, match="no fold"):
        predict_videos(inputs["videos"], tmp_path, out, tiny_cfg(), inputs["sample"], "cpu", progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\na.mp4,0.5\n")
    with pytest.raises(PredictError, match="filename"):
        predict_videos(inputs["videos"], inputs["run"], out, tiny_cfg(), bad, "cpu", progress=False)
    assert not out.exists()


def crashing_process(path: str, setup: WorkerSetup) -> VideoFaces:
    """A worker that dies on 'crash*' videos and raises on 'raise*' ones (spawn-importable)."""
    name = Path(path).name
    if name.startswith("crash"):
        os._exit(3)
    if name.startswith("raise"):
        raise MemoryError("simulated out of memory in the worker")
    return process_video(path, setup)


def test_dead_or_failing_worker_gives_fallbacks_not_an_abort(inputs: dict[str, Path], tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "crash.mp4", "raise.mp4", "b.mp4"):
        os.link(inputs["videos"] / "good0.mp4", videos / name)
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=1", "predict.prefetch=4")  # all four in flight when the worker dies
    report = predict_videos(videos, inputs["run"], out, cfg, None, "cpu", progress=False, process=crashing_process)
    pred = read(out)[1].set_index("filename")
    assert pred.index.tolist() == ["a.mp4", "b.mp4", "crash.mp4", "raise.mp4"]  # sorted mp4s, no sample
    assert pred.loc["crash.mp4", "reason"].startswith("worker died")
    assert pred.loc["raise.mp4", "reason"].startswith("error: MemoryError")
    assert pred.loc["a.mp4", "reason"] == "" and pred.loc["b.mp4", "reason"] == ""
    assert report.predicted == 2


def sticky_failure(path: str, setup: WorkerSetup) -> VideoFaces:
    """A worker whose 'cuda*' video raises a CUDA error that sticks: every later video in the
    same process raises too, as a real sticky CUDA error does (spawn-importable)."""
    if Path(path).name.startswith("cuda") or _STICKY:
        _STICKY.append(Path(path).name)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return quick_or_hang(path, setup)


_STICKY: list[str] = []


def test_a_worker_whose_video_raised_is_replaced_before_the_next(inputs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """After a non-video error the worker is replaced: the videos queued behind the failing one
    are predicted by a fresh worker instead of all inheriting its broken state."""
    names = ["a.mp4", "cuda.mp4", "d.mp4", "e.mp4", "f.mp4"]  # in this order (sorted), no sample submission
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", names)
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=1", "predict.prefetch=3")  # d already queued to it when cuda fails
    report = predict_videos(videos, inputs["run"], out, cfg, None, "cpu", progress=False, process=sticky_failure)
    pred = read(out)[1].set_index("filename")
    assert pred.loc["cuda.mp4", "reason"].startswith("error: RuntimeError: CUDA error")
    assert report.fallbacks == {"cuda.mp4": pred.loc["cuda.mp4", "reason"]}
    assert report.predicted == 4 and (pred.drop(index="cuda.mp4")["reason"] == "").all()
    assert "worker 0 (cpu) replaced after a video raised in it" in capsys.readouterr().err


def test_mini_dfdc_test_videos_end_to_end(mini_dfdc: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    """The DFDC layout: test_videos/ + sample_submission.csv -> one prediction per row, faces found."""
    sample = mini_dfdc / "sample_submission.csv"
    out = tmp_path / "submission.csv"
    cfg = tiny_cfg("predict.workers=0")
    report = predict_videos(mini_dfdc / "test_videos", inputs["run"], out, cfg, sample, "cpu", progress=False)
    sub, pred = read(out)
    assert sub["filename"].tolist() == pd.read_csv(sample)["filename"].tolist()
    # the synthetic test videos are readable; MTCNN may miss a face in a few of 4 frames only
    assert all(r.startswith("no face") for r in report.fallbacks.values()), report.fallbacks
    assert report.predicted >= len(sub) - 1 and (pred.loc[pred["reason"] == "", "n_faces"].astype(int) >= 1).all()
    assert sub["label"].between(CLIP, 1 - CLIP).all()


# ------------------------------------------------------------------ timeouts, budget, clip, TTA, crops


def quick_or_hang(path: str, setup: WorkerSetup) -> VideoFaces:
    """Two blank faces at once, except 'hang*' videos, whose decode never ends (spawn-importable)."""
    name = Path(path).name
    if name.startswith("hang"):
        time.sleep(3600)
    n = 2
    tensors = {s: np.full((n, 3, s.input_size, s.input_size), 100, np.uint8) for s in setup.specs}
    return VideoFaces(name, tensors, n, n, {}, frames=np.arange(n), tracks=np.zeros(n, np.int64))


def _linked(videos: Path, source: Path, names: list[str]) -> Path:
    videos.mkdir()
    for name in names:
        os.link(source, videos / name)
    return videos


def test_a_hung_video_times_out_and_its_worker_is_replaced(inputs: dict[str, Path], tmp_path: Path) -> None:
    names = ["a.mp4", "hang.mp4", "b.mp4", "c.mp4"]
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", names)
    out = tmp_path / "sub" / "submission.csv"
    budget, timeout = 120.0, 3.0
    cfg = tiny_cfg("predict.workers=1", "predict.prefetch=2", f"predict.video_timeout={timeout}",
                   f"predict.time_budget={budget}")
    start = time.monotonic()
    report = predict_videos(videos, inputs["run"], out, cfg, None, "cpu", progress=False, process=quick_or_hang)
    assert time.monotonic() - start < budget + timeout
    pred = read(out)[1].set_index("filename")
    assert pred.index.tolist() == sorted(names)  # every row written
    assert pred.loc["hang.mp4", "reason"].startswith("timeout")
    assert (pred.drop("hang.mp4")["reason"] == "").all()  # the videos queued behind it went to a new worker
    assert report.system_failures() == {"timeout": 1}


def test_the_time_budget_holds_while_a_worker_hangs(inputs: dict[str, Path], tmp_path: Path) -> None:
    """No per-video timeout: the budget alone ends the run; every row is still written."""
    names = ["a.mp4", "hang.mp4", "b.mp4"]
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", names)
    out = tmp_path / "sub" / "submission.csv"
    budget = 20.0
    cfg = tiny_cfg("predict.workers=1", "predict.prefetch=1", f"predict.time_budget={budget}")
    start = time.monotonic()
    report = predict_videos(videos, inputs["run"], out, cfg, None, "cpu", progress=False, process=quick_or_hang)
    assert time.monotonic() - start < budget + 10  # the kill and the output files take a moment
    pred = read(out)[1].set_index("filename")
    assert pred.index.tolist() == sorted(names)
    assert pred.loc["a.mp4", "reason"] == ""
    assert pred.loc["hang.mp4", "reason"].startswith("time budget")
    assert report.budget_fallbacks() >= 1  # the budget's fallbacks are counted apart from breakage
    assert "time budget" not in report.system_failures()


def test_budget_projection() -> None:
    """A video starts only if, at the mean pace so far, it and those in flight fit the budget."""
    assert fits_budget(elapsed=5.0, finished=0, in_flight=3, budget=0.0)  # no budget
    assert fits_budget(elapsed=1.0, finished=0, in_flight=0, budget=10.0)  # nothing measured yet
    assert fits_budget(elapsed=4.0, finished=2, in_flight=0, budget=10.0)  # 2 s/video: 6 <= 10
    assert not fits_budget(elapsed=4.0, finished=2, in_flight=3, budget=10.0)  # 4 + 4 x 2 > 10
    assert not fits_budget(elapsed=9.0, finished=3, in_flight=0, budget=10.0)  # 9 + 3 > 10
    assert not fits_budget(elapsed=10.0, finished=0, in_flight=0, budget=10.0)


def slow_video(path: str, setup: WorkerSetup) -> VideoFaces:
    time.sleep(0.4)
    return quick_or_hang(path, setup)


def test_budget_stops_starting_videos_that_would_not_fit(inputs: dict[str, Path], tmp_path: Path) -> None:
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", [f"v{i}.mp4" for i in range(12)])
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=0", "predict.time_budget=2.0")
    report = predict_videos(videos, inputs["run"], out, cfg, None, "cpu", progress=False, process=slow_video,
                            start=None)
    # every video takes >= 0.4 s, and one starts only when the elapsed time plus the mean pace so
    # far fits in 2 s: after five, 2.0 + 0.4 > 2, so at most five are predicted
    assert 1 <= report.predicted <= 5
    assert report.budget_fallbacks() == 12 - report.predicted
    assert report.seconds["total"] <= 2.0 + 2.0  # a margin for a loaded machine (the last one started in time)


def _extreme_run(root: Path, fake: bool) -> Path:
    """A checkpoint whose logits are +-60 whatever the input: P(FAKE) is exactly 0 or 1."""
    import torch

    cfg = tiny_cfg()
    model = create_model(cfg.model)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([-60.0, 60.0] if fake else [60.0, -60.0]))
    save_checkpoint(root / "fold0" / "best.pt", model, cfg, {"fold": 0})
    return root


@pytest.mark.parametrize("fake", [True, False])
def test_clip_bounds_extreme_predictions(inputs: dict[str, Path], tmp_path: Path, fake: bool) -> None:
    run = _extreme_run(tmp_path / "run", fake)
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", ["a.mp4", "b.mp4"])
    out = tmp_path / "sub" / "submission.csv"
    report = predict_videos(videos, run, out, tiny_cfg("predict.workers=0"), None, "cpu", progress=False,
                            process=quick_or_hang)
    assert report.predicted == 2
    sub, pred = read(out)
    assert pred["raw"].astype(float).tolist() == ([1.0, 1.0] if fake else [0.0, 0.0])
    assert sub["label"].tolist() == ([1 - CLIP] * 2 if fake else [CLIP] * 2)


class _Asymmetric(torch.nn.Module):
    """P(FAKE) grows with the brightness of the left half: a flip changes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        score = (x[..., :half].float().mean((1, 2, 3)) - x[..., half:].float().mean((1, 2, 3))) / 50.0
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_tta_flip_averages_the_mirrored_view() -> None:
    from dfdc.predict import CropSpec, _Ensemble

    spec = CropSpec(0.6, 8, 8)
    x = np.zeros((2, 3, 8, 8), np.uint8)
    x[0, :, :, :4] = 200  # bright left half
    x[1, :, :, 4:] = 100  # bright right half
    plain = _Ensemble({spec: [(_Asymmetric(), "cpu")]}, half=False, tta_flip=False).fake_probability({spec: x})
    tta = _Ensemble({spec: [(_Asymmetric(), "cpu")]}, half=False, tta_flip=True).fake_probability({spec: x})
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert plain == pytest.approx([sigmoid(4.0), sigmoid(-2.0)])
    assert tta == pytest.approx([(sigmoid(4.0) + sigmoid(-4.0)) / 2, (sigmoid(-2.0) + sigmoid(2.0)) / 2])


_SEEN: list[VideoFaces] = []


def recording_process(path: str, setup: WorkerSetup) -> VideoFaces:
    faces = process_video(path, setup)
    _SEEN.append(faces)
    return faces


def test_predictor_crops_as_the_checkpoint_was_trained(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Margin and crop size come from the checkpoint (not the predicting profile), the input
    side from its InputSpec: the model sees exactly prepare(crop_face(frame, box, m, s), i)."""
    from dfdc.faces import FaceDetector, crop_face
    from dfdc.preprocess import prepare
    from dfdc.video import read_frames

    trained = load_config("smoke-random", ["model.arch=tiny-cnn", "faces.margin=0.3", "faces.size=40", "train.size=24"])
    run = tmp_path / "run"
    save_checkpoint(run / "fold0" / "best.pt", create_model(trained.model, 24), trained, {"fold": 0})
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", ["a.mp4"])
    cfg = load_config("smoke-random", ["predict.frames=3", "predict.workers=0"])  # margin 0.6, 128 px here
    _SEEN.clear()
    predict_videos(videos, run, tmp_path / "sub.csv", cfg, None, "cpu", progress=False, process=recording_process)
    (seen,) = _SEEN
    ((spec, tensors),) = seen.tensors.items()
    assert (spec.margin, spec.crop_size, spec.input_size) == (0.3, 40, 24)
    indices, frames = read_frames(videos / "a.mp4", k=3)
    detections = FaceDetector(trained.faces, device="cpu").detect(frames)
    want = np.stack([prepare(crop_face(frames[i], d.box, 0.3, 40), 24) for i, ds in enumerate(detections) for d in ds])
    assert tensors.shape == want.shape and np.array_equal(tensors, want)
    assert seen.frames.tolist() == [indices[i] for i, ds in enumerate(detections) for _ in ds]


def test_a_chosen_checkpoint_and_per_face_probabilities(inputs: dict[str, Path], tmp_path: Path) -> None:
    one = inputs["run"] / "fold1" / "best.pt"
    faces_csv = tmp_path / "faces.csv"
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=0", "predict.aggregation=mean")
    report = predict_videos(inputs["videos"], inputs["run"], out, cfg, None, "cpu", progress=False,
                            checkpoints=[one], faces_csv=faces_csv, names=["good0.mp4", "blank.mp4"])
    assert report.models == 1 and report.faces_csv == faces_csv
    faces = pd.read_csv(faces_csv)
    assert list(faces.columns) == ["filename", "model", "frame", "track", "prob"]
    assert set(faces["model"]) == {"fold1"}  # the model's fold folder names it
    assert set(faces["filename"]) == {"good0.mp4"}  # blank.mp4 has no face: no rows
    pred = read(out)[1].set_index("filename")
    assert float(pred.loc["good0.mp4", "raw"]) == pytest.approx(faces["prob"].mean())
    assert len(faces) == pred.loc["good0.mp4", "n_faces"]
    assert report.system_failures() == {} and report.fallbacks["blank.mp4"].startswith("no face")


# ------------------------------------------------------------------ worker start-up (the detector is built before any video)

START_LOG = "DFDC_TEST_START_LOG"  # a folder the start-up functions below leave one file per attempt in


def _attempt() -> int:
    """Record one start-up attempt (spawned workers share the test's environment); returns its number."""
    folder = Path(os.environ[START_LOG])
    n = len(list(folder.iterdir())) + 1
    (folder / f"attempt{n}-{os.getpid()}").touch()
    return n


def failing_start(setup: WorkerSetup) -> None:
    _attempt()
    raise RuntimeError("CUDA error: out of memory")


def first_start_fails(setup: WorkerSetup) -> None:
    if _attempt() == 1:
        raise RuntimeError("CUDA error: out of memory")


def dying_start(setup: WorkerSetup) -> None:
    _attempt()
    os._exit(3)


@pytest.fixture
def start_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "starts"
    folder.mkdir()
    monkeypatch.setenv(START_LOG, str(folder))
    return folder


def _three_videos(inputs: dict[str, Path], tmp_path: Path) -> Path:
    return _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", ["a.mp4", "b.mp4", "c.mp4"])


def test_a_worker_whose_start_up_fails_gives_the_real_reason(inputs: dict[str, Path], tmp_path: Path,
                                                             start_log: Path) -> None:
    """The detector's construction raises in every worker: no video is blamed for it, three
    workers in a row are tried, then every video gets the start-up's own reason."""
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=1", "predict.prefetch=2")
    report = predict_videos(_three_videos(inputs, tmp_path), inputs["run"], out, cfg, None, "cpu", progress=False,
                            process=quick_or_hang, start=failing_start)
    reasons = read(out)[1].set_index("filename")["reason"]
    assert len(list(start_log.iterdir())) == 3  # WORKER_START_FAILURES attempts, then the slot is given up
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        assert reasons[name].startswith("error: 3 worker processes in a row failed to start (worker start-up failed: "
                                        "RuntimeError: CUDA error: out of memory)"), reasons[name]
    assert report.predicted == 0 and report.system_failures() == {"error": 3}


def test_a_worker_that_fails_to_start_once_is_replaced(inputs: dict[str, Path], tmp_path: Path,
                                                       start_log: Path) -> None:
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=1", "predict.prefetch=2")
    report = predict_videos(_three_videos(inputs, tmp_path), inputs["run"], out, cfg, None, "cpu", progress=False,
                            process=quick_or_hang, start=first_start_fails)
    assert len(list(start_log.iterdir())) == 2  # the failed start-up and its replacement
    assert report.predicted == 3 and not report.fallbacks  # no video paid for the failed start


def test_workers_dying_at_start_up_end_the_run_quickly(inputs: dict[str, Path], tmp_path: Path,
                                                       start_log: Path) -> None:
    """A worker killed while it builds its detector (a segfault, the OOM killer) is a start
    failure, not a video's death: the run stops respawning after three, with the reason."""
    out = tmp_path / "sub" / "submission.csv"
    cfg = tiny_cfg("predict.workers=1", "predict.video_timeout=60", "predict.time_budget=600")
    began = time.monotonic()
    report = predict_videos(_three_videos(inputs, tmp_path), inputs["run"], out, cfg, None, "cpu", progress=False,
                            process=quick_or_hang, start=dying_start)
    assert time.monotonic() - began < 120  # three spawns, not one per video until the budget
    reasons = read(out)[1]["reason"].tolist()
    assert len(list(start_log.iterdir())) == 3
    assert all(r.startswith("worker died: 3 worker processes in a row failed to start (the worker process exited "
                            "(code 3) before it was ready") for r in reasons), reasons
    assert report.system_failures() == {"worker died": 3}


def test_inline_start_up_failure_reaches_every_video(inputs: dict[str, Path], tmp_path: Path, start_log: Path) -> None:
    out = tmp_path / "sub" / "submission.csv"
    predict_videos(_three_videos(inputs, tmp_path), inputs["run"], out, tiny_cfg("predict.workers=0"), None, "cpu",
                   progress=False, process=quick_or_hang, start=failing_start)
    reasons = read(out)[1]["reason"].tolist()
    assert reasons == ["error: worker start-up failed: RuntimeError: CUDA error: out of memory"] * 3
    assert len(list(start_log.iterdir())) == 1


def test_a_failed_detector_build_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector is built again after a failure (never a KeyError for the next video)."""
    import dfdc.faces
    import dfdc.predict

    calls: list[str] = []

    class Flaky:
        def __init__(self, faces: object, device: str) -> None:
            calls.append(device)
            if len(calls) == 1:
                raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(dfdc.faces, "FaceDetector", Flaky)
    monkeypatch.setattr(dfdc.predict, "_WORKER", {})
    setup = WorkerSetup(tiny_cfg().faces, 2, (), 1, "cpu")
    with pytest.raises(RuntimeError, match="out of memory"):
        start_worker(setup)
    start_worker(setup)  # retried, not cached as broken
    assert isinstance(dfdc.predict._WORKER["detector"], Flaky) and calls == ["cpu", "cpu"]
    start_worker(setup)
    assert len(calls) == 2  # built once it worked


def test_detect_device_is_validated(inputs: dict[str, Path], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(PredictError, match="predict.detect_device cuda: CUDA is not available"):
        predict_videos(inputs["videos"], inputs["run"], tmp_path / "s.csv", tiny_cfg("predict.detect_device=cuda"),
                       inputs["sample"], "cpu", progress=False)


# ------------------------------------------------------------------ the ensemble: the video rule per model, then the mean

def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


BRIGHT, DARK = 200, 50  # pixel values of the two kinds of face the fake worker below returns


def _pixels_model(root: Path, fold: int, bright_p: float, dark_p: float) -> None:
    """A ``pixels`` model whose P(FAKE) is ``bright_p`` on a bright face and ``dark_p`` on a dark one."""
    cfg = tiny_cfg("model.arch=pixels", "train.size=16")
    model = create_model(cfg.model, 16).eval()
    with torch.no_grad():
        fb, fd = (model.features(torch.full((1, 3, 16, 16), v, dtype=torch.uint8))[0].double() for v in (BRIGHT, DARK))
        w = (fb - fd) / (fb - fd).dot(fb - fd) * (_logit(bright_p) - _logit(dark_p))
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1] = w.float()
        model.fc.bias[1] = float(_logit(dark_p) - w.dot(fd))
    save_checkpoint(root / f"fold{fold}" / "best.pt", model, cfg, {"fold": fold})


def bright_and_dark(path: str, setup: WorkerSetup) -> VideoFaces:
    """32 faces of one person: 13 bright, 19 dark (spawn-importable)."""
    values = np.array([BRIGHT] * 13 + [DARK] * 19, np.uint8)
    tensors = {s: np.broadcast_to(values[:, None, None, None], (32, 3, s.input_size, s.input_size)).copy()
               for s in setup.specs}
    return VideoFaces(Path(path).name, tensors, 32, 32, {}, frames=np.arange(32), tracks=np.zeros(32, np.int64))


def test_the_video_rule_is_applied_per_model_then_averaged(inputs: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The review's example: model A sees 13 faces at 0.9 and 19 at 0.3, model B every face at
    0.69. The 1st place's order (the confident rule per model, then the mean): (0.9 + 0.69) / 2
    = 0.795. Faces averaged over the models first (0.795 and 0.495) would give the plain mean,
    0.617. (B is at 0.69, not 0.7, so that float rounding cannot put 0.8 on either side of the
    rule's threshold.)"""
    from dfdc.aggregate import aggregate
    from dfdc.calibrate import video_probs

    run = tmp_path / "run"
    _pixels_model(run, 0, 0.9, 0.3)
    _pixels_model(run, 1, 0.69, 0.69)
    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", ["v.mp4"])
    out, faces_csv = tmp_path / "sub" / "submission.csv", tmp_path / "faces.csv"
    cfg = tiny_cfg("predict.workers=0", "predict.aggregation=confident", "predict.frames=32")
    report = predict_videos(videos, run, out, cfg, None, "cpu", progress=False, process=bright_and_dark,
                            faces_csv=faces_csv, start=None)
    raw = float(read(out)[1].loc[0, "raw"])
    assert raw == pytest.approx(0.795, abs=1e-4)
    assert report.calibration["aggregation"] == "confident" and report.models == 2
    units = pd.read_csv(faces_csv)
    assert len(units) == 64 and sorted(set(units["model"])) == ["fold0", "fold1"]
    per_model = units.pivot(index="frame", columns="model", values="prob")
    assert per_model["fold0"].round(4).tolist() == [0.9] * 13 + [0.3] * 19
    faces_first = aggregate(per_model.mean(axis=1).to_numpy(), "confident", cfg.predict)
    assert faces_first == pytest.approx((13 * 0.795 + 19 * 0.495) / 32, abs=1e-4)  # 0.617: not what is predicted
    # calibration reads the same per-unit file and applies the rule per model too
    _, by_rule, _ = video_probs(units.assign(video="v.mp4", label=1), cfg.predict)
    assert by_rule["confident"][0] == pytest.approx(raw, abs=1e-9)
    # fold1 gives every face 0.69: a constant model, reported loudly (fold0 is not)
    (constant,) = [w for w in report.warnings if "constant model" in w]
    assert constant.startswith("fold1: all 32 face predictions are 0.6900")
    assert f"predict: {constant}" in capsys.readouterr().err and f"warning: {constant}" in report.summary()


# ------------------------------------------------------------------ half precision (the GPU path, run on the CPU)


def test_half_precision_path_runs_the_models_in_fp16(inputs: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the models run in fp16 (uint8 in, normalised in the model's dtype). CPUs run
    fp16 convolutions too, so the same path is checked here with the GPU test switched."""
    import dfdc.predict
    from dfdc.predict import load_ensemble

    videos = _linked(tmp_path / "videos", inputs["videos"] / "good0.mp4", ["a.mp4", "b.mp4"])
    cfg = tiny_cfg("predict.workers=0", "predict.aggregation=mean")
    full = predict_videos(videos, inputs["run"], tmp_path / "f" / "submission.csv", cfg, None, "cpu",
                          progress=False, process=quick_or_hang, start=None)
    monkeypatch.setattr(dfdc.predict, "half_precision", lambda cfg, devices: True)
    ensemble, _ = load_ensemble(inputs["run"], cfg.predict, ["cpu"])
    assert ensemble.half
    model = ensemble.groups[ensemble.specs[0]][0][0]
    assert next(model.parameters()).dtype == torch.float16 and model.pixel_mean.dtype == torch.float16
    half = predict_videos(videos, inputs["run"], tmp_path / "h" / "submission.csv", cfg, None, "cpu",
                          progress=False, process=quick_or_hang, start=None)
    assert half.predicted == full.predicted == 2
    raw_full = read(full.out_csv)[1]["raw"].astype(float)
    raw_half = read(half.out_csv)[1]["raw"].astype(float)
    assert np.allclose(raw_half, raw_full, atol=5e-3) and not np.array_equal(raw_half, raw_full)
