"""CNNs trained from random initialisation (no pretrained weights: ``model.pretrained: none``).

``tiny-cnn``: three conv-BN-ReLU-pool stages + average pooling + dropout + Linear (fast tests
and CPU experiments).

``custom-cnn`` (study 000's custom CNNs): ``model.custom_depth`` (2-5) stages of 3x3 conv
(padding 1) -> ReLU -> 2x2 max pooling; widths by ``model.custom_widths``: ``ascending``
(base, 2 base, 4 base, ...), ``descending`` (the same reversed) or ``constant`` (base), base
``model.custom_base_width``; then the small classifier head: global average pooling ->
``Linear(width, model.custom_head_width)`` -> ReLU -> dropout -> ``Linear(., 2)``. Choices
the study leaves open: 3x3 kernels, no BatchNorm (the study names conv, ReLU and pooling
only), global average pooling instead of flattening (any input side works), the default
widths (32 base, 128 hidden) and side (224).

``reseption-v1`` / ``reseption-v2`` (study 001): an Inception-V3-like stem without auxiliary
branches, then three stages of residual inception blocks separated by grid reductions,
global average pooling -> dropout -> Linear. Every conv is conv (no bias) -> BatchNorm ->
LeakyReLU(0.2). Issue 9 gives the study's description: "V1: wider branches, concatenation
then residual; V2: 1x1 reduction before large filters and 1x1 remap before the sum". The two
blocks below follow that contrast; where the description is silent we chose:

- stem: Inception-V3's (3x3/2 32, 3x3 32, 3x3 64, max pool 3x3/2, 1x1 80, 3x3 192, max
  pool 3x3/2; unpadded as in Inception-V3, so inputs need >= 75 px);
- stage widths 192 / 384 / 768 channels, ``model.reseption_blocks`` blocks per stage (2);
- "large filters": a real 5x5 convolution (not two stacked 3x3s), in both blocks;
- V1 block ("wider branches, concatenation then residual"): four branches of C/4 channels,
  each straight on the block's C-channel input, no 1x1 reduction before any filter -- 1x1;
  3x3; 5x5; 3x3 average pool -> 1x1 (the pool branch's 1x1 only sets its width, as in
  Inception's pool projection) -- concatenated back to C channels, added to the input, then
  LeakyReLU. Wide: every 3x3 and 5x5 reads all C channels (in a 768-channel block the 5x5
  alone has 3.7M weights);
- V2 block ("1x1 reduction before the large filters, 1x1 remap before the sum"): three
  branches of C/8 channels -- 1x1; 1x1 -> 3x3; 1x1 -> 5x5 (each 1x1 reduces C to C/8 before
  the larger filter) -- concatenated (3C/8), a 1x1 conv + BatchNorm (no activation) remaps
  them to C, added to the input, then LeakyReLU (as Inception-ResNet-V2, without its residual
  scaling: the remap's BatchNorm sets the scale); no pool branch (Inception-ResNet's blocks
  have none);
- reductions between stages as Inception-V3's: 3x3/2 max pool || 3x3/2 conv || 1x1 -> 3x3
  -> 3x3/2, concatenated (C_in + 2 x (C_out - C_in) / 2 channels), padded so small inputs
  never shrink to nothing;
- default input side 299 (Inception-V3's), ImageNet statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from dfdc.config import ConfigError, ModelConfig
from dfdc.models.registry import DEFAULT_INPUT, FrameModel, no_pretrained, register
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

CUSTOM_DEPTHS = (2, 5)  # study 000: custom CNNs of 2 to 5 conv layers
WIDTH_RULES = ("ascending", "descending", "constant")  # study 000's width rules


def custom_widths(depth: int, rule: str, base: int) -> list[int]:
    """Channels of each conv layer of ``custom-cnn`` (see the module doc)."""
    if not CUSTOM_DEPTHS[0] <= depth <= CUSTOM_DEPTHS[1]:
        raise ConfigError(f"model.custom_depth={depth}: custom-cnn has {CUSTOM_DEPTHS[0]}-{CUSTOM_DEPTHS[1]} conv layers")
    if base < 1:
        raise ConfigError(f"model.custom_base_width={base}: must be at least 1")
    ascending = [base * 2**i for i in range(depth)]
    widths = {"ascending": ascending, "descending": ascending[::-1], "constant": [base] * depth}
    if rule not in widths:
        raise ConfigError(f"model.custom_widths={rule!r}: use one of {', '.join(WIDTH_RULES)}")
    return widths[rule]


class CustomCNN(FrameModel):
    """``custom-cnn``: conv -> ReLU -> max pool stages, pooling, a hidden dense layer, the head."""

    head_names = ("hidden", "fc")

    def __init__(self, widths: list[int], head_width: int, num_classes: int, dropout: float) -> None:
        super().__init__(head_width, num_classes, dropout)
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Sequential(nn.Linear(channels, head_width), nn.ReLU(inplace=True))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.pool(self.encoder(x)).flatten(1))


@register("custom-cnn", input=DEFAULT_INPUT)
def custom_cnn(cfg: ModelConfig) -> nn.Module:
    """Study 000's custom CNN: ``model.custom_depth`` / ``custom_widths`` / ``custom_base_width``."""
    no_pretrained(cfg)
    widths = custom_widths(cfg.custom_depth, cfg.custom_widths, cfg.custom_base_width)
    if cfg.custom_head_width < 1:
        raise ConfigError(f"model.custom_head_width={cfg.custom_head_width}: must be at least 1")
    return CustomCNN(widths, cfg.custom_head_width, cfg.num_classes, cfg.dropout)


