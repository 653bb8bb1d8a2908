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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import (
    FrameModel, download_failed, load_strict, pretrained_source, read_weights_file, register, strip_prefixes,
)
from dfdc.preprocess import InputSpec

TIMM_DIST = "timm"  # the distribution these models need at inference (pinned in requirements.txt)
OWN_PREFIXES = ("module.", "encoder.")  # DDP's wrapper and this module's attribute name
OWN_HEAD = ("fc.",)  # FrameModel's Linear head, in a dfdc checkpoint used as a weights file
BN_COUNTER = "num_batches_tracked"  # BatchNorm step counters: torchvision-era files lack them


@dataclass(frozen=True)
class TimmModel:
    """One timm backbone: ``model.tag`` names the architecture and its pretrained config."""

    name: str  # timm model name . pretrained tag
    drop: tuple[str, ...] = ()  # timm submodules that belong to the ImageNet classifier

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


def _builder(kit_name: str, spec: TimmModel) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        source = pretrained_source(cfg.pretrained)
        model = TimmClassifier(spec, cfg.num_classes, cfg.dropout, download=source == "imagenet")
        if source is not None and source != "imagenet":
            load_backbone_weights(model, read_weights_file(source), str(source))
        return model

    build.__doc__ = f"{kit_name}: timm {spec.name} + average pooling + dropout + Linear."
    return build


for _name, _spec in TIMM_MODELS.items():
    register(_name, input=timm_input(_spec), requires=(TIMM_DIST,))(_builder(_name, _spec))
