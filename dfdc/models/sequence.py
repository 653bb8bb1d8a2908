"""Sequence models: a face track (``seq_len`` crops of one person, in frame order) -> P(FAKE),
after studies ``000`` and ``002`` ("CNN features + LSTM/GRU", MLPs over frames, CNN + LSTM).

``lstm`` / ``gru``: the registered frame model ``model.backbone`` turns each crop into its
pooled features (``FrameModel.features``); a ``model.rnn_layers``-layer LSTM or GRU of
``model.rnn_hidden`` units reads them in frame order; its output at the last frame goes
through study 000's classifier, ``Linear(rnn_hidden, head_hidden = 1024) -> ReLU -> dropout
-> Linear(1024, 2)``. P(FAKE) = softmax[:, 1] as for frame models.

Study 000's defaults: 128 units (``model.rnn_hidden``), 1 layer (its best GRU; its best LSTM has
2), features of its fine-tuned InceptionV3 (``profiles/study000.yaml``). Its grid, 1-4 layers x
128 / 512 / 1024 / 2048 units for both cells, is ``rnn_grid()``: named settings (``gru-2x512``
-> ``model.arch=gru model.rnn_layers=2 model.rnn_hidden=512``) for ``dfdc compare``. PyTorch's
LSTM has two bias vectors per gate where Keras's has one: 4 x units more parameters per layer
(GRU: the same count as Keras's default ``reset_after`` GRU, 970,498 for 128 x 1 over 2048 features).

``mlp-{1,2,3}-...`` (study 000's MLPs, Table 2's 15 configurations): the ``model.mlp_frames``
(40) frames' features of a track read at once, flattened (40 x 2048 = 81,920 inputs for
InceptionV3), -> (Linear -> ReLU) per hidden layer -> dropout -> Linear(., 2). Not stated by the
study: the activation (ours: ReLU) and any dropout (ours: ``model.dropout`` before the output).

``cnn-lstm`` (study 002's CNN + LSTM, trained end to end): its own time-distributed conv blocks
(``lrcn-cnn``, ``dfdc.models.custom``; the registry's ``own_backbone``, so ``model.backbone`` is not
read) -> dropout -> LSTM(256) -> Linear(256, 2), as study 002's reference [3] (harvitronix's
LRCN, 80 x 80 frames); study 002 itself says only "several blocks of conv layers with an LSTM
head", each "time distributed". It trains with ``sequence.mode=finetune`` only.

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

from dfdc.config import Config, ConfigError, ModelConfig
from dfdc.models.registry import SEQUENCE, BackboneModel, create_backbone, models_of_kind, register

RNN_LAYERS = (1, 4)  # recurrent layers study 000 tried
RNN_HIDDEN = (128, 2048)  # units per layer study 000 tried
RNN_GRID_LAYERS = (1, 2, 3, 4)  # study 000's grid (1.3.4): 1-4 layers ...
RNN_GRID_UNITS = (128, 512, 1024, 2048)  # ... x 128 / 512 / 1024 / 2048 units, for lstm and gru
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



def rnn_grid(cells: tuple[str, ...] = tuple(CELLS)) -> dict[str, tuple[str, ...]]:
    """Study 000's grid of recurrent models as named settings: ``gru-2x512`` -> the overrides
    ``model.arch=gru``, ``model.rnn_layers=2``, ``model.rnn_hidden=512`` (32 in all)."""
    return {f"{cell}-{layers}x{units}": (f"model.arch={cell}", f"model.rnn_layers={layers}",
                                          f"model.rnn_hidden={units}")
            for cell in cells for layers in RNN_GRID_LAYERS for units in RNN_GRID_UNITS}


# ----------------------------------------------------------------------------- study 000's MLPs

# Table 2 of study 000: hidden units per layer, by depth and width rule (each model then has a 2-unit output)
MLP_TABLE: dict[int, dict[str, tuple[int, ...]]] = {
    1: {"constant-128": (128,), "constant-256": (256,), "constant-512": (512,), "constant-1024": (1024,),
        "constant-2048": (2048,)},
    2: {"ascending": (512, 1024), "descending": (1024, 512), "constant-256": (256, 256), "constant-512": (512, 512),
        "constant-1024": (1024, 1024)},
    3: {"ascending": (64, 160, 1024), "descending": (1024, 160, 64), "constant-64": (64, 64, 64),
        "constant-128": (128, 128, 128), "constant-256": (256, 256, 256)},
}


def mlp_names() -> dict[str, tuple[int, ...]]:
    """Table 2's 15 MLPs by registered name (``mlp-3-constant-128`` ...) -> hidden units per layer."""
    return {f"mlp-{depth}-{rule}": widths for depth, rules in MLP_TABLE.items() for rule, widths in rules.items()}


