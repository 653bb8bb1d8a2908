"""Scoring as Kaggle scored DFDC, plus the reports and plots a person reads.

Kaggle's metric: log loss over videos, natural log, y = 1 for FAKE, predictions clipped at
``[1e-15, 1 - 1e-15]`` (so a constant 0.5 scores ln 2 = 0.6931). ``score_submission``
checks a ``submission.csv`` against labels and writes ``report.json``, ``report.md``,
``roc.png`` and ``reliability.png`` beside it; beside Kaggle's plain log loss it reports the
class-balanced one (``prior_log_loss``: what a 50 %-FAKE test set such as DFDC's scores).

Per swap method: labels may carry a ``method`` column (the FAKE video's manipulation, empty for
REAL: the mini DFDC's ``test_labels.csv``) and a ``method_seen`` column (1 when training held
fakes of that method, 0 when it was held out). Then the report has one row per method (its
FAKE videos' log loss, and the log loss and AUC of the REAL videos with that method's fakes),
one row per group (seen / unseen methods: REAL videos + those fakes) and ``methods.png``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from dfdc.aggregate import EPS
from dfdc.video import PARTIAL_DECODE  # a predicted video's reason, not a fallback
from dfdc.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_table

BALANCED = 0.5  # FAKE share of DFDC's public and private test sets (Dolhansky et al. 2020)
ACCURACY_THRESHOLD = 0.5  # a video counts as predicted FAKE when P(FAKE) > 0.5
RELIABILITY_BINS = 10  # equal-width probability bins of the reliability diagram
METHOD, METHOD_SEEN = "method", "method_seen"  # optional label columns (see the module doc)
METHODS_PLOT = "methods.png"
PREDICTIONS_NAME = "predictions.csv"  # the predictor's per-video details beside submission.csv
SHOW_NAMES = 5


class ScoreError(ValueError):
    """A submission or label file that cannot be scored; the message names file and fix."""


# ---------------------------------------------------------------- metrics


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Kaggle's log loss: mean of -[y ln p + (1-y) ln(1-p)], p clipped at [1e-15, 1-1e-15]."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.size != p.size or y.size == 0:
        raise ValueError(f"log_loss needs equal, non-empty inputs; got {y.size} labels and {p.size} predictions")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (REAL) or 1 (FAKE)")
    if not np.isfinite(p).all():
        raise ValueError("predictions must be finite")
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def prior_log_loss(y: np.ndarray, p: np.ndarray, fake_share: float = BALANCED) -> float:
    """The log loss expected on a test set with ``fake_share`` FAKE videos:
    ``fake_share * LL(FAKE videos) + (1 - fake_share) * LL(REAL videos)``. At 0.5 it is the
    class-balanced loss ``(fake_loss + real_loss) / 2`` that the 1st place selected on, and what
    DFDC's 50 %-FAKE test sets score; the plain log loss of an 84 %-FAKE fold favours FAKE
    (a constant 0.84 scores 0.44 there and 0.69 on the test). With one class only: the plain loss."""
    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    real, fake = y == 0, y == 1
    if not (real.any() and fake.any()):
        return log_loss(y, p)
    return fake_share * log_loss(y[fake], p[fake]) + (1.0 - fake_share) * log_loss(y[real], p[real])


def video_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Log loss (all, class-balanced, per class), ROC AUC and accuracy at 0.5; None where undefined."""
    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    real, fake = y == 0, y == 1
    both = bool(real.any() and fake.any())
    return {
        "videos": int(y.size),
        "real": int(real.sum()),
        "fake": int(fake.sum()),
        "logloss": log_loss(y, p),
        "logloss_balanced": prior_log_loss(y, p, BALANCED) if both else None,
        "logloss_real": log_loss(y[real], p[real]) if real.any() else None,
        "logloss_fake": log_loss(y[fake], p[fake]) if fake.any() else None,
        "auc": float(roc_auc_score(y, p)) if both else None,
        "accuracy": float(np.mean((p > ACCURACY_THRESHOLD) == fake)),
        "mean_prediction": float(p.mean()),
    }


# ---------------------------------------------------------------- plots


