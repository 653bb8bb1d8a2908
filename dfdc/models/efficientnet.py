"""EfficientNet-B0 .. B7 of efficientnet-pytorch, the seed study's backbone.

``efficientnet-bN``: ``extract_features`` -> global average pooling -> dropout -> Linear.
Weights: ``imagenet`` downloads efficientnet-pytorch's ImageNet weights when online (cached
by torch hub); a path loads a local state dict (the offline / Kaggle case); ``none`` is
random initialisation. ImageNet normalisation; the default side is the variant's native
resolution (B7: 600), which profiles override with ``train.size`` (the recipe: 240).

Padding, a deliberate choice: the encoder is ``EfficientNet.from_name(arch)`` as the seed study
used the library (``from_pretrained(arch)`` builds the same), whose TF-"same" convolutions pad
by amounts fixed for the variant's native side (``Conv2dStaticSamePadding``). At another side
the stride-2 convolutions whose native input is odd pad too little: B0 and B7 at 240 px end in a
7 x 7 map, where TF-"same" padding at 240 gives 8 x 8 (the last row and column of the 15 x 15
map before it are not read). ``from_name(arch, image_size=None)`` would pad for the actual
side (``Conv2dDynamicSamePadding``: 8 x 8) with the same state-dict keys -- so a checkpoint
trained with static padding would load without an error and silently compute another function.
We keep the seed study's static padding: every B0-B7 checkpoint trained by the kit so far, and
the study's own models, compute what they were trained to compute. (At the native side both
give the same result: measured, B0 at 224, maximum difference 0.) Changing it needs a
checkpoint field saying which padding a model was trained with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dfdc.config import ModelConfig
from dfdc.models.registry import (
    FrameModel, download_failed, load_strict, pretrained_source, read_weights_file, register, strip_prefixes,
)
from dfdc.preprocess import InputSpec

# efficientnet-pytorch's native resolution per variant (efficientnet_params)
NATIVE_SIZE = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
EFFICIENTNET_VARIANTS = tuple(f"efficientnet-b{i}" for i in NATIVE_SIZE)  # b0 .. b7


class EfficientNetClassifier(FrameModel):
    """efficientnet-pytorch features -> global average pooling -> dropout -> Linear."""

    def __init__(self, arch: str, num_classes: int, dropout: float) -> None:
        from efficientnet_pytorch import EfficientNet

        # static padding for the native side, as the seed study (module doc); model.bn_momentum is
        # set by create_model on every BatchNorm afterwards
        encoder = EfficientNet.from_name(arch)
        super().__init__(encoder._fc.in_features, num_classes, dropout)
        # The ImageNet head is replaced by ours; drop it so its 1000-way weights cost nothing.
        del encoder._fc
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool2d(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder.extract_features(x)).flatten(1)


def load_backbone_weights(encoder: nn.Module, raw: object, source: str) -> None:
    """Load efficientnet-pytorch backbone weights strictly (DDP ``module.`` and our own
    ``encoder.`` prefixes removed, any ``_fc.``/``fc.`` head left out)."""
    load_strict(encoder, strip_prefixes(raw, source, ("module.", "encoder."), ("_fc.", "fc.")), source)


def _load_pretrained(encoder: nn.Module, arch: str, pretrained: str) -> None:
    source = pretrained_source(pretrained)
    if source is None:
        return
    if source == "imagenet":
        from efficientnet_pytorch.utils import url_map

        try:
            raw = torch.hub.load_state_dict_from_url(url_map[arch], progress=False, map_location="cpu")
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise download_failed(f"the ImageNet weights of {arch}", exc) from None
        load_backbone_weights(encoder, raw, f"ImageNet weights of {arch}")
        return
    load_backbone_weights(encoder, read_weights_file(source), str(source))


def _builder(arch: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        model = EfficientNetClassifier(arch, cfg.num_classes, cfg.dropout)
        _load_pretrained(model.encoder, arch, cfg.pretrained)
        return model

    build.__doc__ = f"{arch} (efficientnet-pytorch) + average pooling + dropout + Linear."
    return build


for _variant, _size in NATIVE_SIZE.items():
    register(f"efficientnet-b{_variant}", input=InputSpec(_size), requires=("efficientnet-pytorch",))(_builder(f"efficientnet-b{_variant}"))
