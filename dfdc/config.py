"""One configuration object for every stage, loaded from a named profile.

A profile is a YAML file under ``dfdc/profiles/`` (or any path) holding a partial
mapping that is deep-merged over the dataclass defaults below. A profile may start from
another one: ``extends: smoke`` (a profile name, or a YAML path relative to the extending
file) deep-merges its own mapping over that profile's (chains allowed, cycles refused), so it
holds only its differences. CLI flags and ``--set section.key=value`` overrides are applied last. Every run writes its resolved
configuration beside its outputs (``save_config``).

Every constant of the recipe lives here as a named field with a comment saying where it
comes from; stage code reads them from the config and never repeats the numbers.
"""

from __future__ import annotations

import dataclasses
import os
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
    test_videos: int = 28  # held-out videos with identities unseen in training: 14 REAL (7 test
    # identities x 2 takes) and 14 FAKE (test_unseen_share 0.5: 7 of the held-out method, 7 of the others)
    parts: int = 2  # dfdc_train_part_N folders
    fakes_per_real: int = 5  # DFDC ships about 100k FAKE for 19k REAL videos
    width: int = 320
    height: int = 240  # DFDC's smallest resolution is 320x240
    seconds: float = 2.0
    fps: int = 15  # DFDC videos run at 15-30 fps
    seed: int = 0
    # -- identities (dfdc.synth): real face photos shipped inside installed packages --
    lfw_faces: int = 18  # extra identities from skimage.data.lfw_subset() (25x25 grey LFW faces);
    # 18 -> 14 training / 7 test identities: with 9 (8 / 4) the demo model leaned FAKE on unseen
    # REAL identities (held-out log loss 0.546; 18: 0.43, with the smoke's 30/6 crops 0.39, measured)
    lfw_sharpen: float = 1.0  # unsharp-mask amount on the 4x-upscaled LFW faces (else REAL LFW
    # faces are as soft as swapped ones and the fake signal is lost)
    test_identity_every: int = 3  # identity list (photos, then LFW) 1-based index divisible by
    # this -> test identity (targets and donors of test videos), never used in training
    videos_per_identity: int = 2  # REAL (original) videos per filmed identity, each with its own
    # camera path, lighting and background: DFDC filmed every paid actor in many videos, so folds
    # grouped by original alone let an actor's face into training and validation
    # -- camera and scene --
    face_height: float = 0.35  # face box height / frame height (an ~80 px face at 240 px:
    # enough for MTCNN and the 128-px crops of the smoke profile)
    face_height_jitter: float = 0.15  # per-video relative spread of face_height
    lfw_scene_scale: float = 2.0  # side of the background scene an LFW face is placed in / frame side
    offset: float = 0.12  # face centre offset from the frame centre, fraction of the frame side
    drift: float = 0.06  # amplitude of the smooth camera drift, fraction of the frame side
    zoom: float = 0.08  # relative amplitude of the smooth zoom
    rotation: float = 4.0  # amplitude of the smooth roll, degrees
    light: float = 0.12  # relative amplitude of the lighting drift (gain)
    tint: float = 0.05  # per-video colour cast, relative per channel
    exposure: float = 0.15  # per-video exposure: gain uniform in 1 +- this (another room, another lamp)
    light_gradient: float = 0.2  # per-video directional light: gain varies linearly across the frame
    # by up to +- this, in a random direction
    noise: float = 3.0  # sensor noise standard deviation, 0-255 scale
    noise_pool: int = 4  # noise fields drawn per video and cycled (1080p noise per frame is slow)
    # -- the face swap (DFDC-like artefacts a detector can learn) --
    generator_fraction: float = 0.4  # the swapped face is made at this fraction of its on-screen
    # resolution, then upscaled: softer than its surroundings (DFDC's DF-128/DF-256 autoencoders
    # generate 128/256-px faces that are upscaled into 1080p frames)
    generator_max: int = 128  # px cap of the generator canvas (DF-128)
    generator_min: int = 24  # px floor of the generator canvas
    region: float = 1.9  # generator canvas side / face box side
    mask_width: float = 1.05  # blend-ellipse half-width / eye distance
    mask_height: float = 1.45  # blend-ellipse half-height / eye-to-mouth distance
    feather: float = 0.06  # Gaussian sigma of the blend-mask edge / face box side (the seam)
    # -- swap methods (dfdc.synth.SWAP_METHODS): DFDC's fakes come from several methods (DF-128, DF-256,
    # MM/NN, NTH, FSGAN, StyleGAN) and its private test holds methods absent from training --
    methods: tuple[str, ...] = ("blend", "sharp", "colour", "poisson")  # the methods used; each FAKE gets
    # one, in turn (training fakes from the methods not in test_methods). "partial" (eyes or mouth only) is
    # left out by default: with the 25-px LFW donors its swapped region is nearly as soft as the face it
    # replaces; Lite0 models trained on it scored its test fakes log loss 0.59-0.72 (docs/synth.md, measured)
    test_methods: tuple[str, ...] = ("poisson",)  # held out of training: their fakes appear only in
    # test_videos (a method the detector has never seen, as on DFDC's private set)
    test_unseen_share: float = 0.5  # share of the test fakes made with test_methods (the rest cycles
    # through the training methods, so both seen and unseen methods are scored)
    sharp_fraction: float = 1.0  # "sharp": generator canvas at this fraction of the on-screen resolution
    sharp_max: int = 512  # "sharp": canvas cap (px), a high-resolution swap ...
    sharp_noise: float = 1.0  # ... with sensor noise of this x synth.noise re-injected into the face ...
    sharp_feather: float = 0.015  # ... blended through a hard-edged mask: its seam (Gaussian sigma / face box
    # side; `feather` for the others) is the artefact left once blur and missing noise are gone
    partial_width: float = 1.0  # "partial": half-width of the swapped eyes or mouth ellipse / eye distance
    partial_height: float = 0.5  # "partial": its half-height / eye-to-mouth distance
    colour_shift: tuple[float, float] = (6.0, 14.0)  # "colour": no colour matching, and the swapped face
    # shifted by this many LAB a/b units (uniform, random direction): a skin tone that does not fit
    # -- encoding --
    crf: int = 20  # libx264 constant rate factor (lower = better quality; x264 default 23)
    preset: str = "veryfast"  # libx264 preset (1080p bench videos stay fast)
    encoder_threads: int = 1  # libx264 threads (0 = auto); 1 keeps the 6-encoder groups from
    # oversubscribing the 2 shared cores


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
    detect_threads: int = 1  # torch CPU threads while MTCNN runs (0 = leave as set): its per-box loop
    # of tiny ops ran 3-7x faster on 1 thread than on 2 here (40 1080p frames: 3.3-3.9 s vs 12-26 s,
    # loaded 2-core machine); scale with worker processes instead
    same_face_tolerance: float = 3.5  # mean abs pixel difference (0-255) inside the face box
    # (dfdc.faces.face_difference) under which a FAKE crop equals its original's: not a manipulated
    # face (audio-only or other-person fakes). Source: bench/bench_label_cleaning.py on the mini DFDC:
    # an original re-encoded at the same quality (libx264 CRF 20) differs by at most 3.0-3.05 inside
    # the box (176 crops, two runs), genuine swaps by at least 13.9 (880 crops of 40 fakes); a
    # bit-identical stream by 0. 3.5 drops those re-encodes and keeps every swap.
    track_iou: float = 0.3  # link a face to a track when their boxes overlap at least this (IoU) ...
    track_center: float = 1.0  # ... or their centres lie within this x the boxes' mean side (sparse
    # sampling: a moving face may overlap little between two sampled frames but stays near; two people
    # rarely stand within one face width of each other; dfdc.tracks)
    track_max_gap: int = 5  # a track unseen for more sampled frames than this ends
    workers: int = 1  # worker processes over videos
    image_format: str = "jpg"  # crop files: "jpg", "webp" or "png" (lossless). JPEG at image_quality 95:
    # 5.7x smaller than PNG (10.6 vs 60.5 KB per 240-px crop) at 45.3 dB PSNR, the fastest decode
    # (bench-faces (d); docs/benchmarks.md). Label cleaning compares the decoded video pixels before
    # encoding, so the format cannot change it
    image_quality: int = 95  # JPEG / WebP quality 1-100 (PNG is lossless and ignores it); the recipe's
    # training augmentation recompresses crops at JPEG quality 60-100 anyway


