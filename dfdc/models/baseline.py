"""Classical baselines of studies ``000`` / ``002`` as models the predictor loads like any other:
a frozen feature extractor, then a fitted scikit-learn estimator's ``predict_proba``.

- ``logreg``, ``svm``, ``mlp``: ``BaselineModel`` = the frozen frame model ``model.backbone``
  (its pooled features, ``FrameModel.features``) -> the estimator (fitted by
  ``dfdc.baselines``). ``forward`` returns log-probabilities as logits, so
  ``fake_probability`` (softmax[:, 1]) is exactly the estimator's P(FAKE). There is no
  backward through scikit-learn: these models are fitted, not trained by the torch loop.
- ``pixels``: the crop area-downscaled to ``PIXELS_SIDE`` x ``PIXELS_SIDE`` RGB as a
  vector (``baseline.features=pixels`` reads it instead of a CNN's features); as a frame
  classifier on its own it is a logistic regression on pixels.

The fitted estimator travels inside the checkpoint: ``get_extra_state`` stores its joblib
bytes as a ``uint8`` tensor, so ``fold{k}/best.pt``, its fp16 export and the Kaggle bundle
need nothing new (``dfdc.baselines`` also writes ``fold{k}/estimator.joblib`` for direct
scikit-learn use). Loading a baseline checkpoint unpickles that estimator: load only runs
you trust, as with any pickle.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import BackboneModel, FrameModel, create_backbone, no_pretrained, register
from dfdc.preprocess import InputSpec

PIXELS_SIDE = 16  # side of the downscaled crop the pixel features read: 16 x 16 x 3 = 768 values
ESTIMATORS = ("logreg", "svm", "mlp")
PROBA_FLOOR = 1e-12  # log(0) guard when an estimator says exactly 0 or 1


class PixelFeatures(FrameModel):
    """A crop area-downscaled to ``PIXELS_SIDE``^2 RGB (normalised): a 768-value feature vector."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__(3 * PIXELS_SIDE * PIXELS_SIDE, num_classes, dropout)
        self.pool = nn.AdaptiveAvgPool2d(PIXELS_SIDE)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


@register("pixels", input=InputSpec(PIXELS_SIDE))
def pixels(cfg: ModelConfig) -> nn.Module:
    """The crop's downscaled pixels (no weights; ``pretrained`` must be ``none``)."""
    no_pretrained(cfg)
    return PixelFeatures(cfg.num_classes, cfg.dropout)


class BaselineModel(BackboneModel):
    """Frozen ``backbone`` features -> a scikit-learn estimator's ``predict_proba``."""

    kind = "frame"  # one crop -> P(FAKE), as the predictor sees it

    def __init__(self, backbone: nn.Module, estimator_name: str) -> None:
        super().__init__(backbone)
        self.estimator_name = estimator_name
        self.estimator: Any = None
        self.freeze_backbone()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features (N x D) of 0-255 images: what the estimator reads."""
        with torch.no_grad():
            return self.backbone.features(x)

    def set_estimator(self, estimator: Any) -> None:
        if list(getattr(estimator, "classes_", [])) != [0, 1]:
            raise ValueError("the estimator must be fitted on labels 0 (REAL) and 1 (FAKE)")
        self.estimator = estimator

    def parameter_count(self) -> int:
        """Numbers the system learned or reads: the frozen backbone's weights (without its
        unused classifier) plus every fitted array of the estimator pipeline."""
        backbone = sum(p.numel() for name, p in self.backbone.named_parameters() if not name.startswith("fc."))
        return backbone + sum(_fitted_arrays(step) for _, step in getattr(self.estimator, "steps", []))

    def get_extra_state(self) -> torch.Tensor:
        if self.estimator is None:
            return torch.zeros(0, dtype=torch.uint8)
        import joblib

        buffer = io.BytesIO()
        joblib.dump(self.estimator, buffer)
        return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).clone()

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor) or state.numel() == 0:
            self.estimator = None
            return
        import joblib

        self.set_estimator(joblib.load(io.BytesIO(state.cpu().numpy().tobytes())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log P(REAL), log P(FAKE) per crop: softmax of these is the estimator's probability."""
        if self.estimator is None:
            raise RuntimeError(f"{self.estimator_name}: no fitted estimator; fit it with `dfdc train` first")
        feats = self.features(x).float().cpu().numpy().astype(np.float64)
        proba = self.estimator.predict_proba(feats)
        return torch.from_numpy(np.log(np.clip(proba, PROBA_FLOOR, 1.0))).float().to(x.device)


def _fitted_arrays(estimator: Any) -> int:
    """Sizes of an estimator's fitted arrays (``coef_``, ``intercept_``, ``coefs_``, ``mean_`` ...),
    inner estimators and calibrators included."""
    total = 0
    for key, value in vars(estimator).items():
        if not key.endswith("_") or key.startswith("_"):
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, np.ndarray) and item.dtype.kind == "f":
                total += item.size
            elif hasattr(item, "get_params"):  # a fitted inner estimator (calibrated classifiers)
                total += _fitted_arrays(item)
            elif hasattr(item, "estimator") and hasattr(item, "calibrators"):
                total += _fitted_arrays(item.estimator) + sum(_fitted_arrays(c) for c in item.calibrators)
    return total


def _builder(name: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        return BaselineModel(create_backbone(cfg), name)

    build.__doc__ = f"frozen model.backbone features -> scikit-learn {name} (fitted by dfdc.baselines)."
    return build


for _name in ESTIMATORS:
    register(_name, backbone=True, requires=("scikit-learn",))(_builder(_name))
