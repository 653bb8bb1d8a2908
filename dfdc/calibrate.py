"""Choose aggregation, temperature and clip on held-out predictions made by the predictor itself.

``calibrate(run_dir, data_root, folds_csv, cfg)``:

1. **Predict the held-out training videos with the predictor's own path.** Each fold's
   model alone predicts the videos of its own (held-out) fold, listed in ``folds.csv`` and
   found through the data root's ``metadata.json`` files: ``predict.frames`` evenly spaced
   frames, the same detector, crops and preprocessing, every face (``predict_videos`` with
   one checkpoint and per-face output). Above ``calibrate.max_videos`` a seeded sample
   (stratified by label) is predicted. Each fold's faces land in
   ``RUN/calibration/fold{k}/`` (a fold already predicted for the same videos, checkpoint
   and settings is not predicted again), all of them in ``RUN/calibration_faces.csv``
   (``video,label,fold,model,frame,track,prob``). Videos the predictor could not read or
   found no face in get the fallback at test time whatever the calibration says; they are
   counted and left out of the fit.
2. **Search** every combination of aggregation (``mean``, ``confident``: ``dfdc.aggregate``,
   the predictor's rules, applied per model as the predictor does:
   ``dfdc.aggregate.ensemble_probability``), temperature on ``calibrate.temperatures`` plus 1.0, clip on
   ``calibrate.clips`` plus ``predict.clip``, for the lowest video log loss (Kaggle's). The
   baseline ("before") is ``predict.aggregation``, temperature 1 and ``predict.clip``: what
   the predictor does without a calibration; it is a candidate itself, and ties go to the
   candidate closest to it (its aggregation first; temperatures and clips in order of their
   log-distance from 1 and ``predict.clip``), so a setting that changes nothing is never moved.
3. **Guard against sharpening on luck.** A sharper-than-default setting (T < 1, a clip
   below ``predict.clip``, or another aggregation than ``predict.aggregation``: ``confident``
   returns the mean of the confident faces only) looks free on a sample without the
   confident mistakes it pays for on the test set. So the videos are split (seeded,
   stratified by label) into a fit part and a held-out part (``calibrate.holdout_share``);
   the unrestricted best and the best softening-only setting (the baseline aggregation,
   T >= 1, clip >= ``predict.clip``) are chosen on the fit part and scored on the held-out
   part. Only if the unrestricted choice also wins on the held-out part may the final search
   (over all the videos) sharpen, and then no further than that validated setting: T down to
   its T, clip down to its clip, its aggregation or the baseline's (``bound`` in
   ``calibration.json``). With fewer than ``calibrate.min_videos`` videos only softening is
   allowed at all. Both parts' figures are reported.

**What this calibration is, and is not.** It is fitted on single fold models (each fold's
model alone on its own held-out fold: the only predictions of training videos that no model
has seen), while the test is predicted by the mean of several fold models. The video rule
is applied per model in both, as the 1st place did, but a mean of models is less spread
than one model, and no held-out prediction of the whole ensemble exists to fit on: the
temperature and clip are those that suit one model. ``calibration.json`` records
``predict.frames``; the predictor warns when it applies the calibration at another frame
count (the Kaggle kernel's CPU plan does: see ``dfdc.kaggle.runtime.plan_run``).

Sequence models (``model.arch`` lstm / gru): the predictor's units are face tracks, so the
per-unit file holds one row per track read (``frame`` -1) and the video rule is
``sequence.aggregation`` (``max`` by default), kept as it is: only temperature and clip are
searched, and ``calibration.json`` says ``"unit": "track"`` (the predictor then leaves
``predict.aggregation``, a rule over faces, alone).

Writes ``calibration.json`` and ``calibration.png`` (reliability before/after) in the run
folder, atomically. The predictor reads them (``dfdc.aggregate.load_calibration`` +
``apply_calibration``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.aggregate import (
    CALIBRATION, CONFIDENT_KEYS, EPS, METHODS, TRACK_UNIT, CalibrationError, apply_temperature, clip, ensemble_probability,
)
from dfdc.config import Config, PredictConfig
from dfdc.io import atomic_write_csv, atomic_write_json, read_table
from dfdc.metrics import log_loss, plot_reliability, prior_log_loss

CALIBRATION_FACES = "calibration_faces.csv"
CALIBRATION_DIR = "calibration"  # RUN/calibration/fold{k}/: the per-fold predictor outputs
CALIBRATION_PLOT = "calibration.png"
FACES_COLUMNS = ["video", "label", "fold", "model", "frame", "track", "prob"]
FOLD_DONE = "done.json"  # what a fold's per-face file was predicted from (resume check)
UNITS_FORMAT = 2  # the per-fold faces.csv layout (2: + model); a fold predicted in another is predicted again


# --------------------------------------------------------------------------- which videos


def held_out_videos(data_root: Path, folds_csv: Path, folds: list[int], max_videos: int, seed: int) -> pd.DataFrame:
    """The videos of ``folds`` (``video, path, label 0/1, fold``), all or a seeded sample of
    ``max_videos`` stratified by label (0 = all), sorted by fold and name."""
    from dfdc.folds import FoldsError, read_folds
    from dfdc.metadata import MetadataError, load_metadata

    try:
        table = read_folds(folds_csv)
        meta, _ = load_metadata(data_root)
    except (FoldsError, MetadataError) as exc:
        raise CalibrationError(str(exc)) from None
    table = table[table["fold"].isin(folds)]
    merged = table.merge(meta[["video", "path"]], on="video", how="inner")
    if merged.empty:
        raise CalibrationError(
            f"none of the videos of folds {folds} in {folds_csv} is under {data_root}; pass the --data the folds "
            "were made from (make calibrate DATA=...)"
        )
    merged = merged.assign(label=(merged["label"] == "FAKE").astype(int))[["video", "path", "label", "fold"]]
    if max_videos and len(merged) > max_videos:
        from sklearn.model_selection import train_test_split

        merged, _ = train_test_split(merged, train_size=max_videos, random_state=seed, stratify=merged["label"])
    return merged.sort_values(["fold", "video"]).reset_index(drop=True)


def _fold_signature(videos: pd.DataFrame, checkpoint: Path, cfg: Config) -> dict[str, Any]:
    stat = Path(checkpoint).stat()
    names = "\n".join(sorted(videos["video"]))
    settings = {k: v for k, v in cfg.predict.__dict__.items() if k in ("frames", "tta_flip", "fp16")}
    return {"videos": hashlib.sha256(names.encode()).hexdigest(), "count": len(videos), "format": UNITS_FORMAT,
            "checkpoint": [str(checkpoint), stat.st_size, stat.st_mtime_ns], "predict": settings}


def predict_held_out(
    run_dir: Path, data_root: Path, folds_csv: Path, cfg: Config, device: str | None = None, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-face P(FAKE) of each fold's model on its own held-out videos (step 1 above).

    Returns ``(faces, counts)``: ``faces`` has ``FACES_COLUMNS``; ``counts`` the videos
    predicted, and those that fell back (by reason kind).
    """
    from dfdc.models import fold_checkpoints
    from dfdc.predict import FACE_COLUMNS, predict_videos
    from dfdc.runs import warn_unfinished

    run_dir, data_root = Path(run_dir), Path(data_root)
    check_run_folds(run_dir, folds_csv)
    checkpoints = dict(fold_checkpoints(run_dir))
    if not checkpoints:
        raise CalibrationError(f"{run_dir}: no fold*/best.pt checkpoints; train the run first (`dfdc train`)")
    warn_unfinished(run_dir, sorted(checkpoints), "calibration predicts with")
    chosen = held_out_videos(data_root, folds_csv, sorted(checkpoints), cfg.calibrate.max_videos, cfg.calibrate.seed)
    raw = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, calibration="none", time_budget=0.0))
    faces, counts = [], {"videos": 0}
    for fold, videos in chosen.groupby("fold", sort=True):
        folder = run_dir / CALIBRATION_DIR / f"fold{fold}"
        faces_csv, done = folder / "faces.csv", folder / FOLD_DONE
        signature = _fold_signature(videos, checkpoints[fold], cfg)
        fresh = not (faces_csv.is_file() and done.is_file() and json.loads(done.read_text()).get("signature") == signature)
        if fresh:
            root = Path(os.path.abspath(data_root))  # as dfdc.metadata writes its paths
            names = [os.path.relpath(p, root) for p in videos["path"]]
            report = predict_videos(
                root, run_dir, folder / "submission.csv", raw, device=device, progress=progress,
                checkpoints=[checkpoints[fold]], faces_csv=faces_csv, names=names,
            )
            atomic_write_json(done, {"signature": signature, "fallbacks": dict(report.fallback_counts())})
        fold_faces = read_table(faces_csv, FACE_COLUMNS, error=CalibrationError, what="per-face predictions",
                                fix="delete it and rerun `dfdc calibrate`", dtype={"filename": str})
        fold_faces["video"] = fold_faces["filename"].map(lambda n: Path(n).name)
        labels = videos.set_index("video")["label"]
        fold_faces = fold_faces.assign(label=fold_faces["video"].map(labels).astype(int), fold=int(fold))
        faces.append(fold_faces[FACES_COLUMNS])
        counts["videos"] += len(videos)
        for kind, n in json.loads(done.read_text()).get("fallbacks", {}).items():
            counts[kind] = counts.get(kind, 0) + int(n)
    table = pd.concat(faces, ignore_index=True)
    if table.empty:
        raise CalibrationError(f"the predictor found no face in any of the {counts['videos']} held-out videos "
                               f"({counts}); check the data and the run")
    atomic_write_csv(run_dir / CALIBRATION_FACES, table)
    return table, counts


