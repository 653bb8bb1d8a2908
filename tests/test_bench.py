"""The benchmarks measure what they say (they are not run here: only their set-up)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dfdc.config import load_config
from dfdc.models import create_model, load_checkpoint, save_checkpoint

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_predict_saves_its_model_at_the_asked_side(tmp_path: Path) -> None:
    """--size is the network input: the checkpoint the predictor reads says that side (it said the
    model's native side: efficientnet-b7 was timed at 600 px under a 240 px heading)."""
    bench = _bench("bench_predict")
    run = bench.make_run("efficientnet-b0", 96, tmp_path)
    model, meta = load_checkpoint(run / "fold0" / "best.pt")
    assert meta["input"]["size"] == 96 and model.input_spec.size == 96
    assert meta["config"]["faces"]["size"] == 96
    # a checkpoint cached at another side (the old bench's) is rebuilt, not reused
    cfg = load_config("b7", ["model.arch=tiny-cnn", "model.pretrained=none"])
    stale = bench.make_run("tiny-cnn", 40, tmp_path / "cache")
    save_checkpoint(stale / "fold0" / "best.pt", create_model(cfg.model), cfg, {"fold": 0})  # its default 64 px
    assert bench.saved_side(stale / "fold0" / "best.pt") == 64
    assert bench.saved_side(bench.make_run("tiny-cnn", 40, tmp_path / "cache") / "fold0" / "best.pt") == 40


def test_bench_train_says_its_default_gpu_figure_restates_the_h200_measurement() -> None:
    """The default throughput is derived from the 524 img/s H200 measurement: the output must not
    call the resulting B7 figure an estimate."""
    bench = _bench("bench_train")
    default = bench.throughput_basis(bench.ASSUMED_GPU_TFLOPS)
    assert "NOT an independent estimate" in default and "restates" in default and "H200" in default
    b7_forward = 11.26e9  # the FLOPs the constant was derived with (its comment)
    assert 3 * b7_forward * 524 / 1e12 == pytest.approx(bench.ASSUMED_GPU_TFLOPS, rel=0.01)
    assert "estimate at the assumed 50 " in bench.throughput_basis(50.0)


def test_bench_train_loop_figure_starts_after_the_prefetched_batches(tmp_path: Path) -> None:
    """The loop figure is timed after warm-up + workers x prefetch_factor steps (batches the
    workers made during the first step run from stock), over ``steps`` more."""
    import torch

    from dfdc.data import load_training_data
    from dfdc.distributed import Dist

    bench = _bench("bench_train")
    faces, folds = bench.synthetic_faces(tmp_path / "faces", 16, 32, "png")
    data = load_training_data(faces, folds)
    warm, steps = 1, 2
    for workers, skip in ((0, warm), (2, warm + 2 * 2)):  # DataLoader's prefetch_factor: 2
        cfg = load_config("smoke", ["model.arch=tiny-cnn", "model.pretrained=none", "train.size=32",
                                    "train.batch_size=2", f"train.steps_per_epoch={warm + steps}",
                                    f"train.loader_workers={workers}", f"train.runs_dir={tmp_path / 'runs'}"])
        trainer, untimed = bench.loop_trainer(cfg, data, tmp_path, "smoke", Dist(device=torch.device("cpu")),
                                              warm, steps)
        assert untimed == skip and trainer.steps_per_epoch == skip + steps and trainer.workers == workers


def test_gpu_script_runs_every_step_and_logs_under_one_folder(tmp_path: Path) -> None:
    """bench/gpu.sh --quick: the GPU script's steps on tiny CPU settings, each logged in the
    folder given, with the figures it promises (compile on and off, fp16, 1 and 5 models)."""
    import json
    import os
    import subprocess

    log = tmp_path / "gpu-log"
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(log), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = ["device", "train-eager", "train-compile", "train-fp16", "predict-b7", "predict-t4like"]
    summary = (log / "summary.log").read_text().splitlines()
    assert [line.split(":")[0] for line in summary[:-1]] == steps and all(": ok in " in s for s in summary[:-1])
    figures = {name: json.loads((log / f"train-{name}.json").read_text())["rows"] for name in ("eager", "compile", "fp16")}
    assert [rows[0]["compile"] for rows in figures.values()] == [False, True, False]
    assert all(rows[0]["loop_images_per_s"] > 0 and rows[0]["loop_untimed_steps"] >= 1 for rows in figures.values())
    predict = (log / "predict-b7.log").read_text()
    assert "models: 1 on cpu" in predict and "models: 5 on cpu" in predict
    assert "models: 5 on cpu" in (log / "predict-t4like.log").read_text()
