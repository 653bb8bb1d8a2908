"""The model registry, the frame-classifier contract and pretrained-weight loading.

Models are built by name, timm-style::

    model = create_model(cfg.model, input_size=cfg.train.size)   # "efficientnet-b7"

A builder is a function ``(cfg: ModelConfig) -> nn.Module`` registered with
``@register("name", input=InputSpec(...), requires=("dist-name",), kind="frame")``; ``input``
is the model's default input side and the normalisation of its pretrained weights (a
callable is allowed, for specs read from a library's pretrained config); ``requires`` names
the third-party distributions (as pinned in requirements.txt) the model needs at inference,
so the Kaggle bundle ships exactly those (``model_requirements``); ``kind`` says what the
model is (``KINDS``: a frame classifier, a sequence model or a fitted baseline over a frame
backbone), registered once and read everywhere through ``model_kind`` / ``models_of_kind``.
``create_model`` gives the model its ``InputSpec`` (the default, with the side replaced by
``input_size`` when that is set) and ``model.bn_momentum`` on every BatchNorm.

The frame-classifier contract (``FrameModel``): a batch of RGB images N x 3 x H x W with
pixel values 0-255 (``uint8`` straight from ``dfdc.preprocess.prepare``, or float) ->
``normalize`` (mean/std of the weights, on the model's device) -> backbone -> pooled
features (``features``, N x D: what ``dfdc embed`` writes) -> dropout -> ``Linear(D, 2)``.
P(FAKE) = softmax(logits)[:, 1] (``fake_probability``). With ``model.head: sigmoid`` (studies
001, 003) every model has one output instead and P(FAKE) = sigmoid(logit); ``class_loss`` is
the loss of either head.

Transfer settings (study 000, ``model.trainable``): ``create_model`` calls the model's
``set_trainable``; ``FrameModel`` freezes all but the top fraction of its backbone's layers
(see ``FrameModel.backbone_layers`` for what a layer is) and keeps frozen BatchNorms in
eval mode whenever the model is put in training mode.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfdc.config import ConfigError, ModelConfig
from dfdc.preprocess import MAX_PIXEL, InputSpec

FAKE_CLASS = 1  # softmax index of FAKE (labels: REAL = 0, FAKE = 1)
SOFTMAX, SIGMOID = "softmax", "sigmoid"  # model.head: 2-way softmax + cross-entropy (study 004, the kit's
HEADS = (SOFTMAX, SIGMOID)  # default) or one output neuron, sigmoid + binary cross-entropy (studies 001, 003)
DEFAULT_INPUT = InputSpec(224)  # ImageNet's usual side and statistics
PRETRAINED_HINT = ("pass a local state dict file with --pretrained PATH "
                   "(or set model.pretrained: <path>), or train from random init with "
                   "--pretrained none (model.pretrained: none)")
# what torch.load raises on a damaged, truncated or foreign file
TORCH_LOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, struct.error)

TRAINABLE_ALL = "all"  # model.trainable: fine-tune every layer
TRAINABLE_HEAD = "head"  # model.trainable: train the classifier head only
TRAINABLE_TOP = re.compile(r"top(\d{1,3})")  # model.trainable: "top50" = the top 50 % of the layers
SAFETENSORS_SUFFIX = ".safetensors"  # weights files read with safetensors (the HF hub's format)

Builder = Callable[[ModelConfig], nn.Module]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and cannot be had."""


FRAME = "frame"  # one face crop -> logits through the model's own backbone
SEQUENCE = "sequence"  # a face track -> logits, frames read through the frame model ``model.backbone``
BASELINE = "baseline"  # one face crop -> a fitted scikit-learn pipeline over ``model.backbone``'s features
KINDS = (FRAME, SEQUENCE, BASELINE)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, its default input, what it needs at inference, its kind."""

    name: str
    builder: Builder
    input: InputSpec | Callable[[], InputSpec]
    requires: tuple[str, ...] = ()
    kind: str = FRAME
    own_backbone: str = ""  # a sequence model that brings its own frame model (cnn-lstm): its name,
    # used instead of ``model.backbone``

    @property
    def backbone(self) -> bool:
        """Reads frames through the frame model ``cfg.backbone`` (sequence models, baselines):
        its input spec and requirements are the backbone's."""
        return self.kind != FRAME

    @property
    def unit(self) -> str:
        """What one input of the model is, as checkpoints record it (``kind``) and the predictor
        reads it: a face track for sequence models, else a face crop (``"frame"``)."""
        return SEQUENCE if self.kind == SEQUENCE else FRAME

    def default_input(self, cfg: ModelConfig | None = None) -> InputSpec:
        if self.own_backbone:
            return _entry(self.own_backbone).default_input()
        if self.backbone:
            return _entry(_backbone_of(cfg).arch).default_input()
        return self.input() if callable(self.input) else self.input


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, input: InputSpec | Callable[[], InputSpec] = DEFAULT_INPUT,
             requires: tuple[str, ...] = (), kind: str = FRAME, own_backbone: str = "") -> Callable[[Builder], Builder]:
    """Decorator: register a model builder ``(ModelConfig) -> nn.Module`` under ``name``.

    ``kind`` (``KINDS``): ``frame`` for a frame classifier; ``sequence`` and ``baseline``
    models read frames through the registered frame model named by ``cfg.backbone`` (or by
    ``own_backbone``, for a model trained end to end with its own), whose default input and
    requirements they take (``input`` is ignored)."""
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, builder, input, tuple(requires), kind, own_backbone)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_kind(arch: str) -> str:
    """The registered kind of model ``arch`` (``KINDS``); an unknown name is a clear error."""
    return _entry(arch).kind


