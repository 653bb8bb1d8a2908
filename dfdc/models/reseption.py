"""Study 001's Reseption V1 and V2 and their ensemble (random init: ``model.pretrained: none``).

What study 001 states (chapter 6, 7.1): Inception-V3's structure without its auxiliary
branch -- a stem "almost identical" to Inception-V3's whose V1 and V2 versions differ "near
the output of the stem"; A modules on the 35x35 grid, reduction A, B modules on 17x17,
reduction B, C modules on 8x8 -- with "a smaller number of filter banks" than Inception-V3
and a residual connection around every A/B/C module. V1: more filters per branch and "simple
filter concatenation before being combined with the residuals" (no 1x1 remap); V2: "more
significant dimension reduction prior to the larger filters" and a 1x1 remap "prior to
summation with the input identity". Reduction A: Inception-V3's with filter bank m = 224
(V1) or 336 (V2); reduction B: Inception-V3's with filter banks (a, b, c, d, e, f) =
(192, 320, 192, 192, 256, 320) (V1) or (256, 392, 256, 256, 320, 392) (V2). Every conv is
Inception's BasicConv2d (conv without bias -> BatchNorm) with LeakyReLU(0.2); weights Xavier
normal with the LeakyReLU gain sqrt(2 / (1 + 0.2^2)); input 299 x 299; a single output
neuron with binary cross-entropy (``model.head: sigmoid`` in ``profiles/reseption.yaml``);
16.89 M (V1) and 15.75 M (V2) parameters (THOP, Table 7.1).

What it does not state (its block figures 6.2-6.11 are pictures; the text has only their
captions), and our choice: the filter counts inside the stem and the A/B/C modules, the
number of modules per grid (Inception-V3's 3 A, 4 B, 2 C), which convs of reduction A carry m
(the 3x3/2 branch, Inception-V3's 384) and the letters of reduction B (a: 1x1, b: 3x3/2 of the
3x3 branch; c: 1x1, d: 1x7, e: 7x1, f: 3x3/2 of the 7x7 branch, in Inception-V3's order).
The counts below are Inception-V3's modules with fewer filters, chosen so that the totals
land within 3 % of Table 7.1's: 16,872,993 (V1) and 15,628,161 (V2) with one output
(tests/test_study_models.py counts them). The stems differ in
their last conv: 192 filters (V1, Inception-V3's) and 160 (V2). Dropout before the classifier
(``model.dropout``) is Inception-V3's; the study does not name one.

``reseption-ensemble`` (7.1.7): both networks without their classifiers, each followed by a
fully connected layer of 512 units, their 1024 features -> the classifier (34 M in Table 7.1;
ours 33,795,009).
The study trained only those layers on the two trained networks: pass their checkpoints as
``model.ensemble_v1`` / ``model.ensemble_v2`` (then only the new layers train), or leave them
empty to train the whole ensemble from random init; ``model.trainable: head`` trains the two
512-unit layers and the classifier only, as the study (``head_names``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dfdc.config import ConfigError, ModelConfig
from dfdc.models.registry import FrameModel, no_pretrained, register
from dfdc.preprocess import InputSpec

RESEPTION_SLOPE = 0.2  # study 001: LeakyReLU with a negative slope of 0.2
RESEPTION_SIZE = 299  # study 001, Table 7.1: input 299 x 299
ENSEMBLE_FEATURES = 512  # study 001, 7.1.7: each network contributes 512 features to the classifier
BLOCKS = (3, 4, 2)  # A, B, C modules per grid: Inception-V3's (study 001 does not give them)

# Inception-V3's stem (out channels, kernel, stride, padding), max pools marked "pool"; the last conv
# is where V1 and V2 differ ("near the output of the stem"; the widths are ours)
STEM_HEAD = ((32, 3, 2, 0), (32, 3, 1, 0), (64, 3, 1, 1), "pool", (80, 1, 1, 0))
STEM_OUT = {"v1": 192, "v2": 160}

# per version, our filter counts (see the module doc):
# A: (1x1, 5x5 reduce, 5x5, 3x3dbl reduce, 3x3dbl, pool 1x1)
# B: (1x1, 7x7 width c7, 7x7 out, 7x7dbl out, pool 1x1)
# C: (1x1, 3x3 reduce, 3x3 split out, 3x3dbl reduce, 3x3dbl mid, 3x3dbl split out, pool 1x1)
A_WIDTHS = {"v1": (48, 32, 48, 48, 64, 32), "v2": (32, 24, 32, 24, 32, 32)}
B_WIDTHS = {"v1": (128, 176, 128, 128, 128), "v2": (128, 96, 128, 128, 128)}
C_WIDTHS = {"v1": (192, 384, 192, 448, 384, 192, 192), "v2": (192, 192, 192, 256, 192, 192, 192)}
REDUCTION_A_M = {"v1": 224, "v2": 336}  # study 001, Figure 6.10
REDUCTION_A_TOWER = (64, 96, 96)  # Inception-V3's 1x1 -> 3x3 -> 3x3/2 tower of reduction A
REDUCTION_B = {"v1": (192, 320, 192, 192, 256, 320), "v2": (256, 392, 256, 256, 320, 392)}  # Figure 6.11


def basic_conv(c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
               padding: int | tuple[int, int] | None = None, act: bool = True) -> nn.Sequential:
    """Inception's BasicConv2d: conv (no bias) -> BatchNorm -> LeakyReLU(0.2); "same" padding
    unless given."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (k[0] // 2, k[1] // 2) if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.LeakyReLU(RESEPTION_SLOPE, inplace=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """A module's branches, concatenated, (V2: a 1x1 conv + BatchNorm remap to the input's width)
    added to the input, then LeakyReLU."""

    def __init__(self, branches: list[nn.Module], channels: int, concat: int, remap: bool) -> None:
        super().__init__()
        if not remap and concat != channels:
            raise ValueError(f"a V1 module concatenates back to its input width: {concat} != {channels}")
        self.branches = nn.ModuleList(branches)
        self.remap = basic_conv(concat, channels, 1, act=False) if remap else nn.Identity()
        self.act = nn.LeakyReLU(RESEPTION_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.remap(torch.cat([branch(x) for branch in self.branches], dim=1)))


class Split(nn.Module):
    """Inception-V3's split 1x3 || 3x1 on one input, concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a, self.b = basic_conv(c_in, c_out, (1, 3)), basic_conv(c_in, c_out, (3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def _pool_branch(c: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), basic_conv(c, width, 1))


