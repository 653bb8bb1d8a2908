"""Unit probabilities -> one video probability, shared by training's out-of-fold
predictions, calibration and the predictor, so the three cannot drift.

``finalize(probs, cfg)`` = ``ensemble_probability`` (``aggregate`` per model, then the mean
over models) -> ``apply_temperature`` (temperature and logit offset) -> ``clip``. The settings of those steps are what
``dfdc calibrate`` chooses; ``calibration.json`` holds them (``read_calibration``,
``load_calibration``, ``apply_calibration`` here, so the predictor reads them without
depending on the calibration stage).

**Order over an ensemble, as the 1st place did it** (selimsef/dfdc_deepfake_challenge,
``kernel_utils.predict_on_video``: ``preds.append(strategy(model_probs))`` per model, then
``np.mean(preds)``): the video rule is applied to each model's P(FAKE) per unit (its faces,
or its tracks; with ``tta_flip`` the two views are averaged within the model first), then
the models' video probabilities are averaged, then temperature and clip. Averaging faces
over models first would pull them towards the middle, where the confident rule's thresholds
fire less often (2 models, 32 faces: A with 13 faces at 0.9 and 19 at 0.3, B with all at
0.7: per model (0.9 + 0.7) / 2 = 0.80; faces averaged first, 0.62).

Aggregation methods (``PredictConfig.aggregation``), over one model's P(FAKE) of every face
crop of one video (all frames, all faces):

- ``mean``: the plain mean.
- ``max``: the largest (over a video's face tracks, the sequence models' default: one
  swapped face makes the video FAKE).
- ``confident``: the 1st-place DFDC solution's ``confident_strategy`` (``kernel_utils.py``),
  the same rule on the same kind of input (one model's face probabilities of one video;
  exactly theirs in that sense, and applied per model as they did). With ``n`` faces, ``t =
  confident_threshold`` (0.8) and ``fakes`` = the number of faces with P(FAKE) > t:

  1. if ``fakes > n // (1 / confident_min_share)`` (the 1st place's ``n // 2.5``) and
     ``fakes > confident_min_count`` (11): the mean of those confidently fake faces;
  2. elif more than ``confident_real_share * n`` (0.9 n) faces have P(FAKE) <
     ``confident_real_threshold`` (0.2): the mean of those confidently real faces;
  3. else the plain mean.

  With 32 frames and one face a video needs at least 13 confident faces (more than 32 // 2.5
  = 12, and more than 11); 4 faces at 0.9 among 28 at 0.05 give the plain mean 0.156. With
  few frames (the smoke profile's 8) rule 1 can never fire for a one-face video: ``fakes >
  11`` is the 1st place's absolute floor, kept as it is (a named key,
  ``predict.confident_min_count``; the Kaggle kernel's CPU plan predicts with ``mean`` then,
  see ``dfdc.kaggle.runtime.plan_run``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfdc.config import PredictConfig

METHODS = ("mean", "confident")  # rules over a video's face P(FAKE) (frame models; calibration searches them)
TRACK_METHODS = ("max", "mean")  # rules over a video's track P(FAKE) (sequence models, sequence.aggregation)
CONSTANT_TOLERANCE = 1e-6  # a model whose unit P(FAKE) all lie within this of each other is constant
# (reported loudly): seen with 4 train / 2 predict frames on a 19-video tree, AUC 0.53 from ties alone
EPS = 1e-15  # Kaggle clips predictions at [1e-15, 1 - 1e-15]; also keeps logits finite
CALIBRATION = "calibration.json"  # in a run folder, written by dfdc calibrate
CALIBRATION_KEYS = ("aggregation", "temperature", "clip")  # what every calibration.json holds
OPTIONAL_KEYS = {"bias": 0.0}  # and what a calibration may hold (older ones: the default)
TRACK_UNIT = "track"  # calibration.json "unit" of a sequence model's calibration (else faces)
# the "confident" rule's parameters the calibration was fitted with: applied with it
CONFIDENT_KEYS = (
    "confident_threshold", "confident_min_count", "confident_min_share", "confident_real_threshold",
    "confident_real_share",
)


class AggregationError(ValueError):
    """Probabilities that cannot be aggregated (empty, outside [0, 1], not finite)."""


def _check(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        raise AggregationError("no face probabilities to aggregate (the predictor uses its fallback)")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise AggregationError(f"face probabilities must be finite and in [0, 1]; got min {p.min()}, max {p.max()}")
    return p


def aggregate(probs: np.ndarray, method: str, cfg: PredictConfig) -> float:
    """One P(FAKE) for a video from its faces' P(FAKE) (rules in the module docstring)."""
    p = _check(probs)
    if method == "mean":
        return float(p.mean())
    if method == "max":
        return float(p.max())
    if method != "confident":
        rules = ", ".join(dict.fromkeys(METHODS + TRACK_METHODS))
        raise AggregationError(f"unknown aggregation {method!r}; use one of {rules}")
    n = p.size
    fake = p > cfg.confident_threshold
    fakes = int(fake.sum())
    # ``n // (1 / share)``: with share 1 / 2.5 this is the 1st place's ``n // 2.5`` (floored)
    if fakes > n // (1.0 / cfg.confident_min_share) and fakes > cfg.confident_min_count:
        return float(p[fake].mean())
    real = p < cfg.confident_real_threshold
    if real.sum() > cfg.confident_real_share * n:
        return float(p[real].mean())
    return float(p.mean())


