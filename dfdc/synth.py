"""The built-in mini DFDC: real face photos, moving-camera H.264 videos, real face swaps.

``generate(out, cfg)`` writes a small data set with the exact DFDC layout::

    out/dfdc_train_part_N/metadata.json + *.mp4     N = 0 .. parts-1
    out/test_videos/*.mp4                           held-out identities, about half FAKE
    out/sample_submission.csv                       filename,label (0.5)
    out/test_labels.csv                             filename,label (0/1, 1 = FAKE)
    out/.synth.json                                 config, counts, identity of every video

Identities are real faces that ship inside installed packages (scikit-image's astronaut and
cameraman, matplotlib's Grace Hopper, and some of scikit-image's 25x25 LFW faces), located
with facenet-pytorch's MTCNN (face box + 5 landmarks). A REAL video is a smoothly moving,
zooming, rolling camera over the photo (or over a background photo the face is placed in),
with lighting drift, a per-video exposure and directional light, and sensor noise.

Repeated actors: as in DFDC, every filmed identity has ``cfg.videos_per_identity`` REAL
videos ("takes"), each with its own camera path, lighting and background (a photo
identity's first take is its own photo; every other take pastes the face into one of the
background photos, a different one per take while there are enough). ``.synth.json``
records each video's ``identity`` (the filmed person, shared by a REAL video and its fakes),
``donor`` (the face swapped in), ``take`` and ``scene``. Each FAKE is made from the same rendered
frames as its original: another identity's face is aligned to the target's landmarks by a
similarity transform, produced at a low "generator resolution", colour-matched in LAB,
upscaled and alpha-blended through a feathered ellipse. Outside that ellipse a fake is the
original's pixels (up to codec noise); inside, the face is softer, noise-free and has a
blend seam, the artefacts of DFDC's autoencoder swaps.

Swap methods (``SWAP_METHODS``, ``synth.methods``): DFDC's fakes come from several methods and
its private test set holds methods absent from training, so each FAKE is made by one of
several methods with distinct artefacts -- that low-resolution ``blend``; a ``sharp`` swap at
full resolution with sensor noise re-injected; ``poisson`` (seamless) cloning; a ``partial``
swap of the eyes or the mouth only; a ``colour``-mismatched swap. Training fakes take the
methods not in ``synth.test_methods`` in turn; those held out appear only in ``test_videos``
(``synth.test_unseen_share`` of its fakes), beside fakes of the training methods.
``.synth.json`` and ``test_labels.csv`` record each video's ``method`` (empty for REAL).

Identity split rule: the identity list is fixed (photos, then LFW faces in order); an
identity whose 1-based index is divisible by ``cfg.test_identity_every`` is a test identity
and appears only in ``test_videos`` (as target or donor), all others only in training.

Work happens in a temp folder beside ``out`` (each finished video renamed in atomically, so
a killed run resumes group by group) that is renamed to ``out`` at the end; ``.synth.json``
is written last. Output is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd

from dfdc.config import ConfigError, FacesConfig, SynthConfig
from dfdc.io import TEMP_MARK, atomic_write_csv, atomic_write_json, clean_temp_files
from dfdc.threads import torch_threads

SYNTH_VERSION = 5  # bump when the same config would produce different videos
MARKER = ".synth.json"
TEST_FOLDER = "test_videos"
PART_PREFIX = "dfdc_train_part_"
NAME_LETTERS = 10  # DFDC names: 10 lowercase letters + .mp4
MAX_LONG_SIDE, MAX_SHORT_SIDE = 1920, 1080  # largest resolution ``generate`` accepts
LFW_UPSCALE = 4  # LFW faces (25 px) are upscaled before MTCNN and use (100 px)
LFW_DETECT_PAD = 30  # px of replicated border so MTCNN sees the tight LFW crop as a face
MIN_FACE_PROB = 0.9  # MTCNN confidence for a source photo's face to be used
NAME_TRIES = 1000  # attempts to draw a name not yet taken
LFW_PASTE_AXES = (0.48, 0.5)  # half-axes of the ellipse an LFW face is pasted through / its side
LFW_PASTE_FEATHER = 0.04  # Gaussian sigma of that ellipse's edge / the face side
PHOTO_CUT = 1.6  # a photo identity pasted into a background: square cut of this x its face box height
GRADIENT_SPREAD = (0.5, 1.0)  # per-video directional light strength: this fraction of cfg.light_gradient
PASTE_TEST_GREY = 128  # the plain scene an LFW face must be found in to be used
OWN_PHOTO = "photo"  # scene name of a photo identity's take in its own photo
BACKGROUNDS = ("china", "flower", "coffee", "chelsea", "rocket")  # background photos (see _backgrounds)
SCENE_TRIES = 5  # draws of placement, camera and light per REAL video until MTCNN finds its face
# (a dark LFW face under a dim lamp was missed in all 30 frames of a demo video)
# the swap methods (synth.methods): what each changes in the face swap described in the module doc
SWAP_METHODS = {
    "blend": "the donor face made at low generator resolution, colour-matched, alpha-blended (DF-128-like)",
    "sharp": "made at full on-screen resolution with sensor noise re-injected, a hard-edged mask: a seam, no blur",
    "poisson": "low resolution, blended by Poisson (seamless) cloning: no seam, colours taken from the target",
    "partial": "only the eyes or only the mouth region swapped, small feathered ellipse",
    "colour": "as blend, but the swapped face is shifted off the target's skin tone in LAB a/b",
}
PARTIAL_REGIONS = ("eyes", "mouth")  # "partial": the region swapped, drawn per fake
LAB_SCALE = (100.0, 127.0, 127.0)  # OpenCV float LAB: L in 0-100, a/b in about -127..127
CLONE_BORDER = 2  # px kept out of the Poisson mask at the frame edge (cv2.seamlessClone needs a margin)
SWINGS = (0.5, 1.5)  # camera/light oscillations per video: uniform in this range (smooth motion)
DRIFT_SPREAD = (0.5, 1.0)  # per-video drift amplitude: this fraction of cfg.drift


class SynthError(RuntimeError):
    """The output folder cannot be written as asked (message says what to do)."""


@dataclass
class Identity:
    """One person: an RGB photo, its MTCNN face box and 5 landmarks (x, y)."""

    name: str
    source: str
    kind: str  # "photo": the photo is the scene; "lfw": a face placed into a background
    image: np.ndarray
    box: np.ndarray  # x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corner


@dataclass
class SynthReport:
    """What ``generate`` wrote (or found already written)."""

    out: Path
    parts: list[Path]
    train_real: int
    train_fake: int
    test_real: int
    test_fake: int
    train_identities: list[str]
    test_identities: list[str]
    seconds: float
    skipped: bool = False  # True: ``out`` already held this exact data set
    videos: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def train_videos(self) -> int:
        return self.train_real + self.train_fake

    @property
    def test_videos(self) -> int:
        return self.test_real + self.test_fake

    def format(self) -> str:
        if self.skipped:
            head = f"{self.out} already holds this mini DFDC ({MARKER} matches); nothing to do"
        else:
            head = f"wrote a mini DFDC to {self.out} in {self.seconds:.1f} s"
        return (
            f"{head}\n"
            f"  train: {self.train_videos} videos ({self.train_real} REAL, {self.train_fake} FAKE) "
            f"in {len(self.parts)} part(s), identities {', '.join(self.train_identities)}\n"
            f"  test:  {self.test_videos} videos ({self.test_real} REAL, {self.test_fake} FAKE), "
            f"identities {', '.join(self.test_identities) or '-'}"
        )


@dataclass
class _Group:
    """One REAL video and its fakes: rendered together from the same frames."""

    index: int
    folder: str
    real: str
    target: str
    fakes: list[tuple[str, str, str]]  # (name, donor identity, swap method)
    take: int = 0  # this identity's k-th REAL video
    scene: str = OWN_PHOTO  # OWN_PHOTO or a BACKGROUNDS name


# ---------------------------------------------------------------------------- identities


def _mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def _best_face(detector, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    boxes, probs, points = detector.detect(image, landmarks=True)
    if boxes is None:
        return None
    probs = np.asarray(probs, dtype=float)
    best = int(np.argmax(probs))
    if probs[best] < MIN_FACE_PROB:
        return None
    return np.asarray(boxes[best], dtype=np.float64), np.asarray(points[best], dtype=np.float64)


def _photo_sources() -> list[tuple[str, str, np.ndarray]]:
    """(name, where it ships, RGB image) of the portrait photos in installed packages."""
    import matplotlib.cbook
    from PIL import Image
    from skimage import data

    hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(hopper) as img:
        grace = np.asarray(img.convert("RGB"))
    return [
        ("astronaut", "skimage.data.astronaut()", data.astronaut()),
        ("grace_hopper", "matplotlib mpl-data/sample_data/grace_hopper.jpg", grace),
        ("cameraman", "skimage.data.camera()", np.repeat(data.camera()[..., None], 3, axis=2)),
    ]


@functools.lru_cache(maxsize=4)
def load_identities(lfw_faces: int, sharpen: float = 0.0) -> tuple[Identity, ...]:
    """The fixed identity list: package photos, then the first ``lfw_faces`` usable LFW faces."""
    from skimage import data

    with torch_threads(1):  # a few small images: threads only add overhead
        detector = _mtcnn()
        identities = []
        for name, source, image in _photo_sources():
            found = _best_face(detector, image)
            if found is None:
                raise SynthError(f"MTCNN found no face in {source}; check the installed package")
            identities.append(Identity(name, source, "photo", np.ascontiguousarray(image), *found))
        lfw = data.lfw_subset()  # 100 faces then 100 non-faces, 25x25 grey in [0, 1]
        used = 0
        for index in range(len(lfw) // 2):
            if used >= lfw_faces:
                break
            grey = np.clip(lfw[index] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            side = grey.shape[0] * LFW_UPSCALE
            grey = cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC)
            if sharpen > 0:  # unsharp mask: the upscaled real face is not softer than a swap
                soft = cv2.GaussianBlur(grey, (0, 0), LFW_UPSCALE / 2)
                grey = cv2.addWeighted(grey, 1 + sharpen, soft, -sharpen, 0)
            rgb = np.repeat(grey[..., None], 3, axis=2)
            pad = LFW_DETECT_PAD
            padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            found = _best_face(detector, padded)
            if found is None:
                continue
            box, points = found
            ident = Identity(f"lfw_{index:02d}", f"skimage.data.lfw_subset()[{index}]", "lfw", rgb, box - pad, points - pad)
            if not _found_when_pasted(detector, ident):
                continue
            identities.append(ident)
            used += 1
    return tuple(identities)


def _found_when_pasted(detector, ident: Identity) -> bool:
    """MTCNN still finds the face once pasted, at the default video's face size, into a
    plain grey scene (some LFW crops are found alone but not inside a scene: lfw_04 was
    missed in every frame of its demo videos)."""
    cfg = SynthConfig()
    grey = np.full((cfg.height, cfg.width, 3), PASTE_TEST_GREY, np.uint8)
    scene, _, _ = _pasted_scene(ident, "", np.random.default_rng(0), cfg, background=grey)
    return _best_face(detector, scene) is not None


def split_identities(identities: list[Identity] | tuple[Identity, ...], every: int) -> tuple[list[str], list[str]]:
    """(train names, test names): 1-based index divisible by ``every`` -> test."""
    if every < 2:
        raise ConfigError(f"synth.test_identity_every must be >= 2, got {every}")
    train = [ident.name for i, ident in enumerate(identities, 1) if i % every]
    test = [ident.name for i, ident in enumerate(identities, 1) if not i % every]
    return train, test


# ---------------------------------------------------------------------------- the plan


def _validate(cfg: SynthConfig) -> None:
    checks = [
        (cfg.videos >= 1, "synth.videos must be >= 1"),
        (cfg.test_videos >= 0, "synth.test_videos must be >= 0"),
        (cfg.parts >= 1, "synth.parts must be >= 1"),
        (cfg.fakes_per_real >= 0, "synth.fakes_per_real must be >= 0"),
        (cfg.width % 2 == 0 and cfg.height % 2 == 0, "width and height must be even (H.264 yuv420p)"),
        (
            max(cfg.width, cfg.height) <= MAX_LONG_SIDE and min(cfg.width, cfg.height) <= MAX_SHORT_SIDE,
            f"resolution {cfg.width}x{cfg.height} is above {MAX_LONG_SIDE}x{MAX_SHORT_SIDE}",
        ),
        (min(cfg.width, cfg.height) >= 64, "width and height must be >= 64"),
        (cfg.seconds > 0 and cfg.fps >= 1, "synth.seconds must be > 0 and synth.fps >= 1"),
        (cfg.lfw_faces >= 0, "synth.lfw_faces must be >= 0"),
        (bool(cfg.methods) and set(cfg.methods) <= set(SWAP_METHODS),
         f"synth.methods must name some of {', '.join(SWAP_METHODS)}, got {', '.join(cfg.methods) or 'none'}"),
        (set(cfg.test_methods) <= set(cfg.methods),
         f"synth.test_methods ({', '.join(cfg.test_methods)}) must be among synth.methods"),
        (bool(set(cfg.methods) - set(cfg.test_methods)) or cfg.fakes_per_real == 0,
         "synth.test_methods holds every method: no FAKE is left for training"),
        (0.0 <= cfg.test_unseen_share <= 1.0, "synth.test_unseen_share must be in 0..1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _names(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    letters = np.array(list(string.ascii_lowercase))
    names = []
    for _ in range(count):
        for _ in range(NAME_TRIES):
            name = "".join(rng.choice(letters, NAME_LETTERS)) + ".mp4"
            if name not in taken:
                break
        taken.add(name)
        names.append(name)
    return names


def _groups(
    rng: np.random.Generator,
    taken: set[str],
    reals: int,
    methods: list[str],
    folders: list[str],
    pool: list[str],
    start: int,
    per_identity: int,
    photos: set[str],
) -> list[_Group]:
    """``reals`` groups over ``folders`` round-robin; one fake per entry of ``methods`` (its swap
    method), spread over them in order; each target identity films ``per_identity`` consecutive
    groups (more when the pool runs out)."""
    fakes = len(methods)
    if reals == 0:
        return []
    if len(pool) < (2 if fakes else 1):
        raise ConfigError(
            f"only {len(pool)} identities for {'FAKE' if fakes else 'REAL'} videos; lower "
            "synth.test_identity_every or raise synth.lfw_faces"
        )
    if per_identity < 1:
        raise ConfigError(f"synth.videos_per_identity must be >= 1, got {per_identity}")
    filmed = min(len(pool), math.ceil(reals / per_identity))
    targets = [pool[i] for i in rng.permutation(len(pool))][:filmed]
    scenes = {t: [BACKGROUNDS[i] for i in rng.permutation(len(BACKGROUNDS))] for t in targets}
    takes: dict[str, int] = {}
    groups = []
    used = 0
    for g in range(reals):
        count = fakes // reals + (1 if g < fakes % reals else 0)
        target = targets[(g // per_identity) % filmed]
        take = takes[target] = takes.get(target, -1) + 1
        if target in photos:  # first take in its own photo, then the backgrounds
            scene = OWN_PHOTO if take == 0 else scenes[target][(take - 1) % len(BACKGROUNDS)]
        else:
            scene = scenes[target][take % len(BACKGROUNDS)]
        others = [p for p in pool if p != target]
        donors = [others[i] for i in rng.permutation(len(others))]
        real, *fake_names = _names(rng, 1 + count, taken)
        pairs = [(name, donors[k % len(donors)], methods[used + k]) for k, name in enumerate(fake_names)]
        used += count
        groups.append(_Group(start + g, folders[g % len(folders)], real, target, pairs, take, scene))
    return groups


def plan(cfg: SynthConfig, identities: tuple[Identity, ...]) -> tuple[list[_Group], list[str], list[str]]:
    """The deterministic list of groups (REAL + its fakes) and the identity split."""
    _validate(cfg)
    train_ids, test_ids = split_identities(identities, cfg.test_identity_every)
    rng = np.random.default_rng(cfg.seed)
    taken: set[str] = set()
    train_reals = math.ceil(cfg.videos / (1 + cfg.fakes_per_real))
    if cfg.parts > train_reals:
        raise ConfigError(
            f"synth.parts={cfg.parts} but only {train_reals} REAL training videos: every part needs "
            "a REAL video with its fakes; lower --parts or raise --videos"
        )
    folders = [f"{PART_PREFIX}{n}" for n in range(cfg.parts)]
    photos = {ident.name for ident in identities if ident.kind == "photo"}
    per = cfg.videos_per_identity
    seen = [m for m in cfg.methods if m not in cfg.test_methods]
    train_methods = _cycle(seen, cfg.videos - train_reals)
    groups = _groups(rng, taken, train_reals, train_methods, folders, train_ids, 0, per, photos)
    test_reals = math.ceil(cfg.test_videos / 2)
    test_fakes = cfg.test_videos - test_reals
    unseen = round(test_fakes * cfg.test_unseen_share) if cfg.test_methods else 0
    test_methods = _cycle(list(cfg.test_methods), unseen) + _cycle(seen or list(cfg.test_methods), test_fakes - unseen)
    test_methods = [test_methods[i] for i in rng.permutation(len(test_methods))]
    groups += _groups(rng, taken, test_reals, test_methods, [TEST_FOLDER], test_ids, len(groups), per, photos)
    return groups, train_ids, test_ids


def _cycle(methods: list[str], count: int) -> list[str]:
    """``count`` method names taking ``methods`` in turn (equal shares, the first ones one more)."""
    return [methods[k % len(methods)] for k in range(count)] if methods else []


# ---------------------------------------------------------------------------- rendering


def _affine(matrix2x3: np.ndarray) -> np.ndarray:
    return np.vstack([matrix2x3, [0.0, 0.0, 1.0]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


@functools.lru_cache(maxsize=1)
def _backgrounds() -> dict[str, np.ndarray]:
    """The background photos by ``BACKGROUNDS`` name (real photos shipped in packages)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = list(load_sample_images().images)  # china.jpg, flower.jpg
    images += [data.coffee(), data.chelsea(), data.rocket()]
    return {name: np.ascontiguousarray(img[..., :3]) for name, img in zip(BACKGROUNDS, images, strict=True)}