class FramesMLP(BackboneModel):
    """Study 000's MLP: the backbone features of a track's ``frames`` frames, read at once
    (flattened: frames x D inputs) -> (Linear -> ReLU) per hidden layer -> dropout -> Linear(., 2)."""

    def __init__(self, backbone: nn.Module, frames: int, widths: tuple[int, ...], dropout: float,
                 num_classes: int) -> None:
        super().__init__(backbone)
        self.frames = int(frames)
        layers: list[nn.Module] = []
        width = self.frames * backbone.feature_dim
        for units in widths:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True)]
            width = units
        self.head = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(width, num_classes))

    set_trainable = SequenceModel.set_trainable  # model.trainable: the backbone's top layers
    frame_features = SequenceModel.frame_features  # N x T x 3 x H x W images -> N x T x D features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x if x.dim() == 3 else self.frame_features(x)
        if features.shape[1] != self.frames:
            raise ValueError(f"this MLP reads {self.frames} frames per track (model.mlp_frames), got "
                             f"{features.shape[1]}: set sequence.seq_len={self.frames}")
        weight = self.head[0].weight
        return self.head(features.flatten(1).to(weight.dtype))


def _mlp_builder(widths: tuple[int, ...]) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        if cfg.mlp_frames < 1:
            raise ConfigError(f"model.mlp_frames={cfg.mlp_frames}: must be at least 1")
        return FramesMLP(create_backbone(cfg), cfg.mlp_frames, widths, cfg.dropout, cfg.num_classes)

    build.__doc__ = f"Study 000's MLP over model.mlp_frames frames' features: hidden {widths} -> 2."
    return build


for _name, _widths in mlp_names().items():
    register(_name, kind=SEQUENCE)(_mlp_builder(_widths))


# ----------------------------------------------------------------------------- study 002's CNN + LSTM

CNN_LSTM_UNITS = 256  # the LSTM of study 002's reference [3] (harvitronix LRCN): 256 units, one layer
CNN_LSTM_BACKBONE = "lrcn-cnn"  # its time-distributed conv blocks (dfdc.models.custom)


class CnnLstm(SequenceModel):
    """Study 002's CNN + LSTM, trained end to end: [3]'s conv blocks per frame -> dropout ->
    LSTM(256) -> Linear(256, 2) at the last frame (no hidden dense layer, as [3])."""

    def __init__(self, backbone: nn.Module, dropout: float, num_classes: int) -> None:
        super().__init__(backbone, "lstm", 1, CNN_LSTM_UNITS, CNN_LSTM_UNITS, dropout, num_classes)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(CNN_LSTM_UNITS, num_classes))
        self.input_dropout = nn.Dropout(dropout)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.head[1].weight
        with torch.autocast(device_type=features.device.type, enabled=False):
            out, _ = self.rnn(self.input_dropout(features.to(weight.dtype)))
            return self.head(out[:, -1])


@register("cnn-lstm", kind=SEQUENCE, own_backbone=CNN_LSTM_BACKBONE)
def cnn_lstm(cfg: ModelConfig) -> nn.Module:
    """Study 002's CNN + LSTM (its own conv blocks, ``lrcn-cnn``; train with sequence.mode=finetune)."""
    return CnnLstm(create_backbone(cfg), cfg.dropout, cfg.num_classes)


def check_sequence_model_settings(cfg: Config) -> None:
    """What the study's sequence models need of the run: the MLPs read exactly ``model.mlp_frames``
    frames per track; ``cnn-lstm`` trains its own conv blocks end to end (``sequence.mode=finetune``)."""
    arch = cfg.model.arch
    if arch in mlp_names() and cfg.sequence.seq_len != cfg.model.mlp_frames:
        raise ConfigError(f"model.arch={arch} reads model.mlp_frames={cfg.model.mlp_frames} frames per track but "
                          f"sequence.seq_len={cfg.sequence.seq_len}: set both to the same count (study 000: 40)")
    if arch == "cnn-lstm" and cfg.sequence.mode != "finetune":
        raise ConfigError("model.arch=cnn-lstm is trained end to end (its conv blocks from random init): "
                          "set sequence.mode=finetune")
