"""Benchmark of the predictor (``make bench-predict``; not a test).

On DFDC-like videos (1920x1080, 30 fps, 10 s, H.264, made by ``dfdc.synth.generate`` and
cached under bench/out/), runs ``dfdc.predict.predict_videos`` (the predictor ``dfdc predict``
and the kernel run: worker processes for decode + detect, uint8 crops, the model in the main
process) at ``predict.frames`` (32) frames per video with one randomly initialised model per
architecture (efficientnet-b0 and -b7 by default) at ``--size`` px (crops and network input;
240 as the recipe: the checkpoint records that side, and the table prints the side each model
was measured at) and prints seconds per video:

- decode, detect (+ crop/preprocess): time spent in the worker processes, per video;
- model: time of the model forwards in the main process, per video;
- total: wall clock of the run (worker start-up included, model loading excluded) / videos;
- steady: the same without the pipeline fill (worker start-up + the first video's decode and
  detection, during which the model has nothing to do): the per-video cost of a long run.

The worker stage runs ``workers`` videos at once, so its throughput time per video is
(decode + detect + crop) / workers; the stages overlap, so the total should be close to the
slowest stage: ratio = total / max(worker stage, model), target <= 1.15. Also prints the
projected time for 4,000 videos (the Kaggle test set): fill + 4,000 x steady.

``--models 1,5`` times an ensemble of that many fold models of each architecture (the
recipe's five B7 folds); ``--set predict.KEY=VALUE`` sets the predictor (``bench/gpu.sh`` runs
the Kaggle kernel's T4 plan this way: fp16, 3 workers, MTCNN on the GPU, 4 CPU cores);
``--synth KEY=VALUE`` makes other bench videos (``bench/gpu.sh --quick``: small ones) and
``--out`` keeps videos, runs and submissions elsewhere than bench/out/predict.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_faces.py beside this file, however it is loaded
from bench_faces import BENCH_SYNTH, SHAPE_KEYS  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "predict"
SHARED = HERE / "out" / "faces" / "data"  # bench_faces.py caches the same videos here
KAGGLE_VIDEOS = 4000  # videos of the Kaggle test set
TARGET_RATIO = 1.15  # total within this factor of the slowest stage


def bench_config():
    """bench_faces.py's videos (DFDC-like bitrate), so both benches share one cache."""
    return BENCH_SYNTH


def bench_videos(synth=None, out: Path = OUT) -> Path:  # noqa: ANN001
    """The folder of bench videos (``synth``, default 1080p ones, reusing bench_faces' cache
    when it matches)."""
    from dfdc.synth import generate, read_marker

    synth = synth or bench_config()
    for data in (SHARED, out / "data"):
        marker = read_marker(data)
        if marker is not None and all(marker["config"].get(k) == getattr(synth, k) for k in SHAPE_KEYS):
            print(f"bench videos: {data} (cached)")
            return data / "dfdc_train_part_0"
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    generate(data, synth)
    print(f"bench videos: {data} (generated in {time.perf_counter() - t:.0f} s)")
    return data / "dfdc_train_part_0"


def video_set(source: Path, n: int, out: Path = OUT) -> tuple[Path, Path]:
    """``n`` videos (hard links cycling over the source ones) and a sample submission."""
    folder = out / f"videos{n}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(source.glob("*.mp4"))
    names = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"{i:03d}_{src.name}"
        if not dst.exists():
            os.link(src, dst)
        names.append(dst.name)
    sample = folder.parent / f"sample{n}.csv"
    pd.DataFrame({"filename": names, "label": 0.5}).to_csv(sample, index=False)
    return folder, sample


def saved_side(ckpt: Path) -> int | None:
    """The input side a cached bench checkpoint was saved with (None: unreadable or an older format)."""
    import torch

    from dfdc.models import CHECKPOINT_FORMAT, checkpoint_input

    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError):
        return None
    return checkpoint_input(saved).size if saved.get("format") == CHECKPOINT_FORMAT else None


