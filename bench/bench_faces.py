"""Face extraction benchmark (``make bench-faces``; not a test).

On DFDC-like videos (1920x1080, 30 fps, 10 s, H.264, 1 REAL : 5 FAKE, made once by
``dfdc.synth.generate`` and cached under bench/out/faces/data), in one run on the same
videos:

(a) the seed study's starting method: ``cv2.VideoCapture.read()`` of every frame and
    facenet-pytorch MTCNN at full resolution on every 10th frame (unbatched), with torch on
    ``faces.detect_threads`` threads as in (b), so the gap is the method, not thread tuning;
(b) this builder: ``dfdc.extract.build_faces`` with the b7 recipe's faces settings
    (40 frames per REAL, 8 per FAKE, detection on REAL only at short side 270, crops
    written in the default format, manifests, faces index), one worker, in a fresh output folder;
(c) decoding alone, the floor of (b): ``dfdc.video.read_frames`` of exactly the frames (b)
    read (40 evenly spaced frames of the REAL video, each FAKE's frames from its manifest):
    ``grab()`` of every frame up to the last kept one and ``retrieve()`` + RGB conversion of
    the kept ones; no detection, cropping or writing;
(d) crop formats: every crop of (b) cut again from its decoded frame (the lossless pixels)
    and written as png, jpg and webp at ``faces.image_quality``: bytes per crop, encode +
    write and read + decode time per crop, PSNR of the decoded file against the lossless
    pixels, and the disk the full DFDC's crops would take (``DFDC_CROPS``; target <= 60 GB
    for the default format).

Each method runs in its own fresh (spawned) process with the same torch/OpenCV thread
count, so its peak memory (``ru_maxrss``) is that of one worker; "work" memory is the peak
less the process's peak before the work (after imports and model load). Model loading
and a warm-up call are outside the timed region of (a); (b) is timed after a warm-up run
on the REAL video(s) into a scratch folder (oneDNN builds kernels per input shape on first
use, a one-off cost per worker that a long run amortises; printed apart).
Prints seconds per video, (a)/(b) and (b)/(c), and writes bench/out/faces.json.

Usage: ``python bench/bench_faces.py [--threads 2] [--a-videos N] [--skip-a]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import resource
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from dfdc.config import FacesConfig, SynthConfig
from dfdc.io import atomic_write_json

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "faces"
# The DFDC-like bench data: most DFDC videos are 1920x1080, 30 fps, 10 s; ~5 fakes per real.
# Sensor noise 1.0 keeps the videos near DFDC's bitrate (470 GB / 119k videos = ~3.9 MB per 10-s
# video; decoding time grows with it): 5.3 MB per video here, against 15.9 MB at the mini DFDC's
# noise 3.0, whose decoding took 1.95 s per video against 1.19 (measured, 300 frames grabbed)
DFDC_LIKE_NOISE = 1.0
BENCH_SYNTH = SynthConfig(videos=6, test_videos=0, parts=1, width=1920, height=1080, seconds=10, fps=30,
                          noise=DFDC_LIKE_NOISE)
SHAPE_KEYS = ("videos", "test_videos", "parts", "width", "height", "seconds", "fps", "seed", "noise")  # cache key
SEED_DETECT_EVERY = 10  # the seed study's starting point: MTCNN on every 10th frame
TARGET_A_OVER_B = 10.0  # (b) should be at least 10x faster than (a)
TARGET_B_OVER_C = 1.5  # ... and within 1.5x of decoding alone
# Crops of the full DFDC with the recipe: ~19k REAL videos x 40 frames + ~100k FAKE x 8,
# one face per frame (two-person videos add, dropped identical fakes remove some)
DFDC_CROPS = 19_000 * 40 + 100_000 * 8
TARGET_DFDC_GB = 60.0  # the default crop format's projected size for the full DFDC must fit this
FORMATS = ("png", "jpg", "webp")


def _maxrss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def run_a(paths: list[str], threads: int) -> dict:
    """Seed starting method: read() every frame, full-res MTCNN on every 10th."""
    import cv2
    import numpy as np
    import torch
    from facenet_pytorch import MTCNN

    _threads(threads)
    if FacesConfig().detect_threads > 0:  # same MTCNN thread count as (b), so the gap is the method's
        torch.set_num_threads(FacesConfig().detect_threads)
    mtcnn = MTCNN(keep_all=True, post_process=False, device="cuda" if torch.cuda.is_available() else "cpu")
    mtcnn.detect(np.zeros((1080, 1920, 3), np.uint8))  # warm-up outside the timed region
    before = _maxrss_mb()
    start = time.perf_counter()
    frames = detected = with_face = 0
    for path in paths:
        cap = cv2.VideoCapture(path)
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % SEED_DETECT_EVERY == 0:
                boxes, _ = mtcnn.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                detected += 1
                with_face += boxes is not None and len(boxes) > 0
            i += 1
        frames += i
        cap.release()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "videos": len(paths), "frames_read": frames, "frames_detected": detected,
            "frames_with_face": with_face, "rss_before_mb": before, "rss_peak_mb": _maxrss_mb()}  # fmt: skip


def run_b(meta_json: str, out_dir: str, threads: int) -> dict:
    """This builder, one worker, fresh output folder."""
    import facenet_pytorch  # noqa: F401 - import outside the timed region, as in (a)

    from dfdc.extract import build_faces

    _threads(threads)
    meta = pd.read_json(meta_json, orient="records")
    meta["original"] = meta["original"].where(meta["original"].notna(), None)
    before = _maxrss_mb()
    # Warm-up (timed apart): the REAL videos alone into a scratch folder. oneDNN builds its
    # kernels per input shape on first use; a long run pays that once per worker.
    start = time.perf_counter()
    build_faces(meta[meta.label == "REAL"], Path(out_dir + "-warmup"), FacesConfig(), workers=1, progress=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    report = build_faces(meta, Path(out_dir), FacesConfig(), workers=1, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "warmup_seconds": cold, "warmup_videos": int((meta.label == "REAL").sum()),
            "videos": len(meta), "done": report.done, "failed": report.failed,
            "real_crops": report.real_crops, "fake_crops": report.fake_crops,
            "dropped_identical": report.dropped_identical, "rss_before_mb": before, "rss_peak_mb": _maxrss_mb()}  # fmt: skip


def run_c(jobs: list[tuple[str, int | None, list[int] | None]], threads: int) -> dict:
    """Decoding alone: read_frames of exactly the frames (b) read."""
    from dfdc.video import read_frames

    _threads(threads)
    before = _maxrss_mb()
    start = time.perf_counter()
    kept = 0
    for path, k, indices in jobs:
        idx, frames = read_frames(Path(path), k=k, indices=indices)
        kept += len(idx)
        del frames
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "videos": len(jobs), "frames_kept": kept, "rss_before_mb": before,
            "rss_peak_mb": _maxrss_mb()}  # fmt: skip


def run_d(out_b: Path, cfg: FacesConfig) -> dict:
    """Crop formats on (b)'s crops, cut again from their decoded frames (lossless pixels)."""
    import tempfile

    import cv2
    import numpy as np

    from dfdc.extract import encode_crop
    from dfdc.faces import crop_face
    from dfdc.video import read_frames

    faces = pd.read_csv(out_b / "faces.csv", dtype={"video": str})
    meta = pd.read_json(OUT / "meta.json", orient="records").set_index("video")
    crops = []
    for video, rows in faces.groupby("video"):
        indices, frames = read_frames(Path(meta.loc[video, "path"]), indices=sorted(set(rows["frame"])))
        by_index = dict(zip(indices, frames))
        for r in rows.itertuples():
            box = np.array([float(v) for v in r.box.split()], dtype=np.float32)
            crops.append(crop_face(by_index[r.frame], box, cfg.margin, cfg.size))
    result = {"crops": len(crops), "quality": cfg.image_quality, "default": cfg.image_format}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            paths = [Path(tmp) / f"{i}.{fmt}" for i in range(len(crops))]
            start = time.perf_counter()
            for crop, path in zip(crops, paths):
                path.write_bytes(encode_crop(crop, fmt, cfg.image_quality))
            write = (time.perf_counter() - start) / len(crops)
            start = time.perf_counter()
            decoded = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
            read = (time.perf_counter() - start) / len(crops)
            psnr = []
            for a, b in zip(crops, decoded):
                mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
                psnr.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
            size = float(np.mean([p.stat().st_size for p in paths]))
            result[fmt] = {"bytes_per_crop": size, "write_ms": write * 1000, "read_ms": read * 1000,
                           "psnr_mean_db": float(np.mean(psnr)), "psnr_min_db": float(np.min(psnr)),
                           "dfdc_gb": size * DFDC_CROPS / 1e9}
    return result


