"""Choose aggregation, temperature and clip on out-of-fold predictions.

``calibrate(run_dir, cfg)`` reads training's ``oof_faces.csv`` (``video,label,fold,frame,
face,prob``, label 0/1) and searches every combination of

- aggregation in ``mean``, ``confident`` (``dfdc.aggregate``, the predictor's rules),
- temperature on ``cfg.calib_temperatures`` (min, max, log-spaced steps) plus 1.0,
- clip on ``cfg.calib_clips`` (min, max, log-spaced steps) plus ``cfg.clip``,

for the lowest out-of-fold video log loss (Kaggle's). The baseline ("before") is ``mean``
aggregation, temperature 1 and ``cfg.clip``; it is itself a candidate, so "after" is never
worse on the OOF set. Ties go to the candidate closest to the baseline (mean before
confident; temperatures and clips in order of their log-distance from 1 and ``cfg.clip``),
so a clip that changes nothing on the OOF set is never moved.

Overfitting guard: with fewer than ``cfg.calib_min_videos`` OOF videos the search may only
soften predictions (temperature >= 1 and clip >= ``cfg.clip``). A small sample rarely
contains the confident mistakes that a sharper setting pays for on the test set, so a
smaller clip or a temperature below 1 would look free there and cost dearly later.

Sequence models (``oof_tracks.csv``: ``video,label,fold,track,prob``, one row per face track
read): the unit is a track and the rule is the run's ``sequence.aggregation`` (``max`` by
default); only temperature and clip are searched, and ``calibration.json`` says
``"unit": "track"`` (the predictor then leaves ``predict.aggregation``, a rule over faces,
alone).

Writes ``calibration.json`` and ``calibration.png`` (reliability before/after) in the run
folder, atomically. The predictor reads them with ``load_calibration`` +
``apply_calibration``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.aggregate import METHODS, TRACK_METHODS, aggregate, apply_temperature, clip
from dfdc.config import PredictConfig, read_config
from dfdc.io import atomic_write_json, read_table
from dfdc.metrics import log_loss, plot_reliability

OOF_FACES = "oof_faces.csv"
CALIBRATION = "calibration.json"
CALIBRATION_KEYS = ("aggregation", "temperature", "clip")
# the "confident" rule's parameters the calibration was fitted with: applied with it
CONFIDENT_KEYS = ("confident_threshold", "confident_min_fraction", "confident_real_fraction")
CALIBRATION_PLOT = "calibration.png"
OOF_COLUMNS = ["video", "label", "fold", "frame", "face", "prob"]
OOF_TRACKS = "oof_tracks.csv"  # sequence models: one row per track read
OOF_TRACK_COLUMNS = ["video", "label", "fold", "track", "prob"]


class CalibrationError(ValueError):
    """Out-of-fold data or a calibration file that cannot be used; says what to do."""


def read_oof_faces(path: Path, columns: list[str] = OOF_COLUMNS, what: str = "out-of-fold faces file") -> pd.DataFrame:
    """Read and validate ``oof_faces.csv`` (or, with its ``columns``, ``oof_tracks.csv``)."""
    path = Path(path)
    fix = "run `python -m dfdc train` to (re)write it"
    df = read_table(path, columns, error=CalibrationError, fix=fix, what=what, dtype={"video": str})
    if df.empty:
        raise CalibrationError(f"{path}: no rows; {fix}")
    prob = pd.to_numeric(df["prob"], errors="coerce")
    if prob.isna().any() or (prob < 0).any() or (prob > 1).any():
        raise CalibrationError(f"{path}: column prob must hold numbers in [0, 1]; {fix}")
    if not df["label"].isin([0, 1]).all():
        raise CalibrationError(f"{path}: column label must be 0 (REAL) or 1 (FAKE); {fix}")
    mixed = df.groupby("video")["label"].nunique()
    if (mixed > 1).any():
        raise CalibrationError(f"{path}: video(s) with two labels, e.g. {mixed[mixed > 1].index[0]}; {fix}")
    df["prob"] = prob.astype(float)
    return df


def _grid(spec: tuple[float, float, int], anchor: float, name: str) -> np.ndarray:
    """Log-spaced grid plus ``anchor``, ordered by distance from ``anchor`` (anchor first)."""
    low, high, steps = spec
    if not (0 < low <= high) or int(steps) < 1:
        raise CalibrationError(f"predict.{name}={spec}: expected (min > 0, max >= min, steps >= 1)")
    values = np.unique(np.append(np.geomspace(low, high, int(steps)), anchor))
    return values[np.argsort(np.abs(np.log(values / anchor)), kind="stable")]


def _oof_units(run_dir: Path) -> tuple[pd.DataFrame, str, tuple[str, ...], str]:
    """The run's per-unit OOF table, its unit ("face" | "track"), the rules to search and the
    baseline rule: faces (mean, confident; baseline mean), or the tracks of a sequence run
    (its ``sequence.aggregation`` alone)."""
    if (run_dir / OOF_FACES).is_file() or not (run_dir / OOF_TRACKS).is_file():
        return read_oof_faces(run_dir / OOF_FACES), "face", METHODS, "mean"
    saved = run_dir / "config.yaml"
    rule = read_config(saved).sequence.aggregation if saved.is_file() else TRACK_METHODS[0]
    tracks = read_oof_faces(run_dir / OOF_TRACKS, OOF_TRACK_COLUMNS, "out-of-fold tracks file")
    return tracks, "track", (rule,), rule


def _video_probs(faces: pd.DataFrame, method: str, cfg: PredictConfig) -> np.ndarray:
    return np.array([aggregate(g.to_numpy(), method, cfg) for _, g in faces.groupby("video", sort=True)["prob"]])


def search(raw: dict[str, np.ndarray], y: np.ndarray, temperatures: np.ndarray, clips: np.ndarray) -> dict[str, Any]:
    """Best (method, temperature, clip) by OOF log loss; ``raw`` maps method -> video probs.

    Candidates are tried in the given order and only a strictly lower loss replaces the
    best, so among equal losses the first (closest to the baseline) wins.
    """
    best: dict[str, Any] | None = None
    for method, p in raw.items():
        for t in temperatures:
            q = apply_temperature(p, float(t))
            for c in clips:
                loss = log_loss(y, clip(q, float(c)))
                if best is None or loss < best["loss"]:
                    best = {"aggregation": method, "temperature": float(t), "clip": float(c), "loss": loss}
    assert best is not None
    return best


def calibrate(run_dir: Path, cfg: PredictConfig) -> dict[str, Any]:
    """Fit aggregation, temperature and clip on ``run_dir/oof_faces.csv`` (or the tracks of a
    sequence run, ``oof_tracks.csv``); write ``calibration.json``.

    Returns the written dictionary: ``aggregation, temperature, clip, oof_logloss_before,
    oof_logloss_after, videos, unit`` plus ``faces`` (or ``tracks``), ``guarded`` (the
    small-set guard was on) and the confident-rule parameters used.
    """
    run_dir = Path(run_dir)
    faces, unit, methods, baseline = _oof_units(run_dir)
    y = faces.groupby("video", sort=True)["label"].first().to_numpy(dtype=int)
    raw = {method: _video_probs(faces, method, cfg) for method in methods}
    guarded = len(y) < cfg.calib_min_videos
    temperatures = _grid(cfg.calib_temperatures, 1.0, "calib_temperatures")
    clips = _grid(cfg.calib_clips, cfg.clip, "calib_clips")
    clips = clips[clips < 0.5]  # clip(p, c) needs c < 0.5
    if guarded:
        temperatures = temperatures[temperatures >= 1.0]
        clips = clips[clips >= cfg.clip]
    before_p = clip(raw[baseline], cfg.clip)
    before = log_loss(y, before_p)
    best = search(raw, y, temperatures, clips)
    after_p = clip(apply_temperature(raw[best["aggregation"]], best["temperature"]), best["clip"])
    result = {
        "aggregation": best["aggregation"],
        "temperature": best["temperature"],
        "clip": best["clip"],
        "oof_logloss_before": before,
        "oof_logloss_after": best["loss"],
        "videos": int(len(y)),
        "unit": unit,
        f"{unit}s": int(len(faces)),
        "guarded": guarded,
        "confident_threshold": cfg.confident_threshold,
        "confident_min_fraction": cfg.confident_min_fraction,
        "confident_real_fraction": cfg.confident_real_fraction,
    }
    plot_reliability(
        y,
        {f"before ({baseline}, clip {cfg.clip:g})": before_p,
         f"after ({best['aggregation']}, T {best['temperature']:.3g}, clip {best['clip']:.3g})": after_p},
        run_dir / CALIBRATION_PLOT,
        title=f"out-of-fold reliability, {len(y)} videos",
    )
    atomic_write_json(run_dir / CALIBRATION, result)
    return result


def read_calibration(path: Path) -> dict[str, Any]:
    """A ``calibration.json`` as a dict, validated (keys present, values in range)."""
    path = Path(path)
    fix = "rerun `python -m dfdc calibrate --run RUN` or pass --set predict.calibration=none"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: unreadable ({exc}); {fix}") from None
    if not isinstance(data, dict) or not set(CALIBRATION_KEYS) <= set(data):
        raise CalibrationError(f"{path}: expected a JSON object with {', '.join(CALIBRATION_KEYS)}; {fix}")
    try:
        method, temperature, bound = data["aggregation"], float(data["temperature"]), float(data["clip"])
    except (TypeError, ValueError):
        raise CalibrationError(f"{path}: temperature and clip must be numbers; {fix}") from None
    rules = TRACK_METHODS if data.get("unit") == "track" else METHODS
    if method not in rules or not temperature > 0 or not 0 <= bound < 0.5:
        raise CalibrationError(f"{path}: values out of range: {method!r}, T={temperature}, clip={bound}; {fix}")
    return data


def load_calibration(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/calibration.json`` as a validated dict, or None when the run has none."""
    path = Path(run_dir) / CALIBRATION
    return read_calibration(path) if path.is_file() else None