@dataclass
class FoldsConfig:
    """Cross-validation folds (``dfdc folds``)."""

    n_folds: int = 5
    group_by: str = "original"  # "original": a fake stays with its source video; "part": whole part
    # folders; "identity": originals of one face cluster (one actor) together (dfdc.identity)
    seed: int = 42
    embeddings: str = ""  # group_by identity: the crops' embeddings (dfdc embed); "" = DATA/embeddings
    identity_min_cluster: int = 0  # HDBSCAN min_cluster_size over the originals' crops; 0 = the
    # median crops per original (a cluster is at least one video's worth of faces)
    identity_crops: int = 10  # crops per original (evenly spaced) clustered for identities: on DFDC
    # 19k originals x 40 crops would be 760k points; 10 keep it to 190k (0 = all)


@dataclass
class EmbedConfig:
    """Pooled backbone features per face crop (``dfdc embed``)."""

    model: str = "efficientnet-b7"  # a registered model, a training run folder or a checkpoint; the
    # study embedded faces with its B7 (set embed.pretrained / model.pretrained for ImageNet weights)
    pretrained: str = ""  # weights of a named embed.model: "imagenet", "none" or a file; "" = model.pretrained
    size: int = 0  # input side; 0 = the checkpoint's own side, or a named model's default capped at the
    # crops' side (B7's 600 px on 240-px crops: 6.25x the pixels, no new detail)
    select: str = "all"  # the crops embedded: "all", or "identity": only what identity folds cluster (the
    # REAL crops, at most folds.identity_crops evenly spaced per video; on DFDC ~190k of ~1.6 M crops)
    batch_size: int = 64  # crops per forward pass
    chunk_size: int = 2048  # crops per resumable chunk file: a kill loses at most one chunk's work
    dtype: str = "float16"  # array on disk: float16 halves it (130,000 x 512 -> 133 MB), float32
    center: float = 1.0  # fraction of the crop side kept around its centre before resizing; 1 / (1 +
    # faces.margin) = the face box alone (no background)
    loader_workers: int = 1  # crop-reading processes beside the model (0 = in the main process)
    fold: int = -1  # which fold{k}/best.pt of a run directory; -1 = the lowest-numbered fold
    bn_calibration: int = 512  # random-init models: crops (evenly drawn) whose batch statistics replace
    # the BatchNorm running stats first; with the initial ones b0's eval-mode features are ~1e-13
    # (measured), zero in float16
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1" ...


