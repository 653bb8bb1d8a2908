"""Checkpoints: everything needed to rebuild a model without network access.

A checkpoint holds ``arch``, ``num_classes``, ``kind`` (``frame`` ...), ``input`` (the
``InputSpec``: side, mean, std), the state dict and the resolved config, plus what the
training loop adds (``fold``, ``epoch``, ``val_logloss``). ``export_half`` writes the fp16
copy the Kaggle bundle ships; ``load_checkpoint`` reads both; ``checkpoint_meta`` reads
everything but the weights (one memory-mapped load: the weights' bytes are not read).

A model may name parts that must stay float32 (``fp32_state``: state-dict names or
prefixes, e.g. a fitted baseline's scaler and estimator: a ``scale`` of 1e-8 is 0 in fp16):
``save_checkpoint`` records them as ``fp32``, ``export_half`` leaves them (and any entry that
overflows fp16) in float32, and ``to_half`` (the predictor's fp16 models) keeps them float32.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfdc.config import Config, ModelConfig
from dfdc.io import atomic_save_torch
from dfdc.models.registry import TORCH_LOAD_ERRORS, create_model
from dfdc.preprocess import InputSpec

CHECKPOINT_FORMAT = 2  # 2: + kind and input (side, mean, std); bump when the layout changes
FOLD_DIR = re.compile(r"fold(\d+)")  # runs/NAME/fold{k}/ as dfdc.train writes them
HALF_KEEP = ("format", "arch", "num_classes", "kind", "input", "config", "fold", "epoch", "val_logloss", "fp32")
# keys of a resume file (dfdc.train's last.pt), never of exported weights
TRAINING_STATE = re.compile(r"optim|scheduler|scaler", re.IGNORECASE)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel / compile wrappers."""
    model = model.module if hasattr(model, "module") else model
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: Path, model: nn.Module, cfg: Config, extra: dict[str, Any]) -> None:
    """Atomically save a self-contained checkpoint (``extra``: fold, epoch, val_logloss ...)."""
    plain = unwrap(model)
    state = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    spec: InputSpec = plain.input_spec
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": cfg.model.arch,
        "num_classes": cfg.model.num_classes,
        "kind": getattr(plain, "kind", "frame"),
        "input": spec.to_dict(),
        "state_dict": state,
        "config": cfg.to_dict(),
        "fp32": list(getattr(plain, "fp32_state", ())),
        **extra,
    }
    atomic_save_torch(Path(path), payload)


def _read_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, validated; ``mmap``: the tensors are mapped, their bytes read
    only when used (``checkpoint_meta`` reads a B7 checkpoint's metadata without its 250 MB)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train first (dfdc train) or fix the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"{path}: cannot be read as a dfdc checkpoint ({exc}); re-export or retrain it") from None
    if isinstance(ckpt, dict) and not {"arch", "num_classes", "state_dict"} <= set(ckpt):
        training = sorted(str(k) for k in ckpt if TRAINING_STATE.search(str(k)))
        if training:
            raise CheckpointError(f"{path}: carries training state {training}: a resume file (last.pt), not a "
                                  "model checkpoint; use the fold's best.pt")
    if not isinstance(ckpt, dict) or not {"arch", "num_classes", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a dfdc checkpoint (needs arch, num_classes, state_dict); "
                              "was it written by dfdc train / export_half?")
    return ckpt


def _meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    try:
        meta["input"] = checkpoint_input(ckpt).to_dict()
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint of {ckpt.get('arch')}: unreadable input spec {ckpt.get('input')!r} "
                              f"({type(exc).__name__}: {exc}); re-export or retrain it") from None
    return meta


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """Everything a checkpoint says but its weights (``arch``, ``kind``, ``input`` as a dict,
    ``config``, ``fold``, ``val_logloss`` ...), from one memory-mapped load: the bundle, the
    kernel's CPU plan and calibration read this instead of loading every full checkpoint."""
    return _meta(_read_checkpoint(Path(path), mmap=True))