def _save_figure(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg rendering

    fig = Figure(figsize=(5, 5))
    return fig, fig.add_subplot(1, 1, 1)


def plot_roc(y: np.ndarray, p: np.ndarray, path: Path, title: str = "ROC") -> None:
    """ROC curve with its AUC (needs both classes)."""
    fig, ax = _figure()
    y = np.asarray(y, dtype=int)
    if len(set(y.tolist())) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.4f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate (REAL called FAKE)", ylabel="true positive rate", title=title)
    _save_figure(fig, path)


def plot_reliability(y: np.ndarray, curves: dict[str, np.ndarray], path: Path, title: str = "reliability") -> None:
    """Reliability diagram: mean predicted P(FAKE) vs observed FAKE share, one line per curve."""
    fig, ax = _figure()
    y = np.asarray(y, dtype=int)
    for name, p in curves.items():
        observed, predicted = calibration_curve(y, np.clip(p, 0.0, 1.0), n_bins=RELIABILITY_BINS, strategy="uniform")
        ax.plot(predicted, observed, "o-", label=f"{name} (log loss {log_loss(y, p):.4f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    ax.set(xlabel="predicted P(FAKE)", ylabel="observed FAKE share", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize="small")
    _save_figure(fig, path)


# ---------------------------------------------------------------- files


def _read_csv(path: Path, what: str, fix: str) -> pd.DataFrame:
    path = Path(path)
    df = read_table(path, ("filename", "label"), error=ScoreError, fix=fix, what=what, dtype={"filename": str})
    df["filename"] = df["filename"].astype(str).str.strip()
    dup = df.loc[df["filename"].duplicated(), "filename"].tolist()
    if dup:
        raise ScoreError(f"{path}: {len(dup)} filename(s) listed twice: {', '.join(dup[:SHOW_NAMES])}; {fix}")
    return df


def read_labels(path: Path) -> pd.DataFrame:
    """``filename,label`` with label 0/1 (1 = FAKE) or REAL/FAKE -> ``filename,label`` (int),
    plus ``method`` (str, "" for none) and ``method_seen`` (0/1, -1 unknown) when the file has them."""
    fix = "labels must be a CSV `filename,label` with label 0/1 (1 = FAKE), e.g. DFDC's labels.csv"
    df = _read_csv(path, "labels file", fix)
    raw = df["label"].astype(str).str.strip().str.upper()
    mapped = raw.map({"0": 0, "1": 1, "0.0": 0, "1.0": 1, "REAL": 0, "FAKE": 1})
    bad = df.loc[mapped.isna(), "filename"].tolist()
    if bad:
        raise ScoreError(f"{path}: {len(bad)} label(s) not 0/1 or REAL/FAKE, e.g. {', '.join(bad[:SHOW_NAMES])}; {fix}")
    out = pd.DataFrame({"filename": df["filename"], "label": mapped.astype(int)})
    if METHOD in df.columns:
        out[METHOD] = df[METHOD].fillna("").astype(str).str.strip()
    if METHOD_SEEN in df.columns:
        seen = pd.to_numeric(df[METHOD_SEEN], errors="coerce")
        if not seen.dropna().isin((0, 1)).all():
            raise ScoreError(f"{path}: column {METHOD_SEEN} must be 1 (seen in training), 0 (held out) or empty; {fix}")
        out[METHOD_SEEN] = seen.fillna(-1).astype(int)
    return out


def method_scores(y: np.ndarray, p: np.ndarray, methods: np.ndarray, seen: np.ndarray | None) -> dict[str, Any]:
    """Per swap method (the FAKE videos' ``methods``; REAL videos have ""): ``rows`` -- one per
    method: its fakes' count and log loss, the log loss and AUC of the REAL videos with those
    fakes -- and ``groups`` (with ``seen``): ``video_metrics`` of REAL + the fakes of the methods
    seen in training, and of REAL + those held out."""
    real = y == 0
    rows = []
    for name in sorted(set(methods[~real]) - {""}):
        fake = (methods == name) & ~real
        both = fake | real
        row = {"method": name, "fakes": int(fake.sum()), "logloss_fake": log_loss(y[fake], p[fake]),
               "mean_prediction": float(p[fake].mean()),
               "logloss_with_real": log_loss(y[both], p[both]) if real.any() else None,
               "auc_with_real": float(roc_auc_score(y[both], p[both])) if real.any() else None}
        if seen is not None:
            row["seen"] = {1: "yes", 0: "no"}.get(int(np.max(seen[fake])), "unknown")
        rows.append(row)
    groups = {}
    if seen is not None:
        for group, flag in (("seen", 1), ("unseen", 0)):
            fake = ~real & (seen == flag)
            if fake.any():
                groups[group] = video_metrics(y[fake | real], p[fake | real])
    return {"rows": rows, "groups": groups}


def plot_methods(scores: dict[str, Any], real_loss: float | None, path: Path, title: str) -> None:
    """Bar chart: log loss of each method's FAKE videos (and of the REAL videos)."""
    fig, ax = _figure()
    names = [r["method"] + {"no": " (unseen)"}.get(r.get("seen", ""), "") for r in scores["rows"]]
    values = [r["logloss_fake"] for r in scores["rows"]]
    if real_loss is not None:
        names, values = ["REAL videos", *names], [real_loss, *values]
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), names, rotation=30, ha="right")
    ax.axhline(math.log(2), color="grey", lw=0.8, ls=":", label="constant 0.5")
    ax.set(title=title, ylabel="log loss")
    ax.legend()
    _save_figure(fig, path)


