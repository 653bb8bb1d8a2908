"""Training benchmark (``make bench-train``; not a test): the kit's own training loop.

For each profile and batch size, on this machine (a GPU when there is one, else the CPU),
through ``dfdc.train.FoldTrainer`` -- the class ``dfdc train`` runs, with its loader, the
profile's augmentation, AMP, channels_last, fused AdamW, cuDNN autotune, torch.compile as the
profile says -- on synthetic crops in the profile's crop format and size:

1. loop: ``train_epoch`` over ``warm + prefetched + steps`` batches of the real loader;
   images/s over the last ``steps`` (the first steps pay worker start-up, cuDNN autotune,
   compilation, and the ``prefetched`` = workers x prefetch_factor batches the workers made
   during the first step run from stock, faster than the loader delivers; the first step's
   time is printed apart);
2. step: the same ``train_step`` on one batch already on the device, ``steps`` times:
   what the model alone allows;
3. loader: faces/s of ONE loader worker (read + decode + the profile's augmentation,
   ``dfdc.data.loader_rate``), the workers the step needs (step images/s / faces/s per
   worker) and loop / step (1.0: the loader keeps up).

On a CPU every figure is a CPU figure; the GPU lines are not GPU measurements, and say so:
the images/s line is the model's training FLOPs (``torch.utils.flop_counter``, forward x 3)
at an effective GPU throughput that is itself DERIVED from the kit's one GPU training
measurement (B7 at 240 px, batch 96: 524 images/s on an H200, ``ASSUMED_GPU_TFLOPS``). So for
B7 at 240 px it restates that H200 figure (circular, not an independent estimate); for other
models and sides it is that figure scaled by FLOPs; with ``--gpu-tflops`` it is an estimate
at the throughput given. The memory line estimates the activations a training step keeps per
image (bytes saved for backward, counted on the CPU in fp32, halved for bf16). Writes
bench/out/train.json.

Usage: ``python bench/bench_train.py [--profiles b7,smoke] [--batches b7=12,48,96]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from dfdc.config import load_config
from dfdc.data import load_training_data, loader_rate
from dfdc.io import atomic_write_json
from dfdc.models import create_model
from dfdc.distributed import Dist, set_cpu_threads
from dfdc.train import FoldTrainer

# Effective GPU throughput assumed for the CPU-side estimate, in TFLOPS: the one GPU training
# measurement this kit has, B7 at 240 px, batch 96, bf16, fused AdamW: 524 images/s on an
# H200 (a synthetic-batch step of the model and optimizer, not yet the kit's loop) x 3 x 11.26 GFLOPs forward per image = 17.7 TFLOPS
# effective. Depthwise convolutions keep EfficientNet far below the card's peak. Pass
# --gpu-tflops to assume another card. Derived from that measurement, it cannot check it: the
# B7-at-240 line it gives IS the measurement restated (throughput_basis says so in the output).
ASSUMED_GPU_TFLOPS = 17.7
MEASURED_GPU = "524 img/s, B7 240 px batch 96 bf16 fused AdamW on an H200 (synthetic batches)"
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward is about 3 forward passes (standard rule of thumb)
BF16_BYTES_RATIO = 0.5  # bf16 activations take half the bytes of fp32 ones
OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weight + grad + AdamW's two moments
GPU_BATCHES = {"b7": (12, 48, 96)}  # b7-recipe's 12 (the 1st place's per-GPU batch) and the batches measured on an H200 (synthetic)
CPU_BATCHES = {"b7": (4,)}  # B7 steps take seconds on a CPU: one small batch
POOL = 256  # distinct synthetic crops; epochs draw from them (with repeats when more are needed)


def synthetic_faces(folder: Path, count: int, size: int, fmt: str) -> tuple[Path, Path]:
    """A faces folder (faces.csv + ``size``-px crops in ``fmt``) and a 2-fold folds.csv."""
    rng = np.random.default_rng(0)
    (folder / "crops").mkdir(parents=True, exist_ok=True)
    faces, folds = [], []
    for i in range(count):
        base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        image = np.clip(base.astype(np.int16) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        video, label = f"v{i:05d}.mp4", ("REAL", "FAKE")[i % 2]
        rel = f"crops/{i:05d}.{fmt}"
        cv2.imwrite(str(folder / rel), image)
        faces.append({"video": video, "label": label, "frame": 0, "face": 0, "path": rel})
        folds.append({"video": video, "label": label, "fold": (i // 2) % 2})
    pd.DataFrame(faces).to_csv(folder / "faces.csv", index=False)
    pd.DataFrame(folds).to_csv(folder / "folds.csv", index=False)
    return folder, folder / "folds.csv"


def throughput_basis(gpu_tflops: float) -> str:
    """What the GPU images/s line rests on, said plainly (the default throughput is derived
    from the one GPU measurement, so it restates it rather than estimating anything)."""
    if gpu_tflops == ASSUMED_GPU_TFLOPS:
        return (f"NOT an independent estimate: {gpu_tflops:g} TFLOPS is derived from the one GPU measurement "
                f"({MEASURED_GPU}), so for B7 at 240 px this restates that figure and for other models and "
                f"sides scales it by FLOPs")
    return f"an estimate at the assumed {gpu_tflops:g} effective TFLOPS (--gpu-tflops), not measured"


def forward_flops(arch: str, size: int) -> float:
    """Forward FLOPs of one image (counted by torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(load_config("smoke", [f"model.arch={arch}"]).model, size).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def saved_bytes_per_image(arch: str, size: int) -> tuple[float, int]:
    """(bytes kept for backward per image in fp32, parameter count), counted on the CPU."""
    model = create_model(load_config("smoke", [f"model.arch={arch}"]).model, size).train()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(2, 3, size, size)).sum()
    return total / 2, sum(p.numel() for p in model.parameters())