def block_a(c: int, version: str) -> Residual:
    """Inception-V3's A module (35x35) with fewer filters, residual."""
    w1, r5, w5, r3, w3, wp = A_WIDTHS[version]
    branches = [basic_conv(c, w1, 1), nn.Sequential(basic_conv(c, r5, 1), basic_conv(r5, w5, 5)),
                nn.Sequential(basic_conv(c, r3, 1), basic_conv(r3, w3, 3), basic_conv(w3, w3, 3)), _pool_branch(c, wp)]
    return Residual(branches, c, w1 + w5 + w3 + wp, remap=version == "v2")


def block_b(c: int, version: str) -> Residual:
    """Inception-V3's B module (17x17: factorised 7x7) with fewer filters, residual."""
    w1, c7, w7, w7d, wp = B_WIDTHS[version]
    branches = [basic_conv(c, w1, 1),
                nn.Sequential(basic_conv(c, c7, 1), basic_conv(c7, c7, (1, 7)), basic_conv(c7, w7, (7, 1))),
                nn.Sequential(basic_conv(c, c7, 1), basic_conv(c7, c7, (7, 1)), basic_conv(c7, c7, (1, 7)),
                              basic_conv(c7, c7, (7, 1)), basic_conv(c7, w7d, (1, 7))),
                _pool_branch(c, wp)]
    return Residual(branches, c, w1 + w7 + w7d + wp, remap=version == "v2")


def block_c(c: int, version: str) -> Residual:
    """Inception-V3's C module (8x8: split 1x3 || 3x1) with fewer filters, residual."""
    w1, r3, s3, rd, md, sd, wp = C_WIDTHS[version]
    branches = [basic_conv(c, w1, 1), nn.Sequential(basic_conv(c, r3, 1), Split(r3, s3)),
                nn.Sequential(basic_conv(c, rd, 1), basic_conv(rd, md, 3), Split(md, sd)), _pool_branch(c, wp)]
    return Residual(branches, c, w1 + 2 * s3 + 2 * sd + wp, remap=version == "v2")


class Reduction(nn.Module):
    """Inception-V3's grid reductions: 3x3/2 max pool || conv towers ending in a stride 2, concatenated."""

    def __init__(self, towers: list[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2)
        self.towers = nn.ModuleList(towers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pool(x), *(tower(x) for tower in self.towers)], dim=1)


def reduction_a(c: int, m: int) -> tuple[Reduction, int]:
    """Reduction A (35 -> 17): a 3x3/2 conv of ``m`` filters || Inception-V3's 1x1-3x3-3x3/2 tower."""
    t1, t2, t3 = REDUCTION_A_TOWER
    towers = [basic_conv(c, m, 3, 2, 0),
              nn.Sequential(basic_conv(c, t1, 1), basic_conv(t1, t2, 3), basic_conv(t2, t3, 3, 2, 0))]
    return Reduction(towers), c + m + t3