def explicit_keys(overrides: list[str], flags: Collection[str] = ()) -> set[str]:
    """Calibrated keys the user set (``--set predict.KEY=...`` overrides, plus the ``flags``
    given on the command line): a calibration.json must not override them."""
    keys = set(flags)
    for item in overrides:
        name = item.split("=", 1)[0].strip()
        if name.startswith("predict."):
            keys.add(name.split(".", 1)[1])
    return keys & set(CALIBRATION_KEYS + CONFIDENT_KEYS)


def apply_calibration(
    cfg: PredictConfig, calibration: dict[str, Any], explicit: Collection[str] = ()
) -> PredictConfig:
    """A copy of ``cfg`` with the calibrated aggregation, temperature and clip (and the
    confident-rule parameters they were fitted with), except the ``explicit`` keys (set by
    the user on the command line, which win)."""
    values: dict[str, Any] = {
        "aggregation": str(calibration["aggregation"]),
        "temperature": float(calibration["temperature"]),
        "clip": float(calibration["clip"]),
    }
    values.update({k: float(calibration[k]) for k in CONFIDENT_KEYS if k in calibration})
    rules = TRACK_METHODS if calibration.get("unit") == "track" else METHODS
    if values["aggregation"] not in rules or not values["temperature"] > 0 or not 0 <= values["clip"] < 0.5:
        raise CalibrationError(f"calibration values out of range: {values}")
    if calibration.get("unit") == "track":  # a rule over tracks (sequence.aggregation), not over faces
        del values["aggregation"]
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k not in explicit})
