"""Backbone registry, classifier heads, pretrained weights and checkpoints.

Models are built by name, timm-style::

    model = create_model(cfg.model)          # cfg.model.arch = "efficientnet-b7"

A builder is any function ``(cfg: ModelConfig) -> nn.Module`` decorated with
``@register("name")``; every model maps a batch of RGB images (N x 3 x H x W, ImageNet
normalised) to ``num_classes`` logits. P(FAKE) = softmax(logits)[:, 1] (``fake_probability``).

Registered: ``efficientnet-b0`` .. ``efficientnet-b7`` (efficientnet-pytorch backbone,
``extract_features`` -> global average pooling -> dropout -> Linear) and ``tiny-cnn`` (a
small CNN for fast tests and CPU experiments).

Pretrained weights (``ModelConfig.pretrained``): ``imagenet`` downloads efficientnet-pytorch's
ImageNet weights when online (cached by torch hub); a path loads a local state dict (the
offline / Kaggle case); ``none`` is random initialisation.

Checkpoints (``save_checkpoint`` / ``load_checkpoint``) hold everything needed to rebuild the
model without network access: arch, num_classes, the state dict and the resolved config.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfdc.config import Config, ModelConfig

FOLD_DIR = re.compile(r"fold(\d+)")  # runs/NAME/fold{k}/ as dfdc.train writes them
from dfdc.io import atomic_save_torch

FAKE_CLASS = 1  # softmax index of FAKE (labels: REAL = 0, FAKE = 1)
CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes

# what torch.load raises on a damaged, truncated or foreign file
TORCH_LOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, struct.error)

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {}


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and cannot be had."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit."""


def register(name: str) -> Callable[[Callable[[ModelConfig], nn.Module]], Callable[[ModelConfig], nn.Module]]:
    """Decorator: register a model builder ``(ModelConfig) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the model named ``cfg.arch`` with ``cfg.num_classes`` outputs and its weights."""
    if cfg.arch not in _REGISTRY:
        raise ValueError(f"unknown model arch {cfg.arch!r}; registered: {', '.join(list_models())} "
                         "(set model.arch, e.g. --set model.arch=efficientnet-b0)")
    return _REGISTRY[cfg.arch](cfg)


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(FAKE) per row: softmax over the classes, column ``FAKE_CLASS``."""
    return torch.softmax(logits.float(), dim=1)[:, FAKE_CLASS]


# ----------------------------------------------------------------------------- EfficientNet

_PRETRAINED_HINT = ("pass a local state dict file with --pretrained PATH "
                    "(or set model.pretrained: <path>), or train from random init with "
                    "--pretrained none (model.pretrained: none)")


class EfficientNetClassifier(nn.Module):
    """efficientnet-pytorch features -> global average pooling -> dropout -> Linear."""

    def __init__(self, arch: str, num_classes: int, dropout: float, bn_momentum: float) -> None:
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        # efficientnet-pytorch takes TF's decay convention: decay = 1 - PyTorch momentum
        self.encoder = EfficientNet.from_name(arch, batch_norm_momentum=1.0 - bn_momentum)
        features = self.encoder._fc.in_features
        # The ImageNet head is replaced by ours; drop it so its 1000-way weights cost nothing.
        del self.encoder._fc
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.encoder.extract_features(x)).flatten(1)
        return self.fc(self.dropout(x))


def _backbone_state_dict(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """Normalise a loaded weights object to efficientnet-pytorch's own key names."""
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise PretrainedWeightsError(f"{source}: not a state dict of tensors; {_PRETRAINED_HINT}")
    state = {}
    for key, value in raw.items():
        for prefix in ("module.", "encoder."):  # DDP-wrapped or our own classifier's keys
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    # The 1000-way ImageNet head (or our own head) is not part of the backbone.
    return {k: v for k, v in state.items() if not k.startswith("_fc.") and not k.startswith("fc.")}


def load_backbone_weights(encoder: nn.Module, raw: Any, source: str) -> None:
    """Load efficientnet-pytorch backbone weights strictly; clear error on any mismatch."""
    state = _backbone_state_dict(raw, source)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        )
        raise PretrainedWeightsError(f"{source}: weights do not fit this backbone ({detail}); {_PRETRAINED_HINT}")
    encoder.load_state_dict(state, strict=True)


