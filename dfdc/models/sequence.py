"""Sequence models: a face track (``seq_len`` crops of one person, in frame order) -> P(FAKE),
after studies ``000`` and ``002`` ("CNN features + LSTM/GRU").

``lstm`` / ``gru``: the registered frame model ``model.backbone`` turns each crop into its
pooled features (``FrameModel.features``); a ``model.rnn_layers``-layer LSTM or GRU of
``model.rnn_hidden`` units reads them in frame order; its output at the last frame goes
through study 000's classifier, ``Linear(rnn_hidden, head_hidden = 1024) -> ReLU -> dropout
-> Linear(1024, 2)``. P(FAKE) = softmax[:, 1] as for frame models.

Input: N x T x 3 x H x W images with pixel values 0-255 (``uint8``), normalised by the
backbone on its device -- or N x T x D features already through the backbone (the frozen
mode: ``dfdc.sequences`` computes every crop's features once, caches them, and only the
recurrent head trains; the checkpoint still holds the frozen backbone, so the predictor
and the kernel read images). The input spec is the backbone's (checkpoint ``kind``
"sequence"). ``model.pretrained`` gives the backbone's weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dfdc.config import ConfigError, ModelConfig
from dfdc.models.registry import SEQUENCE, BackboneModel, create_backbone, models_of_kind, register

RNN_LAYERS = (1, 4)  # recurrent layers study 000 tried
RNN_HIDDEN = (128, 2048)  # units per layer study 000 tried
CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class SequenceModel(BackboneModel):
    """Backbone features per frame -> LSTM/GRU -> last output -> 2-layer classifier."""

    def __init__(self, backbone: nn.Module, cell: str, layers: int, hidden: int, head_hidden: int,
                 dropout: float, num_classes: int) -> None:
        super().__init__(backbone)
        self.rnn = CELLS[cell](backbone.feature_dim, hidden, num_layers=layers, batch_first=True,
                               dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(head_hidden, num_classes))

    def set_trainable(self, fraction: float) -> None:
        """``model.trainable`` (study 000's transfer settings) applies to the backbone: its top
        ``fraction`` of layers train with the recurrent head (``FrameModel.set_trainable``)."""
        self.backbone.set_trainable(fraction)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """N x T x 3 x H x W images (0-255) -> N x T x D backbone features."""
        n, t = x.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.backbone.features(x.flatten(0, 1)).reshape(n, t, -1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """N x T x D features -> N x 2 logits, in the head's own dtype: outside AMP autocast
        (bf16 recurrent kernels are not everywhere; the head is a sliver of the work)."""
        weight = self.head[0].weight
        with torch.autocast(device_type=features.device.type, enabled=False):
            out, _ = self.rnn(features.to(weight.dtype))
            return self.head(out[:, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return self.classify(x)
        if x.dim() != 5:
            raise ValueError(f"a sequence model reads N x T x 3 x H x W images or N x T x D features, got {tuple(x.shape)}")
        return self.classify(self.frame_features(x))


def check_sequence_config(cfg: ModelConfig) -> None:
    """Layer count and width within what study 000 tried, with a clear error."""
    if not RNN_LAYERS[0] <= cfg.rnn_layers <= RNN_LAYERS[1]:
        raise ConfigError(f"model.rnn_layers={cfg.rnn_layers}: use {RNN_LAYERS[0]}-{RNN_LAYERS[1]}")
    if not RNN_HIDDEN[0] <= cfg.rnn_hidden <= RNN_HIDDEN[1]:
        raise ConfigError(f"model.rnn_hidden={cfg.rnn_hidden}: use {RNN_HIDDEN[0]}-{RNN_HIDDEN[1]}")
    if cfg.head_hidden <= 0:
        raise ConfigError(f"model.head_hidden={cfg.head_hidden}: must be positive")


def _builder(cell: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        check_sequence_config(cfg)
        return SequenceModel(create_backbone(cfg), cell, cfg.rnn_layers, cfg.rnn_hidden, cfg.head_hidden,
                             cfg.dropout, cfg.num_classes)

    build.__doc__ = f"model.backbone features per frame -> {cell.upper()} -> Linear(1024) -> ReLU -> Linear(2)."
    return build


for _cell in CELLS:
    register(_cell, kind=SEQUENCE)(_builder(_cell))


def is_sequence_model(arch: str) -> bool:
    """Is ``arch`` a model over face tracks (trained and predicted on sequences)? (Its
    registered kind; an unknown name is not.)"""
    return arch in models_of_kind(SEQUENCE)

