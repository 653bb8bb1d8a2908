"""CNNs trained from random initialisation (no pretrained weights: ``model.pretrained: none``).

``tiny-cnn``: three conv-BN-ReLU-pool stages + average pooling + dropout + Linear (fast tests
and CPU experiments).

``custom-cnn`` and Table 1's 23 named configurations ``custom-cnn-{2..5}-ascending``,
``-descending``, ``-constant-{32,64,128,256}`` (5 layers: no constant 256) (study 000's custom
CNNs): (conv -> ReLU -> max pool) per layer with Table 1's filters, flatten -> dense
(``model.custom_head_width``, 512) -> ReLU -> dropout -> Linear(., 2). ``custom-cnn`` takes its
configuration from ``model.custom_depth`` / ``custom_widths`` / ``custom_base_width`` (default:
the study's best, constant 128 x 3 layers). Study 000 states the layer counts, the filters, ReLU,
max pooling and a classifying dense network; it does not state the kernel, the padding, the
pooling window, the dense width or the input side. Ours: Keras's defaults (3x3 kernels, unpadded
("valid") convs, 2x2 max pools), a 512-unit dense layer and 240-px inputs: the only round choice
we found that gives both of the study's counts it can be checked on -- 51,680,514 parameters for
constant-128 x 3 (the study: 51.7 M) and 55,127,458 for constant-32 x 2 (55 M); Table 1's
ascending 2-layer (64, 128) then has 220.5 M where the study's text says 110 M, which is what
(32, 64) would give: one of the two study figures is inconsistent with the other, and we keep
Table 1's filters. No BatchNorm (the study names none). Inputs must be at least
``custom_cnn_min_side`` px (94 for 5 layers).

``simple-cnn`` / ``simple-cnn-2`` (study 002's two CNNs trained from scratch): conv layers, then
"two fully connected layers with 120 and 84 hidden units" and the 2-way output. Study 002's
conv layers are in a figure only: ours are LeNet-5's (6 and 16 5x5 filters; the 120 / 84 are
LeNet-5's) and a 32-64-128 3x3 variant; adaptive max pooling to 5 x 5 before the flatten.

``lrcn-cnn``: the time-distributed conv blocks of study 002's CNN + LSTM (``cnn-lstm``,
``dfdc.models.sequence``), as its reference implementation [3] builds them.

Reseption V1 / V2 and their ensemble (study 001) are ``dfdc.models.reseption``.
"""

from __future__ import annotations

import torch
from torch import nn

from dfdc.config import ConfigError, ModelConfig
from dfdc.models.registry import FrameModel, no_pretrained, register
from dfdc.preprocess import InputSpec

TINY_CNN_WIDTHS = (16, 32, 64)  # channels of the three conv stages: ~25k weights, fast on a CPU
TINY_CNN_SIZE = 64  # default input side (profiles set train.size)


