"""Face probabilities -> one video probability, shared by training's out-of-fold
predictions, calibration and the predictor, so the three cannot drift.

``finalize(probs, cfg)`` = ``aggregate`` -> ``apply_temperature`` -> ``clip``.

Aggregation methods (``PredictConfig.aggregation``), over the P(FAKE) of every face crop
of one video (all frames, all faces, all models):

- ``mean``: the plain mean.
- ``max``: the largest (over a video's face tracks, the sequence models' default: one
  swapped face makes the video FAKE).
- ``confident`` (after the 1st-place DFDC solution), with ``t = confident_threshold``:

  1. if more than ``confident_min_fraction`` of the faces have P(FAKE) > t, return the
     mean of those confidently fake faces (one manipulated face among several real ones,
     or a few manipulated frames, then decide the video);
  2. else if more than ``confident_real_fraction`` of the faces have P(FAKE) < 1 - t,
     return the mean of those confidently real faces;
  3. else return the plain mean.

  The 1st place additionally required more than 11 confident faces (of 32 frames) and
  40% of them; here one fraction expresses that, so the rule also works with fewer frames.
"""

from __future__ import annotations

import numpy as np

from dfdc.config import PredictConfig

METHODS = ("mean", "confident")  # rules over a video's face P(FAKE) (frame models; calibration searches them)
TRACK_METHODS = ("max", "mean")  # rules over a video's track P(FAKE) (sequence models, sequence.aggregation)
EPS = 1e-15  # Kaggle clips predictions at [1e-15, 1 - 1e-15]; also keeps logits finite


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
        raise AggregationError(f"unknown aggregation {method!r}; use one of {', '.join(dict.fromkeys(METHODS + TRACK_METHODS))}")
    t = cfg.confident_threshold
    fake = p > t
    if fake.sum() > cfg.confident_min_fraction * p.size:
        return float(p[fake].mean())
    real = p < 1.0 - t
    if real.sum() > cfg.confident_real_fraction * p.size:
        return float(p[real].mean())
    return float(p.mean())


def apply_temperature(p: float | np.ndarray, t: float) -> float | np.ndarray:
    """``sigmoid(logit(p) / t)``: t > 1 pulls towards 0.5, t < 1 pushes away, t = 1 is identity."""
    if not t > 0:
        raise AggregationError(f"temperature must be > 0, got {t}")
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    out = 1.0 / (1.0 + np.exp(-np.log(q / (1.0 - q)) / t))
    out = np.where(t == 1.0, np.asarray(p, dtype=np.float64), out)
    return float(out) if np.ndim(out) == 0 else out


def clip(p: float | np.ndarray, c: float) -> float | np.ndarray:
    """Clip to ``[c, 1 - c]`` (``0 <= c < 0.5``); bounds one wrong answer's log loss by -log(c)."""
    if not 0.0 <= c < 0.5:
        raise AggregationError(f"clip must be in [0, 0.5), got {c}")
    out = np.clip(np.asarray(p, dtype=np.float64), c, 1.0 - c)
    return float(out) if np.ndim(out) == 0 else out


def finalize(probs: np.ndarray, cfg: PredictConfig) -> float:
    """The submitted P(FAKE) of a video: aggregate (cfg.aggregation), temperature, clip."""
    return clip(apply_temperature(aggregate(probs, cfg.aggregation, cfg), cfg.temperature), cfg.clip)
