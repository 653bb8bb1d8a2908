"""``python -m dfdc embed``: pooled backbone features of every face crop -> DIR/embeddings.npy + index.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc.config import Config, set_value

HELP = "embed every face crop with a backbone (name, run folder or checkpoint) -> embeddings.npy + index.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faces", type=Path, required=True, help="faces folder holding faces.csv and the crops")
    parser.add_argument("--model", default=None, metavar="NAME|RUN_DIR|CKPT",
                        help="a registered model (random init or --pretrained), a training run folder or a checkpoint "
                             "(profile: embed.model)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the faces folder's sibling embeddings/)")
    parser.add_argument("--pretrained", default=None, metavar="PATH|none|imagenet", help="weights of a named model")
    parser.add_argument("--fold", type=int, default=None, help="fold checkpoint of a run folder (default the lowest)")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the checkpoint's, or the named model's own capped at the crops' side)")
    parser.add_argument("--center", type=float, default=None,
                        help="keep this central fraction of each crop (1 / (1 + margin) = the face box alone)")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per forward pass")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default auto)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dfdc.embed import EmbedError, embed_faces
    from dfdc.models import PretrainedWeightsError

    set_value(cfg, "embed", "model", args.model)
    set_value(cfg, "embed", "pretrained", args.pretrained)
    set_value(cfg, "embed", "fold", args.fold)
    set_value(cfg, "embed", "size", args.size)
    set_value(cfg, "embed", "center", args.center)
    set_value(cfg, "embed", "batch_size", args.batch_size)
    set_value(cfg, "embed", "device", args.device)
    out = args.out or args.faces.parent / "embeddings"
    try:
        report = embed_faces(args.faces, cfg.embed.model, out, cfg)
    except (EmbedError, PretrainedWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.format())
    return 0