def _load_pretrained(encoder: nn.Module, arch: str, pretrained: str) -> None:
    choice = pretrained.strip()
    if choice.lower() in ("none", ""):
        return
    if choice.lower() == "imagenet":
        from efficientnet_pytorch.utils import url_map

        try:
            raw = torch.hub.load_state_dict_from_url(url_map[arch], progress=False, map_location="cpu")
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise PretrainedWeightsError(
                f"cannot download the ImageNet weights of {arch} ({exc.__class__.__name__}: {exc}); "
                f"offline? {_PRETRAINED_HINT}") from None
        load_backbone_weights(encoder, raw, f"ImageNet weights of {arch}")
        return
    path = Path(choice).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} not found; {_PRETRAINED_HINT}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:
        raise PretrainedWeightsError(f"{path}: cannot be read as a torch state dict ({exc}); {_PRETRAINED_HINT}") from None
    load_backbone_weights(encoder, raw, str(path))


def _efficientnet_builder(arch: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        model = EfficientNetClassifier(arch, cfg.num_classes, cfg.dropout, cfg.bn_momentum)
        _load_pretrained(model.encoder, arch, cfg.pretrained)
        return model

    build.__doc__ = f"{arch} (efficientnet-pytorch) + average pooling + dropout + Linear."
    return build


EFFICIENTNET_VARIANTS = tuple(f"efficientnet-b{i}" for i in range(8))  # b0 .. b7 of efficientnet-pytorch
for _arch in EFFICIENTNET_VARIANTS:
    register(_arch)(_efficientnet_builder(_arch))


# ----------------------------------------------------------------------------- tiny CNN

TINY_CNN_WIDTHS = (16, 32, 64)  # channels of the three conv stages: ~25k weights, fast on a CPU


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU-pool stages + average pooling + dropout + Linear (tests, CPU runs)."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in TINY_CNN_WIDTHS:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@register("tiny-cnn")
def tiny_cnn(cfg: ModelConfig) -> nn.Module:
    """A small CNN from random init (``pretrained`` must be ``none``)."""
    if cfg.pretrained.strip().lower() not in ("none", ""):
        raise PretrainedWeightsError("tiny-cnn has no pretrained weights; set model.pretrained: none (--pretrained none)")
    return TinyCNN(cfg.num_classes, cfg.dropout)


# ----------------------------------------------------------------------------- checkpoints


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, model: nn.Module, cfg: Config, extra: dict[str, Any]) -> None:
    """Atomically save a self-contained checkpoint.

    Holds ``arch``, ``num_classes``, ``state_dict``, the resolved ``config`` dict and
    ``extra`` (the training loop passes ``fold``, ``epoch``, ``val_logloss``).
    """
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": cfg.model.arch,
        "num_classes": cfg.model.num_classes,
        "state_dict": state,
        "config": cfg.to_dict(),
        **extra,
    }
    atomic_save_torch(Path(path), payload)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train first (dfdc train) or fix the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"{path}: cannot be read as a dfdc checkpoint ({exc}); re-export or retrain it") from None
    if not isinstance(ckpt, dict) or not {"arch", "num_classes", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a dfdc checkpoint (needs arch, num_classes, state_dict); "
                              "was it written by dfdc train / export_half?")
    return ckpt


def fold_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(fold, path)`` of every ``fold{k}/best.pt`` of a training run, by fold number
    (the one definition the predictor and the kernel bundle share)."""
    found = []
    for path in Path(run_dir).glob("fold*/best.pt"):
        match = FOLD_DIR.fullmatch(path.parent.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone (no network, no pretrained weights).

    Returns ``(model in eval mode on device, float32, checkpoint dict without the weights)``.
    Reads both full and ``export_half`` checkpoints.
    """
    ckpt = _read_checkpoint(Path(path))
    saved = (ckpt.get("config") or {}).get("model") or {}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    # only the model section matters here; keys of other (or newer/older) versions are ignored
    model_cfg = ModelConfig(**{k: v for k, v in saved.items() if k in known})
    model_cfg.arch = ckpt["arch"]
    model_cfg.num_classes = int(ckpt["num_classes"])
    model_cfg.pretrained = "none"  # the checkpoint has the weights
    model = create_model(model_cfg)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {model_cfg.arch} ({exc})") from None
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def export_half(path_in: Path, path_out: Path) -> None:
    """Write a copy of a checkpoint with fp16 weights (half the size; for the kernel bundle)."""
    ckpt = _read_checkpoint(Path(path_in))
    keep = ("format", "arch", "num_classes", "config", "fold", "epoch", "val_logloss")
    out = {k: ckpt[k] for k in keep if k in ckpt}
    out["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    out["half"] = True
    atomic_save_torch(Path(path_out), out)