@dataclass
class AnalyzeConfig:
    """The study's PCA -> t-SNE -> HDBSCAN analysis of embeddings (``dfdc analyze``)."""

    # Study 004's own analysis is PCA(n_components=50) -> sklearn TSNE(perplexity=50, n_components=3)
    # -> HDBSCAN on that 3-D map: the profile study004. The defaults below are the kit's 2-D map: on
    # overlapping synthetic clusters it recovered more of them, faster (bench_analyze --profiles b7,study004)
    pca_components: int = 50  # the study: PCA to 50 components, then t-SNE
    tsne: str = "opentsne"  # "opentsne" (FFT-interpolated gradients, measured faster: bench_analyze)
    # or "sklearn" (Barnes-Hut; the study's library)
    perplexity: float = 30.0  # t-SNE's customary default (both libraries; the study: 50); capped at (n - 1) / 3
    tsne_3d: bool = False  # also a 3-D map (the study's n_components=3): Barnes-Hut only (no FFT in 3-D),
    # O(n log n) where the 2-D map is FFT from 10k points; off by default (docs/benchmarks.md: analysis)
    cluster_space: str = "tsne"  # HDBSCAN on the 2-D t-SNE map ("tsne": what the pictures show, cheap
    # in 2-D), on the 3-D map ("tsne3d": the study's; needs tsne_3d) or on the PCA scores ("pca");
    # identity folds always use "pca" (dfdc.identity)
    min_cluster_size: int = 20  # HDBSCAN: faces in the smallest cluster (our choice; the study states no
    # HDBSCAN setting: 520 clusters of 130,000 faces, 250 on average)
    min_samples: int = 0  # HDBSCAN core-distance neighbours; 0 = min_cluster_size
    threads: int = 0  # CPU threads for t-SNE; 0 = all cores
    seed: int = 0
    gallery_clusters: int = 6  # gallery images for this many largest clusters
    gallery_faces: int = 36  # faces per gallery (a 6 x 6 grid), evenly drawn from the cluster
    max_plot_points: int = 200_000  # maps show at most this many points (a random subset)


