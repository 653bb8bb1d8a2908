"""Training benchmark (``make bench-train``; not a test): is the data loader fast enough?

Measures on this machine (GPU when available, else CPU):

1. data-loader throughput: faces/s of one worker through PNG read + the training
   augmentation at the recipe's 240 px (and of a DataLoader with N worker processes);
2. one training step (forward + backward + AdamW step) of EfficientNet-B0 and B7 at
   batch 4, 240 px;
3. how many loader workers keep one GPU fed: GPU images/s / faces/s per worker. On a GPU the
   step time is measured; on a CPU only the GPU step of B7 is given, as an ESTIMATE: the model's measured
   training FLOPs (torch.utils.flop_counter) divided by an assumed effective GPU throughput
   (``--gpu-tflops``), printed as such.

Usage: ``python bench/bench_train.py [--faces DATA/faces] [--size 240] [--batch 4]``.
Without ``--faces`` it times synthetic 240-px PNG crops (the faces builder's format).
Writes the figures to bench/out/train.json as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from dfdc.augment import train_transform
from dfdc.config import ModelConfig, TrainConfig
from dfdc.data import FaceDataset
from dfdc.io import atomic_write_json
from dfdc.models import create_model

RECIPE_SIZE = TrainConfig().size  # 240 px, the seed study's input side
BATCH = 4  # the brief's step-time batch (a B7 batch of 12 per GPU is the recipe's)
# Assumed effective fp32 throughput of one DFDC-era GPU on EfficientNet training, in TFLOPS:
# a P100 peaks at 9.3; depthwise convolutions reach a small fraction of peak. An assumption,
# not a measurement: pass --gpu-tflops to use your own.
ASSUMED_GPU_TFLOPS = 3.0
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward is about 3 forward passes (standard rule of thumb)


def synthetic_faces(folder: Path, count: int, size: int) -> pd.DataFrame:
    """PNG crops like the faces builder writes: smooth colour + texture, ``size`` px square."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        image = np.clip(base.astype(np.int16) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"crop{i:04d}.png"
        cv2.imwrite(str(path), image)
        rows.append({"file": str(path), "y": i % 2})
    return pd.DataFrame(rows)


def loader_rate(table: pd.DataFrame, size: int, workers: int, repeats: int) -> float:
    """Faces/s through read + augment + collate with ``workers`` processes (0 = this process)."""
    dataset = FaceDataset(table, train_transform(size), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False, num_workers=workers)
    next(iter(loader))  # start-up (worker spawn, first imports) is not throughput
    count, start = 0, time.perf_counter()
    for _ in range(repeats):
        for x, _, _ in loader:
            count += len(x)
    return count / (time.perf_counter() - start)


def step_time(arch: str, size: int, batch: int, device: torch.device, steps: int) -> float:
    """Seconds per training step (forward + backward + optimizer step), after one warm-up."""
    layout = torch.channels_last if TrainConfig().channels_last else torch.contiguous_format  # as dfdc.train
    model = create_model(ModelConfig(arch=arch, pretrained="none")).to(device, memory_format=layout).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 2, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def forward_flops(arch: str, size: int) -> float:
    """Forward FLOPs of one image (counted by torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(ModelConfig(arch=arch, pretrained="none")).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=Path, default=None, help="a faces folder (faces.csv + crops) to read from")
    parser.add_argument("--size", type=int, default=RECIPE_SIZE)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--images", type=int, default=64, help="crops timed through the loader")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per model")
    parser.add_argument("--archs", default="efficientnet-b0,efficientnet-b7")
    parser.add_argument("--estimate-arch", default="efficientnet-b7",
                        help="on a CPU, the model whose GPU step time is estimated (the recipe's B7)")
    parser.add_argument("--gpu-tflops", type=float, default=ASSUMED_GPU_TFLOPS,
                        help="assumed effective GPU TFLOPS for the CPU-side estimate")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the CPU step times (0 = torch's default); on a shared "
                             "2-core machine 1 avoids OpenMP spinning (dfdc train's rule with 1 loader worker)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/train.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else f'{os.cpu_count()} CPU cores, {threads} torch threads'})")
    results: dict[str, object] = {"device": str(device), "size": args.size, "batch": args.batch}

    with tempfile.TemporaryDirectory() as tmp:
        if args.faces is not None:
            table = pd.read_csv(args.faces / "faces.csv").head(args.images)
            table = pd.DataFrame({"file": [str(args.faces / p) for p in table["path"]],
                                  "y": (table["label"] == "FAKE").astype(int)})
        else:
            table = synthetic_faces(Path(tmp), args.images, args.size)
        torch.set_num_threads(1)  # a loader worker is one process on one core
        per_worker = loader_rate(table, args.size, 0, repeats=2)
        two = loader_rate(table, args.size, 2, repeats=2)
        torch.set_num_threads(threads)
    print(f"loader: {per_worker:.1f} faces/s per worker (read + augment at {args.size} px); "
          f"DataLoader with 2 workers: {two:.1f} faces/s")
    results["loader_faces_per_s_per_worker"] = per_worker
    results["loader_faces_per_s_2_workers"] = two

    for arch in args.archs.split(","):
        seconds = step_time(arch, args.size, args.batch, device, args.steps)
        ips = args.batch / seconds
        print(f"{arch}: {seconds * 1000:.0f} ms per training step at batch {args.batch}, {args.size} px "
              f"({ips:.1f} images/s on {device}; measured)")
        entry: dict[str, object] = {"step_seconds": seconds, "images_per_s": ips, "measured_on": str(device)}
        if device.type == "cuda":
            entry["workers_to_feed_gpu"] = ips / per_worker
            print(f"  -> {ips / per_worker:.1f} loader workers keep this GPU fed (measured)")
        elif arch == args.estimate_arch:
            flops = forward_flops(arch, args.size)
            est_ips = args.gpu_tflops * 1e12 / (TRAIN_FLOPS_PER_FORWARD * flops)
            entry.update(forward_gflops=flops / 1e9, gpu_images_per_s_estimate=est_ips,
                         workers_to_feed_gpu_estimate=est_ips / per_worker)
            print(f"  ESTIMATE for one GPU (not measured): {flops / 1e9:.2f} GFLOPs forward per image x "
                  f"{TRAIN_FLOPS_PER_FORWARD:.0f} for training at an assumed {args.gpu_tflops:.1f} effective TFLOPS "
                  f"-> ~{est_ips:.0f} images/s -> ~{est_ips / per_worker:.1f} loader workers at "
                  f"{per_worker:.0f} faces/s each")
        results[arch] = entry
    atomic_write_json(args.out, results)
    print(f"figures -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