def apply_temperature(p: float | np.ndarray, t: float, bias: float = 0.0) -> float | np.ndarray:
    """``sigmoid(logit(p) / t + bias)``: t > 1 pulls towards 0.5, t < 1 pushes away; ``bias``
    moves the threshold (< 0 towards REAL; temperature + bias is Platt scaling with a = 1/t);
    t = 1 with bias 0 is the identity."""
    if not t > 0:
        raise AggregationError(f"temperature must be > 0, got {t}")
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    out = 1.0 / (1.0 + np.exp(-(np.log(q / (1.0 - q)) / t + bias)))
    out = np.where(t == 1.0 and bias == 0.0, np.asarray(p, dtype=np.float64), out)
    return float(out) if np.ndim(out) == 0 else out


def clip(p: float | np.ndarray, c: float) -> float | np.ndarray:
    """Clip to ``[c, 1 - c]`` (``0 <= c < 0.5``); bounds one wrong answer's log loss by -log(c)."""
    if not 0.0 <= c < 0.5:
        raise AggregationError(f"clip must be in [0, 0.5), got {c}")
    out = np.clip(np.asarray(p, dtype=np.float64), c, 1.0 - c)
    return float(out) if np.ndim(out) == 0 else out


def ensemble_probability(per_model: np.ndarray | list[np.ndarray], method: str, cfg: PredictConfig) -> float:
    """A video's P(FAKE) from its units' P(FAKE) per model (rows: models; a 1-D array is one
    model): ``aggregate`` each model's units, then the mean over models (the module docstring)."""
    if not isinstance(per_model, list):
        per_model = np.asarray(per_model, dtype=np.float64)
    rows = [per_model] if isinstance(per_model, np.ndarray) and per_model.ndim <= 1 else list(per_model)
    if not rows:
        raise AggregationError("no model probabilities to aggregate")
    return float(np.mean([aggregate(row, method, cfg) for row in rows]))


def finalize(probs: np.ndarray, cfg: PredictConfig) -> float:
    """The submitted P(FAKE) of a video: ``ensemble_probability`` (cfg.aggregation; rows of a
    2-D ``probs`` are models), temperature, clip."""
    return clip(apply_temperature(ensemble_probability(probs, cfg.aggregation, cfg), cfg.temperature, cfg.bias),
                cfg.clip)


VIDEO_KEYS = ("video", "label", "fold")  # what names a video in a per-unit table (fold when present)


def aggregate_videos(units: Any, rule: str, cfg: PredictConfig) -> Any:
    """Per-unit predictions -> one row per video: ``video, label[, fold], pred, n_faces``.

    ``units`` is a DataFrame with ``video``, ``label``, ``prob`` (and ``fold``): a video's
    faces or tracks; ``pred`` is ``aggregate`` of its ``prob`` with ``rule``, ``n_faces``
    counts its units. Rows sorted by video. Training's OOF files and validation aggregate
    through this one function; calibration and the predictor apply the rule per model, then
    average the models (``ensemble_probability``)."""
    import pandas as pd

    keys = [k for k in VIDEO_KEYS if k in units.columns]
    groups = units.groupby(keys, sort=True)["prob"]
    pred = groups.agg(lambda p: aggregate(p.to_numpy(dtype=float), rule, cfg)).rename("pred")
    table = pd.concat([pred, groups.size().rename("n_faces")], axis=1).reset_index()
    table["label"] = table["label"].astype(int)
    if "fold" in table.columns:
        table["fold"] = table["fold"].astype(int)
    return table[[*keys, "pred", "n_faces"]]