@dataclass
class ModelConfig:
    """Model construction (``dfdc.models``)."""

    arch: str = "efficientnet-b7"  # the seed study's backbone
    pretrained: str = "imagenet"  # "imagenet" (download when online), "none", or a path to a state dict
    dropout: float = 0.5
    num_classes: int = 2  # softmax over REAL/FAKE; P(FAKE) = softmax[:, 1]
    head: str = "softmax"  # "softmax": num_classes outputs + cross-entropy (study 004; the kit's default);
    # "sigmoid": one output neuron + binary cross-entropy, P(FAKE) = sigmoid (studies 001 and 003)
    bn_momentum: float = 0.01  # BatchNorm running-stat update per step (PyTorch convention): efficientnet-
    # pytorch's default (TF's decay 0.99); from random init with few steps use 0.1, or eval drifts.
    # Applied to every BatchNorm of every model family by dfdc.models.create_model (one place; tested per model)
    trainable: str = "all"  # study 000's transfer settings: "all" layers, "top50" / "top25" (the top 50 % /
    # 25 % of the backbone's layers, any topN works) or "head" (the classifier only); the rest is frozen
    # (dfdc.models.registry.FrameModel.set_trainable defines "layer")
    custom_depth: int = 3  # custom-cnn: conv layers, 2-5 (study 000's custom CNNs; its best: 3)
    custom_widths: str = "constant"  # custom-cnn width rule (study 000, Table 1): "ascending" / "descending"
    # (Table 1's filters for the depth) or "constant" (custom_base_width in every layer); its best: constant
    custom_base_width: int = 128  # custom-cnn constant width (Table 1: 32, 64, 128, 256; the study's best: 128)
    custom_head_width: int = 512  # custom-cnn: units of the dense layer after the flatten (study 000 does not
    # state it; 512 at 240 px reproduces its 51.7 M and 55 M parameter counts: dfdc.models.custom)
    ensemble_v1: str = ""  # reseption-ensemble: a trained reseption-v1 checkpoint (best.pt) and ...
    ensemble_v2: str = ""  # ... a trained reseption-v2 one; both empty = the whole ensemble from random init
    # -- models over a frame backbone (sequence models lstm/gru, the baselines logreg/svm/mlp) --
    backbone: str = "efficientnet-b7"  # the registered frame model whose pooled features they read (its
    # input size and normalisation, its weights from ``pretrained``); the seed study's backbone
    rnn_layers: int = 1  # recurrent layers of lstm / gru (study 000 tried 1-4; its best GRU: 1, its best LSTM: 2)
    rnn_hidden: int = 128  # units per recurrent layer (study 000 tried 128-2048; its best GRU and LSTM: 128)
    head_hidden: int = 1024  # the sequence classifier: Linear(rnn_hidden, this) -> ReLU -> Linear(this, 2) (study 000)
    mlp_hidden: int = 256  # the mlp baseline's one hidden layer (our choice; studies 000/002 give no width)
    mlp_frames: int = 40  # study 000's MLPs (mlp-3-constant-128 ...): frames whose features they read at once
    # (the study's 40); must equal sequence.seq_len