def check_run_folds(run_dir: Path, folds_csv: Path) -> None:
    """The run's folds were trained on ``folds_csv`` (the fingerprint each fold recorded,
    ``dfdc.runs``): a model predicting videos of another split may have trained on them."""
    from dfdc.data import DataError, folds_fingerprint
    from dfdc.runs import InputsChangedError, check_folds_of_run

    try:
        check_folds_of_run(run_dir, {"folds": folds_fingerprint(folds_csv)}, "calibrate",
                           "pass the --folds the run was trained on, or retrain the run on this split")
    except (DataError, InputsChangedError) as exc:
        raise CalibrationError(str(exc)) from None


# --------------------------------------------------------------------------- the search


def _grid(spec: tuple[float, float, int], anchor: float, name: str) -> np.ndarray:
    """Log-spaced grid plus ``anchor``, ordered by distance from ``anchor`` (anchor first)."""
    low, high, steps = spec
    if not (0 < low <= high) or int(steps) < 1:
        raise CalibrationError(f"calibrate.{name}={spec}: expected (min > 0, max >= min, steps >= 1)")
    values = np.unique(np.append(np.geomspace(low, high, int(steps)), anchor))
    return values[np.argsort(np.abs(np.log(values / anchor)), kind="stable")]


def video_probs(faces: pd.DataFrame, cfg: PredictConfig,
                methods: tuple[str, ...] = METHODS) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """(labels, method -> video P(FAKE), video names), videos sorted by name: the rule per
    model (the ``model`` column; without it, one model), then the mean over the models --
    the predictor's ``ensemble_probability``."""
    groups = faces.groupby("video", sort=True)
    y = groups["label"].first().to_numpy(dtype=int)
    per_video = [[m.to_numpy() for _, m in g.groupby("model", sort=True)["prob"]] if "model" in g
                 else [g["prob"].to_numpy()] for _, g in groups]
    raw = {m: np.array([ensemble_probability(rows, m, cfg) for rows in per_video]) for m in methods}
    return y, raw, list(groups.groups)


