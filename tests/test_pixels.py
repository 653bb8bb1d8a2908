"""dfdc.models.pixels: one weightless pixel-feature model registered as pixels and grey-pixels."""

from __future__ import annotations

import pytest
import torch

from dfdc.config import ModelConfig
from dfdc.models import PretrainedWeightsError, create_model, model_kind
from dfdc.models.pixels import GREY_PIXELS_SIDE, PIXELS_SIDE, PixelFeatures


def _model(arch: str) -> PixelFeatures:
    return create_model(ModelConfig(arch=arch, pretrained="none")).eval()


def test_one_class_registered_twice() -> None:
    rgb, grey = _model("pixels"), _model("grey-pixels")
    assert type(rgb) is type(grey) is PixelFeatures
    assert (rgb.side, rgb.grey, rgb.detrend, rgb.feature_dim) == (PIXELS_SIDE, False, False, 768)
    assert (grey.side, grey.grey, grey.detrend, grey.feature_dim) == (GREY_PIXELS_SIDE, True, True, 1024)
    assert model_kind("pixels") == model_kind("grey-pixels") == "frame"
    assert [n for n, _ in rgb.named_parameters()] == ["fc.weight", "fc.bias"]  # no weights but the head
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights"):
        create_model(ModelConfig(arch="grey-pixels", pretrained="imagenet"))


def test_pixels_are_the_area_averaged_normalised_crop() -> None:
    model = _model("pixels")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    blocks = model.normalize(x).reshape(2, 3, 16, 4, 16, 4).mean((3, 5))  # 4 x 4 blocks of a 64-px crop
    assert torch.allclose(model.features(x), blocks.flatten(1), atol=1e-5)


def test_grey_pixels_ignore_lighting_gain_offset_and_gradient() -> None:
    """The same face under another lamp: a gain, an offset and a linear gradient across it."""
    model = _model("grey-pixels")
    torch.manual_seed(0)
    face = torch.rand(1, 3, 32, 32) * 150 + 40
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    relit = 0.7 * face + 20 + 15 * xs - 10 * ys  # the same plane in every channel
    other = torch.rand(1, 3, 32, 32) * 150 + 40
    f = model.features
    assert torch.allclose(f(face), f(relit), atol=1e-4)
    assert (f(face) - f(other)).abs().max() > 0.5
    assert torch.allclose(f(face).std(1), torch.ones(1), atol=1e-4)  # standardised per image