@dataclass
class TrainConfig:
    """Training per fold (``dfdc train``)."""

    size: int = 240  # network input side; the seed study trained B7 at about 240 px; 0 = the model's own
    # default (its pretrained config: e.g. 299 for xception, 600 for efficientnet-b7)
    epochs: int = 30  # the kit's choice (study 004 states none; the 1st place: 40 epochs of 2,500 steps)
    batch_size: int = 12  # per process (GPU): the 1st place's 12 crops per GPU for B7 (study 004 states none)
    optimizer: str = "adamw"  # "adamw", "sgd" (with momentum; Nesterov when nesterov) or "radam" (study 001)
    schedule: str = "cosine"  # "cosine": linear warm-up + cosine decay (the kit's default); "exponential": lr x
    # decay_gamma every decay_every epochs; "plateau": ReduceLROnPlateau on the validation loss; or
    # "exponential+plateau" (both, as study 001 trained Reseption)
    decay_gamma: float = 0.94  # exponential: the lr factor per decay (study 001, after Inception's training)
    decay_every: float = 2.0  # exponential: epochs between decays (study 001: every 2 epochs)
    plateau_factor: float = 0.5  # plateau: the lr factor when the validation loss stalls (study 001)
    plateau_patience: int = 2  # plateau: epochs without improvement before a reduction (study 001)
    lr: float = 2e-4  # the kit's choice for AdamW (study 004 states none); at a global batch of
    # lr_reference_batch; see lr_scaling
    lr_scaling: str = "none"  # how the lr follows the global batch (batch_size x processes) against
    # lr_reference_batch: "none", "linear" (lr x B/B0; Goyal et al. 2017, for SGD) or "sqrt"
    # (lr x sqrt(B/B0); the square-root rule for Adam-type optimizers, Malladi et al. 2022)
    lr_reference_batch: int = 12  # the global batch train.lr was chosen at (batch_size's 12 on one GPU)
    weight_decay: float = 1e-2
    momentum: float = 0.9  # SGD only (study 001's SGDM: 0.9)
    nesterov: bool = True  # SGD: Nesterov momentum (the kit's choice); false = plain momentum (study 001's SGDM)
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (of steps_per_epoch steps; may be a fraction)
    label_smoothing: float = 0.0  # the 1st place used 0.01
    grad_clip: float = 1.0
    amp: str = "bf16"  # "bf16", "fp16" or "none"; CUDA only, CPU runs in fp32
    loader_workers: int = -1  # loader processes per training process; -1 = auto: on CUDA enough workers
    # for feed_images_per_s at the faces/s one worker is measured to deliver at start-up (capped by the
    # cores per process), on a CPU 1 (the cores train the model)
    feed_images_per_s: float = 800.0  # images/s the auto loader must deliver per GPU: the 524 img/s of a
    # B7 240-px training step at batch 96 with fused AdamW (H200, synthetic batches) with 1.5x headroom
    persistent_workers: bool = True  # keep loader workers across epochs (no re-spawn and re-import per
    # epoch; the epoch travels with each sample key, so augmentation stays exact)
    pin_memory: bool = True  # page-locked host batches for asynchronous copies (CUDA only)
    fused_optimizer: bool = True  # torch's fused AdamW kernel on CUDA: 84 vs 54 img/s at batch 12, 524 vs
    # 377 at batch 96 (B7 240 px, bf16, H200, synthetic batches); the CPU keeps the default implementation
    compile: bool = False  # torch.compile the training forward/backward (first steps pay the compile)
    compile_mode: str = "default"  # torch.compile mode: "default", "reduce-overhead" or "max-autotune"
    cudnn_benchmark: bool = True  # cuDNN autotune per input shape (CUDA only); every training batch has
    # one shape (drop_last) and validation batches are padded to one, so it tunes once per shape
    patience: int = 5  # early stopping on video-level validation log loss
    val_clip: float = 0.01  # clip of video predictions in the validation log loss
    val_balanced: bool = True  # best epoch, early stopping and the OOF log loss on the class-balanced
    # video log loss, (REAL videos' + FAKE videos' log loss) / 2, as the 1st place selected: a fold is
    # ~84 % FAKE like DFDC's training set, its test sets are 50 % FAKE. false: Kaggle's plain log loss
    steps_per_epoch: int = 0  # optimizer steps per epoch, each epoch a fresh class-balanced draw of
    # steps x batch_size x processes crops (the 1st place: 2,500 batches); 0 = the whole balanced draw
    # (every crop of the smaller class once)
    val_max_videos: int = 0  # validate each epoch on a seeded sample of this many of the fold's videos
    # (0 = all of them); the fold's OOF files are then predicted on all its videos by the best epoch
    folds: str = "all"  # "all" or a comma list such as "0,1"
    seed: int = 1234
    runs_dir: str = "runs"
    name: str = "b7"
    warmup_start_factor: float = 0.01  # warm-up starts at lr * this (linear up to lr; a common choice)
    min_lr_ratio: float = 0.0  # the cosine decays to lr * this at the last step
    val_aggregation: str = "mean"  # per-video mean of face P(FAKE) for the validation log loss
    val_batch_size: int = 0  # validation batch; 0 = 2 x batch_size (no gradients to hold)
    stop_after_epochs: int = 0  # end this invocation after N epochs of a fold (resume later); 0 = no limit
    log_every: int = 50  # steps between host reads of the running loss (each read waits for the GPU)
    shared_dir_timeout: float = 30.0  # seconds a rank waits to see rank 0's marker in the run folder
    # (a shared file system may show a new file a few seconds late) before failing
    debug_dir: str = ""  # when set, each rank logs the sample indices it trained on (DDP tests)
    augment: str = "recipe"  # "recipe" (the seed study's list, dfdc.augment), "light" (flip + affine), "none",
    # "first-place" / "light-first-place" (recipe / light + the 1st place's landmark cut-outs, half-face
    # blackout and random-interpolation isotropic resize; dfdc.augment)
    channels_last: bool = True  # NHWC tensors: the layout oneDNN (CPU) and tensor cores (AMP) prefer
    cpu_threads: int = 0  # torch threads per CPU process; 0 = cores / processes - loader_workers, at
    # least 1 (more threads than free cores makes OpenMP spin: 5-10x slower steps, measured here)


