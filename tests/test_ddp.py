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
           "--profile", "smoke-random", "--faces", str(faces), "--folds", str(folds), "--name", "ddp",
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

    # ... with its own dropout stream: the ranks' torch RNG states differ at every epoch
    rng = {r: (debug / f"rng_fold{fold}_rank{r}.txt").read_text().splitlines() for r in (0, 1)}
    assert len(rng[0]) == len(rng[1]) == epochs + 1  # the seed after build, then one state per epoch
    assert all(a != b for a, b in zip(rng[0], rng[1])), rng
    assert rng[0][0] == f"build {seed + fold}"  # rank 0 keeps the single-process seed
    # every rank's RNG state is in last.pt (a resume continues each rank's own stream)
    import torch

    last = torch.load(runs / "ddp" / "fold0" / "last.pt", weights_only=False)
    assert isinstance(last["rng"], list) and len(last["rng"]) == 2
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])

    # one set of outputs, written once
    run = runs / "ddp"
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("fold0/tensorboard/")]
    assert len(events) == 1 and "tfevents" in events[0]  # rank 0's TensorBoard events
    files = [f for f in files if f not in events]
    assert files == [".rank0-marker.json", "config.yaml", "curves.png", "fold0/best.pt", "fold0/inputs.json",
                     "fold0/last.pt", "fold0/oof.csv", "fold0/oof_faces.csv", "fold0/status.json", "metrics.csv",
                     "oof.csv", "oof_faces.csv"]
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(epochs))
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]  # it learned
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == (table["fold"] == fold).groupby(table["video"]).any().sum()  # every val video, once


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(tmp_path: Path, faces: Path, folds: Path, faces_rank1: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Two single-process "nodes" (RANK 0 and 1, as torchrun sets them on two machines), each
    in its own working folder with a relative train.runs_dir: a run folder that is NOT shared."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
               "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        face_dir = faces_rank1 if rank == 1 and faces_rank1 is not None else faces
        cmd = [sys.executable, "-m", "dfdc", "train", "--profile", "smoke-random", "--faces", str(face_dir),
               "--folds", str(folds), "--name", "nodes", "--fold-list", "0", "--epochs", "1",
               "--set", "model.arch=tiny-cnn", "--set", "train.size=32", "--set", "train.loader_workers=0",
               "--set", "train.runs_dir=runs", "--set", "train.shared_dir_timeout=1"]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)  # a hang fails here
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_unshared_run_folder_stops_every_rank_with_a_message(tmp_path: Path) -> None:
    faces, folds = make_tiny_faces(tmp_path)
    ranks = _two_nodes(tmp_path, faces, folds)
    for done in ranks:
        assert done.returncode != 0
        assert "the run folder is not shared" in done.stderr and "rank 1 on" in done.stderr, done.stderr[-2000:]
        assert "train.runs_dir" in done.stderr
    assert not (tmp_path / "node0" / "runs" / "nodes" / "fold0").exists()  # nothing trained
    # one rank that cannot read its inputs stops the other too, instead of leaving it waiting
    ranks = _two_nodes(tmp_path, faces, folds, faces_rank1=tmp_path / "elsewhere")
    assert all(done.returncode != 0 for done in ranks)
    assert "faces table" in ranks[1].stderr
    assert "reading the training inputs failed on rank 1" in ranks[0].stderr and "faces table" in ranks[0].stderr


