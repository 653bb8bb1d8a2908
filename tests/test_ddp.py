"""DDP: two CPU processes (gloo) launched by torchrun, the way `make train GPUS=2` launches them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from test_data import make_tiny_faces

from dfdc.data import BalancedEpochSampler, load_face_table, split_fold


def test_two_ranks_disjoint_shards_one_set_of_outputs(tmp_path: Path) -> None:
    faces, folds = make_tiny_faces(tmp_path, n_real=8, crops_real=6, crops_fake=3)
    runs, debug = tmp_path / "runs", tmp_path / "seen"
    epochs, seed, fold = 3, 99, 0
    sets = ["model.arch=tiny-cnn", "model.pretrained=none", "train.size=32", "train.loader_workers=1",
            "train.lr=3e-3", "train.warmup_epochs=0.3", "train.patience=10", f"train.seed={seed}",
            f"train.runs_dir={runs}", f"train.debug_dir={debug}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dfdc", "train",
           "--profile", "smoke", "--faces", str(faces), "--folds", str(folds), "--name", "ddp",
           "--fold-list", str(fold), "--epochs", str(epochs), "--batch-size", "4",
           *[x for item in sets for x in ("--set", item)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("fold 0: best validation log loss") == 1  # rank 0 reports, rank 1 does not

    # each rank trained on its own shard of the same balanced epoch draw
    table = load_face_table(faces, folds)
    train_idx, _ = split_fold(table, fold)
    reference = BalancedEpochSampler(table["y"].to_numpy(), train_idx, seed=seed + fold)
    seen = {r: pd.read_csv(debug / f"seen_fold{fold}_rank{r}.txt", sep=" ", names=["epoch", "index"]) for r in (0, 1)}
    for epoch in range(epochs):
        shards = [seen[r].loc[seen[r]["epoch"] == epoch, "index"].to_numpy() for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) > 0
        assert not set(shards[0]) & set(shards[1])  # disjoint
        reference.set_epoch(epoch)
        draw = reference.epoch_draw()
        assert set(np.concatenate(shards)) == set(draw)  # together: the whole balanced draw
        labels = table["y"].to_numpy()[np.concatenate(shards)]
        assert labels.sum() * 2 == len(labels)  # balanced
    assert not set(seen[0]["index"]) - set(train_idx)  # never a validation crop

    # one set of outputs, written once
    run = runs / "ddp"
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert files == ["config.yaml", "curves.png", "fold0/best.pt", "fold0/last.pt", "fold0/oof.csv",
                     "fold0/oof_faces.csv", "fold0/status.json", "metrics.csv", "oof.csv", "oof_faces.csv"]
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(epochs))
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]  # it learned
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == (table["fold"] == fold).groupby(table["video"]).any().sum()  # every val video, once