def run_unit(run_dir: Path) -> str:
    """What the run's models read: "face", or "track" for a sequence model -- the ``kind`` its
    checkpoints carry, as the predictor reads it (not the run's config.yaml, which may be
    missing); "face" for a folder without fold checkpoints."""
    from dfdc.models import CheckpointError, checkpoint_meta, fold_checkpoints

    found = fold_checkpoints(run_dir)
    if not found:
        return "face"
    try:
        kind = checkpoint_meta(found[0][1]).get("kind", "frame")
    except CheckpointError as exc:
        raise CalibrationError(str(exc)) from None
    return TRACK_UNIT if kind == "sequence" else "face"


def _bias_grid(spec: tuple[float, float, int]) -> np.ndarray:
    """Linear grid of logit offsets plus 0, ordered by distance from 0 (0 first)."""
    low, high, steps = spec
    if not low <= 0 <= high or int(steps) < 1:
        raise CalibrationError(f"calibrate.biases={spec}: expected (min <= 0, max >= 0, steps >= 1)")
    values = np.unique(np.append(np.linspace(low, high, int(steps)), 0.0))
    return values[np.argsort(np.abs(values), kind="stable")]


@dataclasses.dataclass(frozen=True)
class Space:
    """The settings one search may choose from: rules (``raw``: rule -> video P(FAKE)),
    temperatures, clips and logit offsets, each in the order ties are broken."""

    raw: dict[str, np.ndarray]
    temperatures: np.ndarray
    clips: np.ndarray
    biases: np.ndarray

    def subset(self, index: np.ndarray) -> Space:
        return dataclasses.replace(self, raw=_subset(self.raw, index))