@dataclass
class SequenceConfig:
    """Sequence models (``model.arch`` lstm / gru): a face track -> P(FAKE) (``dfdc.sequences``)."""

    seq_len: int = 8  # frames per track, the same for REAL and FAKE so length cannot leak the label; the
    # recipe keeps 8 crops per FAKE video (faces.frames_fake), so 8 needs no padding; study 000 used 40
    # frames (build faces with faces.frames_fake=40 for that)
    min_len: int = 0  # tracks with fewer crops are skipped in training and validation (and at prediction
    # while a longer track exists); shorter than seq_len are padded by repeating evenly spaced crops.
    # 0 = seq_len: no padding in training, so repeated frames cannot become a class cue
    mode: str = "frozen"  # "frozen": backbone features computed once per crop and cached, only the
    # recurrent head trains (seconds on a CPU); "finetune": the backbone trains inside the model
    aggregation: str = "max"  # tracks -> video: "max" (one swapped face makes the video FAKE) or "mean"


@dataclass
class BaselineConfig:
    """Classical baselines (``model.arch`` logreg / svm / mlp) on per-crop features (``dfdc.baselines``)."""

    features: str = "embedding"  # "embedding": pooled features of the frozen ``model.backbone``;
    # "pixels": the crop area-downscaled to 16 x 16 RGB (the `pixels` frame model), as a vector
    C: float = 1.0  # inverse regularisation strength of logreg and svm (scikit-learn's default)
    mlp_alpha: float = 1e-4  # the mlp's L2 penalty (scikit-learn's default)
    max_iter: int = 1000  # solver iterations of logreg / svm / mlp
    calibration_folds: int = 3  # svm: Platt scaling fitted on this many group folds (fakes with
    # their originals) of the training part, as LinearSVC gives no probabilities


@dataclass
class PredictConfig:
    """Per-video inference (``dfdc predict``) and the Kaggle kernel."""

    frames: int = 32  # evenly spaced frames per video, as the 1st place
    batch_size: int = 32  # face crops per model forward
    tta_flip: bool = False
    aggregation: str = "confident"  # "mean" or "confident" (1st place)
    # "confident" aggregation = the 1st place's confident_strategy (selimsef/dfdc_deepfake_challenge,
    # kernel_utils.py; exact rule in dfdc.aggregate):
    confident_threshold: float = 0.8  # a face is confidently fake above this P(FAKE) (their t = 0.8)
    confident_min_count: int = 11  # ... and rule 1 needs more than this many confident fakes (their 11)
    confident_min_share: float = 0.4  # ... and more than n // (1 / this) of the n faces (their n // 2.5)
    confident_real_threshold: float = 0.2  # rule 2: a face is confidently real below this P(FAKE) (their 0.2)
    confident_real_share: float = 0.9  # ... and rule 2 needs more than this share of the faces (their 0.9 n)
    clip: float = 0.01  # predictions clipped to [clip, 1 - clip] (NTech used 0.01)
    temperature: float = 1.0
    bias: float = 0.0  # logit offset after the temperature: sigmoid(logit(p) / temperature + bias); set by
    # dfdc calibrate (a threshold move, e.g. towards REAL when unseen people look fake); 0 = none
    crop_roundtrip: bool = False  # encode and decode each face crop as the model's training crops were
    # (its run's faces.image_format at faces.image_quality, JPEG q95 by default) before the model: training
    # reads crop files, the predictor crops decoded frames (docs/predict.md: crop format, measured)
    fallback: float = 0.5  # any failed video gets this value (log loss 0.693 at worst)
    time_budget: float = 0.0  # seconds; 0 = no limit; the kernel sets a margin under 9 h
    video_timeout: float = 0.0  # seconds one video's decode + detect may take in a worker before it
    # gets the fallback (reason "timeout") and its worker is replaced; 0 = no limit. Off by default:
    # on a CPU-only machine a 4K video legitimately takes long; the Kaggle kernel sets
    # kernel.video_timeout (60 s, ~7x the ~8 s/video the 9 h limit allows for 4,000 videos)
    workers: int = 2  # decode + detect processes overlapped with the model
    fp16: bool = True  # half-precision models on CUDA
    prefetch: int = 2  # videos in flight per worker: the next video is ready when one finishes
    worker_threads: int = 1  # torch/OpenCV threads per worker process (cores go to the model)
    detect_device: str = "cpu"  # MTCNN device in the workers ("cuda" shares the GPU; a comma list
    # "cuda:0,cuda:1" spreads the workers over the devices, worker i on item i mod n)
    calibration: str = "auto"  # "auto": the run's calibration.json if present; "none"; or a path