# --------------------------------------------------------------------------- calibration.json


class CalibrationError(ValueError):
    """Calibration data or a calibration file that cannot be used; says what to do."""


FIX = "rerun `python -m dfdc calibrate --run RUN --data DATA --folds FOLDS` or pass --set predict.calibration=none"


def _validate(calibration: Any, where: str) -> dict[str, Any]:
    """The calibration's aggregation, temperature and clip (and ``frames`` when present),
    checked: keys present, numbers, a rule of its unit, T > 0, 0 <= clip < 0.5."""
    if not isinstance(calibration, dict) or not set(CALIBRATION_KEYS) <= set(calibration):
        raise CalibrationError(f"{where}: expected a JSON object with {', '.join(CALIBRATION_KEYS)}; {FIX}")
    try:
        values = {"aggregation": str(calibration["aggregation"]), "temperature": float(calibration["temperature"]),
                  "clip": float(calibration["clip"])}
        values.update({key: float(calibration.get(key, default)) for key, default in OPTIONAL_KEYS.items()})
        if calibration.get("frames") is not None:
            values["frames"] = int(calibration["frames"])
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: temperature, bias, clip and frames must be numbers; {FIX}") from None
    if values["aggregation"] not in unit_rules(calibration) or not values["temperature"] > 0 \
            or not np.isfinite(values["bias"]) \
            or not 0 <= values["clip"] < 0.5 or values.get("frames", 1) <= 0:
        raise CalibrationError(f"{where}: calibration values out of range: {values}; {FIX}")
    return values


def read_calibration(path: Path) -> dict[str, Any]:
    """A ``calibration.json`` as a dict, validated (keys present, values in range)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: unreadable ({exc}); {FIX}") from None
    _validate(data, str(path))
    return data


def frames_mismatch(calibration: dict[str, Any] | None, frames: int) -> str:
    """A warning when ``calibration`` was fitted at another ``predict.frames`` than ``frames``
    ("" when they agree or the file does not say): its rule, temperature and clip were chosen
    for the face probabilities of another number of frames."""
    fitted = (calibration or {}).get("frames")
    if fitted is None or int(fitted) == int(frames):
        return ""
    return (f"the calibration was fitted at {int(fitted)} frames per video and is applied at {int(frames)}: its "
            "aggregation, temperature and clip were chosen for another number of faces per video")


def unit_rules(calibration: dict[str, Any]) -> tuple[str, ...]:
    """The rules a calibration may name: over faces, or over tracks (``"unit": "track"``)."""
    return TRACK_METHODS if calibration.get("unit") == TRACK_UNIT else METHODS


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
    return keys & set(CALIBRATION_KEYS + tuple(OPTIONAL_KEYS) + CONFIDENT_KEYS)


def apply_calibration(
    cfg: PredictConfig, calibration: dict[str, Any], explicit: Collection[str] = ()
) -> PredictConfig:
    """A copy of ``cfg`` with the calibrated aggregation, temperature, bias and clip (and the
    confident-rule parameters they were fitted with), except the ``explicit`` keys (set by
    the user on the command line, which win). A calibration of track units (a sequence
    model's, ``"unit": "track"``) leaves ``aggregation``, a rule over faces, alone: its rule
    is ``sequence.aggregation``."""
    values = _validate(calibration, "calibration")
    values.pop("frames", None)
    for key in CONFIDENT_KEYS:
        if key in calibration:
            kind = type(getattr(cfg, key))
            values[key] = kind(calibration[key])
    if calibration.get("unit") == TRACK_UNIT:
        del values["aggregation"]
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k not in explicit})


def constant_models(names: Sequence[str], spread: np.ndarray, units: int, unit: str = "face") -> list[str]:
    """A warning per model (``names``; ``spread``: each one's min and max P(FAKE) over its
    ``units`` units) whose every unit (``unit``: face or track) got the same P(FAKE) within
    ``CONSTANT_TOLERANCE``, over at least 2 units: its ranking of the videos is ties only (an
    AUC near 0.5 from ties, not skill), usually an untrained or collapsed model. Used at the
    end of training (per fold, on its OOF) and of prediction (per model)."""
    if units < 2:
        return []
    return [f"{name}: all {units} {unit} predictions are {lo:.4f} (a constant model: untrained or collapsed; its "
            "ranking of the videos is ties only); train longer, on more frames and videos"
            for name, (lo, hi) in zip(names, spread) if np.isfinite(lo) and hi - lo <= CONSTANT_TOLERANCE]