def prefetched_batches(trainer: FoldTrainer) -> int:
    """Batches the training loader's workers hold ready when the first step starts (workers x
    prefetch_factor): the steps right after them run from that stock, faster than the loader
    delivers, so the loop figure starts after them."""
    loader = trainer.train_loader
    return loader.num_workers * (loader.prefetch_factor or 0) if loader.num_workers > 0 else 0


def loop_trainer(cfg, data, tmp: Path, profile: str, ctx: Dist,  # noqa: ANN001
                 warm: int, steps: int) -> tuple[FoldTrainer, int]:
    """The fold trainer for the loop figure and its untimed steps: ``warm`` plus the batches the
    loader prefetched (the epoch is made that much longer, with the same workers)."""
    trainer = FoldTrainer(cfg, data, 0, tmp / "runs" / profile, ctx)
    skip = warm + prefetched_batches(trainer)
    if skip > warm:
        cfg.train.steps_per_epoch = skip + steps
        cfg.train.loader_workers = trainer.workers  # the same workers (auto would measure them again)
        trainer = FoldTrainer(cfg, data, 0, tmp / "runs" / profile, ctx)
    return trainer, skip


def bench_one(profile: str, batch: int, steps: int, warm: int, tmp: Path, sets: list[str]) -> dict:
    cfg = load_config(profile, [f"train.batch_size={batch}", f"train.steps_per_epoch={warm + steps}",
                                "model.pretrained=none", f"train.runs_dir={tmp / 'runs'}", *sets])
    fmt = getattr(cfg.faces, "image_format", "png")
    faces_dir = tmp / f"faces-{cfg.faces.size}-{fmt}"
    if not (faces_dir / "faces.csv").is_file():
        synthetic_faces(faces_dir, POOL, cfg.faces.size, fmt)
    data = load_training_data(faces_dir, faces_dir / "folds.csv")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = Dist(device=device)
    set_cpu_threads(cfg, ctx)  # dfdc train's rule: on a CPU, the cores less one per loader worker
    trainer, skip = loop_trainer(cfg, data, tmp, profile, ctx, warm, steps)
    trainer.build(resume=False)
    epoch = trainer.train_epoch(warm=skip)
    trainer.sampler.set_epoch(0)
    keys = list(trainer.sampler)[:max(32, batch)]
    per_worker = loader_rate(trainer.train_ds, keys[:32])
    items = [trainer.train_ds[k] for k in keys[:batch]]  # one batch, made here: no loader worker runs meanwhile
    x = trainer._to_device(torch.stack([item[0] for item in items]))
    y = torch.tensor([item[1] for item in items], device=device)
    trainer.train_step(x, y)
    trainer._sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x, y)
    trainer._sync()
    step_rate = steps * batch / (time.perf_counter() - start)
    return {"profile": profile, "arch": cfg.model.arch, "size": trainer.input.size, "batch": batch,
            "crop_format": fmt, "amp": trainer.amp if trainer.use_amp else "fp32", "compile": cfg.train.compile,
            "workers": trainer.workers, "loop_images_per_s": epoch.steady_images_per_s, "loop_untimed_steps": skip,
            "first_step_seconds": epoch.first_step_seconds, "step_images_per_s": step_rate,
            "loader_faces_per_s_per_worker": per_worker, "workers_needed": step_rate / per_worker,
            "loop_over_step": epoch.steady_images_per_s / step_rate, "device": str(device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", default="b7,smoke", help="comma list of profiles")
    parser.add_argument("--batches", action="append", default=[], metavar="PROFILE=B1,B2",
                        help="batch sizes of a profile (default: GPU b7=12,48,96 and each profile's own; "
                             "CPU b7=4 and the others' own)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 20 on a GPU, 2 on a CPU)")
    parser.add_argument("--warm", type=int, default=0, help="untimed first steps (default 5 on a GPU, 1 on a CPU)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="configuration override for every profile, e.g. train.compile=true")
    parser.add_argument("--gpu-tflops", type=float, default=ASSUMED_GPU_TFLOPS,
                        help="effective GPU TFLOPS for the CPU-side images/s line (default: derived from the "
                             "H200 measurement, so that line restates it)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/train.json"))
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    steps, warm = args.steps or (20 if cuda else 2), args.warm or (5 if cuda else 1)
    where = (torch.cuda.get_device_name(0) if cuda
             else f"CPU, {os.cpu_count()} cores (no GPU: the GPU lines are derived, not measured)")
    print(f"device: {where}; {warm} warm-up + {steps} timed steps per row")
    chosen = dict(GPU_BATCHES if cuda else CPU_BATCHES)
    for item in args.batches:
        name, _, values = item.partition("=")
        chosen[name] = tuple(int(v) for v in values.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles.split(","):
            own = load_config(profile).train.batch_size
            batches = chosen.get(profile, (own,))
            if cuda and own not in batches:
                batches = (*batches, own)
            for batch in batches:
                row = bench_one(profile, batch, steps, warm, Path(tmp), args.sets)
                rows.append(row)
                print(f"{profile:6s} {row['arch']} {row['size']} px batch {batch:3d} {row['amp']}: "
                      f"loop {row['loop_images_per_s']:7.1f} img/s (first step {row['first_step_seconds']:.1f} s, "
                      f"{row['workers']} workers, timed after {row['loop_untimed_steps']} steps), "
                      f"step alone {row['step_images_per_s']:7.1f} img/s; loader "
                      f"{row['loader_faces_per_s_per_worker']:.0f} faces/s per worker ({row['crop_format']}) -> "
                      f"{row['workers_needed']:.2f} workers for the step; loop/step {row['loop_over_step']:.2f} "
                      f"[measured on {row['device']}]")
    result: dict[str, object] = {"device": where, "steps": steps, "warm": warm, "rows": rows}
    if not cuda:
        estimates = []
        for arch, size, batch in sorted({(r["arch"], r["size"], GPU_BATCHES[r["profile"]][-1])
                                         for r in rows if r["profile"] in GPU_BATCHES}):
            flops = forward_flops(arch, size)
            saved, params = saved_bytes_per_image(arch, size)
            ips = args.gpu_tflops * 1e12 / (TRAIN_FLOPS_PER_FORWARD * flops)
            per_worker = min(r["loader_faces_per_s_per_worker"] for r in rows if r["arch"] == arch)
            memory = batch * saved * BF16_BYTES_RATIO + params * OPTIMIZER_BYTES_PER_PARAM
            basis = throughput_basis(args.gpu_tflops)
            estimates.append({"arch": arch, "size": size, "forward_gflops": flops / 1e9,
                              "gpu_images_per_s_estimate": ips, "gpu_images_per_s_basis": basis,
                              "workers_estimate": math.ceil(ips / per_worker),
                              "batch": batch, "gpu_memory_gb_estimate": memory / 1e9})
            print(f"NOT MEASURED on a GPU -- {arch} at {size} px: {flops / 1e9:.2f} GFLOPs forward x "
                  f"{TRAIN_FLOPS_PER_FORWARD:.0f} per image at {args.gpu_tflops:g} effective TFLOPS -> "
                  f"~{ips:.0f} img/s ({basis}) -> ~{math.ceil(ips / per_worker)} loader workers at this CPU's "
                  f"{per_worker:.0f} faces/s each; batch {batch} in bf16 keeps ~{memory / 1e9:.1f} GB "
                  f"({saved / 1e6:.0f} MB saved for backward per image in fp32, halved, + {params / 1e6:.1f} M "
                  f"parameters x {OPTIMIZER_BYTES_PER_PARAM} bytes; an estimate: workspace and allocator slack "
                  "not counted)")
        result["gpu_estimates"] = estimates
    atomic_write_json(args.out, result)
    print(f"figures -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