def models_of_kind(kind: str) -> list[str]:
    """The registered models of one kind, sorted (an unknown kind is an error, not an empty list)."""
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {', '.join(KINDS)}")
    return sorted(name for name, entry in _REGISTRY.items() if entry.kind == kind)


def frame_models() -> list[str]:
    """The registered frame classifiers (one crop -> logits through their own backbone): every
    model but those reading frames through ``model.backbone`` (sequence models, baselines)."""
    return models_of_kind(FRAME)


def _entry(arch: str) -> ModelEntry:
    if arch not in _REGISTRY:
        raise ValueError(f"unknown model arch {arch!r}; registered: {', '.join(list_models())} "
                         "(set model.arch, e.g. --set model.arch=efficientnet-b0)")
    return _REGISTRY[arch]


def _as_config(model: str | ModelConfig) -> ModelConfig:
    return ModelConfig(arch=model) if isinstance(model, str) else model


def _backbone_of(cfg: ModelConfig | None) -> ModelConfig:
    """The frame model a backbone-reading model wraps (``cfg.backbone``, or the model's
    ``own_backbone``), checked."""
    cfg = cfg or ModelConfig()
    own = _REGISTRY[cfg.arch].own_backbone if cfg.arch in _REGISTRY else ""
    if own:
        cfg = dataclasses.replace(cfg, backbone=own)
    entry = _entry(cfg.backbone)
    if entry.backbone:
        raise ValueError(f"model.backbone={cfg.backbone!r} reads a backbone itself; name a frame model "
                         f"(e.g. efficientnet-b0, tiny-cnn)")
    return dataclasses.replace(cfg, arch=cfg.backbone)


def model_requirements(model: str | ModelConfig) -> tuple[str, ...]:
    """Third-party distributions (requirements.txt names) the model imports at inference
    (a model over a backbone: its own and its backbone's; pass the ModelConfig for those)."""
    cfg = _as_config(model)
    entry = _entry(cfg.arch)
    if not entry.backbone:
        return entry.requires
    return tuple(dict.fromkeys(entry.requires + model_requirements(_backbone_of(cfg))))


def default_input(model: str | ModelConfig, size: int = 0) -> InputSpec:
    """The input spec ``create_model`` gives the model (an arch name, or its ModelConfig for a
    model over a backbone): its default, side ``size`` when set."""
    cfg = _as_config(model)
    return _entry(cfg.arch).default_input(cfg).with_size(size)


def output_units(cfg: ModelConfig) -> int:
    """Outputs of the classifier: ``num_classes`` for the softmax head, 1 for the sigmoid head."""
    if cfg.head not in HEADS:
        raise ConfigError(f"model.head={cfg.head!r}: use {SOFTMAX} (2-way softmax) or {SIGMOID} (one output, "
                          "binary cross-entropy)")
    return 1 if cfg.head == SIGMOID else cfg.num_classes


def _build(cfg: ModelConfig) -> nn.Module:
    """The registered builder of ``cfg.arch`` (with ``output_units`` outputs: the one place
    ``model.head`` is applied), then ``cfg.bn_momentum`` on every BatchNorm it made: the one place
    the setting is applied, for every family (a builder never sets it)."""
    model = _entry(cfg.arch).builder(dataclasses.replace(cfg, num_classes=output_units(cfg)))
    set_bn_momentum(model, cfg.bn_momentum)
    return model


