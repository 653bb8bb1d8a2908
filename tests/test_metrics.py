"""dfdc.metrics and dfdc.aggregate: Kaggle log loss, aggregation rules, score reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from dfdc.aggregate import AggregationError, aggregate, apply_temperature, clip, finalize
from dfdc.cli import main
from dfdc.config import PredictConfig
from dfdc.metrics import ScoreError, labels_from_folds, log_loss, read_labels, score_submission, video_metrics

# ------------------------------------------------------------------ log loss


def test_log_loss_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = rng.uniform(0.001, 0.999, 200)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_constant_half_is_ln2() -> None:
    y = np.array([0, 1, 1, 1, 1, 0])
    assert log_loss(y, np.full(6, 0.5)) == pytest.approx(0.6931, abs=5e-5)
    assert log_loss(y, np.full(6, 0.5)) == pytest.approx(math.log(2))


def test_kaggle_clip_at_1e15() -> None:
    # one confident wrong answer costs -ln(1e-15) = 34.54, not infinity
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15), rel=1e-6)
    assert log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-15), abs=1e-12)
    assert np.isfinite(log_loss([0], [1.0]))
    with pytest.raises(ValueError, match="0 \\(REAL\\) or 1"):
        log_loss([2], [0.5])


def test_video_metrics_per_class() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.9, 0.8])
    m = video_metrics(y, p)
    assert m["logloss_real"] == pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2)
    assert m["logloss_fake"] == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert m["accuracy"] == 0.75 and m["auc"] == 1.0
    assert video_metrics(np.array([1, 1]), np.array([0.7, 0.8]))["auc"] is None


# ------------------------------------------------------------------ aggregation


def test_mean_and_confident_rules() -> None:
    cfg = PredictConfig()
    probs = np.array([0.95] * 13 + [0.05] * 19)
    assert aggregate(probs, "mean", cfg) == pytest.approx(probs.mean())
    few = np.array([0.95] + [0.4] * 19)  # 1 confident fake, no confident reals: plain mean
    assert aggregate(few, "confident", cfg) == pytest.approx(few.mean())
    reals = np.array([0.1] * 19 + [0.5])  # 95% confidently real: mean of those
    assert aggregate(reals, "confident", cfg) == pytest.approx(0.1)
    assert aggregate(np.array([0.1, 0.7, 0.3]), "max", cfg) == 0.7  # the track rule of sequence models
    with pytest.raises(AggregationError, match="unknown aggregation 'median'.*max"):
        aggregate(probs, "median", cfg)


def confident_strategy(pred: np.ndarray, t: float = 0.8) -> float:
    """The 1st place's kernel_utils.confident_strategy, transcribed line by line as the
    reference for the rule (selimsef/dfdc_deepfake_challenge)."""
    pred = np.array(pred)
    sz = len(pred)
    fakes = np.count_nonzero(pred > t)
    if fakes > sz // 2.5 and fakes > 11:
        return float(np.mean(pred[pred > t]))
    elif np.count_nonzero(pred < 0.2) > 0.9 * sz:
        return float(np.mean(pred[pred < 0.2]))
    else:
        return float(np.mean(pred))


def test_confident_rule_is_the_first_place_strategy() -> None:
    cfg = PredictConfig()
    four = np.array([0.9] * 4 + [0.05] * 28)  # 4 of 32 confident: not enough, the plain mean
    assert aggregate(four, "confident", cfg) == pytest.approx(0.15625)
    assert confident_strategy(four) == pytest.approx(0.15625)
    thirteen = np.array([0.9, 0.95, 0.85, 0.99] * 3 + [0.81] + [0.05] * 19)  # 13 of 32: mean of the 13
    assert aggregate(thirteen, "confident", cfg) == pytest.approx(np.mean(thirteen[:13]))
    # the floor: 32 // 2.5 = 12, so 12 confident faces of 32 are not enough (and 12 > 11 holds)
    twelve = np.array([0.9] * 12 + [0.05] * 20)
    assert aggregate(twelve, "confident", cfg) == pytest.approx(twelve.mean())
    # with 40 faces 40 // 2.5 = 16: 16 are not enough, 17 are; 12 of 28 (28 // 2.5 = 11) are
    for n, k, confident in ((40, 16, False), (40, 17, True), (28, 12, True), (28, 11, False), (8, 8, False)):
        p = np.array([0.9] * k + [0.3] * (n - k))
        want = 0.9 if confident else p.mean()
        assert aggregate(p, "confident", cfg) == pytest.approx(want), (n, k)
    rng = np.random.default_rng(0)  # and on random inputs the two agree everywhere
    for _ in range(500):
        n = int(rng.integers(1, 80))
        p = rng.choice([rng.random(n), rng.beta(0.3, 0.3, n), np.where(rng.random(n) < 0.5, 0.95, 0.1)])
        assert aggregate(p, "confident", cfg) == pytest.approx(confident_strategy(p)), p
    # the named keys move the rule
    assert aggregate(four, "confident", PredictConfig(confident_min_count=3, confident_min_share=0.1)) == 0.9


def test_confident_real_branch_needs_more_than_the_share() -> None:
    """The REAL branch fires on more than ``confident_real_share * n`` confident REAL faces
    (the 1st place's ``> 0.9 * sz``): exactly 0.9 n gives the plain mean, one more the mean
    of the confident ones."""
    cfg = PredictConfig()
    for n in (10, 20, 30):
        k = round(cfg.confident_real_share * n)
        assert k == cfg.confident_real_share * n  # exactly 0.9 n, no rounding in the test's favour
        exact = np.array([0.1] * k + [0.5] * (n - k))
        assert aggregate(exact, "confident", cfg) == pytest.approx(exact.mean()), n
        assert confident_strategy(exact) == pytest.approx(exact.mean())
        more = np.array([0.1] * (k + 1) + [0.5] * (n - k - 1))
        assert aggregate(more, "confident", cfg) == pytest.approx(0.1), n


def test_empty_or_invalid_input_is_an_error() -> None:
    cfg = PredictConfig()
    with pytest.raises(AggregationError, match="no face probabilities"):
        aggregate(np.array([]), "mean", cfg)
    with pytest.raises(AggregationError, match="finite and in"):
        aggregate(np.array([0.5, np.nan]), "mean", cfg)
    with pytest.raises(AggregationError):
        finalize(np.array([1.5]), cfg)


def test_temperature_and_clip() -> None:
    assert apply_temperature(0.9, 1.0) == pytest.approx(0.9)
    assert apply_temperature(0.9, 2.0) == pytest.approx(0.75)  # logit 2.197 / 2 -> 0.75
    assert 0.5 < apply_temperature(0.9, 3.0) < apply_temperature(0.9, 2.0)
    assert apply_temperature(0.9, 0.5) > 0.9
    assert apply_temperature(0.5, 0.3) == pytest.approx(0.5)
    assert np.allclose(apply_temperature(np.array([0.0, 1.0]), 2.0), [0.0, 1.0], atol=1e-7)
    assert clip(0.0, 0.01) == 0.01 and clip(1.0, 0.01) == 0.99 and clip(0.3, 0.01) == 0.3
    assert clip(np.array([0.0, 0.5, 1.0]), 0.2).tolist() == [0.2, 0.5, 0.8]
    with pytest.raises(AggregationError):
        clip(0.3, 0.5)
    with pytest.raises(AggregationError):
        apply_temperature(0.3, 0.0)


def test_finalize_is_aggregate_temperature_clip() -> None:
    cfg = PredictConfig(aggregation="mean", temperature=2.0, clip=0.3)
    assert finalize(np.array([0.9, 0.9]), cfg) == pytest.approx(0.7)  # 0.75 clipped to 0.7
    cfg = PredictConfig(aggregation="confident", temperature=1.0, clip=0.01)
    assert finalize(np.array([1.0] * 13 + [0.0] * 19), cfg) == pytest.approx(0.99)
    # a confident error costs at most -ln(0.01) = 4.6 after clipping
    assert log_loss([0], [finalize(np.array([1.0]), cfg)]) == pytest.approx(-math.log(0.01))


# ------------------------------------------------------------------ scoring


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


LABELS = "filename,label\na.mp4,1\nb.mp4,0\nc.mp4,1\nd.mp4,0\n"


def test_score_submission_writes_reports(tmp_path: Path) -> None:
    sub = write_csv(tmp_path / "sub" / "submission.csv", "filename,label\na.mp4,0.9\nb.mp4,0.2\nc.mp4,0.4\nd.mp4,0.5\nz.mp4,0.5\n")
    write_csv(tmp_path / "sub" / "predictions.csv",
              "filename,label,raw,n_faces,reason\na.mp4,0.9,0.9,8,\nb.mp4,0.2,0.2,8,\n"
              "c.mp4,0.4,0.4,3,\nd.mp4,0.5,,0,no faces\nz.mp4,0.5,,0,decode error\n")
    labels = read_labels(write_csv(tmp_path / "labels.csv", LABELS))
    report = score_submission(sub, labels, sub.parent)
    y, p = [1, 0, 1, 0], [0.9, 0.2, 0.4, 0.5]
    assert report["metrics"]["logloss"] == pytest.approx(sk_log_loss(y, p))
    assert report["metrics"]["auc"] == pytest.approx(0.75)
    assert report["extra_rows"] == 1
    assert report["fallbacks"]["count"] == 1 and report["fallbacks"]["reasons"] == {"no faces": 1}
    for name in ("report.json", "report.md", "roc.png", "reliability.png"):
        assert (sub.parent / name).stat().st_size > 0
    assert (sub.parent / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((sub.parent / "report.json").read_text())["metrics"]["videos"] == 4
    assert "| log loss (Kaggle) |" in (sub.parent / "report.md").read_text()
    assert not [p for p in sub.parent.iterdir() if ".tmp-" in p.name]


def test_fallbacks_unknown_without_predictions_csv(tmp_path: Path) -> None:
    sub = write_csv(tmp_path / "submission.csv", "filename,label\na.mp4,0.5\nb.mp4,0.5\nc.mp4,0.5\nd.mp4,0.5\n")
    report = score_submission(sub, read_labels(write_csv(tmp_path / "l.csv", LABELS)))
    assert report["fallbacks"] is None and report["metrics"]["logloss"] == pytest.approx(math.log(2))
    assert "unknown" in (tmp_path / "report.md").read_text()


def test_missing_videos_and_malformed_files(tmp_path: Path) -> None:
    labels = read_labels(write_csv(tmp_path / "l.csv", LABELS))
    sub = write_csv(tmp_path / "s1.csv", "filename,label\na.mp4,0.5\n")
    with pytest.raises(ScoreError, match=r"3 of 4 labelled video\(s\) missing from the submission: b.mp4, c.mp4, d.mp4"):
        score_submission(sub, labels, tmp_path)
    with pytest.raises(ScoreError, match="s2.csv: missing column"):
        score_submission(write_csv(tmp_path / "s2.csv", "name,prob\na.mp4,0.5\n"), labels, tmp_path)
    with pytest.raises(ScoreError, match=r"s3.csv: 1 prediction\(s\) not a number in \[0, 1\]: b.mp4"):
        score_submission(write_csv(tmp_path / "s3.csv", "filename,label\na.mp4,0.5\nb.mp4,1.2\n"), labels, tmp_path)
    with pytest.raises(ScoreError, match="s4.csv: 1 filename.* twice"):
        score_submission(write_csv(tmp_path / "s4.csv", "filename,label\na.mp4,0.5\na.mp4,0.4\n"), labels, tmp_path)
    with pytest.raises(ScoreError, match="bad.csv: 1 label.*0/1"):
        read_labels(write_csv(tmp_path / "bad.csv", "filename,label\na.mp4,maybe\n"))
    with pytest.raises(ScoreError, match="not found"):
        read_labels(tmp_path / "none.csv")
    assert read_labels(write_csv(tmp_path / "rf.csv", "filename,label\na.mp4,FAKE\nb.mp4,REAL\n"))["label"].tolist() == [1, 0]


def test_labels_from_folds_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folds = pd.DataFrame({
        "video": ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], "part": "p", "label": ["FAKE", "REAL", "FAKE", "REAL"],
        "original": ["b.mp4", None, "d.mp4", None], "group": ["b.mp4", "b.mp4", "d.mp4", "d.mp4"], "fold": [0, 0, 1, 1],
    })
    folds.to_csv(tmp_path / "folds.csv", index=False)
    held = labels_from_folds(tmp_path / "folds.csv", 1)
    assert held.to_dict("list") == {"filename": ["c.mp4", "d.mp4"], "label": [1, 0]}
    with pytest.raises(ScoreError, match="no video in fold 7"):
        labels_from_folds(tmp_path / "folds.csv", 7)
    sub = write_csv(tmp_path / "out" / "submission.csv", "filename,label\nc.mp4,0.8\nd.mp4,0.3\n")
    assert main(["score", "--submission", str(sub), "--folds", str(tmp_path / "folds.csv"), "--fold", "1"]) == 0
    out = capsys.readouterr().out
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert f"log loss {expected:.5f} on 2 videos" in out and "fallbacks unknown" in out
    assert (tmp_path / "out" / "report.json").is_file()
    assert main(["score", "--submission", str(sub), "--labels", str(write_csv(tmp_path / "l.csv", LABELS))]) == 1
    assert "missing from the submission" in capsys.readouterr().err


# ------------------------------------------------------------------ the test's prior, per method


def test_class_balanced_loss_of_a_constant_on_an_84_percent_fake_fold() -> None:
    """A constant 0.84 scores 0.44 on a fold as FAKE-heavy as DFDC's training set, and what a
    50 %-FAKE test set scores (the class-balanced loss) is 1.0: the plain loss flatters it."""
    from dfdc.metrics import prior_log_loss

    y = np.array([1] * 84 + [0] * 16)
    p = np.full(100, 0.84)
    assert log_loss(y, p) == pytest.approx(-(0.84 * math.log(0.84) + 0.16 * math.log(0.16)))  # 0.44
    assert prior_log_loss(y, p, 0.5) == pytest.approx(-(math.log(0.84) + math.log(0.16)) / 2)  # 1.0
    assert prior_log_loss(y, p, 0.84) == pytest.approx(log_loss(y, p))  # the fold's own prior: the plain loss
    assert video_metrics(y, p)["logloss_balanced"] == pytest.approx(prior_log_loss(y, p, 0.5))
    assert prior_log_loss(np.ones(3, int), np.full(3, 0.9), 0.5) == pytest.approx(-math.log(0.9))  # one class


METHOD_LABELS = ("filename,label,method,method_seen\nr1.mp4,0,,\nr2.mp4,0,,\nb1.mp4,1,blend,1\nb2.mp4,1,blend,1\n"
                 "p1.mp4,1,poisson,0\np2.mp4,1,poisson,0\n")


def test_score_per_swap_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = write_csv(tmp_path / "s" / "submission.csv",
                    "filename,label\nr1.mp4,0.2\nr2.mp4,0.3\nb1.mp4,0.9\nb2.mp4,0.8\np1.mp4,0.4\np2.mp4,0.1\n")
    labels = read_labels(write_csv(tmp_path / "labels.csv", METHOD_LABELS))
    report = score_submission(sub, labels)
    rows = {r["method"]: r for r in report["methods"]["rows"]}
    assert set(rows) == {"blend", "poisson"}
    assert rows["blend"]["fakes"] == 2 and rows["blend"]["seen"] == "yes" and rows["poisson"]["seen"] == "no"
    assert rows["blend"]["logloss_fake"] == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert rows["poisson"]["logloss_fake"] == pytest.approx(-(math.log(0.4) + math.log(0.1)) / 2)
    assert rows["blend"]["auc_with_real"] == 1.0 and rows["poisson"]["auc_with_real"] == pytest.approx(0.5)
    assert rows["poisson"]["logloss_with_real"] == pytest.approx(sk_log_loss([0, 0, 1, 1], [0.2, 0.3, 0.4, 0.1]))
    seen = report["methods"]["groups"]["seen"]
    assert seen["videos"] == 4 and seen["logloss"] == pytest.approx(sk_log_loss([0, 0, 1, 1], [0.2, 0.3, 0.9, 0.8]))
    assert report["methods"]["groups"]["unseen"]["fake"] == 2
    assert (tmp_path / "s" / "methods.png").read_bytes()[:4] == b"\x89PNG"
    assert "| poisson | no | 2 |" in (tmp_path / "s" / "report.md").read_text()
    assert main(["score", "--submission", str(sub), "--labels", str(tmp_path / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert "method poisson" in out and "UNSEEN" in out and "class-balanced" in out
    plain = score_submission(sub, read_labels(write_csv(tmp_path / "plain.csv", "filename,label\nr1.mp4,0\nb1.mp4,1\n")))
    assert "methods" not in plain  # DFDC's own labels.csv has no method column