def test_two_ranks_share_the_frozen_features_of_a_sequence_model(tmp_path: Path) -> None:
    """The run's frozen features are computed once, before the folds, sharded over the ranks
    (review data 1.4): each rank embeds its chunks, rank 0 assembles one cache both read."""
    import torch

    from dfdc.config import load_config
    from dfdc.data import load_training_data
    from dfdc.distributed import Dist
    from dfdc.features import FEATURES_FILE, run_features
    from dfdc.models import default_input

    from test_sequences import make_track_faces

    faces, folds = make_track_faces(tmp_path, n_real=4, fakes_per_real=1)
    runs, debug = tmp_path / "runs", tmp_path / "debug"
    sets = ["model.arch=lstm", "model.backbone=tiny-cnn", "model.pretrained=none", "model.rnn_hidden=128",
            "model.head_hidden=32", "train.size=24", "train.loader_workers=0", "sequence.seq_len=4",
            "embed.chunk_size=16", f"train.runs_dir={runs}", f"train.debug_dir={debug}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dfdc", "train",
           "--profile", "smoke-random", "--faces", str(faces), "--folds", str(folds), "--name", "seq", "--epochs", "1",
           "--batch-size", "4", *[x for item in sets for x in ("--set", item)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("OOF class-balanced log loss") == 1
    computed = {r: sum(int(x) for x in (debug / f"features_rank{r}.txt").read_text().split()) for r in (0, 1)}
    data = load_training_data(faces, folds)
    assert computed[0] > 0 and computed[1] > 0 and computed[0] + computed[1] == len(data.table)  # each its share
    assert done.stderr.count("features: ") == 1  # said once, by rank 0
    cached = np.load(runs / "seq" / "features" / FEATURES_FILE)
    cfg = load_config("smoke-random", [*[s for s in sets if not s.startswith(("train.runs_dir", "train.debug_dir"))],
                                "train.batch_size=4"])  # the BatchNorm calibration's batches are the run's
    torch.set_num_threads(1)
    alone = run_features(cfg, data.table, tmp_path / "alone", Dist(), default_input(cfg.model, 24))
    np.testing.assert_allclose(cached, alone.array, rtol=1e-4, atol=1e-5)  # = one process's features


def test_a_rank_waiting_on_files_stops_when_another_fails(tmp_path: Path) -> None:
    import pytest

    from dfdc.distributed import Dist, RunDirError, report_failure, wait_for_files

    report_failure(tmp_path, Dist(rank=1, world=2), OSError("disk full"))
    with pytest.raises(RunDirError, match="features failed on rank 1 .*OSError: disk full"):
        wait_for_files(lambda: "3 chunks", tmp_path, "features", Dist(world=2), poll=0.01)
    wait_for_files(lambda: None, tmp_path / "elsewhere", "features", Dist(world=2))  # nothing missing: no wait


def _decide_rank(rank: int, port: int, out: str) -> None:
    import json

    import torch.distributed as dist

    from dfdc.distributed import Dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = Dist(rank=rank, world=2)
        calls = []

        def view() -> dict:  # what this rank would see in the shared folder: the ranks' views differ
            calls.append(rank)
            return {"finished": rank == 0, "rank": rank}

        got = ctx.decide(view, "reading which folds finished")
        Path(out, f"rank{rank}.json").write_text(json.dumps({"got": got, "calls": calls}))
    finally:
        dist.destroy_process_group()


def test_file_system_decisions_are_rank_0s_for_every_rank(tmp_path: Path) -> None:
    """``Dist.decide``: only rank 0 looks, every rank gets its answer (a rank whose view of the
    shared folder lags cannot skip a fold the others train)."""
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_decide_rank, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    seen = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert seen[0]["got"] == seen[1]["got"] == {"finished": True, "rank": 0}
    assert seen[0]["calls"] == [0] and seen[1]["calls"] == []


def test_training_asks_rank_0_whether_a_fold_finished_and_last_pt_exists(tmp_path: Path, monkeypatch) -> None:
    """The fold-finished and resume decisions of ``train`` go through ``Dist.decide``."""
    import torch

    from dfdc.config import load_config
    from dfdc.distributed import Dist
    from dfdc.train import train

    faces, folds = make_tiny_faces(tmp_path)
    asked: list[str] = []
    decide = Dist.decide

    def spy(self, work, what):  # noqa: ANN001, ANN202
        asked.append(what)
        return decide(self, work, what)

    monkeypatch.setattr(Dist, "decide", spy)
    torch.set_num_threads(1)
    cfg = load_config("smoke", ["model.arch=tiny-cnn", "model.pretrained=none", "train.size=32",
                                "train.loader_workers=0", "train.epochs=1", "train.folds=0",
                                f"train.runs_dir={tmp_path / 'runs'}", "train.name=d"])
    train(faces, folds, cfg)
    assert asked[0] == "reading which folds finished" and any("last.pt" in what for what in asked), asked