def create_model(cfg: ModelConfig, input_size: int = 0) -> nn.Module:
    """Build the model named ``cfg.arch`` with ``cfg.num_classes`` outputs, its weights, its
    ``InputSpec`` (side ``input_size``, or the model's default when 0), ``cfg.bn_momentum`` on
    every BatchNorm and ``kind``: the unit it reads (``ModelEntry.unit``, what checkpoints record)."""
    entry = _entry(cfg.arch)
    fraction = trainable_fraction(cfg.trainable)  # a bad setting fails before a big model is built
    model = _build(cfg)
    model.kind = entry.unit
    if hasattr(model, "set_input_spec"):
        model.set_input_spec(entry.default_input(cfg).with_size(input_size))
    if hasattr(model, "set_trainable"):
        model.set_trainable(fraction)
    elif fraction < 1.0:
        raise ConfigError(f"model.trainable={cfg.trainable!r}: {cfg.arch} has no transfer settings; use all")
    return model


def create_backbone(cfg: ModelConfig) -> FrameModel:
    """The frame model ``cfg.backbone`` (with ``cfg.pretrained`` weights and ``cfg.bn_momentum``)
    as a feature extractor for a model that reads frames through it: without its classifier
    (``FrameModel.drop_head``; its state dict is then what the outer model's backbone holds).
    Its input spec is set by ``create_model`` of the outer model."""
    backbone = _build(_backbone_of(cfg))
    backbone.drop_head()
    return backbone


def trainable_fraction(setting: str) -> float:
    """``model.trainable`` as the fraction of backbone layers to train: all 1, head 0, topN N/100."""
    choice = str(setting).strip().lower()
    if choice == TRAINABLE_ALL:
        return 1.0
    if choice == TRAINABLE_HEAD:
        return 0.0
    match = TRAINABLE_TOP.fullmatch(choice)
    if match and 0 < int(match.group(1)) <= 100:
        return int(match.group(1)) / 100
    raise ConfigError(f"model.trainable={setting!r}: expected all, head or topN with N a percentage "
                      "(study 000: all, top50, top25, head)")


def set_bn_momentum(module: nn.Module, momentum: float) -> None:
    """``model.bn_momentum`` (PyTorch convention) on every BatchNorm inside ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(FAKE) per row: softmax over the classes, column ``FAKE_CLASS``; a single-output model
    (``model.head: sigmoid``): the sigmoid of its one logit."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits.float()[:, 0])
    return torch.softmax(logits.float(), dim=1)[:, FAKE_CLASS]


def class_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
               reduction: str = "mean") -> torch.Tensor:
    """The training loss of either head: cross-entropy over the softmax's classes, or binary
    cross-entropy on a single logit (labels 0 REAL / 1 FAKE; smoothed towards 0.5 by
    ``label_smoothing`` as cross-entropy smooths towards the uniform distribution)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        target = labels.float() * (1 - label_smoothing) + 0.5 * label_smoothing
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target, reduction=reduction)
    return nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction=reduction)


class FrameModel(nn.Module):
    """One face crop -> logits. Subclasses implement ``pooled`` (normalised images -> N x D).

    ``normalize`` maps 0-255 pixels with the weights' mean and std on the model's device and
    dtype (the buffers follow ``.to()`` / ``.half()``; they are not in the state dict: the
    checkpoint carries the ``InputSpec`` and ``dfdc.models.load_checkpoint`` sets them).
    """

    head_names: tuple[str, ...] = ("fc",)  # the classifier head's submodules (trained by every setting)

    def __init__(self, feature_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(1, 3, 1, 1), persistent=False)
        self.input_spec = DEFAULT_INPUT
        self.set_input_spec(DEFAULT_INPUT)
        self.frozen_norms: tuple[str, ...] = ()  # BatchNorms kept in eval mode (set_trainable)

    def set_input_spec(self, spec: InputSpec) -> None:
        self.input_spec = spec
        with torch.no_grad():
            self.pixel_mean.copy_(torch.tensor(spec.mean).view(1, 3, 1, 1) * MAX_PIXEL)
            self.pixel_std.copy_(torch.tensor(spec.std).view(1, 3, 1, 1) * MAX_PIXEL)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.pixel_mean.dtype)
        return (x - self.pixel_mean) / self.pixel_std

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N x ``feature_dim``) of 0-255 images."""
        return self.pooled(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))

    def drop_head(self) -> None:
        """Remove the classifier ``fc`` (the model is then a feature extractor: ``forward`` =
        dropout(``features``)). Weights that still hold it -- a whole frame model's state, a
        checkpoint written before the head was dropped -- load with its keys ignored."""
        if isinstance(self.fc, nn.Identity):
            return
        self.fc = nn.Identity()
        self.register_load_state_dict_pre_hook(_ignore_dropped_head)

    def backbone_layers(self) -> list[tuple[str, nn.Module]]:
        """The backbone's layers, input side first: every submodule that owns parameters
        itself (conv, BatchNorm, linear ...), in registration order -- the forward order for
        every model here, up to the order of parallel branches inside one block -- without
        the head (``head_names``). Parameter-free modules (activations, pooling) are no layers."""
        head = tuple(f"{name}." for name in self.head_names)
        return [(name, module) for name, module in self.named_modules()
                if name and name not in self.head_names and not name.startswith(head)
                and next(module.parameters(recurse=False), None) is not None]

    def set_trainable(self, fraction: float) -> None:
        """Train the head and the top ``fraction`` of ``backbone_layers`` (ceil of the count);
        freeze the rest (``requires_grad`` False; frozen BatchNorms stay in eval mode, so their
        running statistics stay those of the weights). 1.0 trains everything."""
        layers = self.backbone_layers()
        n_frozen = len(layers) - math.ceil(len(layers) * fraction)
        for _, layer in layers[:n_frozen]:
            for param in layer.parameters(recurse=False):
                param.requires_grad_(False)
        self.frozen_norms = tuple(name for name, layer in layers[:n_frozen]
                                  if isinstance(layer, nn.modules.batchnorm._BatchNorm))
        self.train(self.training)

    def train(self, mode: bool = True) -> FrameModel:
        super().train(mode)
        if mode:
            for name in self.frozen_norms:
                self.get_submodule(name).eval()
        return self


def _ignore_dropped_head(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook of a frame model without its head: drop the head's keys."""
    for key in [k for k in state_dict if k.startswith(f"{prefix}fc.")]:
        del state_dict[key]