def reduction_b(c: int, widths: tuple[int, ...]) -> tuple[Reduction, int]:
    """Reduction B (17 -> 8): 1x1 a -> 3x3/2 b || 1x1 c -> 1x7 d -> 7x1 e -> 3x3/2 f."""
    a, b, cc, d, e, f = widths
    towers = [nn.Sequential(basic_conv(c, a, 1), basic_conv(a, b, 3, 2, 0)),
              nn.Sequential(basic_conv(c, cc, 1), basic_conv(cc, d, (1, 7)), basic_conv(d, e, (7, 1)),
                            basic_conv(e, f, 3, 2, 0))]
    return Reduction(towers), c + b + f


def xavier_init(module: nn.Module) -> None:
    """Study 001, 7.1.1: Xavier normal weights with the LeakyReLU(0.2) gain; BatchNorm 1 / 0, biases 0."""
    gain = nn.init.calculate_gain("leaky_relu", RESEPTION_SLOPE)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Reseption(FrameModel):
    """Stem -> 3 A -> reduction A -> 4 B -> reduction B -> 2 C -> average pooling -> dropout -> Linear."""

    def __init__(self, version: str, num_classes: int, dropout: float) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for item in (*STEM_HEAD, (STEM_OUT[version], 3, 1, 0), "pool"):
            if item == "pool":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                out, kernel, stride, padding = item
                layers.append(basic_conv(channels, out, kernel, stride, padding))
                channels = out
        layers += [block_a(channels, version) for _ in range(BLOCKS[0])]
        red_a, channels = reduction_a(channels, REDUCTION_A_M[version])
        layers += [red_a, *(block_b(channels, version) for _ in range(BLOCKS[1]))]
        red_b, channels = reduction_b(channels, REDUCTION_B[version])
        layers += [red_b, *(block_c(channels, version) for _ in range(BLOCKS[2]))]
        super().__init__(channels, num_classes, dropout)
        self.version = version
        self.encoder = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        xavier_init(self)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)).flatten(1)


def _reseption(version: str):
    def build(cfg: ModelConfig) -> nn.Module:
        no_pretrained(cfg)
        return Reseption(version, cfg.num_classes, cfg.dropout)

    build.__doc__ = f"Study 001's Reseption {version.upper()} (see the module doc)."
    return build


register("reseption-v1", input=InputSpec(RESEPTION_SIZE))(_reseption("v1"))
register("reseption-v2", input=InputSpec(RESEPTION_SIZE))(_reseption("v2"))


class ReseptionEnsemble(FrameModel):
    """Reseption V1 and V2 without classifiers -> a 512-unit fully connected layer each ->
    their 1024 features -> dropout -> the classifier (study 001, 7.1.7)."""

    head_names = ("proj_v1", "proj_v2", "fc")

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__(2 * ENSEMBLE_FEATURES, num_classes, dropout)
        self.v1, self.v2 = Reseption("v1", num_classes, dropout), Reseption("v2", num_classes, dropout)
        self.v1.drop_head()
        self.v2.drop_head()
        self.proj_v1 = nn.Linear(self.v1.feature_dim, ENSEMBLE_FEATURES)
        self.proj_v2 = nn.Linear(self.v2.feature_dim, ENSEMBLE_FEATURES)
        xavier_init(self.proj_v1)
        xavier_init(self.proj_v2)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.proj_v1(self.v1.pooled(x)), self.proj_v2(self.v2.pooled(x))], dim=1)

    def load_members(self, v1: str, v2: str) -> None:
        """The trained networks' weights (their ``best.pt``); then only the new layers train."""
        from dfdc.models.checkpoint import CheckpointError, load_checkpoint

        for path, member, arch in ((v1, self.v1, "reseption-v1"), (v2, self.v2, "reseption-v2")):
            trained, meta = load_checkpoint(Path(path))
            if meta["arch"] != arch:
                raise CheckpointError(f"{path}: a {meta['arch']} checkpoint, expected {arch} "
                                      f"(model.ensemble_v1 / ensemble_v2)")
            member.load_state_dict(trained.state_dict())


@register("reseption-ensemble", input=InputSpec(RESEPTION_SIZE))
def reseption_ensemble(cfg: ModelConfig) -> nn.Module:
    """Study 001's ensemble of Reseption V1 and V2 (``model.ensemble_v1`` / ``ensemble_v2``: their checkpoints)."""
    no_pretrained(cfg)
    model = ReseptionEnsemble(cfg.num_classes, cfg.dropout)
    if bool(cfg.ensemble_v1) != bool(cfg.ensemble_v2):
        raise ConfigError("model.ensemble_v1 and model.ensemble_v2: give both trained checkpoints, or neither")
    if cfg.ensemble_v1:
        model.load_members(cfg.ensemble_v1, cfg.ensemble_v2)
    return model
