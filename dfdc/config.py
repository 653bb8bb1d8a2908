"""One configuration object for every stage, loaded from a named profile.

A profile is a YAML file under ``dfdc/profiles/`` (or any path) holding a partial
mapping that is deep-merged over the dataclass defaults below. CLI flags and
``--set section.key=value`` overrides are applied last. Every run writes its resolved
configuration beside its outputs (``save_config``).

Every constant of the recipe lives here as a named field with a comment saying where it
comes from; stage code reads them from the config and never repeats the numbers.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfdc.io import atomic_write_text

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "b7"


@dataclass
class SynthConfig:
    """The built-in mini DFDC (``dfdc synth``)."""

    videos: int = 48  # training videos in all (REAL + FAKE); about 1 real : 5 fakes as in DFDC
    test_videos: int = 24  # held-out videos with identities unseen in training
    parts: int = 2  # dfdc_train_part_N folders
    fakes_per_real: int = 5  # DFDC ships about 100k FAKE for 19k REAL videos
    width: int = 320
    height: int = 240  # DFDC's smallest resolution is 320x240
    seconds: float = 2.0
    fps: int = 15  # DFDC videos run at 15-30 fps
    seed: int = 0


@dataclass
class FacesConfig:
    """Face detection and the class-balanced crop dataset (``dfdc faces``)."""

    margin: float = 0.6  # new side = side * (1 + margin); seed study and DFDC preview paper: 0.5-0.7
    margin_recommended: tuple[float, float] = (0.5, 0.7)  # outside this range: warning, not error
    size: int = 240  # crop side in px; the seed study used about 240 x 240
    frames_real: int = 40  # frames sampled per REAL video (seed recipe, balances DFDC's ~5:1)
    frames_fake: int = 8  # frames sampled per FAKE video (seed recipe)
    max_faces: int = 2  # faces kept per frame, most confident first (DFDC has 1-2 people)
    detect_short_side: int = 270  # frames are downscaled so their short side is about this
    # (MTCNN at 480x270 still finds a 512-px face and runs ~30x faster than at 1080p)
    min_face_size: int = 20  # MTCNN min_face_size at detection scale (facenet-pytorch default 20)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN P/R/O-net thresholds (library default)
    min_prob: float = 0.9  # detections below this confidence are dropped
    detect_batch: int = 16  # frames per batched MTCNN call
    same_face_tolerance: float = 2.0  # mean abs pixel difference (0-255) under which a FAKE crop
    # equals its original's crop: not a manipulated face (audio-only or other-person fakes)
    workers: int = 1  # worker processes over videos
    image_format: str = "png"  # lossless, so label cleaning and training see the true pixels


@dataclass
class FoldsConfig:
    """Cross-validation folds (``dfdc folds``)."""

    n_folds: int = 5
    group_by: str = "original"  # "original": a fake stays with its source video; "part": whole part folders
    seed: int = 42


@dataclass
class ModelConfig:
    """Model construction (``dfdc.models``)."""

    arch: str = "efficientnet-b7"  # the seed study's backbone
    pretrained: str = "imagenet"  # "imagenet" (download when online), "none", or a path to a state dict
    dropout: float = 0.5
    num_classes: int = 2  # softmax over REAL/FAKE; P(FAKE) = softmax[:, 1]


@dataclass
class TrainConfig:
    """Training per fold (``dfdc train``)."""

    size: int = 240  # network input side; the seed study trained B7 at about 240 px
    epochs: int = 30
    batch_size: int = 12  # per GPU for B7 at 240 px
    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 2e-4
    weight_decay: float = 1e-2
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0  # the 1st place used 0.01
    grad_clip: float = 1.0
    amp: str = "bf16"  # "bf16", "fp16" or "none"; CUDA only, CPU runs in fp32
    loader_workers: int = 4
    patience: int = 5  # early stopping on video-level validation log loss
    val_clip: float = 0.01  # clip of video predictions in the validation log loss
    max_steps_per_epoch: int = 0  # 0 = a whole balanced epoch
    folds: str = "all"  # "all" or a comma list such as "0,1"
    seed: int = 1234
    runs_dir: str = "runs"
    name: str = "b7"


@dataclass
class PredictConfig:
    """Per-video inference (``dfdc predict``) and the Kaggle kernel."""

    frames: int = 32  # evenly spaced frames per video, as the 1st place
    batch_size: int = 32  # face crops per model forward
    tta_flip: bool = False
    aggregation: str = "confident"  # "mean" or "confident" (1st place)
    confident_threshold: float = 0.8  # a face is confidently fake above this P(FAKE)
    confident_min_fraction: float = 0.11  # ... and "enough" confident faces is this fraction
    clip: float = 0.01  # predictions clipped to [clip, 1 - clip] (NTech used 0.01)
    temperature: float = 1.0
    fallback: float = 0.5  # any failed video gets this value (log loss 0.693 at worst)
    time_budget: float = 0.0  # seconds; 0 = no limit; the kernel sets a margin under 9 h
    workers: int = 2  # decode + detect processes overlapped with the model
    fp16: bool = True  # half-precision models on CUDA


@dataclass
class KernelConfig:
    """Kaggle kernel bundle (``dfdc kernel``)."""

    slug: str = "dfdc-kit-inference"
    dataset_slug: str = "dfdc-kit-models"
    competition: str = "deepfake-detection-challenge"
    max_weights_bytes: int = 1_000_000_000  # "models had to fit in 1 GB"
    time_budget: float = 8.5 * 3600  # the 9 h limit less a safety margin
    private: bool = True


@dataclass
class Config:
    profile: str = DEFAULT_PROFILE
    synth: SynthConfig = field(default_factory=SynthConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


class ConfigError(ValueError):
    """A profile or override that does not fit the configuration."""


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(current: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to the type of the default ``current``."""
    if isinstance(current, bool):
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return bool(value)
    if isinstance(current, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(items) != len(current):
            raise ConfigError(f"{where}: expected {len(current)} values, got {value!r}")
        return tuple(_coerce(c, v, where) for c, v in zip(current, items))
    try:
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a {type(current).__name__}, got {value!r}") from None
    return str(value) if value is not None else value


def _merge(obj: Any, data: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping")
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(current, value, f"{where}.{key}"))


def profile_path(profile: str) -> Path:
    """A profile name (``b7``, ``smoke``) or a path to a YAML file."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"profile file {path} not found")
        return path
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}; known profiles: {', '.join(known)}")
    return path


def load_config(profile: str = DEFAULT_PROFILE, overrides: list[str] | None = None) -> Config:
    """Defaults, then the profile, then ``section.key=value`` overrides."""
    cfg = Config(profile=profile)
    path = profile_path(profile)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of sections")
    data.pop("profile", None)
    _merge(cfg, data, path.name)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply one ``section.key=value`` override (value parsed as YAML scalar)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else raw
    data: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        data = {part: data}
    _merge(cfg, data, "override")


def set_value(cfg: Config, section: str, key: str, value: Any) -> None:
    """Set one field from a dedicated CLI flag (``None`` leaves the profile's value)."""
    if value is not None:
        _merge(cfg, {section: {key: value}}, "flag")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. the config saved beside a run)."""
    data = dict(data)
    cfg = Config(profile=str(data.pop("profile", DEFAULT_PROFILE)))
    _merge(cfg, data, "saved config")
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved configuration atomically as YAML."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(path: Path) -> Config:
    try:
        return config_from_dict(yaml.safe_load(Path(path).read_text()) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the saved configuration ({exc})") from None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