class TinyCNN(FrameModel):
    """Three conv-BN-ReLU-pool stages + average pooling + dropout + Linear (tests, CPU runs)."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__(TINY_CNN_WIDTHS[-1], num_classes, dropout)
        layers: list[nn.Module] = []
        channels = 3
        for width in TINY_CNN_WIDTHS:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)).flatten(1)


@register("tiny-cnn", input=InputSpec(TINY_CNN_SIZE))
def tiny_cnn(cfg: ModelConfig) -> nn.Module:
    """A small CNN from random init (``pretrained`` must be ``none``)."""
    no_pretrained(cfg)
    return TinyCNN(cfg.num_classes, cfg.dropout)


# ----------------------------------------------------------------------------- custom-cnn (study 000)

CUSTOM_CNN_SIZE = 240  # default input side: with the Keras defaults below and a 512-unit dense layer it
# reproduces study 000's parameter counts (51.7 M for constant-128 x 3, 55 M for constant-32 x 2)
CUSTOM_KERNEL = 3  # conv kernel side (study 000 does not state it; 3x3 is Keras's customary choice)
CUSTOM_POOL = 2  # max pooling window and stride (Keras's MaxPooling2D default; the study names max pooling)
CUSTOM_DEPTHS = (2, 5)  # study 000: custom CNNs of 2 to 5 conv layers
WIDTH_RULES = ("ascending", "descending", "constant")  # study 000's width rules
# Table 1 of study 000: filters per conv layer, by depth, for the two rules that are not constant
CUSTOM_CNN_TABLE: dict[int, dict[str, tuple[int, ...]]] = {
    2: {"ascending": (64, 128), "descending": (256, 64)},
    3: {"ascending": (64, 96, 128), "descending": (256, 64, 32)},
    4: {"ascending": (32, 64, 96, 128), "descending": (256, 128, 64, 32)},
    5: {"ascending": (32, 64, 96, 128, 160), "descending": (256, 192, 128, 64, 32)},
}
# Table 1's constant widths per depth (5 layers: no constant 256, it failed on the study's 6 GB GPU)
CUSTOM_CNN_CONSTANT: dict[int, tuple[int, ...]] = {2: (32, 64, 128, 256), 3: (32, 64, 128, 256),
                                                   4: (32, 64, 128, 256), 5: (32, 64, 128)}


def custom_widths(depth: int, rule: str, base: int) -> list[int]:
    """Channels of each conv layer of ``custom-cnn``: Table 1 of study 000 for ``ascending`` /
    ``descending``; ``constant``: ``base`` in every layer (Table 1 has 32, 64, 128, 256)."""
    if not CUSTOM_DEPTHS[0] <= depth <= CUSTOM_DEPTHS[1]:
        raise ConfigError(f"model.custom_depth={depth}: custom-cnn has {CUSTOM_DEPTHS[0]}-{CUSTOM_DEPTHS[1]} conv layers")
    if rule not in WIDTH_RULES:
        raise ConfigError(f"model.custom_widths={rule!r}: use one of {', '.join(WIDTH_RULES)}")
    if rule != "constant":
        return list(CUSTOM_CNN_TABLE[depth][rule])
    if base < 1:
        raise ConfigError(f"model.custom_base_width={base}: must be at least 1")
    return [base] * depth


def custom_cnn_side(side: int, depth: int) -> int:
    """The side of the last feature map: each layer is an unpadded conv then a floored max pool."""
    for _ in range(depth):
        side = (side - (CUSTOM_KERNEL - 1)) // CUSTOM_POOL
    return side


def custom_cnn_min_side(depth: int) -> int:
    """The smallest input side that leaves a 1 x 1 map after ``depth`` layers."""
    side = 1
    for _ in range(depth):
        side = side * CUSTOM_POOL + CUSTOM_KERNEL - 1
    return side


class CustomCNN(FrameModel):
    """``custom-cnn``: (conv -> ReLU -> max pool) x depth -> flatten -> dense -> ReLU -> dropout ->
    Linear(., 2). The dense layer reads the flattened map, so its size follows the input side:
    it is (re)made by ``set_input_spec`` (``create_model`` calls it with the model's side)."""

    head_names = ("hidden", "fc")

    def __init__(self, widths: list[int], head_width: int, num_classes: int, dropout: float) -> None:
        super().__init__(head_width, num_classes, dropout)
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, CUSTOM_KERNEL), nn.ReLU(inplace=True), nn.MaxPool2d(CUSTOM_POOL)]
            channels = width
        self.widths = list(widths)
        self.encoder = nn.Sequential(*layers)
        self.hidden: nn.Module | None = None

    def set_input_spec(self, spec: InputSpec) -> None:
        super().set_input_spec(spec)
        if not hasattr(self, "widths"):  # FrameModel.__init__'s call, before the layers exist
            return
        side = custom_cnn_side(spec.size, len(self.widths))
        if side < 1:
            raise ConfigError(f"custom-cnn with {len(self.widths)} layers needs inputs of at least "
                              f"{custom_cnn_min_side(len(self.widths))} px, got {spec.size} (set train.size)")
        flat = self.widths[-1] * side * side
        if self.hidden is None or self.hidden[0].in_features != flat:
            device = self.encoder[0].weight.device
            self.hidden = nn.Sequential(nn.Linear(flat, self.feature_dim, device=device), nn.ReLU(inplace=True))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden is None:
            raise RuntimeError("custom-cnn: no input side yet; build it with create_model (set_input_spec)")
        if x.shape[-1] != self.input_spec.size or x.shape[-2] != self.input_spec.size:
            raise ValueError(f"custom-cnn reads {self.input_spec.size} px inputs (its dense layer is sized by the "
                             f"flattened map), got {tuple(x.shape[-2:])}: build it at that side "
                             "(train.size / embed.size)")
        return self.hidden(self.encoder(x).flatten(1))


def _custom_cnn(cfg: ModelConfig, widths: list[int]) -> nn.Module:
    no_pretrained(cfg)
    if cfg.custom_head_width < 1:
        raise ConfigError(f"model.custom_head_width={cfg.custom_head_width}: must be at least 1")
    return CustomCNN(widths, cfg.custom_head_width, cfg.num_classes, cfg.dropout)


@register("custom-cnn", input=InputSpec(CUSTOM_CNN_SIZE))
def custom_cnn(cfg: ModelConfig) -> nn.Module:
    """Study 000's custom CNN: ``model.custom_depth`` / ``custom_widths`` / ``custom_base_width``."""
    return _custom_cnn(cfg, custom_widths(cfg.custom_depth, cfg.custom_widths, cfg.custom_base_width))


def custom_cnn_names() -> dict[str, tuple[int, ...]]:
    """Table 1's 23 configurations by registered name (``custom-cnn-3-constant-128``,
    ``custom-cnn-2-ascending`` ...) -> filters per layer."""
    names: dict[str, tuple[int, ...]] = {}
    for depth, rules in CUSTOM_CNN_TABLE.items():
        for rule, widths in rules.items():
            names[f"custom-cnn-{depth}-{rule}"] = widths
        for width in CUSTOM_CNN_CONSTANT[depth]:
            names[f"custom-cnn-{depth}-constant-{width}"] = (width,) * depth
    return names