def search(space: Space, y: np.ndarray, fake_share: float) -> dict[str, Any]:
    """Best (aggregation, temperature, bias, clip) by the prior-weighted log loss
    (``dfdc.metrics.prior_log_loss`` at ``fake_share``).

    Candidates are tried in the given order and only a strictly lower loss replaces the
    best, so among equal losses the first (closest to the baseline) wins.
    """
    best: dict[str, Any] | None = None
    y = np.asarray(y, dtype=int)
    classes = [(y == 1, fake_share), (y == 0, 1.0 - fake_share)] if 0 < y.mean() < 1 else [(y >= 0, 1.0)]
    bounds = np.asarray(space.clips, dtype=np.float64)[:, None]
    for method, p in space.raw.items():
        for t in space.temperatures:
            for b in space.biases:
                q = np.clip(np.clip(apply_temperature(p, float(t), float(b)), bounds, 1.0 - bounds), EPS, 1.0 - EPS)
                terms = -np.where(y == 1, np.log(q), np.log(1.0 - q))  # clips x videos: every clip at once
                losses = sum(weight * terms[:, rows].mean(axis=1) for rows, weight in classes)
                k = int(np.argmin(losses))  # the first of equal losses: tie order kept
                if best is None or losses[k] < best["loss"]:
                    best = {"aggregation": method, "temperature": float(t), "bias": float(b),
                            "clip": float(space.clips[k]), "loss": float(losses[k])}
    assert best is not None
    return best


def _probs(setting: dict[str, Any], raw: dict[str, np.ndarray]) -> np.ndarray:
    return clip(apply_temperature(raw[setting["aggregation"]], setting["temperature"], setting.get("bias", 0.0)),
                setting["clip"])


def _score(setting: dict[str, Any], raw: dict[str, np.ndarray], y: np.ndarray, fake_share: float) -> float:
    return prior_log_loss(y, _probs(setting, raw), fake_share)


