"""Benchmark of ``dfdc embed``: crops per second, end to end (read PNG, prepare, model, write).

``--n`` crops (``--crop``-px PNGs of a face-like gradient with noise) are written as a faces
folder; each model embeds them into a fresh folder with ``dfdc.embed.embed_faces`` (random
init, BatchNorm statistics re-estimated first, as for any random-init model). Prints crops/s
per model on the device (CUDA when available, else CPU).

    python bench/bench_embed.py                                  # 512 crops, b0 / tiny-cnn / grey-pixels
    python bench/bench_embed.py --models efficientnet-b7 --size 240 --n 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfdc.config import load_config  # noqa: E402
from dfdc.embed import embed_faces, resolve_device  # noqa: E402


def write_faces(folder: Path, n: int, crop: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "crops").mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(40, 200, crop, dtype=np.float32)
    rows = []
    for i in range(n):
        image = np.clip(ramp[None, :, None] + rng.normal(0, 20, (crop, crop, 3)), 0, 255).astype(np.uint8)
        path = f"crops/c{i:05d}.png"
        cv2.imwrite(str(folder / path), image)
        rows.append({"video": f"v{i // 30:04d}.mp4", "part": "dfdc_train_part_0", "label": "REAL" if i % 6 else "FAKE",
                     "original": None, "frame": i % 30, "face": 0, "path": path, "box": "0 0 1 1", "prob": 1.0})
    pd.DataFrame(rows).to_csv(folder / "faces.csv", index=False)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="crops (default 512)")
    parser.add_argument("--crop", type=int, default=128, help="crop side on disk (default 128, the smoke profile's)")
    parser.add_argument("--models", default="efficientnet-b0,tiny-cnn,grey-pixels", help="comma list of registered models")
    parser.add_argument("--size", type=int, default=0, help="input side (default each model's own)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="loader workers (default 1)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        faces = write_faces(Path(tmp) / "faces", args.n, args.crop)
        for model in args.models.split(","):
            cfg = load_config("smoke", [f"embed.size={args.size}", f"embed.batch_size={args.batch_size}",
                                        f"embed.loader_workers={args.workers}", f"embed.device={args.device}",
                                        "model.pretrained=none"])
            started = time.perf_counter()
            report = embed_faces(faces, model, Path(tmp) / f"emb-{model}", cfg)
            rows.append({"model": model, "input": args.size or "own", "dim": report.dim,
                         "crops/s (model pass)": round(report.crops_per_second, 1),
                         "total s (load, BN stats, write)": round(time.perf_counter() - started, 1)})
    print(f"dfdc embed, {args.n} crops of {args.crop} px, batch {args.batch_size}, {args.workers} loader worker(s), "
          f"device {device}{' (' + __import__('torch').cuda.get_device_name() + ')' if device.type == 'cuda' else ''}")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