@dataclass
class CalibrateConfig:
    """Choosing aggregation, temperature and clip (``dfdc calibrate``).

    Fitted on predictions made the way the test is predicted: each fold's model alone on its
    held-out training videos, through the predictor (``predict.frames`` frames, the same crops
    and aggregation).
    """

    max_videos: int = 2000  # held-out videos predicted (a seeded sample above this; 0 = all): half
    # the 4,000-video public test set, at a fifth of its model work (one model per video, not five)
    seed: int = 0  # the sample and the nested split
    temperatures: tuple[float, float, int] = (0.25, 4.0, 41)  # grid: min, max, log-spaced steps
    # (T > 1 softens, T < 1 sharpens); 1.0 is always tried
    clips: tuple[float, float, int] = (0.001, 0.2, 31)  # grid of clip bounds: min, max, log-spaced
    # steps; predict.clip (the default) is always tried
    biases: tuple[float, float, int] = (-3.0, 3.0, 25)  # grid of logit offsets (predict.bias): min, max,
    # linear steps; 0 is always tried. An offset moves the threshold, which temperature and clip cannot
    test_fake_share: float = 0.5  # the calibration videos are weighted to a test set with this FAKE share:
    # loss = share x LL(FAKE videos) + (1 - share) x LL(REAL videos); DFDC's public and private test sets
    # are 50 % FAKE (Dolhansky et al. 2020), its training folds ~84 %
    min_videos: int = 200  # fewer calibration videos: temperature and clip only soften (T >= 1, clip >=
    # predict.clip, the predictor's rule), and a logit offset is bounded by small_bias ...
    small_bias: float = 0.5  # ... |bias| <= this, and only when the offset chosen on the fit part also wins
    # on the held-out part (a few near-separable videos overfit an unbounded offset: docs/calibrate.md, measured)
    holdout_share: float = 0.5  # nested split: a sharper-than-default setting chosen on the other
    # part must also beat the best softening-only setting on this held-out part to be kept


@dataclass
class KernelConfig:
    """Kaggle kernel bundle, push, submission and the kernel's own run (``dfdc kernel``, ``dfdc submit``)."""

    slug: str = "dfdc-kit-inference"
    dataset_slug: str = "dfdc-kit-models"
    competition: str = "deepfake-detection-challenge"
    max_weights_bytes: int = 1_000_000_000  # "models had to fit in 1 GB"
    time_budget: float = 8.5 * 3600  # the 9 h limit less a safety margin
    private: bool = True
    enable_gpu: bool = True
    machine_shape: str = "NvidiaTeslaT4"  # kernel-metadata.json accelerator: "NvidiaTeslaT4" gets two T4s
    # (sm_75); enable_gpu alone still gets a P100, whose sm_60 today's torch no longer supports
    # (kaggle-cli #1151, #1196). Also accepted: "NvidiaTeslaP100", "TpuV5E8"; "" leaves it out
    license: str = "unknown"  # dataset-metadata.json license name (Kaggle needs exactly one)
    build_dir: str = "kernels/build"  # bundle output (git-ignored)
    wheel_cache: str = ""  # where downloaded third-party wheels are kept; "" = BUILD_DIR/wheel-cache
    push_timeout: float = 3600.0  # seconds per `kaggle` CLI call (the client has no HTTP timeout;
    # uploading up to 1 GB of weights)
    dataset_ready_timeout: float = 1800.0  # seconds to wait for a pushed dataset version to be ready
    # before the kernel is pushed (Kaggle processes uploads; a kernel pushed earlier sees no files)
    dataset_poll: float = 15.0  # seconds between two `kaggle datasets status` calls
    local_timeout: float = 9 * 3600.0  # seconds for `dfdc kernel --local`: Kaggle's 9 h kernel limit
    local_image: str = "linked"  # the local run's interpreter (kernels/kaggle-image.txt): "linked" = this
    # environment's copies of the listed packages, linked (seconds, offline, any version); "pinned" = the
    # image's versions installed from the package index into a cached venv (GBs: PyPI's torch is a CUDA build)
    pinned_image_dir: str = ".cache/kaggle-image"  # where the "pinned" interpreter is built and kept
    pinned_image_timeout: float = 3600.0  # seconds for its pip install (torch and its CUDA libraries)
    # -- the kernel's own run --
    max_fallback_share: float = 0.2  # more videos than this share falling back for reasons that say the
    # system broke (import, CUDA, model errors, dead or hung workers; not the video's own fault, not the
    # time budget, which makes it "ok (degraded ...)"): the kernel prints "STATUS: failed" and exits
    # non-zero after writing the fallback submission
    video_timeout: float = 60.0  # predict.video_timeout in the kernel: ~7x the ~8 s per video that the
    # 9 h limit allows for 4,000 videos
    workers: int = 3  # decode + detect worker processes on a GPU machine (T4 x2 has 4 CPUs: 3 workers,
    # the main process feeds the GPUs); MTCNN runs on the GPUs, workers alternating between them
    cpu_frames: int = 8  # when no GPU passes the start-up probe: frames per video on the CPU ...
    cpu_models: int = 1  # ... fold models used (lowest validation log loss first) ... (estimate: B7 at 240 px ~0.2-0.25 s per face on a
    # few CPU threads, so 8 frames x 1 model ~2-4 s per video, inside the ~7.6 s that 8.5 h leave
    # for 4,000 videos; the time budget still holds if it is slower)
    cpu_workers: int = 1  # ... and decode + detect workers (the model needs the other CPUs)