def checkpoint_input(ckpt: dict[str, Any]) -> InputSpec:
    """The checkpoint's ``InputSpec``; format-1 checkpoints: ``train.size`` and ImageNet statistics."""
    if isinstance(ckpt.get("input"), dict):
        return InputSpec.from_dict(ckpt["input"])
    size = int(((ckpt.get("config") or {}).get("train") or {}).get("size", 0))
    if size <= 0:
        raise CheckpointError(f"checkpoint of {ckpt.get('arch')} says neither its input spec nor train.size; retrain it")
    return InputSpec(size)


def checkpoint_model_config(ckpt: dict[str, Any]) -> ModelConfig:
    """The model section a checkpoint rebuilds from (its arch, classes, backbone ...; weights
    ``none`` and no ensemble member files: the checkpoint has them). Keys of other (newer/older)
    versions are ignored."""
    saved = (ckpt.get("config") or {}).get("model") or {}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in saved.items() if k in known})
    model_cfg.arch = ckpt["arch"]
    model_cfg.num_classes = int(ckpt["num_classes"])
    model_cfg.pretrained = "none"
    model_cfg.ensemble_v1 = model_cfg.ensemble_v2 = ""  # the ensemble's members are in its own weights
    return model_cfg


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

    Returns ``(model in eval mode on device, float32, checkpoint dict without the weights)``;
    the dict's ``input`` is the model's ``InputSpec`` as a dict. Reads full and
    ``export_half`` checkpoints.
    """
    ckpt = _read_checkpoint(Path(path))
    model_cfg = checkpoint_model_config(ckpt)
    spec = checkpoint_input(ckpt)
    try:  # built at its side: a flatten head (custom-cnn) is sized by it
        model = create_model(model_cfg, spec.size)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if hasattr(model, "set_input_spec"):
        model.set_input_spec(spec)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {model_cfg.arch} ({exc})") from None
    return model.to(device).eval(), _meta(ckpt)


def _fp32(name: str, keep: Collection[str]) -> bool:
    """Whether state-dict entry ``name`` is (under) one of the ``keep`` names."""
    return any(name == k or name.startswith(k + ".") for k in keep)


def to_half(model: nn.Module) -> nn.Module:
    """``model.half()``, except the parts the model keeps in float32 (its ``fp32_state``),
    with their values as they were (not rounded through fp16)."""
    keep = tuple(getattr(model, "fp32_state", ()))
    saved = {k: v.detach().clone() for k, v in model.state_dict().items() if _fp32(k, keep)}
    model = model.half()
    for name in keep:
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        if attr in module._modules:
            module._modules[attr].float()
        elif attr in module._buffers:
            module._buffers[attr] = module._buffers[attr].float()
        else:
            module._parameters[attr].data = module._parameters[attr].data.float()
    if saved:
        model.load_state_dict(saved, strict=False)
    return model


def export_half(path_in: Path, path_out: Path) -> dict[str, Any]:
    """Write a copy of a checkpoint with fp16 weights (half the size; for the kernel bundle);
    returns the checkpoint's metadata (``checkpoint_meta``) from the same single load.

    The entries the model names ``fp32`` (its ``fp32_state``; checkpoints saved before that
    list existed have none) and those that overflow fp16 stay float32."""
    ckpt = _read_checkpoint(Path(path_in))
    keep = set(ckpt.get("fp32") or ())
    out = {k: ckpt[k] for k in HALF_KEEP if k in ckpt}
    out["input"] = checkpoint_input(ckpt).to_dict()
    out["state_dict"] = {
        k: v.half() if v.is_floating_point() and not _fp32(k, keep) and bool(torch.isfinite(v.half()).all()) else v
        for k, v in ckpt["state_dict"].items()
    }
    out["half"] = True
    atomic_save_torch(Path(path_out), out)
    return _meta(ckpt)
