"""Label cleaning on the mini DFDC (``make bench-label-cleaning``; not a test).

For every FAKE of the mini DFDC (``dfdc synth``; made once under bench/out/cleaning/data
unless ``--data`` names one), at its original's face boxes on ``faces.frames_real`` evenly
spaced frames: the mean absolute pixel difference between the fake's crop and the
original's, over the whole margin crop (the old rule) and inside the face box
(``dfdc.faces.face_difference``, the rule ``dfdc faces`` uses). The same for "identical"
fakes with a re-encoded video stream: the original's decoded frames encoded again with
libx264 at CRF 20 (the synth's quality) and at CRF 28. A bit-identical stream (an
audio-only fake that kept the original's video) differs by exactly 0.

Prints, per kind and rule, the distribution and the share of crops / videos kept at
``faces.same_face_tolerance``; writes bench/out/label_cleaning.csv.

Usage: ``python bench/bench_label_cleaning.py [--data DATA] [--profile smoke]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import pandas as pd

from dfdc.config import load_config
from dfdc.faces import FaceDetector, crop_face, face_difference
from dfdc.metadata import load_metadata
from dfdc.video import read_frames

OUT = Path(__file__).parent / "out"
CRFS = (20, 28)  # the synth's own quality, and a clearly lower one


def reencode(frames: list[np.ndarray], path: Path, crf: int, fps: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--profile", default="smoke")
    args = parser.parse_args()
    cfg = load_config(args.profile)
    data = args.data
    if data is None:
        from dfdc.synth import generate

        data = OUT / "cleaning" / "data"
        generate(data, load_config("smoke").synth)
    meta, _ = load_metadata(data)
    detector = FaceDetector(cfg.faces, device="cpu")
    scratch = OUT / "cleaning" / "reencoded"
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    for real in meta[meta["label"] == "REAL"].itertuples():
        indices, frames = read_frames(Path(real.path), k=cfg.faces.frames_real)
        detections = detector.detect(frames)
        others = [(f.video, f.path, "swap") for f in meta[meta["original"] == real.video].itertuples()]
        _, every = read_frames(Path(real.path), k=10**6)
        for crf in CRFS:
            path = scratch / f"{Path(real.video).stem}.crf{crf}.mp4"
            reencode(every, path, crf, cfg.synth.fps)
            others.append((f"{real.video}@crf{crf}", str(path), f"re-encoded crf {crf}"))
        for name, path, kind in others:
            _, fake_frames = read_frames(Path(path), indices=list(indices))
            for a, b, dets in zip(frames, fake_frames, detections):
                for det in dets:
                    ca = crop_face(a, det.box, cfg.faces.margin, cfg.faces.size)
                    cb = crop_face(b, det.box, cfg.faces.margin, cfg.faces.size)
                    rows.append({"video": name, "kind": kind,
                                 "whole crop": float(np.abs(ca.astype(np.int16) - cb.astype(np.int16)).mean()),
                                 "inside the box": face_difference(ca, cb, det.box, cfg.faces.margin)})
    table = pd.DataFrame(rows)
    OUT.mkdir(exist_ok=True)
    table.to_csv(OUT / "label_cleaning.csv", index=False)
    t = cfg.faces.same_face_tolerance
    print(f"{data}: faces.margin {cfg.faces.margin}, threshold faces.same_face_tolerance {t}")
    for kind, group in table.groupby("kind", sort=False):
        print(f"{kind}: {len(group)} crops of {group['video'].nunique()} videos")
        for rule in ("whole crop", "inside the box"):
            q = group[rule].quantile([0, 0.05, 0.5, 0.95, 1]).round(2).tolist()
            kept_videos = int((group.groupby("video")[rule].max() >= t).sum())
            print(f"  {rule:<15} min/5%/median/95%/max {q}; crops kept {100 * (group[rule] >= t).mean():.1f}%, "
                  f"videos with a crop kept {kept_videos}/{group['video'].nunique()}")


if __name__ == "__main__":
    main()