# ----------------------------------------------------------------------------- pretrained weights


def strip_prefixes(raw: Any, source: str, prefixes: tuple[str, ...], drop: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A loaded weights object as a plain state dict: ``{"state_dict": ...}`` unwrapped, key
    ``prefixes`` (e.g. DDP's ``module.``) removed, keys starting with ``drop`` left out."""
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise PretrainedWeightsError(f"{source}: not a state dict of tensors; {PRETRAINED_HINT}")
    state = {}
    for key, value in raw.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith(drop):
            state[key] = value
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` strictly; a clear error listing any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        )
        raise PretrainedWeightsError(f"{source}: weights do not fit this backbone ({detail}); {PRETRAINED_HINT}")
    module.load_state_dict(state, strict=True)


def pretrained_source(pretrained: str) -> str | Path | None:
    """``None`` (random init), ``"imagenet"`` (download) or the local file to load.

    A missing local file is an error here, before any model is built."""
    choice = pretrained.strip()
    if choice.lower() in ("none", ""):
        return None
    if choice.lower() == "imagenet":
        return "imagenet"
    path = Path(choice).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} not found; {PRETRAINED_HINT}")
    return path


def read_weights_file(path: Path) -> Any:
    """A local weights file (tensors only): ``torch.load``, or safetensors for ``*.safetensors``
    (the Hugging Face hub's format, e.g. timm's ``model.safetensors``), with a clear error."""
    try:
        if Path(path).suffix == SAFETENSORS_SUFFIX:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                return load_file(str(path), device="cpu")
            except SafetensorError as exc:
                raise ValueError(str(exc)) from None
        return torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:
        raise PretrainedWeightsError(f"{path}: cannot be read as a torch state dict ({exc}); {PRETRAINED_HINT}") from None


def download_failed(what: str, exc: BaseException) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"cannot download {what} ({exc.__class__.__name__}: {exc}); offline? {PRETRAINED_HINT}")


def no_pretrained(cfg: ModelConfig) -> None:
    """For models without pretrained weights: ``pretrained`` must be ``none``."""
    if cfg.pretrained.strip().lower() not in ("none", ""):
        raise PretrainedWeightsError(
            f"{cfg.arch} has no pretrained weights; set model.pretrained: none (--pretrained none)")


class BackboneModel(nn.Module):
    """A model that reads frames through a frame model, ``self.backbone`` (registered with kind
    ``sequence`` or ``baseline``): its input spec and feature size are the backbone's. It reads
    ``backbone.features`` only, so the backbone's own classifier is dropped (``drop_head``):
    an unused trainable parameter gets no gradient, and DistributedDataParallel stops at the
    second step waiting for one. ``freeze_backbone`` stops the backbone's gradients and keeps
    it in eval mode (frozen BatchNorm statistics)."""

    def __init__(self, backbone: FrameModel) -> None:
        super().__init__()
        backbone.drop_head()  # create_backbone's have none already; any other backbone loses it here
        self.backbone = backbone
        self.frozen = False

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    @property
    def input_spec(self) -> InputSpec:
        return self.backbone.input_spec

    def set_input_spec(self, spec: InputSpec) -> None:
        self.backbone.set_input_spec(spec)

    def freeze_backbone(self) -> None:
        self.frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> BackboneModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

