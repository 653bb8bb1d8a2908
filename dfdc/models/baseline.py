"""Classical baselines of studies ``000`` / ``002`` as models the predictor loads like any other:
frozen features, then a fitted scikit-learn pipeline's ``predict_proba`` -- as torch.

- ``logreg``, ``svm``, ``mlp``: ``BaselineModel`` = the frozen frame model ``model.backbone``
  (its pooled features, ``FrameModel.features``) -> the pipeline fitted by
  ``dfdc.baselines`` (``StandardScaler`` -> ``LogisticRegression`` | ``LinearSVC`` with
  sigmoid (Platt) calibration | ``MLPClassifier`` with one ReLU hidden layer of
  ``model.mlp_hidden`` units), copied into tensors by ``set_estimator``: the scaler's mean
  and scale, the linear layer(s), and the svm's Platt sigmoid ``z = -(a d + b)`` of its
  decision ``d``. ``forward`` gives the logits ``[0, z]``, so ``fake_probability``
  (softmax[:, 1] = sigmoid(z)) is the pipeline's ``predict_proba[:, 1]`` (tested to 1e-5).
  No backward through it: these models are fitted, not trained by the torch loop.
- the pixel features of ``baseline.features=pixels`` are the registered frame model
  ``pixels`` (``dfdc.models.pixels``), used as ``model.backbone``.

Why tensors and not the pickled estimator: the checkpoint stays a plain state dict (loaded
with ``weights_only``, exported to fp16, run on the GPU), and the Kaggle kernel needs no
scikit-learn of the training version -- a pickled estimator may not load in the image's
other version, and the bundle cannot ship scikit-learn's compiled wheel (measured: the
bundle's allow-list refuses it). ``dfdc.baselines`` still writes ``fold{k}/estimator.joblib``
for direct scikit-learn use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import BASELINE, BackboneModel, create_backbone, register

ESTIMATORS = ("logreg", "svm", "mlp")


class BaselineModel(BackboneModel):
    """Frozen ``backbone`` features -> standardise -> linear (or one-hidden-layer MLP) ->
    Platt sigmoid: a fitted scikit-learn pipeline's ``predict_proba`` in torch."""

    fp32_state = ("mean", "scale", "head", "platt")  # the fitted estimator stays float32 in fp16 exports and
    # half models (a scale of 1e-8 is 0 in fp16; standardised features overflow fp16); the backbone halves

    def __init__(self, backbone: nn.Module, estimator_name: str, mlp_hidden: int) -> None:
        super().__init__(backbone)
        self.estimator_name = estimator_name
        dim = self.feature_dim
        self.register_buffer("mean", torch.zeros(dim))  # StandardScaler.mean_
        self.register_buffer("scale", torch.ones(dim))  # StandardScaler.scale_
        if estimator_name == "mlp":
            self.head = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, 1))
        else:
            self.head = nn.Sequential(nn.Linear(dim, 1))
        self.register_buffer("platt", torch.tensor([1.0, 0.0]))  # z = platt[0] * d + platt[1]
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.freeze_backbone()
        for p in self.head.parameters():
            p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features (N x D) of 0-255 images: what the estimator reads."""
        with torch.no_grad():
            return self.backbone.features(x)

    def set_estimator(self, pipeline: Any) -> None:
        """Copy a fitted ``StandardScaler -> estimator`` pipeline (``dfdc.baselines``) in."""
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        steps = [step for _, step in getattr(pipeline, "steps", [])]
        if len(steps) != 2 or not isinstance(steps[0], StandardScaler) or list(pipeline.classes_) != [0, 1]:
            raise ValueError("expected a StandardScaler -> estimator pipeline fitted on labels 0 (REAL), 1 (FAKE)")
        scaler, estimator = steps
        want = {"logreg": LogisticRegression, "svm": CalibratedClassifierCV, "mlp": MLPClassifier}[self.estimator_name]
        if not isinstance(estimator, want):
            raise ValueError(f"{self.estimator_name}: expected a fitted {want.__name__}, got {type(estimator).__name__}")
        platt = (1.0, 0.0)
        if isinstance(estimator, MLPClassifier):
            if estimator.activation != "relu" or len(estimator.coefs_) != 2:
                raise ValueError("mlp: expected one ReLU hidden layer")
            layers = [(w.T, b) for w, b in zip(estimator.coefs_, estimator.intercepts_)]
        elif isinstance(estimator, CalibratedClassifierCV):
            (calibrated,) = estimator.calibrated_classifiers_  # ensemble=False: one, over all the data
            svc, (sigmoid,) = calibrated.estimator, calibrated.calibrators
            if not isinstance(svc, LinearSVC) or calibrated.method != "sigmoid":
                raise ValueError("svm: expected a LinearSVC with sigmoid calibration")
            layers = [(svc.coef_, svc.intercept_)]
            platt = (-float(sigmoid.a_), -float(sigmoid.b_))  # P(FAKE) = expit(-(a d + b))
        else:
            layers = [(estimator.coef_, estimator.intercept_)]
        linear = [m for m in self.head if isinstance(m, nn.Linear)]
        if [tuple(w.shape) for w, _ in layers] != [tuple(m.weight.shape) for m in linear]:
            raise ValueError(f"{self.estimator_name}: fitted shapes {[w.shape for w, _ in layers]} do not fit "
                             f"{[tuple(m.weight.shape) for m in linear]} (model.mlp_hidden, the features)")
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(scaler.mean_))
            self.scale.copy_(torch.as_tensor(scaler.scale_))
            for module, (w, b) in zip(linear, layers):
                module.weight.copy_(torch.as_tensor(w))
                module.bias.copy_(torch.as_tensor(b))
            self.platt.copy_(torch.tensor(platt))
            self.fitted.fill_(True)

    def parameter_count(self) -> int:
        """Numbers the system reads: the frozen backbone's weights (its classifier is dropped)
        and the fitted scaler, layers and Platt sigmoid."""
        backbone = sum(p.numel() for p in self.backbone.parameters())
        fitted = self.mean.numel() + self.scale.numel() + self.platt.numel()
        return backbone + fitted + sum(p.numel() for p in self.head.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[0, z]`` per crop: softmax[:, 1] = sigmoid(z) = the pipeline's P(FAKE)."""
        if not bool(self.fitted):
            raise RuntimeError(f"{self.estimator_name}: no fitted estimator; fit it with `dfdc train` first")
        u = (self.features(x).to(self.mean.dtype) - self.mean) / self.scale
        z = self.platt[0] * self.head(u.to(self.head[0].weight.dtype)).squeeze(1) + self.platt[1]
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _builder(name: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        return BaselineModel(create_backbone(cfg), name, cfg.mlp_hidden)

    build.__doc__ = f"frozen model.backbone features -> scikit-learn {name} (fitted by dfdc.baselines), in torch."
    return build


for _name in ESTIMATORS:
    register(_name, kind=BASELINE)(_builder(_name))