def labels_from_folds(folds_csv: Path, fold: int) -> pd.DataFrame:
    """The videos of one held-out fold as ``filename,label`` (1 = FAKE)."""
    from dfdc.folds import read_folds

    folds = read_folds(folds_csv)
    held = folds[folds["fold"] == fold]
    if held.empty:
        known = sorted(folds["fold"].unique().tolist())
        raise ScoreError(f"{folds_csv}: no video in fold {fold}; folds present: {known}")
    return pd.DataFrame({"filename": held["video"].to_numpy(), "label": (held["label"] == "FAKE").astype(int).to_numpy()})


def read_submission(path: Path) -> pd.DataFrame:
    """``submission.csv`` -> ``filename,label`` (float P(FAKE)), validated."""
    fix = "a submission is a CSV `filename,label` with label = P(FAKE) in [0, 1] (see sample_submission.csv)"
    df = _read_csv(path, "submission", fix)
    values = pd.to_numeric(df["label"], errors="coerce")
    bad = df.loc[values.isna() | ~np.isfinite(values) | (values < 0) | (values > 1), "filename"].tolist()
    if bad:
        raise ScoreError(f"{path}: {len(bad)} prediction(s) not a number in [0, 1]: {', '.join(bad[:SHOW_NAMES])}; {fix}")
    return pd.DataFrame({"filename": df["filename"], "label": values.astype(float)})


def _fallbacks(submission: Path, scored: set[str]) -> dict[str, Any] | None:
    """Fallback counts from the predictor's predictions.csv beside the submission, if any."""
    path = Path(submission).parent / PREDICTIONS_NAME
    if not path.is_file():
        return None
    df = read_table(path, ("filename", "reason"), error=ScoreError, fix="rerun the predictor or delete the file",
                    what="predictions file", dtype={"filename": str, "reason": str}, keep_default_na=False)
    reason = df["reason"].str.strip()
    failed = df[(reason != "") & ~reason.str.startswith(PARTIAL_DECODE) & df["filename"].isin(scored)]
    return {"count": int(len(failed)), "reasons": failed["reason"].value_counts().to_dict(), "file": path.name}


# ---------------------------------------------------------------- report


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.5f}"
    return str(value)


