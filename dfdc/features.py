"""Per-crop features of a frozen frame model, computed once and cached in a run folder (the
frozen mode of the sequence models and the classical baselines read them).

``crop_features(model, files, batch_size, device)``: every crop through the one
preprocessing path (``dfdc.preprocess.prepare`` at the model's input side) and
``model.features`` (pooled backbone features of 0-255 images) in eval mode, without
gradients -> ``float32`` n x D, rows in the order of ``files``.

``frozen_features(folder, files, model, identity, ...)``: the same, kept in ``folder``:
``features.npy``, ``index.csv`` (the crop file of each row), ``extractor.pt`` (the frozen
model's weights) and ``meta.json`` (what they were computed from: ``identity`` -- arch,
weights source, input spec -- and a fingerprint of the crop files: path, size and mtime).
A rerun with the same identity and crops reuses them and loads ``extractor.pt`` into
``model``, so the features and the model saved with every fold always agree (a randomly
initialised backbone included). Anything else is recomputed. ``meta.json`` is written last:
it is the commit point, every file atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfdc.config import warn
from dfdc.io import atomic_open, atomic_save_torch, atomic_write_csv, atomic_write_json
from dfdc.preprocess import prepare

CACHE_DIR = "features"  # <run>/features/: where a run keeps its frozen features
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.csv"
EXTRACTOR_FILE = "extractor.pt"
META_FILE = "meta.json"
CONSTANT_SPREAD = 1e-6  # features whose every dimension varies less than this over the crops say nothing
# (efficientnet-pytorch's B0 from random init in eval mode gives features of about 1e-13, measured)


def crop_features(model: nn.Module, files: Sequence[str], batch_size: int, device: str | torch.device,
                  progress: bool = True) -> np.ndarray:
    """``model.features`` of every crop file (eval mode, no gradients): float32 len(files) x D."""
    from tqdm import tqdm

    from dfdc.data import read_rgb

    size = int(model.input_spec.size)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(files), batch_size), desc="features", unit="batch",
                              disable=not progress, leave=False, file=sys.stderr):
                batch = np.stack([prepare(read_rgb(f), size) for f in files[start:start + batch_size]])
                out.append(model.features(torch.from_numpy(batch).to(device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, int(getattr(model, "feature_dim", 0))), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _fingerprint(files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def frozen_features(folder: Path, files: Sequence[str], model: nn.Module, identity: dict[str, Any],
                    batch_size: int, device: str | torch.device, progress: bool = True) -> np.ndarray:
    """``crop_features`` of ``files``, cached in ``folder`` (see the module docstring). On reuse
    ``model`` gets the cached ``extractor.pt`` weights; on a fresh computation they are saved."""
    folder = Path(folder)
    meta = {"identity": identity, "input": model.input_spec.to_dict(), "rows": len(files),
            "files": _fingerprint(files)}
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as read back from JSON
    try:
        saved = json.loads((folder / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        saved = None
    if saved == meta:
        try:
            features = np.load(folder / FEATURES_FILE)
            state = torch.load(folder / EXTRACTOR_FILE, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            if features.shape[0] == len(files):
                print(f"features: reusing {folder} ({features.shape[0]} crops x {features.shape[1]})", file=sys.stderr)
                return features
        except (OSError, ValueError, RuntimeError):
            pass  # damaged: recompute below
    (folder / META_FILE).unlink(missing_ok=True)
    features = crop_features(model, files, batch_size, device, progress)
    spread = float(features.std(axis=0).max()) if len(features) > 1 else 1.0
    if spread < CONSTANT_SPREAD:
        warn(f"the frozen features of {identity.get('arch')} (weights: {identity.get('pretrained')}) are all but "
             f"constant over {len(files)} crops (largest spread {spread:.2g}): a randomly initialised backbone in "
             "eval mode carries no signal. Give it weights (model.pretrained=imagenet or a local file), or train "
             "end to end (sequence.mode=finetune), or use baseline.features=pixels")
    with atomic_open(folder / FEATURES_FILE, "wb") as handle:
        np.save(handle, features)
    atomic_write_csv(folder / INDEX_FILE, _index(files))
    atomic_save_torch(folder / EXTRACTOR_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write_json(folder / META_FILE, meta)
    return features


def _index(files: Sequence[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({"row": np.arange(len(files)), "file": list(files)})