# ----------------------------------------------------------------------------- reseption (study 001)

RESEPTION_SLOPE = 0.2  # study 001: LeakyReLU 0.2
RESEPTION_SIZE = 299  # Inception-V3's input side (the stem is Inception-V3's)
# Inception-V3's stem: (out channels, kernel, stride, padding), max pools marked "pool"
RESEPTION_STEM = ((32, 3, 2, 0), (32, 3, 1, 0), (64, 3, 1, 1), "pool", (80, 1, 1, 0), (192, 3, 1, 0), "pool")
RESEPTION_WIDTHS = (192, 384, 768)  # channels of the three stages (our choice: the stem's 192, doubled twice)
V1_BRANCHES = 4  # V1: four branches of C/4 channels, concatenated back to C (our choice)
V2_REDUCTION = 8  # V2: branches of C/8 channels after their 1x1 reductions (our choice)
LARGE_FILTER = 5  # the blocks' "large filter": a 5x5 conv (our choice of size)


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int | None = None,
                act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> LeakyReLU(0.2) ("same" padding unless given)."""
    pad = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.LeakyReLU(RESEPTION_SLOPE, inplace=True))
    return nn.Sequential(*layers)


class ReseptionV1Block(nn.Module):
    """Four wide branches straight on the input (1x1; 3x3; 5x5; pool-1x1), concatenated, + input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        w = channels // V1_BRANCHES
        self.branches = nn.ModuleList([
            conv_bn_act(channels, w, 1),
            conv_bn_act(channels, w, 3),
            conv_bn_act(channels, w, LARGE_FILTER),
            nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv_bn_act(channels, channels - 3 * w, 1)),
        ])
        self.act = nn.LeakyReLU(RESEPTION_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + torch.cat([branch(x) for branch in self.branches], dim=1))


class ReseptionV2Block(nn.Module):
    """Three branches after 1x1 reductions (1x1; 1x1-3x3; 1x1-5x5), concatenated, 1x1 remap to C, + input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        r = max(1, channels // V2_REDUCTION)
        self.branches = nn.ModuleList([
            conv_bn_act(channels, r, 1),
            nn.Sequential(conv_bn_act(channels, r, 1), conv_bn_act(r, r, 3)),
            nn.Sequential(conv_bn_act(channels, r, 1), conv_bn_act(r, r, LARGE_FILTER)),
        ])
        self.remap = conv_bn_act(3 * r, channels, 1, act=False)
        self.act = nn.LeakyReLU(RESEPTION_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.remap(torch.cat([branch(x) for branch in self.branches], dim=1)))


class GridReduction(nn.Module):
    """Inception-V3's reduction: max pool || 3x3/2 conv || 1x1-3x3-3x3/2, concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        grow = (c_out - c_in) // 2
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv = conv_bn_act(c_in, grow, 3, 2)
        self.tower = nn.Sequential(conv_bn_act(c_in, grow // 2, 1), conv_bn_act(grow // 2, grow // 2, 3),
                                   conv_bn_act(grow // 2, c_out - c_in - grow, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pool(x), self.conv(x), self.tower(x)], dim=1)


class Reseption(FrameModel):
    """Inception-V3 stem -> 3 stages of residual inception blocks -> pooling -> dropout -> Linear."""

    def __init__(self, block: type[nn.Module], blocks: int, num_classes: int, dropout: float) -> None:
        super().__init__(RESEPTION_WIDTHS[-1], num_classes, dropout)
        layers: list[nn.Module] = []
        channels = 3
        for item in RESEPTION_STEM:
            if item == "pool":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                out, kernel, stride, padding = item
                layers.append(conv_bn_act(channels, out, kernel, stride, padding))
                channels = out
        for stage, width in enumerate(RESEPTION_WIDTHS):
            if stage:
                layers.append(GridReduction(channels, width))
                channels = width
            layers += [block(channels) for _ in range(blocks)]
        self.encoder = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)).flatten(1)


def _reseption(block: type[nn.Module]):
    def build(cfg: ModelConfig) -> nn.Module:
        no_pretrained(cfg)
        if cfg.reseption_blocks < 1:
            raise ConfigError(f"model.reseption_blocks={cfg.reseption_blocks}: must be at least 1")
        return Reseption(block, cfg.reseption_blocks, cfg.num_classes, cfg.dropout)

    build.__doc__ = f"Study 001's Reseption with {block.__name__} blocks (see the module doc)."
    return build


register("reseption-v1", input=InputSpec(RESEPTION_SIZE))(_reseption(ReseptionV1Block))
register("reseption-v2", input=InputSpec(RESEPTION_SIZE))(_reseption(ReseptionV2Block))