def _table_cnn(widths: tuple[int, ...]):
    def build(cfg: ModelConfig) -> nn.Module:
        return _custom_cnn(cfg, list(widths))

    build.__doc__ = f"Study 000's custom CNN with Table 1's filters {widths} (model.custom_head_width dense units)."
    return build


for _name, _widths in custom_cnn_names().items():
    register(_name, input=InputSpec(CUSTOM_CNN_SIZE))(_table_cnn(_widths))


# ----------------------------------------------------------------------------- simple-cnn (study 002)

SIMPLE_CNN_FC = (120, 84)  # study 002: "two fully connected layers with 120 and 84 hidden units"
SIMPLE_CNN_SIZE = 64  # default input side (study 002 does not state one; our choice: fast on a CPU)
SIMPLE_CNN_GRID = 5  # side of the map flattened into the FC layers: LeNet-5's 5 x 5 (our choice; adaptive
# pooling to it keeps the FC sizes independent of the input side)
# the conv layers (out channels, kernel) of study 002's two CNNs: its Figure 1 is a picture, the text
# says neither; ours: LeNet-5's (where 120 / 84 come from) and a deeper VGG-like variant
SIMPLE_CNN_CONVS: dict[str, tuple[tuple[int, int], ...]] = {
    "simple-cnn": ((6, 5), (16, 5)),
    "simple-cnn-2": ((32, 3), (64, 3), (128, 3)),
}


class SimpleCNN(FrameModel):
    """(conv -> ReLU -> 2x2 max pool) per layer -> adaptive max pool to 5 x 5 -> flatten ->
    FC 120 -> ReLU -> FC 84 -> ReLU -> dropout -> Linear(84, 2)."""

    head_names = ("hidden", "fc")

    def __init__(self, convs: tuple[tuple[int, int], ...], num_classes: int, dropout: float) -> None:
        super().__init__(SIMPLE_CNN_FC[-1], num_classes, dropout)
        layers: list[nn.Module] = []
        channels = 3
        for width, kernel in convs:
            layers += [nn.Conv2d(channels, width, kernel, padding=kernel // 2), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        layers.append(nn.AdaptiveMaxPool2d(SIMPLE_CNN_GRID))
        self.encoder = nn.Sequential(*layers)
        first, second = SIMPLE_CNN_FC
        self.hidden = nn.Sequential(nn.Linear(channels * SIMPLE_CNN_GRID**2, first), nn.ReLU(inplace=True),
                                    nn.Linear(first, second), nn.ReLU(inplace=True))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.encoder(x).flatten(1))


def _simple_cnn(name: str):
    def build(cfg: ModelConfig) -> nn.Module:
        no_pretrained(cfg)
        return SimpleCNN(SIMPLE_CNN_CONVS[name], cfg.num_classes, cfg.dropout)

    build.__doc__ = f"Study 002's simple CNN trained from scratch ({name}: convs {SIMPLE_CNN_CONVS[name]}, FC 120, 84)."
    return build


for _name in SIMPLE_CNN_CONVS:
    register(_name, input=InputSpec(SIMPLE_CNN_SIZE))(_simple_cnn(_name))


# ----------------------------------------------------------------------------- lrcn-cnn (study 002's CNN + LSTM)

LRCN_SIZE = 80  # the 80 x 80 frames of study 002's reference [3] (harvitronix, five-video-classification-methods)
LRCN_STEM = (32, 7, 2)  # [3]'s first conv: 32 filters, 7x7, stride 2, "same" padding ...
LRCN_STEM_SECOND = (32, 3)  # ... then 32 filters 3x3 unpadded, then 2x2 max pool
LRCN_BLOCKS = (64, 128, 256, 512)  # [3]'s next blocks: two "same" 3x3 convs each, then 2x2 max pool


class LrcnCNN(FrameModel):
    """The time-distributed conv blocks of study 002's CNN + LSTM (its reference [3]'s LRCN),
    applied to one frame: -> 512 features (at 80 px the last map is 1 x 1, so [3]'s flatten is
    the global max pool used here at any side)."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__(LRCN_BLOCKS[-1], num_classes, dropout)
        width, kernel, stride = LRCN_STEM
        second, second_kernel = LRCN_STEM_SECOND
        layers: list[nn.Module] = [nn.Conv2d(3, width, kernel, stride, padding=kernel // 2), nn.ReLU(inplace=True),
                                   nn.Conv2d(width, second, second_kernel), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = second
        for width in LRCN_BLOCKS:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)).flatten(1)


@register("lrcn-cnn", input=InputSpec(LRCN_SIZE))
def lrcn_cnn(cfg: ModelConfig) -> nn.Module:
    """The conv blocks of ``cnn-lstm`` as a frame model (random init)."""
    no_pretrained(cfg)
    return LrcnCNN(cfg.num_classes, cfg.dropout)