def _markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    fb = report["fallbacks"]
    rows = [
        ("log loss (Kaggle)", m["logloss"]),
        ("log loss, class-balanced (a 50 % FAKE test set)", m["logloss_balanced"]),
        ("log loss, REAL videos", m["logloss_real"]),
        ("log loss, FAKE videos", m["logloss_fake"]),
        ("ROC AUC", m["auc"]),
        (f"accuracy at {ACCURACY_THRESHOLD}", m["accuracy"]),
        ("mean prediction", m["mean_prediction"]),
        ("videos scored (REAL / FAKE)", f"{m['videos']} ({m['real']} / {m['fake']})"),
        ("fallbacks", "unknown (no predictions.csv)" if fb is None else fb["count"]),
        ("extra rows (not labelled, ignored)", report["extra_rows"]),
        ("constant 0.5 for reference", math.log(2)),
    ]
    lines = [f"# Score of `{report['submission']}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {format_value(value)} |" for name, value in rows]
    if fb and fb["reasons"]:
        lines += ["", "Fallback reasons:", ""] + [f"- {r}: {n}" for r, n in fb["reasons"].items()]
    methods = report.get("methods")
    if methods:
        lines += ["", "Per swap method (FAKE videos by method; with REAL: those fakes and every REAL video):", "",
                  "| method | seen in training | fakes | log loss (fakes) | mean P(FAKE) | log loss with REAL | AUC with REAL |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r.get('seen', 'n/a')} | {r['fakes']} | {format_value(r['logloss_fake'])} | "
                  f"{format_value(r['mean_prediction'])} | {format_value(r['logloss_with_real'])} | "
                  f"{format_value(r['auc_with_real'])} |" for r in methods["rows"]]
        for group, g in methods["groups"].items():
            lines.append(f"\nREAL + {group} methods' fakes ({g['real']} / {g['fake']} videos): log loss "
                         f"{format_value(g['logloss'])}, class-balanced {format_value(g['logloss_balanced'])}, "
                         f"AUC {format_value(g['auc'])}")
        lines += ["", f"![per method]({METHODS_PLOT})"]
    lines += ["", "![ROC](roc.png) ![reliability](reliability.png)", ""]
    return "\n".join(lines)


def score_submission(submission: Path, labels: pd.DataFrame, out_dir: Path | None = None) -> dict[str, Any]:
    """Score ``submission.csv`` against ``labels`` (``filename,label`` 0/1) as Kaggle did.

    Every labelled video must be in the submission (``ScoreError`` naming the missing ones
    otherwise); rows without a label are counted as ``extra_rows`` and ignored. Writes
    ``report.json``, ``report.md``, ``roc.png`` and ``reliability.png`` into ``out_dir``
    (default: the submission's folder), atomically, and returns the report dictionary.
    """
    submission = Path(submission)
    out_dir = Path(out_dir) if out_dir is not None else submission.parent
    sub = read_submission(submission)
    if not {"filename", "label"} <= set(labels.columns) or labels.empty:
        raise ScoreError("labels must be a non-empty table with columns filename,label")
    extra_columns = [c for c in (METHOD, METHOD_SEEN) if c in labels.columns]
    merged = labels[["filename", "label", *extra_columns]].merge(sub, on="filename", how="left",
                                                                  suffixes=("_true", "_pred"))
    missing = merged.loc[merged["label_pred"].isna(), "filename"].tolist()
    if missing:
        raise ScoreError(
            f"{submission}: {len(missing)} of {len(labels)} labelled video(s) missing from the submission: "
            f"{', '.join(missing[:SHOW_NAMES])}{' ...' if len(missing) > SHOW_NAMES else ''}; "
            "a submission must cover every video (the predictor writes its fallback for failures)"
        )
    y = merged["label_true"].to_numpy(dtype=int)
    p = merged["label_pred"].to_numpy(dtype=float)
    extra = int((~sub["filename"].isin(set(labels["filename"]))).sum())
    report = {
        "submission": submission.name,
        "metrics": video_metrics(y, p),
        "fallbacks": _fallbacks(submission, set(labels["filename"])),
        "extra_rows": extra,
    }
    if METHOD in merged.columns and (merged[METHOD] != "").any():
        seen = merged[METHOD_SEEN].to_numpy(dtype=int) if METHOD_SEEN in merged.columns else None
        report["methods"] = method_scores(y, p, merged[METHOD].to_numpy(dtype=str), seen)
        plot_methods(report["methods"], report["metrics"]["logloss_real"], out_dir / METHODS_PLOT,
                     title=f"log loss per swap method: {submission.name}")
    plot_roc(y, p, out_dir / "roc.png", title=f"ROC: {submission.name}")
    plot_reliability(y, {"submission": p}, out_dir / "reliability.png", title=f"reliability: {submission.name}")
    atomic_write_text(out_dir / "report.md", _markdown(report))
    atomic_write_json(out_dir / "report.json", report)
    return report