def in_child(fn, *args) -> dict:
    """Run ``fn`` in a fresh spawned process (its own peak memory)."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenCV threads in each method's process")
    parser.add_argument("--a-videos", type=int, default=0, help="run (a) on only the first N videos (0 = all)")
    parser.add_argument("--skip-a", action="store_true", help="skip (a), the slow full-resolution baseline")
    args = parser.parse_args(argv)

    from dfdc.metadata import load_metadata
    from dfdc.synth import generate, read_marker

    data = OUT / "data"
    t = time.perf_counter()
    marker = read_marker(data)
    if marker is not None and all(marker["config"].get(k) == getattr(BENCH_SYNTH, k) for k in SHAPE_KEYS):
        print(f"bench videos: {data} (cached)")  # same videos, whatever else the synth config grew
    else:
        shutil.rmtree(data, ignore_errors=True)
        generate(data, BENCH_SYNTH)
        print(f"bench videos: {data} (generated in {time.perf_counter() - t:.0f} s)")
    meta, _ = load_metadata(data)
    meta = meta.sort_values(["label", "video"], ascending=[False, True]).reset_index(drop=True)  # REAL first
    n = len(meta)
    print(f"{n} videos: {int((meta.label == 'REAL').sum())} REAL, {int((meta.label == 'FAKE').sum())} FAKE; "
          f"{BENCH_SYNTH.width}x{BENCH_SYNTH.height}, {BENCH_SYNTH.fps} fps, {BENCH_SYNTH.seconds:g} s; "
          f"threads per method: {args.threads}")  # fmt: skip

    out_b = OUT / "b_out"
    for folder in (out_b, OUT / "b_out-warmup"):
        shutil.rmtree(folder, ignore_errors=True)
    meta_json = OUT / "meta.json"
    meta.to_json(meta_json, orient="records")
    b = in_child(run_b, str(meta_json), str(out_b), args.threads)

    cfg = FacesConfig()
    jobs: list[tuple[str, int | None, list[int] | None]] = []
    for r in meta.itertuples():
        if r.label == "REAL":
            jobs.append((r.path, cfg.frames_real, None))
        else:
            manifest = out_b / "manifests" / r.part / f"{Path(r.video).stem}.json"
            jobs.append((r.path, None, json.loads(manifest.read_text())["frames"]))
    c = in_child(run_c, jobs, args.threads)

    a = None
    if not args.skip_a:
        paths = list(meta.path)[: args.a_videos or n]
        a = in_child(run_a, paths, args.threads)

    def per_video(m: dict) -> float:
        return m["seconds"] / m["videos"]

    def mem(m: dict) -> str:
        return f"peak {m['rss_peak_mb']:.0f} MB (work {m['rss_peak_mb'] - m['rss_before_mb']:.0f} MB)"

    print()
    if a is not None:
        print(f"(a) seed start: read() all, full-res MTCNN every {SEED_DETECT_EVERY}th frame: "
              f"{per_video(a):7.2f} s/video over {a['videos']} videos; {a['frames_with_face']}/{a['frames_detected']} "
              f"frames with a face; {mem(a)}")  # fmt: skip
    print(f"(b) build_faces (40 REAL / 8 FAKE frames, detect REAL only at short side {cfg.detect_short_side}): "
          f"{per_video(b):7.2f} s/video; crops REAL {b['real_crops']} FAKE {b['fake_crops']}, dropped identical "
          f"{b['dropped_identical']}, failed {b['failed']}; {mem(b)}")  # fmt: skip
    print(f"    (its untimed warm-up, the REAL video(s) alone in a fresh process: "
          f"{b['warmup_seconds'] / b['warmup_videos']:.2f} s/video)")
    print(f"(c) decode only (read_frames of the same kept frames): {per_video(c):7.2f} s/video; "
          f"{c['frames_kept']} frames kept; {mem(c)}")
    d = run_d(out_b, cfg)
    print(f"(d) crop formats, {d['crops']} crops of (b) at {cfg.size} px cut again from their decoded frames "
          f"(quality {d['quality']} for jpg/webp); full DFDC = {DFDC_CROPS:,} crops (19k REAL x 40 + 100k FAKE x 8):")
    for fmt in FORMATS:
        m = d[fmt]
        mark = ""
        if fmt == d["default"]:
            mark = f"  <- default: {'OK' if m['dfdc_gb'] <= TARGET_DFDC_GB else 'MISSED'} (target <= {TARGET_DFDC_GB:g} GB)"
        print(f"    {fmt:4s} {m['bytes_per_crop'] / 1000:6.1f} KB/crop, encode+write {m['write_ms']:5.2f} ms, "
              f"read+decode {m['read_ms']:5.2f} ms, PSNR {m['psnr_mean_db']:5.1f} dB (min {m['psnr_min_db']:.1f}) "
              f"-> {m['dfdc_gb']:6.1f} GB for DFDC{mark}")
    result = {"videos": n, "synth": vars(BENCH_SYNTH), "threads": args.threads, "a": a, "b": b, "c": c, "d": d}
    if a is not None:
        ratio = per_video(a) / per_video(b)
        result["a_over_b"] = ratio
        print(f"(a)/(b) = {ratio:.1f}x faster (target >= {TARGET_A_OVER_B:g}x): {'OK' if ratio >= TARGET_A_OVER_B else 'MISSED'}")
    ratio = per_video(b) / per_video(c)
    result["b_over_c"] = ratio
    print(f"(b)/(c) = {ratio:.2f}x the decoding floor (target <= {TARGET_B_OVER_C:g}x): "
          f"{'OK' if ratio <= TARGET_B_OVER_C else 'MISSED'}")  # fmt: skip
    atomic_write_json(OUT.parent / "faces.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