@dataclass
class Config:
    profile: str = DEFAULT_PROFILE
    synth: SynthConfig = field(default_factory=SynthConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
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
        items = value.split(",") if isinstance(value, str) else list(value or ())
        if all(isinstance(c, str) for c in current):  # a list of names (synth.methods): any length
            return tuple(str(v).strip() for v in items if str(v).strip())
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


EXTENDS_KEY = "extends"  # a profile's key naming the profile it starts from


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_data(profile: str | Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], str]:
    """A profile's mapping with its ``extends`` chain resolved (each profile deep-merged over
    the one it extends), and the chain as text for messages (``compare.yaml < smoke.yaml``)."""
    path = profile_path(str(profile))
    if path.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: profiles extend each other in a cycle ({cycle}); remove one `extends:`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of sections")
    data.pop("profile", None)
    base = data.pop(EXTENDS_KEY, None)
    if base is None:
        return data, path.name
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: `{EXTENDS_KEY}:` takes one profile name or YAML path, got {base!r}")
    base_path = Path(base)
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base_path = path.parent / base_path  # a path: relative to the extending file
    parent, where = profile_data(base_path if base_path.suffix in (".yaml", ".yml") else base.strip(),
                                 (*chain, path.resolve()))
    return _deep_merge(parent, data), f"{path.name} < {where}"


def load_config(profile: str = DEFAULT_PROFILE, overrides: list[str] | None = None) -> Config:
    """Defaults, then the profile (over the profiles it extends), then ``section.key=value`` overrides."""
    cfg = Config(profile=profile)
    data, where = profile_data(profile)
    _merge(cfg, data, where)
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


# Keys of older saved configurations (checkpoints, runs): section.key -> its new place, or None
# when it is gone (its meaning changed; the current default applies).
RENAMED_KEYS: dict[str, str | None] = {
    "predict.confident_min_fraction": None,  # replaced by the 1st place's count + share rule
    "predict.confident_real_fraction": "predict.confident_real_share",
    "predict.calib_temperatures": "calibrate.temperatures",
    "predict.calib_clips": "calibrate.clips",
    "predict.calib_min_videos": "calibrate.min_videos",
    "kernel.wheel_packages": None,  # the bundle now ships what its models need (dfdc.kaggle.wheels)
    "train.max_steps_per_epoch": "train.steps_per_epoch",  # 0 = a whole balanced draw in both
    "model.reseption_blocks": None,  # Reseption now has Inception-V3's 3 / 4 / 2 modules (dfdc.models.reseption)
}


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration with ``RENAMED_KEYS`` moved to their current place."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            if new is not None:
                new_section, new_key = new.split(".")
                data.setdefault(new_section, {}).setdefault(new_key, value)
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. the config saved beside a run); keys
    of older versions are upgraded (``RENAMED_KEYS``)."""
    data = _upgrade(dict(data))
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


VIA_MAKE_ENV = "DFDC_VIA_MAKE"  # set (to 1) by the Makefile: advice then names make variables, not flags


def make_hint(cli: str, make: str) -> str:
    """What a message tells the user to pass: the make variable (``RUN=NAME``) when the command
    came through make (``VIA_MAKE_ENV``), else the command-line option (``--models runs/NAME``)."""
    return make if os.environ.get(VIA_MAKE_ENV, "").strip() not in ("", "0") else cli


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