def _subset(raw: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {m: p[index] for m, p in raw.items()}


def nested_split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices of the fit part and the held-out part (``share``), seeded, stratified by label;
    None when there are too few videos of a class to split."""
    from sklearn.model_selection import train_test_split

    if len(y) < 4 or min(np.bincount(y, minlength=2)) < 2:
        return None
    fit_idx, hold_idx = train_test_split(np.arange(len(y)), test_size=share, random_state=seed, stratify=y)
    return np.sort(fit_idx), np.sort(hold_idx)


SETTING_KEYS = ("aggregation", "temperature", "bias", "clip")


def _spaces(raw: dict[str, np.ndarray], rule: str, small: bool, cfg: Config) -> tuple[Space, Space]:
    """(free, soft): what the guarded search may choose beyond the baseline, and softening only
    (the baseline's rule, T >= 1, clip >= predict.clip, no offset). Below calibrate.min_videos
    the free space softens too and its offsets are bounded by calibrate.small_bias."""
    pcfg, ccfg = cfg.predict, cfg.calibrate
    temperatures = _grid(ccfg.temperatures, 1.0, "temperatures")
    clips = _grid(ccfg.clips, pcfg.clip, "clips")
    clips = clips[clips < 0.5]  # clip(p, c) needs c < 0.5
    biases = _bias_grid(ccfg.biases)
    soft = Space({rule: raw[rule]}, temperatures[temperatures >= 1.0], clips[clips >= pcfg.clip], biases[:1])
    if small:
        return dataclasses.replace(soft, biases=biases[np.abs(biases) <= ccfg.small_bias]), soft
    return Space(raw, temperatures, clips, biases), soft


def _bounded(free: Space, validated: dict[str, Any], rule: str, pclip: float) -> tuple[Space, dict[str, Any]]:
    """The final search's space: no sharper and no further from 0 than the validated setting."""
    bound = {"temperature": min(1.0, validated["temperature"]), "clip": min(pclip, validated["clip"]),
             "aggregations": list(dict.fromkeys([rule, validated["aggregation"]])),
             "bias": sorted((0.0, validated["bias"]))}
    low, high = bound["bias"]
    space = Space({m: free.raw[m] for m in bound["aggregations"]},
                  free.temperatures[free.temperatures >= bound["temperature"]],
                  free.clips[free.clips >= bound["clip"]],
                  free.biases[(free.biases >= low) & (free.biases <= high)])
    return space, bound


def fit(faces: pd.DataFrame, cfg: Config, unit: str = "face") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The search with its guard (steps 2 and 3) on per-unit predictions (``FACES_COLUMNS``:
    faces, or the tracks of a sequence model with ``unit`` "track").

    Returns the calibration dictionary and the before/after video probabilities (for plots).
    """
    pcfg, ccfg = cfg.predict, cfg.calibrate
    share = ccfg.test_fake_share
    if not 0.0 < share < 1.0:
        raise CalibrationError(f"calibrate.test_fake_share={share}: expected a share strictly between 0 and 1")
    rule = cfg.sequence.aggregation if unit == TRACK_UNIT else pcfg.aggregation  # the predictor's, uncalibrated
    methods = (rule,) if unit == TRACK_UNIT else tuple([rule] + [m for m in METHODS if m != rule])  # baseline first
    y, raw, _ = video_probs(faces, pcfg, methods)
    baseline = {"aggregation": rule, "temperature": 1.0, "bias": 0.0, "clip": pcfg.clip}
    small = len(y) < ccfg.min_videos
    free_space, soft_space = _spaces(raw, rule, small, cfg)

    def moved(setting: dict[str, Any]) -> bool:  # beyond softening: sharper, another rule, or an offset
        return (setting["temperature"] < 1.0 or setting["clip"] < pcfg.clip or setting["aggregation"] != rule
                or setting["bias"] != 0.0)

    halves: dict[str, Any] = {}
    allowed = False
    split = nested_split(y, ccfg.holdout_share, ccfg.seed)
    if split is not None:
        fit_idx, hold_idx = split
        free = search(free_space.subset(fit_idx), y[fit_idx], share)
        soft = search(soft_space.subset(fit_idx), y[fit_idx], share)
        for part, index in (("fit", fit_idx), ("holdout", hold_idx)):
            halves[part] = {"videos": int(len(index)),
                            **{name: _score(setting, _subset(raw, index), y[index], share)
                               for name, setting in (("before", baseline), ("free", free), ("soft", soft))}}
        halves["free_setting"] = {k: free[k] for k in SETTING_KEYS}
        halves["soft_setting"] = {k: soft[k] for k in SETTING_KEYS}
        allowed = moved(free) and halves["holdout"]["free"] < halves["holdout"]["soft"]
    bound: dict[str, Any] = {}
    if allowed:  # no further than the setting that won on the held-out part
        space, bound = _bounded(free_space, halves["free_setting"], rule, pcfg.clip)
        best = search(space, y, share)
    else:
        best = search(soft_space, y, share)
    before_p, after_p = _probs(baseline, raw), _probs(best, raw)
    result = {
        **{k: best[k] for k in SETTING_KEYS},
        "logloss_before": prior_log_loss(y, before_p, share),
        "logloss_after": best["loss"],
        "test_fake_share": share,
        "logloss_plain_before": log_loss(y, before_p),
        "logloss_plain_after": log_loss(y, after_p),
        "videos": int(len(y)),
        "fake_share": float(np.mean(y)),
        "unit": unit,
        f"{unit}s": int(len(faces)),
        "sharper_allowed": bool(allowed),
        "guard": _guard_text(small, allowed, halves, bound, moved, baseline, rule, cfg),
        "halves": halves,
        "bound": bound,
        "baseline": baseline,
        **{key: getattr(pcfg, key) for key in CONFIDENT_KEYS},
    }
    return result, {"before": before_p, "after": after_p, "y": y}


def _guard_text(small: bool, allowed: bool, halves: dict[str, Any], bound: dict[str, Any], moved: Any,
                baseline: dict[str, Any], rule: str, cfg: Config) -> str:
    """What the guard let the final search do, in words (calibration.json's ``guard``)."""
    pcfg, ccfg = cfg.predict, cfg.calibrate
    lead = (f"fewer than calibrate.min_videos={ccfg.min_videos} videos: softening only ({rule}, T >= 1, clip >= "
            f"{pcfg.clip:g}) and |bias| <= calibrate.small_bias={ccfg.small_bias:g}; " if small else "")
    if allowed:
        return lead + ("the setting chosen on the fit part won on the held-out part too: the final search may go "
                       f"as far as it (T >= {bound['temperature']:.3g}, clip >= {bound['clip']:.3g}, bias in "
                       f"[{bound['bias'][0]:.3g}, {bound['bias'][1]:.3g}], {' or '.join(bound['aggregations'])})")
    if halves and moved(halves.get("free_setting", baseline)):
        return lead + "the setting chosen on the fit part lost on the held-out part: only softening kept"
    if not halves:
        return lead + "too few videos of a class for the nested split: only softening"
    return lead + "nothing beyond softening was better on the fit part: only softening"


def calibrate(
    run_dir: Path, data_root: Path, folds_csv: Path, cfg: Config, device: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Predict the held-out videos, fit, write ``calibration.json`` and ``calibration.png``.

    Returns the written dictionary: ``aggregation, temperature, clip, logloss_before,
    logloss_after, videos, faces, sharper_allowed, guard, halves`` (fit / holdout:
    ``videos``, ``before``, ``free``, ``soft`` log losses of the settings chosen on the fit
    part), ``fallbacks`` (held-out videos left out, by reason) and the confident-rule
    parameters used.
    """
    run_dir = Path(run_dir)
    faces, counts = predict_held_out(run_dir, data_root, folds_csv, cfg, device=device, progress=progress)
    result, curves = fit(faces, cfg, run_unit(run_dir))
    result["fallbacks"] = {k: v for k, v in counts.items() if k != "videos"}
    result["frames"] = cfg.predict.frames
    y = curves["y"]
    plot_reliability(
        y,
        {f"before ({result['baseline']['aggregation']}, clip {cfg.predict.clip:g})": curves["before"],
         f"after ({result['aggregation']}, T {result['temperature']:.3g}, bias {result['bias']:.3g}, "
         f"clip {result['clip']:.3g})": curves["after"]},
        run_dir / CALIBRATION_PLOT,
        title=f"held-out training videos, each fold's model alone: {len(y)} videos",
    )
    atomic_write_json(run_dir / CALIBRATION, result)
    return result