def make_run(arch: str, size: int, out: Path = OUT, models: int = 1) -> Path:
    """A run folder of ``models`` fold models with random weights for ``arch`` at ``size`` px:
    crops and network input (a cached one saved at another side -- e.g. at the model's native
    side, as this bench did before -- is rebuilt)."""
    from dfdc.config import load_config
    from dfdc.models import create_model, save_checkpoint

    run = out / (f"run-{arch}-{size}" + (f"-x{models}" if models > 1 else ""))
    for fold in range(models):
        ckpt = run / f"fold{fold}" / "best.pt"
        if not ckpt.exists() or saved_side(ckpt) != size:
            cfg = load_config("b7", [f"model.arch={arch}", "model.pretrained=none", f"faces.size={size}",
                                     f"train.size={size}"])  # fmt: skip
            save_checkpoint(ckpt, create_model(cfg.model, size), cfg, {"fold": fold})
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="efficientnet-b0,efficientnet-b7", help="comma list of architectures")
    parser.add_argument("--size", type=int, default=240, help="crop / input side (the recipe: 240)")
    parser.add_argument("--videos", type=int, default=12, help="videos per run (links over the 6 bench videos)")
    parser.add_argument("--workers", type=int, default=2, help="decode+detect worker processes")
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--models", default="1", help="comma list of ensemble sizes (fold models per run)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="configuration override of the predictor, e.g. predict.fp16=true")
    parser.add_argument("--synth", action="append", default=[], metavar="KEY=VALUE",
                        help="bench video setting (dfdc.config.SynthConfig), e.g. width=320")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for videos, runs and submissions")
    args = parser.parse_args(argv)

    import torch

    from dfdc.config import load_config
    from dfdc.predict import predict_videos

    import dataclasses

    synth = dataclasses.replace(bench_config(), **{k: type(getattr(bench_config(), k))(v) for k, v in
                                                   (item.split("=", 1) for item in args.synth)})
    folder, sample = video_set(bench_videos(synth, args.out), args.videos, args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{args.videos} videos 1920x1080, {args.frames} frames each, {args.workers} workers, device {device}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")  # fmt: skip
    rows = []
    for arch, models in [(a, int(m)) for a in args.archs.split(",") for m in args.models.split(",")]:
        run = make_run(arch, args.size, args.out, models)
        cfg = load_config("b7", [f"predict.frames={args.frames}", f"predict.workers={args.workers}",
                                 "predict.calibration=none", *args.sets])  # fmt: skip
        out = args.out / f"sub-{arch}-x{models}" / "submission.csv"
        report = predict_videos(folder, run, out, cfg, sample, device)
        n = max(report.processed, 1)
        s = report.seconds
        decode, detect, crop, model = (s[k] / n for k in ("decode", "detect", "crop", "model"))
        total = (s["total"] - s["setup"]) / n
        steady = (s["total"] - s["setup"] - s.get("fill", 0.0)) / n  # the pipeline full
        worker_stage = (decode + detect + crop) / max(args.workers, 1)
        bound = max(worker_stage, model)
        rows.append(
            {
                "arch": arch,
                "models": models,
                "fp16": cfg.predict.fp16 and device != "cpu",
                "input px": saved_side(run / "fold0" / "best.pt"),
                "faces/video": report.faces / n,
                "decode": decode,
                "detect": detect,
                "crop": crop,
                "worker stage": worker_stage,
                "model": model,
                "total": total,
                "ratio": total / bound,
                "steady": steady,
                "steady ratio": steady / bound,
                "4000 videos (h)": (s.get("fill", 0.0) + steady * KAGGLE_VIDEOS) / 3600,
                "fallbacks": len(report.fallbacks),
            }
        )
        print(report.summary())
    table = pd.DataFrame(rows)
    print("\nseconds per video (worker stage = (decode + detect + crop) / workers; ratio = total / slowest stage)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nratio total / slowest stage: worst {table['ratio'].max():.2f} with the pipeline fill, "
          f"{table['steady ratio'].max():.2f} once full (target <= {TARGET_RATIO})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