def _face_cut(ident: Identity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square image around the identity's face with its box and landmarks in it: an LFW
    face as it is, a photo's face cut out (``PHOTO_CUT`` x the box, borders replicated)."""
    if ident.kind == "lfw":
        return ident.image, ident.box, ident.landmarks
    side = int(round(PHOTO_CUT * (ident.box[3] - ident.box[1])))
    centre = np.array([(ident.box[0] + ident.box[2]) / 2, (ident.box[1] + ident.box[3]) / 2])
    x0, y0 = (np.round(centre - side / 2)).astype(int)
    pad = side
    padded = cv2.copyMakeBorder(ident.image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    cut = np.ascontiguousarray(padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side])
    shift = np.array([x0, y0], dtype=np.float64)
    return cut, ident.box - np.tile(shift, 2), ident.landmarks - shift


def _pasted_scene(ident: Identity, scene_name: str, rng: np.random.Generator, cfg: SynthConfig,
                  background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the identity's face into the background photo ``scene_name`` (or the image
    ``background``): (scene, box, landmarks)."""
    bg = _backgrounds()[scene_name] if background is None else background
    face, face_box, face_points = _face_cut(ident)
    scene_h = int(round(cfg.lfw_scene_scale * cfg.height))
    scene_w = int(round(cfg.lfw_scene_scale * cfg.width))
    scale = max(scene_w / bg.shape[1], scene_h / bg.shape[0])
    bg = cv2.resize(bg, (math.ceil(bg.shape[1] * scale), math.ceil(bg.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    scene = np.ascontiguousarray(bg[:scene_h, :scene_w])
    box_h = face_box[3] - face_box[1]
    k = cfg.face_height * cfg.height / box_h  # at camera scale ~1 the face fills face_height of the frame
    side = int(round(face.shape[0] * k))
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    # the face lies at least half a frame from the scene border: the camera can centre on it
    x0 = int(rng.integers(0, max(1, scene_w - cfg.width))) + (cfg.width - side) // 2
    y0 = int(rng.integers(0, max(1, scene_h - cfg.height))) + (cfg.height - side) // 2
    x0, y0 = min(max(0, x0), scene_w - 1), min(max(0, y0), scene_h - 1)
    side_w, side_h = min(side, scene_w - x0), min(side, scene_h - y0)
    mask = np.zeros((side, side), np.float32)
    axes = (int(side * LFW_PASTE_AXES[0]), int(side * LFW_PASTE_AXES[1]))
    cv2.ellipse(mask, (side // 2, side // 2), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), side * LFW_PASTE_FEATHER)[:side_h, :side_w, None]
    roi = scene[y0 : y0 + side_h, x0 : x0 + side_w].astype(np.float32)
    scene[y0 : y0 + side_h, x0 : x0 + side_w] = (roi * (1 - mask) + face[:side_h, :side_w] * mask + 0.5).astype(np.uint8)
    shift = np.array([x0, y0], dtype=np.float64)
    box = face_box * k + np.tile(shift, 2)
    return scene, box, face_points * k + shift


@dataclass
class _Camera:
    """A smooth camera path over a scene: scene -> frame similarity per frame."""

    centre: np.ndarray  # face centre in the scene
    scene_size: tuple[int, int]  # scene height, width
    scale: float
    offset: np.ndarray
    drift: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    zoom: float
    roll: float
    light: float
    tint: np.ndarray  # per-channel colour cast times the video's exposure
    shade: np.ndarray  # H x W x 1 directional light across the frame (float32)

    def matrix(self, t: float, width: int, height: int) -> np.ndarray:
        w = self.freq * 2 * math.pi * t + self.phase
        scale = self.scale * (1 + self.zoom * math.sin(w[2]))
        angle = math.radians(self.roll * math.sin(w[3]))
        shift = (self.offset + self.drift * np.sin(w[:2])) * (width, height) + (width / 2, height / 2)
        rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        matrix = np.eye(3)
        matrix[:2, :2] = rot
        matrix[:2, 2] = shift - rot @ self.centre
        # keep the window inside the scene where it fits (no mirrored copies of the face)
        corners = _apply(np.linalg.inv(matrix), np.array([[0, 0], [width, 0], [0, height], [width, height]], float))
        low, high = corners.min(0), corners.max(0)
        limit = np.array([self.scene_size[1], self.scene_size[0]], float)
        move = np.where(high - low <= limit, np.maximum(0, -low) - np.maximum(0, high - limit), 0.0)
        matrix[:2, 2] -= rot @ move
        return matrix

    def gain(self, t: float) -> np.ndarray:
        w = self.freq[4] * 2 * math.pi * t + self.phase[4]
        return (1 + self.light * math.sin(w)) * self.tint


def _camera(rng: np.random.Generator, box: np.ndarray, scene_size: tuple[int, int], cfg: SynthConfig) -> _Camera:
    face_side = box[3] - box[1]
    size = cfg.face_height * (1 + cfg.face_height_jitter * rng.uniform(-1, 1))
    fit = max(cfg.width / scene_size[1], cfg.height / scene_size[0])  # the frame fits in the scene
    return _Camera(
        centre=np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]),
        scene_size=scene_size,
        scale=max(size * cfg.height / face_side, fit),
        offset=rng.uniform(-cfg.offset, cfg.offset, 2),
        drift=rng.uniform(*DRIFT_SPREAD, 2) * cfg.drift,
        freq=rng.uniform(*SWINGS, 5) / cfg.seconds,  # about one slow swing per video
        phase=rng.uniform(0, 2 * math.pi, 5),
        zoom=cfg.zoom,
        roll=cfg.rotation,
        light=cfg.light,
        tint=(1 + rng.uniform(-cfg.tint, cfg.tint, 3)) * (1 + rng.uniform(-cfg.exposure, cfg.exposure)),
        shade=_shade(rng, cfg),
    )


def _shade(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """A lamp to one side: gain 1 +- strength, linear across the frame in a random direction."""
    strength = rng.uniform(*GRADIENT_SPREAD) * cfg.light_gradient
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0 : cfg.height, 0 : cfg.width].astype(np.float32)
    half_diagonal = math.hypot(cfg.width, cfg.height) / 2
    along = ((x - cfg.width / 2) * math.cos(angle) + (y - cfg.height / 2) * math.sin(angle)) / half_diagonal
    return (1 + strength * along)[..., None].astype(np.float32)


def _ellipse(points: np.ndarray, cfg: SynthConfig) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Blend ellipse (centre, half-axes, angle in degrees) from 5 landmarks."""
    eyes = (points[0] + points[1]) / 2
    mouth = (points[3] + points[4]) / 2
    down = mouth - eyes
    eye_dist = float(np.linalg.norm(points[1] - points[0]))
    em_dist = float(np.linalg.norm(down))
    centre = eyes + down * 0.5
    angle = math.degrees(math.atan2(down[1], down[0])) - 90.0
    return (float(centre[0]), float(centre[1])), (cfg.mask_width * eye_dist, cfg.mask_height * em_dist), angle


def _draw_ellipse(shape: tuple[int, int], centre, axes, angle: float) -> np.ndarray:
    sub = 16  # cv2 fixed-point sub-pixel factor (shift=4)
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(
        mask,
        (int(round(centre[0] * sub)), int(round(centre[1] * sub))),
        (int(round(axes[0] * sub)), int(round(axes[1] * sub))),
        angle,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
        4,
    )
    return mask


def _lab_match(source: np.ndarray, target: np.ndarray, mask: np.ndarray,
               shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Colour-match ``source`` to ``target`` (mean/std per LAB channel inside ``mask``), then
    move its a/b channels by ``shift`` (the "colour" method's mismatch; 0 = a match)."""
    src = cv2.cvtColor(source.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    tgt = cv2.cvtColor(target.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    inside = mask > 0.5
    if inside.sum() < 4:
        return source
    s_mean, s_std = src[inside].mean(0), src[inside].std(0) + 1e-3
    t_mean, t_std = tgt[inside].mean(0), tgt[inside].std(0)
    out = (src - s_mean) / s_std * t_std + t_mean + np.array([0.0, *shift], np.float32)
    out = np.clip(out, -np.array(LAB_SCALE, np.float32) * [0, 1, 1], LAB_SCALE)
    rgb = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0, 0, 255)


@dataclass
class _Swap:
    """A donor face prepared for one fake (generator resolution fixed per video)."""

    image: np.ndarray  # donor, pre-shrunk towards generator scale
    to_scene: np.ndarray  # donor-image px -> target scene px (similarity)
    canvas: int  # generator resolution (px)
    method: str = "blend"  # SWAP_METHODS
    part: str = ""  # "partial": the region swapped (PARTIAL_REGIONS)
    shift: tuple[float, float] = (0.0, 0.0)  # "colour": LAB a/b offset of the swapped face


def _method_params(method: str, rng: np.random.Generator, cfg: SynthConfig) -> dict:
    """The per-fake random choices of a method: the partial region, the colour offset."""
    if method == "partial":
        return {"part": PARTIAL_REGIONS[int(rng.integers(len(PARTIAL_REGIONS)))]}
    if method == "colour":
        size, angle = rng.uniform(*cfg.colour_shift), rng.uniform(0, 2 * math.pi)
        return {"shift": (float(size * math.cos(angle)), float(size * math.sin(angle)))}
    return {}


def _prepare_swap(donor: Identity, scene_points: np.ndarray, face_px: float, cfg: SynthConfig,
                  method: str = "blend", rng: np.random.Generator | None = None) -> _Swap:
    from skimage.transform import SimilarityTransform

    region = cfg.region * face_px
    if method == "sharp":
        canvas = int(np.clip(round(region * cfg.sharp_fraction), cfg.generator_min, cfg.sharp_max))
    else:
        canvas = int(np.clip(round(region * cfg.generator_fraction), cfg.generator_min, cfg.generator_max))
    donor_face = donor.box[3] - donor.box[1]
    shrink = min(1.0, (canvas / cfg.region) / donor_face)
    image = donor.image
    if shrink < 1.0:
        size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        shrink_x, shrink_y = size[0] / donor.image.shape[1], size[1] / donor.image.shape[0]
    else:
        shrink_x = shrink_y = 1.0
    tform = SimilarityTransform()
    if not tform.estimate(donor.landmarks, scene_points):
        raise SynthError(f"cannot align identity {donor.name} (degenerate landmarks)")
    unshrink = np.diag([1 / shrink_x, 1 / shrink_y, 1.0])
    params = _method_params(method, rng if rng is not None else np.random.default_rng(0), cfg)
    return _Swap(np.ascontiguousarray(image), tform.params @ unshrink, canvas, method, **params)


def _part_ellipse(points: np.ndarray, part: str, cfg: SynthConfig) -> tuple[tuple[float, float], tuple[float, float], float]:
    """The "partial" method's blend ellipse around the eyes or the mouth (centre, half-axes, angle)."""
    _, _, angle = _ellipse(points, cfg)
    eyes, mouth = (points[0] + points[1]) / 2, (points[3] + points[4]) / 2
    eye_dist, em_dist = float(np.linalg.norm(points[1] - points[0])), float(np.linalg.norm(mouth - eyes))
    centre = eyes if part == "eyes" else mouth
    return (float(centre[0]), float(centre[1])), (cfg.partial_width * eye_dist, cfg.partial_height * em_dist), angle


def _poisson_blend(frame: np.ndarray, face: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The "poisson" method: ``face`` (the region at ``x0, y0``) cloned into ``frame`` by
    OpenCV's seamless cloning (Pérez et al. 2003) inside ``mask`` (no seam, the target's colours)."""
    height, width = frame.shape[:2]
    full = np.zeros((height, width), np.uint8)
    full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = (mask > 0.5).astype(np.uint8) * 255
    full[:CLONE_BORDER], full[-CLONE_BORDER:], full[:, :CLONE_BORDER], full[:, -CLONE_BORDER:] = 0, 0, 0, 0
    if not full.any():
        return frame
    source = frame.copy()
    source[y0:y0 + face.shape[0], x0:x0 + face.shape[1]] = np.clip(face + 0.5, 0, 255).astype(np.uint8)
    x, y, w, h = cv2.boundingRect(full)
    return cv2.seamlessClone(source, frame, full, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)


def _swap_frame(frame: np.ndarray, swap: _Swap, to_frame: np.ndarray, points: np.ndarray, face_px: float,
                cfg: SynthConfig, grain: np.ndarray | None = None) -> np.ndarray:
    """``frame`` with the donor's face made at generator resolution and blended in by
    ``swap.method`` (``SWAP_METHODS``); ``grain``: a sensor-noise field for the "sharp" method."""
    height, width = frame.shape[:2]
    centre, axes, angle = _ellipse(points, cfg)
    region = cfg.region * face_px
    origin = np.array(centre) - region / 2
    g = swap.canvas
    to_canvas = np.array([[g / region, 0, -origin[0] * g / region], [0, g / region, -origin[1] * g / region], [0, 0, 1]])
    # the "generator": the donor face rendered on a small canvas aligned to the target
    generated = cv2.warpAffine(
        swap.image, (to_canvas @ to_frame @ swap.to_scene)[:2], (g, g), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
    )
    target = cv2.warpAffine(frame, to_canvas[:2], (g, g), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    scale = g / region
    small_mask = _draw_ellipse(
        (g, g), ((centre[0] - origin[0]) * scale, (centre[1] - origin[1]) * scale), (axes[0] * scale, axes[1] * scale), angle
    )
    generated = _lab_match(generated, target, small_mask, swap.shift)
    # upscale into the frame, only inside the region of interest
    x0, y0 = max(0, int(math.floor(origin[0]))), max(0, int(math.floor(origin[1])))
    x1, y1 = min(width, int(math.ceil(origin[0] + region))), min(height, int(math.ceil(origin[1] + region)))
    if x1 <= x0 or y1 <= y0:
        return frame
    back = np.linalg.inv(to_canvas)
    back[:2, 2] -= (x0, y0)
    up = cv2.warpAffine(generated, back[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if swap.method == "partial":
        centre, axes, angle = _part_ellipse(points, swap.part, cfg)
    mask = _draw_ellipse((y1 - y0, x1 - x0), (centre[0] - x0, centre[1] - y0), axes, angle)
    if swap.method == "poisson":
        return _poisson_blend(frame, up, mask, x0, y0)
    if swap.method == "sharp" and grain is not None:
        up = up + grain[y0:y1, x0:x1] * cfg.sharp_noise
    feather = cfg.sharp_feather if swap.method == "sharp" else cfg.feather
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, feather * face_px))[..., None]
    out = frame.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(roi + (up - roi) * mask + 0.5, 0, 255).astype(np.uint8)
    return out


class _Writer:
    """H.264 (libx264, yuv420p) mp4 written to a temp file and renamed when closed."""

    def __init__(self, path: Path, cfg: SynthConfig) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=cfg.fps)
        self.stream.width, self.stream.height = cfg.width, cfg.height
        self.stream.pix_fmt = "yuv420p"
        # mbtree off: with it, libx264 output for these short clips varied between runs in one
        # process (seen in the determinism test); the same seed must give the same bytes
        self.stream.options = {
            "crf": str(cfg.crf),
            "preset": cfg.preset,
            "threads": str(cfg.encoder_threads),
            "x264-params": "mbtree=0",
        }
        self.container.metadata["comment"] = "dfdc-kit mini DFDC"

    def write(self, frame: np.ndarray) -> None:
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        with open(self.tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        except (av.FFmpegError, ValueError, OSError):
            pass
        self.tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _checker():
    return _mtcnn()


def _face_visible(scene: np.ndarray, camera: _Camera, cfg: SynthConfig) -> bool:
    """MTCNN finds the face (p >= MIN_FACE_PROB) in the first, middle or last frame, lit but
    noise-free, downscaled as ``dfdc faces`` detects (short side about 270 px)."""
    from dfdc.faces import detection_scale

    scale = detection_scale(cfg.height, cfg.width, FacesConfig().detect_short_side)
    size = (max(1, round(cfg.width * scale)), max(1, round(cfg.height * scale)))
    frames = []
    for t in (0.0, cfg.seconds / 2, max(0.0, cfg.seconds - 1 / cfg.fps)):
        frame = cv2.warpAffine(scene, camera.matrix(t, cfg.width, cfg.height)[:2], (cfg.width, cfg.height),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lit = np.clip(frame.astype(np.float32) * camera.gain(t).astype(np.float32) * camera.shade + 0.5, 0, 255)
        frames.append(cv2.resize(lit.astype(np.uint8), size, interpolation=cv2.INTER_AREA))
    with torch_threads(1):
        _, probs = _checker().detect(frames)
    best = [max((float(v) for v in np.atleast_1d(p) if v is not None), default=0.0) for p in probs]
    return max(best) >= MIN_FACE_PROB


def _shoot(group: _Group, target: Identity, cfg: SynthConfig) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray, _Camera]:
    """Scene, face box, landmarks and camera of a group's REAL video: the first draw whose
    face MTCNN finds (``SCENE_TRIES`` draws; the last one is kept whatever happens)."""
    for attempt in range(SCENE_TRIES):
        rng = np.random.default_rng([cfg.seed, group.index] + ([attempt] if attempt else []))
        if group.scene == OWN_PHOTO:
            scene, box, points = target.image, target.box, target.landmarks
        else:
            scene, box, points = _pasted_scene(target, group.scene, rng, cfg)
        camera = _camera(rng, box, scene.shape[:2], cfg)
        if _face_visible(scene, camera, cfg):
            break
    return rng, scene, box, points, camera


def _render_group(group: _Group, folder: Path, ids: dict[str, Identity], cfg: SynthConfig) -> None:
    """Write one REAL video and its fakes from the same rendered frames."""
    rng, scene, box, points, camera = _shoot(group, ids[group.target], cfg)
    face_scene = box[3] - box[1]
    swaps = [_prepare_swap(ids[donor], points, face_scene * camera.scale, cfg, method,
                           np.random.default_rng([cfg.seed, group.index, k]))
             for k, (_, donor, method) in enumerate(group.fakes)]
    noise = [rng.normal(0.0, cfg.noise, (cfg.height, cfg.width, 3)).astype(np.float32) for _ in range(max(1, cfg.noise_pool))]
    writers = [_Writer(folder / name, cfg) for name in [group.real] + [name for name, _, _ in group.fakes]]
    try:
        for index in range(max(1, int(round(cfg.seconds * cfg.fps)))):
            t = index / cfg.fps
            matrix = camera.matrix(t, cfg.width, cfg.height)
            frame = cv2.warpAffine(scene, matrix[:2], (cfg.width, cfg.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            lit = frame.astype(np.float32) * camera.gain(t).astype(np.float32) * camera.shade
            drawn = int(rng.integers(len(noise)))
            lit += noise[drawn]
            frame = np.clip(lit + 0.5, 0, 255).astype(np.uint8)
            grain = noise[(drawn + 1) % len(noise)]  # the "sharp" swap's re-injected noise: another field
            writers[0].write(frame)
            frame_points = _apply(matrix, points)
            face_px = face_scene * math.hypot(matrix[0, 0], matrix[1, 0])
            for writer, swap in zip(writers[1:], swaps):
                writer.write(_swap_frame(frame, swap, matrix, frame_points, face_px, cfg, grain))
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise


# ---------------------------------------------------------------------------- generate


def _config_record(cfg: SynthConfig) -> dict:
    """The configuration as ``.synth.json`` stores it (a JSON round trip: tuples such as
    ``methods`` come back as lists, so a rerun compares equal to the file it wrote)."""
    return json.loads(json.dumps({"version": SYNTH_VERSION, **dataclasses.asdict(cfg)}))


def _report_from_marker(out: Path, record: dict, skipped: bool) -> SynthReport:
    counts = record["counts"]
    return SynthReport(
        out=out,
        parts=[out / f"{PART_PREFIX}{n}" for n in range(record["config"]["parts"])],
        train_real=counts["train_real"],
        train_fake=counts["train_fake"],
        test_real=counts["test_real"],
        test_fake=counts["test_fake"],
        train_identities=[n for n, v in record["identities"].items() if v["split"] == "train"],
        test_identities=[n for n, v in record["identities"].items() if v["split"] == "test"],
        seconds=float(record.get("seconds", 0.0)),
        skipped=skipped,
        videos=record["videos"],
    )


def read_marker(out: Path) -> dict | None:
    """The ``.synth.json`` of a finished data set, or None when absent/unreadable."""
    try:
        return json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _prepare_tmp(tmp: Path, record: dict) -> None:
    """Reuse a temp folder left by a killed run of the same config, else start afresh."""
    plan_file = tmp / ".plan.json"
    if tmp.exists():
        try:
            same = json.loads(plan_file.read_text()) == record
        except (OSError, ValueError):
            same = False
        if same:
            clean_temp_files(tmp)  # half-written videos of the killed run
            return
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    atomic_write_json(plan_file, record)


def _progress(groups: list[_Group]) -> Iterator[_Group]:
    from .progress import progress

    yield from progress(groups, desc="synth", unit="group")


def generate(out: Path, cfg: SynthConfig) -> SynthReport:
    """Generate the mini DFDC into ``out`` (see the module docstring for the layout).

    If ``out`` already holds a data set made from the same configuration this does
    nothing (``report.skipped``). Raises ``SynthError`` when ``out`` holds something else,
    ``ConfigError`` for an impossible configuration.
    """
    started = time.perf_counter()
    out = Path(out)
    record = _config_record(cfg)
    marker = read_marker(out)
    if marker is not None:
        if marker.get("config") == record:
            return _report_from_marker(out, marker, skipped=True)
        raise SynthError(
            f"{out} holds a mini DFDC made with a different configuration ({out / MARKER}); "
            "delete the folder or choose another --out"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"{out} exists and is not an empty folder; delete it or choose another --out")
    _validate(cfg)
    identities = load_identities(cfg.lfw_faces, cfg.lfw_sharpen)
    ids = {ident.name: ident for ident in identities}
    groups, train_ids, test_ids = plan(cfg, identities)

    tmp = out.parent / f".{out.name}{TEMP_MARK}synth"
    _prepare_tmp(tmp, record)
    for group in _progress(groups):
        folder = tmp / group.folder
        folder.mkdir(exist_ok=True)
        names = [group.real] + [name for name, _, _ in group.fakes]
        if all((folder / name).is_file() for name in names):
            continue  # finished by a previous (killed) run of the same config
        _render_group(group, folder, ids, cfg)

    videos: dict[str, dict] = {}
    for group in groups:
        split = "test" if group.folder == TEST_FOLDER else "train"
        shot = {"identity": group.target, "take": group.take, "scene": group.scene}
        videos[group.real] = {"folder": group.folder, "split": split, "label": "REAL", "original": None, **shot,
                              "donor": None, "method": None}
        for name, donor, method in group.fakes:
            videos[name] = {"folder": group.folder, "split": split, "label": "FAKE", "original": group.real, **shot,
                            "donor": donor, "method": method}
    for n in range(cfg.parts):
        folder = f"{PART_PREFIX}{n}"
        meta = {
            name: {"label": v["label"], "split": "train", "original": v["original"]}
            for name, v in sorted(videos.items())
            if v["folder"] == folder
        }
        atomic_write_json(tmp / folder / "metadata.json", meta)
    test = sorted(name for name, v in videos.items() if v["folder"] == TEST_FOLDER)
    if cfg.test_videos:
        atomic_write_csv(tmp / "sample_submission.csv", pd.DataFrame({"filename": test, "label": 0.5}))
        labels = [int(videos[name]["label"] == "FAKE") for name in test]
        methods = [videos[name]["method"] or "" for name in test]  # "" for REAL videos
        seen = ["" if not m else int(m not in cfg.test_methods) for m in methods]  # 1: training had this method
        atomic_write_csv(tmp / "test_labels.csv", pd.DataFrame(
            {"filename": test, "label": labels, "method": methods, "method_seen": seen}))

    def count(split: str, label: str) -> int:
        return sum(v["split"] == split and v["label"] == label for v in videos.values())

    seconds = time.perf_counter() - started
    final = {
        "config": record,
        "seconds": round(seconds, 2),
        "counts": {
            "train_real": count("train", "REAL"),
            "train_fake": count("train", "FAKE"),
            "test_real": count("test", "REAL"),
            "test_fake": count("test", "FAKE"),
        },
        "identities": {
            ident.name: {"split": "test" if ident.name in test_ids else "train", "source": ident.source}
            for ident in identities
        },
        "videos": videos,
    }
    (tmp / ".plan.json").unlink(missing_ok=True)
    atomic_write_json(tmp / MARKER, final)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return _report_from_marker(out, final, skipped=False)
