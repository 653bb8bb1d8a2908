"""The Kaggle kernel bundle, its push through the real kaggle client, and the local run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from dfdc.cli import main
from dfdc.config import Config, load_config, read_config, save_config
from dfdc.kaggle import (
    Bundle,
    KernelError,
    blocked_network_env,
    build_bundle,
    find_credentials,
    push_bundle,
    run_local,
    submit_kernel,
    verify_bundle,
)
from dfdc.models import create_model, save_checkpoint
from dfdc.preprocess import InputSpec

sys.path.insert(0, str(Path(__file__).parent))
from kaggle_stub import KaggleStub  # noqa: E402

SECRET = "planted-secret-key-4f0c2a9d"  # a fake API key that must never reach the bundle
KAGGLE_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME")
CALIBRATION = {"aggregation": "mean", "temperature": 1.0, "clip": 0.02}


def _cfg(wheel_cache: Path) -> Config:
    cfg = load_config("smoke-random")
    cfg.predict.frames = 2  # keep the local kernel run short
    cfg.predict.workers = 0  # inline decode + detect
    cfg.kernel.cpu_workers = 0  # the kernel's CPU plan (no GPU here): inline too
    cfg.kernel.wheel_cache = str(wheel_cache)
    cfg.kernel.dataset_poll = 0.0  # the stub's dataset is ready at once or after a few polls
    return cfg


@pytest.fixture(scope="module")
def kdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel")


@pytest.fixture(scope="module")
def run_dir(kdir: Path) -> Path:
    """Two folds of randomly initialised tiny b0 checkpoints, plus files that must not ship."""
    torch.manual_seed(0)
    cfg = load_config("smoke-random")
    run = kdir / "runs" / "tiny"
    for fold in (0, 1):
        save_checkpoint(run / f"fold{fold}" / "best.pt", create_model(cfg.model), cfg, {"fold": fold, "epoch": 1})
        torch.save({"optimizer": {"state": {}}, "epoch": 1}, run / f"fold{fold}" / "last.pt")
    save_config(cfg, run / "config.yaml")
    (run / "calibration.json").write_text(json.dumps(CALIBRATION))
    (run / "metrics.csv").write_text("fold,epoch,val_logloss\n0,1,0.69\n")
    (run / "kaggle.json").write_text(json.dumps({"username": "alice", "key": SECRET}))
    return run


@pytest.fixture(scope="module")
def bundle(kdir: Path, run_dir: Path) -> Bundle:
    """The bundle, built while a fake kaggle.json sits in HOME and in KAGGLE_CONFIG_DIR."""
    home = kdir / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "alice", "key": SECRET}))
    (home / ".kaggle" / "access_token").write_text(SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CACHE_DIR", os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"))
        mp.setenv("HOME", str(home))
        mp.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
        return build_bundle(run_dir, kdir / "build", _cfg(kdir / "wheel-cache"), "alice")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bundle_holds_only_the_allow_list(bundle: Bundle) -> None:
    assert _files(bundle.dataset_dir) == [
        "calibration.json",
        "config.yaml",
        "dataset-metadata.json",
        "dfdc_kit-0.1.0-py3-none-any.whl",
        "efficientnet_pytorch-0.7.1-py3-none-any.whl",
        "facenet_pytorch-2.5.3-py3-none-any.whl",
        "fold0.pt",
        "fold1.pt",
        "wheels.json",
    ]
    wheels = {w["dist"]: w for w in json.loads((bundle.dataset_dir / "wheels.json").read_text())["wheels"]}
    assert set(wheels) == {"dfdc-kit", "facenet-pytorch", "efficientnet-pytorch"}  # exactly what the models need
    assert "MTCNN" in wheels["facenet-pytorch"]["reason"] and "not in Kaggle's image" in wheels["facenet-pytorch"]["reason"]
    assert wheels["efficientnet-pytorch"]["reason"].count("efficientnet-b0") == 1  # two b0 folds: the reason once
    assert wheels["facenet-pytorch"]["modules"] == ["facenet_pytorch"] and wheels["dfdc-kit"]["modules"] == ["dfdc"]
    assert _files(bundle.kernel_dir) == ["inference.py", "kernel-metadata.json"]
    assert bundle.folds == [0, 1]
    # No byte of the planted credentials anywhere, not even inside the wheels.
    for path in list(bundle.dataset_dir.iterdir()) + list(bundle.kernel_dir.iterdir()):
        assert SECRET.encode() not in path.read_bytes(), path
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                for member in wheel.namelist():
                    assert "kaggle.json" not in member and "__pycache__" not in member
                    assert SECRET.encode() not in wheel.read(member), member
    # fp16 weights without training state; loadable as they are.
    for fold in (0, 1):
        ckpt = torch.load(bundle.dataset_dir / f"fold{fold}.pt", map_location="cpu", weights_only=True)
        assert not any("optim" in k for k in ckpt)
        floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float16 for v in floats)
    assert bundle.weights_bytes == sum((bundle.dataset_dir / f"fold{k}.pt").stat().st_size for k in (0, 1))
    assert json.loads((bundle.dataset_dir / "calibration.json").read_text()) == CALIBRATION
    assert read_config(bundle.dataset_dir / "config.yaml").predict.frames == 2


def test_allow_list_check_rejects_strays(bundle: Bundle, tmp_path: Path, run_dir: Path) -> None:
    cfg = _cfg(tmp_path)
    dataset, kernel = tmp_path / "dataset", tmp_path / "kernel"
    shutil.copytree(bundle.dataset_dir, dataset)
    shutil.copytree(bundle.kernel_dir, kernel)
    verify_bundle(dataset, kernel, cfg)  # the copy passes as it is

    (dataset / "kaggle.json").write_text("{}")
    with pytest.raises(KernelError, match="kaggle.json: not on the allow-list"):
        verify_bundle(dataset, kernel, cfg)
    (dataset / "kaggle.json").unlink()

    stray = next(dataset.glob("facenet_pytorch-*.whl"))
    shutil.copyfile(stray, dataset / "six-1.17.0-py2.py3-none-any.whl")  # a wheel nobody said why it ships
    with pytest.raises(KernelError, match="six-1.17.0-py2.py3-none-any.whl: not on the allow-list"):
        verify_bundle(dataset, kernel, cfg)
    (dataset / "six-1.17.0-py2.py3-none-any.whl").unlink()

    shutil.copyfile(run_dir / "fold0" / "last.pt", dataset / "fold2.pt")  # optimizer state
    with pytest.raises(KernelError, match="training state"):
        verify_bundle(dataset, kernel, cfg)
    (dataset / "fold2.pt").unlink()

    (dataset / "__pycache__").mkdir()
    with pytest.raises(KernelError, match="subfolders"):
        verify_bundle(dataset, kernel, cfg)


def test_weights_over_the_limit_are_refused(run_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "cache")
    cfg.kernel.max_weights_bytes = 1_000_000  # one tiny b0 in fp16 is about 8 MB
    out = tmp_path / "build"
    with pytest.raises(KernelError, match="max_weights_bytes=1,000,000"):
        build_bundle(run_dir, out, cfg, "alice")
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-built left behind


def test_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelError, match="no fold\\*/best.pt"):
        build_bundle(tmp_path / "empty", tmp_path / "build", _cfg(tmp_path), "alice")


def test_kernel_metadata(bundle: Bundle) -> None:
    from slugify import slugify

    raw = (bundle.kernel_dir / "kernel-metadata.json").read_text()
    meta = json.loads(raw)
    assert '"enable_internet": false' in raw and '"enable_gpu": true' in raw  # JSON booleans
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # two T4s; enable_gpu alone gets a P100 torch cannot use
    assert meta["id"] == "alice/dfdc-kit-inference"
    assert len(meta["title"]) >= 5 and slugify(meta["title"]) == "dfdc-kit-inference"
    assert meta["code_file"] == "inference.py" and (bundle.kernel_dir / meta["code_file"]).is_file()
    assert (meta["language"], meta["kernel_type"]) == ("python", "script")
    assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["competition_sources"] == ["deepfake-detection-challenge"]
    assert meta["dataset_sources"] == ["alice/dfdc-kit-models"]
    assert meta["kernel_sources"] == []
    dataset_meta = json.loads((bundle.dataset_dir / "dataset-metadata.json").read_text())
    assert dataset_meta["id"] == "alice/dfdc-kit-models"
    assert 6 <= len(dataset_meta["title"]) <= 50 and len(dataset_meta["licenses"]) == 1
    script = (bundle.kernel_dir / "inference.py").read_text()
    assert "{{" not in script and "DATASET_SLUG = 'dfdc-kit-models'" in script
    assert "WHEELS_MANIFEST = 'wheels.json'" in script and "NO_ALBUMENTATIONS_UPDATE" in script
    compile(script, "inference.py", "exec")
    assert read_config(bundle.dataset_dir / "config.yaml").kernel.time_budget == 8.5 * 3600


def test_machine_shape_is_checked(run_dir: Path, tmp_path: Path) -> None:
    from dfdc.kaggle.bundle import kernel_metadata

    cfg = _cfg(tmp_path)
    cfg.kernel.machine_shape = "NvidiaTeslaK80"
    with pytest.raises(KernelError, match="machine_shape='NvidiaTeslaK80'"):
        build_bundle(run_dir, tmp_path / "build", cfg, "alice")
    cfg.kernel.machine_shape = ""
    assert "machine_shape" not in kernel_metadata(cfg, "alice/x-kernel", "alice/x-data")


@pytest.mark.parametrize("shape", ["NvidiaTeslaP100", ""])
def test_a_gpu_kernel_on_a_p100_is_refused(run_dir: Path, tmp_path: Path, shape: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's image has no CUDA kernels for the P100 (an empty shape gets one too): every video
    would take the CPU plan. Refused before anything is built; a CPU kernel on purpose is not."""
    from dfdc.kaggle.bundle import _check_slugs

    cfg = _cfg(tmp_path)
    cfg.kernel.machine_shape = shape
    monkeypatch.setenv("DFDC_VIA_MAKE", "1")
    with pytest.raises(KernelError, match="P100.*SET=kernel.machine_shape=NvidiaTeslaT4"):
        build_bundle(run_dir, tmp_path / "build", cfg, "alice")
    assert not (tmp_path / "build").exists()
    cfg.kernel.enable_gpu = False
    _check_slugs(cfg, "alice")  # no error


def _clear_kaggle_env(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("HOME", str(home))
    for name in KAGGLE_VARS:
        mp.delenv(name, raising=False)


def test_credentials_follow_the_client_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _clear_kaggle_env(monkeypatch, home)
    with pytest.raises(KernelError, match="no Kaggle credentials.*~/.kaggle"):
        find_credentials()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "kaggle").mkdir(parents=True)
    (tmp_path / "xdg" / "kaggle" / "kaggle.json").write_text('{"username": "bob", "key": "k"}')
    assert find_credentials().username == "bob"
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")  # the environment overlays kaggle.json
    assert find_credentials().username == "carol"
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "access_token").write_text("tok")
    assert find_credentials().source.endswith("access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    assert find_credentials().source == "KAGGLE_API_TOKEN"
    (home / ".kaggle" / "kaggle.json").write_text("{not json")
    with pytest.raises(KernelError, match="kaggle.json: not a valid kaggle.json"):
        find_credentials()


def test_push_without_credentials_sends_nothing(
    bundle: Bundle, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _clear_kaggle_env(monkeypatch, tmp_path)
    with KaggleStub() as stub:
        for key, value in stub.env().items():
            monkeypatch.setenv(key, value)
        with pytest.raises(KernelError, match="no Kaggle credentials"):
            push_bundle(bundle, _cfg(tmp_path))
        code = main(["kernel", "--profile", "smoke-random", "--models", str(run_dir), "--out", str(tmp_path / "b"), "--push"])
        assert stub.requests == []
    assert code != 0
    assert "no Kaggle credentials" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # checked before building anything


def _stub_env(monkeypatch: pytest.MonkeyPatch, stub: KaggleStub, home: Path) -> None:
    _clear_kaggle_env(monkeypatch, home)
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "fake-key"}))
    for key, value in stub.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def _push_cfg(tmp_path: Path, **kernel: object) -> Config:
    cfg = _cfg(tmp_path)
    cfg.kernel.push_timeout = 120
    for key, value in kernel.items():
        setattr(cfg.kernel, key, value)
    return cfg


def test_push_with_the_real_client(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub(processing=2) as stub:  # the new dataset is "still processing" twice, then ready
        _stub_env(monkeypatch, stub, tmp_path)
        report = push_bundle(bundle, _push_cfg(tmp_path))
    names = stub.names()
    assert names[0] == "GetDatasetStatus" and report.dataset_action == "create"
    uploaded = [b["name"] for b in stub.bodies("StartBlobUpload")]
    assert sorted(uploaded) == sorted(p.name for p in bundle.dataset_dir.iterdir() if p.name != "dataset-metadata.json")
    assert names.count("PUT") == len(uploaded)
    sizes = {b["name"]: b["contentLength"] for b in stub.bodies("StartBlobUpload")}
    assert sizes["fold0.pt"] == (bundle.dataset_dir / "fold0.pt").stat().st_size
    assert sorted(stub.uploads.values()) == sorted(sizes.values())  # every byte arrived
    (create,) = stub.bodies("CreateDataset")
    assert (create["ownerSlug"], create["slug"], create["isPrivate"]) == ("alice", "dfdc-kit-models", True)
    assert len(create["files"]) == len(uploaded)
    # the kernel is pushed only once the dataset is ready: three status + version polls after the upload
    after = names[names.index("CreateDataset") + 1:]
    assert after == ["GetDatasetStatus", "GetDataset"] * 3 + ["SaveKernel"] and report.dataset_status == "ready"
    assert report.dataset_version == 1
    (save,) = stub.bodies("SaveKernel")
    assert save["slug"] == "alice/dfdc-kit-inference" and save["machineShape"] == "NvidiaTeslaT4"
    assert save["enableGpu"] is True and save["enableInternet"] is False and save["isPrivate"] is True
    assert save["competitionDataSources"] == ["deepfake-detection-challenge"]
    assert save["datasetDataSources"] == ["alice/dfdc-kit-models"]
    assert save["text"] == (bundle.kernel_dir / "inference.py").read_text()
    assert report.kernel_url and "alice/dfdc-kit-inference" in report.kernel_url
    record = json.loads(report.record.read_text())
    assert (record["kernel"], record["version"], record["competition"]) == (
        "alice/dfdc-kit-inference", 1, "deepfake-detection-challenge")


def test_dataset_still_processing_stops_before_the_kernel(bundle: Bundle, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub(processing=100) as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        with pytest.raises(KernelError, match="still 'blobs_received' at version 1 after 0 s.*NOT pushed"):
            push_bundle(bundle, _push_cfg(tmp_path, dataset_ready_timeout=0.0))
    assert "SaveKernel" not in stub.names()


def test_failed_dataset_stops_before_the_kernel(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub(processing=1, final_status="FAILED") as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        with pytest.raises(KernelError, match="as 'failed'"):
            push_bundle(bundle, _push_cfg(tmp_path))
    assert "SaveKernel" not in stub.names()


def test_existing_dataset_gets_a_new_version(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub(existing_datasets=("alice/dfdc-kit-models",), processing=1) as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        report = push_bundle(bundle, _push_cfg(tmp_path))
    assert report.dataset_action == "version"
    assert "CreateDataset" not in stub.names() and len(stub.bodies("CreateDatasetVersion")) == 1
    assert len(stub.bodies("SaveKernel")) == 1


def test_the_kernel_waits_for_the_new_dataset_version(bundle: Bundle, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after an upload Kaggle still reports the previous version ready: the kernel must wait
    until the version number has increased (version 3 existed; the upload makes version 4)."""
    with KaggleStub(existing_datasets=("alice/dfdc-kit-models",), existing_version=3, version_lag=2) as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        report = push_bundle(bundle, _push_cfg(tmp_path))
    names = stub.names()
    assert names[:2] == ["GetDatasetStatus", "GetDataset"]  # the version before the upload is read first
    after = names[names.index("CreateDatasetVersion") + 1:]
    assert after == ["GetDatasetStatus", "GetDataset"] * 3 + ["SaveKernel"]  # two answers of version 3 ready
    assert report.dataset_version == 4 and json.loads(report.record.read_text())["dataset_version"] == 4


def test_the_version_wait_times_out_on_an_old_version(bundle: Bundle, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub(existing_datasets=("alice/dfdc-kit-models",), existing_version=3, version_lag=100) as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        with pytest.raises(KernelError, match="still 'ready' at version 3 .*makes version 4.*NOT pushed"):
            push_bundle(bundle, _push_cfg(tmp_path, dataset_ready_timeout=0.0))
    assert "SaveKernel" not in stub.names()


def test_server_rejection_fails_the_command(
    bundle: Bundle, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import dfdc.cli.kernel as cli_kernel

    def prebuilt(run: Path, out: Path, cfg: Config, username: str, explicit: object = ()) -> Bundle:
        assert (Path(run), username) == (run_dir, "alice")
        return bundle  # the module's bundle: the rejection is what is under test

    monkeypatch.setattr(cli_kernel, "build_bundle", prebuilt)
    with KaggleStub(reject_kernel="Notebook slug is already taken") as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        code = main(["kernel", "--profile", "smoke-random", "--models", str(run_dir), "--push", "--timeout", "120"])
    assert len(stub.bodies("SaveKernel")) == 1  # the client did send it, and exits 0 itself
    assert code != 0
    assert "Kernel push error" in capsys.readouterr().err


def test_invalid_dataset_sources_fail_the_push(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kaggle saves the kernel but leaves the dataset out: it would run without its weights."""
    with KaggleStub(invalid_dataset_sources=("alice/dfdc-kit-models",)) as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        with pytest.raises(KernelError, match="saved it without its dataset sources .*alice/dfdc-kit-models"):
            push_bundle(bundle, _push_cfg(tmp_path))
    assert len(stub.bodies("SaveKernel")) == 1
    assert not (bundle.root / "push.json").exists() or json.loads((bundle.root / "push.json").read_text())


def test_a_slug_holding_a_word_of_refusal_still_pushes(bundle: Bundle, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's answer names the kernel (in its URL): "ssim-error-maps" is no error."""
    kernel_dir = tmp_path / "kernel"
    shutil.copytree(bundle.kernel_dir, kernel_dir)
    meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
    meta.update(id="alice/ssim-error-maps", title="ssim error maps")
    (kernel_dir / "kernel-metadata.json").write_text(json.dumps(meta))
    odd = dataclasses.replace(bundle, root=tmp_path, kernel_dir=kernel_dir, kernel_id="alice/ssim-error-maps")
    with KaggleStub() as stub:
        _stub_env(monkeypatch, stub, tmp_path / "home")
        report = push_bundle(odd, _push_cfg(tmp_path))
    assert report.kernel_version == 1 and "ssim-error-maps" in report.kernel_url


def test_words_of_refusal_are_looked_for_outside_urls_and_our_names() -> None:
    from dfdc.kaggle.push import REJECTION_RE, rejected

    names = ("alice/invalid-frames", "invalid-frames")
    ok = ("Starting upload for file fold0.pt\nUpload successful: fold0.pt (8MB)\nYour private Dataset is being "
          "created. Please check progress at https://www.kaggle.com/datasets/alice/invalid-frames")
    assert not rejected(ok, "is being created", names)
    assert REJECTION_RE.search(ok.replace("is being created", ""))  # the slug in the URL alone would have failed it
    assert not rejected("Kernel alice/invalid-frames: version 2 saved", names=names)
    assert rejected("Dataset creation error: Invalid license for alice/invalid-frames", names=names)
    assert rejected("Kernel push error: Notebook slug is already taken", "successfully pushed", names)


def _pushed(tmp_path: Path, version: int | None = 3) -> Path:
    build = tmp_path / "build"
    build.mkdir()
    (build / "push.json").write_text(json.dumps({"kernel": "alice/dfdc-kit-inference", "version": version,
                                                 "competition": "deepfake-detection-challenge"}))
    return build


def test_submit_the_pushed_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    build = _pushed(tmp_path)
    with KaggleStub() as stub:
        _stub_env(monkeypatch, stub, tmp_path / "home")
        code = main(["submit", "--profile", "smoke-random", "--build", str(build), "-m", "first try",
                     "--set", "kernel.push_timeout=120"])
    assert code == 0, capsys.readouterr().err
    assert "Successfully submitted" in capsys.readouterr().out
    (body,) = stub.bodies("CreateCodeSubmission")
    assert body == {"competitionName": "deepfake-detection-challenge", "kernelOwner": "alice",
                    "kernelSlug": "dfdc-kit-inference", "kernelVersion": 3, "fileName": "submission.csv",
                    "submissionDescription": "first try"}


@pytest.mark.parametrize(("status", "failure", "why"), [
    ("RUNNING", "", "is still running on Kaggle"),
    ("ERROR", "CUDA error: no kernel image", "failed on Kaggle: CUDA error: no kernel image"),
])
def test_submit_refuses_a_version_that_has_not_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         status: str, failure: str, why: str) -> None:
    build = _pushed(tmp_path)
    with KaggleStub(kernel_status=status, kernel_failure=failure) as stub:
        _stub_env(monkeypatch, stub, tmp_path / "home")
        with pytest.raises(KernelError, match=why):
            submit_kernel(build, _push_cfg(tmp_path))
    assert "CreateCodeSubmission" not in stub.names()


def test_an_older_version_is_not_judged_by_the_latest_ones_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys) -> None:
    """`kernels status` reports the latest version (3, still running): version 2 is submitted
    with a warning that its status was not checked, not refused for version 3's."""
    build = _pushed(tmp_path)
    with KaggleStub(kernel_status="RUNNING") as stub:
        _stub_env(monkeypatch, stub, tmp_path / "home")
        submit_kernel(build, _push_cfg(tmp_path), version=2)
    assert [b["kernelVersion"] for b in stub.bodies("CreateCodeSubmission")] == [2]
    assert "GetKernelSessionStatus" not in stub.names()
    assert "submitting version 2 of alice/dfdc-kit-inference unchecked" in capsys.readouterr().err


def test_submit_says_why_it_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(KernelError, match="push.json not found: nothing was pushed.*make kernel"):
        submit_kernel(tmp_path / "nothing", _push_cfg(tmp_path))
    build = _pushed(tmp_path, version=None)
    with pytest.raises(KernelError, match="no kernel version.*--version"):
        submit_kernel(build, _push_cfg(tmp_path))
    with KaggleStub(reject_submission="Submission limit reached") as stub:
        _stub_env(monkeypatch, stub, tmp_path / "home")
        with pytest.raises(KernelError, match="Submission limit reached"):
            submit_kernel(build, _push_cfg(tmp_path), version=2)
        assert [b["kernelVersion"] for b in stub.bodies("CreateCodeSubmission")] == [2]
    _clear_kaggle_env(monkeypatch, tmp_path / "nobody")
    assert main(["submit", "--profile", "smoke-random", "--build", str(build), "--version", "2"]) == 1
    assert "cannot submit: no Kaggle credentials" in capsys.readouterr().err


def test_network_block_refuses_all_but_loopback(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepter = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    accepter.start()
    probe = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
        "print('loopback ok')\n"
        "for target in (('192.0.2.1', 80), ('example.com', 443)):\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=5)\n"
        "        print('CONNECTED', target)\n"
        "    except OSError as exc:\n"
        "        print('blocked', exc)\n"
    )
    env = blocked_network_env(tmp_path / "netblock")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    server.close()
    assert out.returncode == 0, out.stderr
    assert "loopback ok" in out.stdout and "CONNECTED" not in out.stdout
    assert out.stdout.count("blocked (Kaggle kernels have no internet)") == 2


def _local_data(mini_dfdc: Path, tmp_path: Path) -> tuple[Path, list[str], pd.DataFrame]:
    data = tmp_path / "data"
    (data / "test_videos").mkdir(parents=True)
    videos = sorted(p.name for p in (mini_dfdc / "test_videos").glob("*.mp4"))[:2]  # two keep it fast
    assert len(videos) == 2
    for name in videos:
        shutil.copyfile(mini_dfdc / "test_videos" / name, data / "test_videos" / name)
    (data / "test_videos" / "emptyvideo.mp4").write_bytes(b"")
    good = (data / "test_videos" / videos[0]).read_bytes()
    (data / "test_videos" / "truncatedv.mp4").write_bytes(good[: len(good) // 3])
    rows = [videos[1], "emptyvideo.mp4", videos[0], "truncatedv.mp4"]  # not sorted: order must be kept
    sample = pd.DataFrame({"filename": rows, "label": 0.5})
    sample.to_csv(data / "sample_submission.csv", index=False)
    return data, videos, sample


@pytest.fixture(scope="module")
def image_dir(kdir: Path) -> Path:
    return kdir / "image-venv"  # shared by the local runs of this module


def test_image_environment_holds_only_the_image(image_dir: Path) -> None:
    from dfdc.kaggle.common import IMAGE_LIST, repo_root
    from dfdc.kaggle.local import image_environment
    from dfdc.kaggle.wheels import image_list

    python, dists = image_environment(image_dir, image_list(repo_root() / IMAGE_LIST))
    cwd = os.getcwd()
    try:  # a relative folder still gives an interpreter usable from the kernel's working folder
        os.chdir(image_dir.parent)
        assert image_environment(Path(image_dir.name), image_list(repo_root() / IMAGE_LIST))[0] == python
    finally:
        os.chdir(cwd)
    assert "torch" in dists and "numpy" in dists and "facenet-pytorch" not in dists and "dfdc-kit" not in dists
    probe = ("import importlib.util as u, torch, cv2, numpy, pandas, yaml\n"
             "print([m for m in ('facenet_pytorch', 'efficientnet_pytorch', 'dfdc', 'albumentations', 'pytest') "
             "if u.find_spec(m) is not None])")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300,
                         env={"PATH": os.environ["PATH"]}, cwd=image_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # the kit and the detector only come from the bundle


def test_the_image_list_records_the_images_versions() -> None:
    from dfdc.kaggle.common import IMAGE_LIST, repo_root
    from dfdc.kaggle.wheels import image_list, image_pins

    pins = image_pins(repo_root() / IMAGE_LIST)
    assert pins["torch"] == "2.10.0" and pins["torchvision"] == "0.25.0"  # Kaggle's torch 2.10 + CUDA 12.8
    assert all(pins.values()), "every line of kaggle-image.txt gives its version"
    assert image_list(repo_root() / IMAGE_LIST) == list(pins) and "opencv-python-headless" in pins


def test_pinned_image_environment_is_built_once_and_rebuilt_on_a_new_pin(tmp_path: Path) -> None:
    """kernel.local_image=pinned: a venv of exactly the listed versions, cached by a stamp. pip
    itself is the pin here (what a fresh venv already holds): no download in the test suite."""
    from dfdc.kaggle.local import image_python, pinned_environment

    import ensurepip

    version = ensurepip.version()  # the pip a new venv gets
    python, names = pinned_environment(tmp_path / "img", {"pip": version}, timeout=300)
    assert names == ["pip"] and python.is_file()
    stamp = (tmp_path / "img" / ".dfdc-image.json").stat().st_mtime_ns
    assert pinned_environment(tmp_path / "img", {"pip": version}, timeout=300)[0] == python  # cached
    assert (tmp_path / "img" / ".dfdc-image.json").stat().st_mtime_ns == stamp
    with pytest.raises(KernelError, match="without a version"):
        pinned_environment(tmp_path / "img", {"pip": ""}, timeout=300)
    with pytest.raises(KernelError, match="cannot install the versions"):
        pinned_environment(tmp_path / "img", {"pip": "1 2"}, timeout=300)  # not a version: rebuilt, fails
    assert not (tmp_path / "img" / ".dfdc-image.json").exists()  # a failed build is never taken as built
    cfg = _cfg(tmp_path)
    cfg.kernel.local_image = "docker"
    with pytest.raises(KernelError, match="local_image='docker'"):
        image_python(cfg, tmp_path / "linked")


def test_local_kernel_run_in_the_image_like_environment(bundle: Bundle, mini_dfdc: Path, tmp_path: Path,
                                                        image_dir: Path) -> None:
    data, videos, sample = _local_data(mini_dfdc, tmp_path)
    report = run_local(bundle, data, _cfg(tmp_path), work_dir=tmp_path / "local", image_dir=image_dir)
    log = report.log.read_text()
    assert report.status == "ok" and report.returncode == 0, log
    assert "dfdc 0.1.0 from" in log and "dfdc-wheels-" in log  # ran the bundled wheel, not the checkout
    assert "facenet_pytorch 2.5.3 from" in log and "MTCNN face detector" in log  # every wheel, with its reason
    assert "no usable GPU: predicting on the CPU with 2 frames" in log  # the CPU plan, written in the log
    assert "calibration.json" in log  # the run's calibration travelled with the dataset
    got = pd.read_csv(report.submission)
    assert got["filename"].tolist() == sample["filename"].tolist()
    labels = dict(zip(got["filename"], got["label"]))
    assert labels["emptyvideo.mp4"] == 0.5 and labels["truncatedv.mp4"] == 0.5  # the videos' own faults
    predicted = [labels[v] for v in videos]
    assert all(0.02 <= p <= 0.98 for p in predicted)  # the calibration's clip
    assert report.rows == 4 and report.fallback_rows == 2
    copied = tmp_path / "local" / "input" / bundle.dataset_slug
    assert copied.is_dir() and not copied.is_symlink()  # a copy: the folder that gets pushed was never exposed
    assert _last_line(log).startswith("STATUS: ok (")  # the verdict is the log's last line
    truth = tmp_path / "labels.csv"  # make kernel-local scores its submission when labels exist
    pd.DataFrame({"filename": sample["filename"], "label": [1, 0, 0, 1]}).to_csv(truth, index=False)
    from dfdc.cli.kernel import score_local

    assert re.match(r"local kernel submission: log loss \d\.\d{5} on 4 videos", score_local(report.submission, truth))
    assert (report.submission.parent / "report.md").is_file()


def _last_line(log: str) -> str:
    """The kernel's last stdout line without its time stamp (local.py keeps stdout, then stderr)."""
    stdout = log.split("\n--- stderr ---\n")[0]
    return stdout.strip().splitlines()[-1].split("] ", 1)[-1]


def test_the_local_kernels_home_is_absolute_and_outside_working(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from dfdc.kaggle.local import kernel_env

    monkeypatch.chdir(tmp_path)
    env = kernel_env(Path("local"))
    home = Path(env["HOME"])
    assert home.is_absolute() and home.is_dir() and env["DFDC_KAGGLE_ROOT"] == str(tmp_path / "local")
    assert (tmp_path / "local" / "working") not in [home, *home.parents]


def test_check_submission_reads_it_as_the_scorer_does(tmp_path: Path) -> None:
    from dfdc.kaggle import check_submission

    sample = tmp_path / "sample.csv"
    pd.DataFrame({"filename": ["b.mp4", "a.mp4"], "label": 0.5}).to_csv(sample, index=False)
    good = tmp_path / "good.csv"
    pd.DataFrame({"filename": ["b.mp4", "a.mp4"], "label": [0.1, 0.9]}).to_csv(good, index=False)
    rows, labels = check_submission(good, sample)
    assert rows == 2 and labels.tolist() == [0.1, 0.9]
    for name, frame, why in (
        ("order", pd.DataFrame({"filename": ["a.mp4", "b.mp4"], "label": 0.5}), "file names differ"),
        ("range", pd.DataFrame({"filename": ["b.mp4", "a.mp4"], "label": [0.5, 1.5]}), r"not a number in \[0, 1\]"),
        ("twice", pd.DataFrame({"filename": ["b.mp4", "b.mp4"], "label": 0.5}), "listed twice"),
        ("extra", pd.DataFrame({"filename": ["b.mp4", "a.mp4"], "label": 0.5, "x": 1}), "expected filename,label"),
    ):
        bad = tmp_path / f"{name}.csv"
        frame.to_csv(bad, index=False)
        with pytest.raises(KernelError, match=why):
            check_submission(bad, sample)


def test_a_wheel_missing_from_the_bundle_fails_loudly(bundle: Bundle, mini_dfdc: Path, tmp_path: Path,
                                                      image_dir: Path, capsys) -> None:
    """efficientnet-pytorch deliberately removed from the bundle: the image-like interpreter
    has no copy of it, so the kernel cannot load its models: STATUS: failed, exit 1, and
    still a complete fallback submission."""
    data, _, sample = _local_data(mini_dfdc, tmp_path)
    lacking = dataclasses.replace(bundle, root=tmp_path / "lacking", dataset_dir=tmp_path / "lacking" / "dataset")
    shutil.copytree(bundle.dataset_dir, lacking.dataset_dir)
    manifest = json.loads((lacking.dataset_dir / "wheels.json").read_text())
    (gone,) = [w for w in manifest["wheels"] if w["dist"] == "efficientnet-pytorch"]
    (lacking.dataset_dir / gone["file"]).unlink()
    manifest["wheels"].remove(gone)
    (lacking.dataset_dir / "wheels.json").write_text(json.dumps(manifest))
    report = run_local(lacking, data, _cfg(tmp_path), work_dir=tmp_path / "local", image_dir=image_dir)
    log = report.log.read_text()
    assert report.status == "failed" and report.returncode == 1, log
    assert "import error" in report.reasons and "efficientnet_pytorch" in report.reasons
    assert _last_line(log).startswith("STATUS: failed (")
    got = pd.read_csv(report.submission)
    assert got["filename"].tolist() == sample["filename"].tolist() and (got["label"] == 0.5).all()


def test_kernel_fails_loudly_when_the_dataset_is_missing(bundle: Bundle, mini_dfdc: Path, tmp_path: Path) -> None:
    """No weights attached: every video still gets the fallback, and the run says it failed."""
    root = tmp_path / "kaggle"
    comp = root / "input" / "deepfake-detection-challenge"
    comp.mkdir(parents=True)
    shutil.copyfile(mini_dfdc / "sample_submission.csv", comp / "sample_submission.csv")
    env = dict(os.environ, DFDC_KAGGLE_ROOT=str(root))
    out = subprocess.run(
        [sys.executable, str(bundle.kernel_dir / "inference.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1, out.stderr
    assert "STATUS: failed (FileNotFoundError: no fold*.pt weights" in out.stdout
    got = pd.read_csv(root / "working" / "submission.csv")
    want = pd.read_csv(mini_dfdc / "sample_submission.csv")
    assert got["filename"].tolist() == want["filename"].tolist() and (got["label"] == 0.5).all()


KILLABLE = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("inference", sys.argv[1])
kernel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel)
def stalled():  # the kernel's work has begun: say so, then wait to be killed
    pathlib.Path(sys.argv[2]).write_text("started")
    time.sleep(600)
kernel.find_dataset = stalled
sys.exit(kernel.main())
"""


def test_a_kernel_killed_mid_run_leaves_a_complete_fallback_submission(bundle: Bundle, mini_dfdc: Path,
                                                                        tmp_path: Path) -> None:
    """The fallback submission is written before the kernel's work starts: killed (SIGKILL,
    as Kaggle's timeout does) while it works, every video is in submission.csv at 0.5."""
    import signal
    import time

    root = tmp_path / "kaggle"
    comp = root / "input" / "deepfake-detection-challenge"
    comp.mkdir(parents=True)
    shutil.copyfile(mini_dfdc / "sample_submission.csv", comp / "sample_submission.csv")
    marker = tmp_path / "started"
    env = dict(os.environ, DFDC_KAGGLE_ROOT=str(root))
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(bundle.kernel_dir / "inference.py"), str(marker)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the kernel did not reach its work"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    got = pd.read_csv(root / "working" / "submission.csv")
    want = pd.read_csv(mini_dfdc / "sample_submission.csv")
    assert got["filename"].tolist() == want["filename"].tolist() and (got["label"] == 0.5).all()


def test_the_time_budget_is_reduced_by_the_kernels_start_up(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_kernel plans with ``kernel.time_budget`` less the seconds since the kernel started
    (installing the wheels, probing CUDA), not the whole budget."""
    import time

    from dfdc.kaggle import runtime

    budgets: list[float] = []

    class Planned(Exception):
        pass

    def plan(cfg, devices, checkpoints, budget, calibration=None):  # noqa: ANN001, ANN202
        budgets.append(budget)
        raise Planned

    monkeypatch.setattr(runtime, "plan_run", plan)
    spent = 1000.0  # seconds the kernel spent before predicting
    with pytest.raises(Planned):
        runtime.run_kernel(bundle.dataset_dir, Path("videos"), Path("sample.csv"), Path("submission.csv"),
                           time.monotonic() - spent, lambda message: None, probe=lambda log: ([], {}))
    full = read_config(bundle.dataset_dir / "config.yaml").kernel.time_budget
    (budget,) = budgets
    assert full - spent - 60 < budget <= full - spent


# ------------------------------------------------------------------ inside the kernel (dfdc.kaggle.runtime)


def test_plan_uses_every_healthy_gpu_or_a_budget_fitting_cpu_plan(tmp_path: Path) -> None:
    from dfdc.kaggle.runtime import plan_run

    cfg = load_config("b7")
    folds = _meta_only_folds(tmp_path)
    gpu = plan_run(cfg, ["cuda:0", "cuda:1"], folds, budget=1000.0)
    assert gpu.device == "cuda:0,cuda:1" and gpu.checkpoints == folds and gpu.explicit == set()
    assert gpu.cfg.predict.detect_device == "cuda:0,cuda:1" and gpu.cfg.predict.workers == cfg.kernel.workers
    assert gpu.cfg.predict.frames == 32 and gpu.cfg.predict.time_budget == 1000.0
    assert gpu.cfg.predict.video_timeout == 60.0
    cpu = plan_run(cfg, [], folds, budget=1000.0)
    assert cpu.device == "cpu" and cpu.checkpoints == [folds[3]] and cpu.cfg.predict.frames == cfg.kernel.cpu_frames
    assert cpu.cfg.predict.detect_device == "cpu" and not cpu.cfg.predict.fp16
    assert "no usable GPU: predicting on the CPU with 8 frames per video (configured 32), 1 of 5 fold models" in \
        cpu.notes[0]


def _meta_only_folds(root: Path) -> list[Path]:
    """Five fold files holding a checkpoint's metadata (no weights); fold 3 validated best."""
    folds = [root / f"fold{k}" / "best.pt" for k in range(5)]
    for k, path in enumerate(folds):
        path.parent.mkdir()
        torch.save({"arch": "efficientnet-b7", "num_classes": 2, "state_dict": {}, "input": InputSpec(240).to_dict(),
                    "val_logloss": 0.1 if k == 3 else 0.5 + k / 10}, path)
    return folds


def test_cpu_plan_with_a_calibration_fitted_at_more_frames(tmp_path: Path) -> None:
    """32-frame calibration, 8-frame CPU plan: T and clip kept, said in the log; its confident
    rule (which needs more than 11 confident faces) becomes mean."""
    from dfdc.kaggle.runtime import plan_run

    cfg = load_config("b7")
    folds = _meta_only_folds(tmp_path)
    calibration = {"aggregation": "confident", "temperature": 1.4, "clip": 0.02, "frames": 32,
                   "confident_min_count": 11}
    cpu = plan_run(cfg, [], folds, budget=1000.0, calibration=calibration)
    assert cpu.cfg.predict.aggregation == "mean" and cpu.explicit == {"aggregation"}
    notes = "\n".join(cpu.notes)
    assert "fitted at 32 frames per video and is applied at 8" in notes and "temperature and clip are kept" in notes
    assert "aggregation mean instead of confident" in notes
    gpu = plan_run(cfg, ["cuda:0"], folds, budget=1000.0, calibration=calibration)  # 32 frames: as fitted
    assert gpu.explicit == set() and not any("calibration" in n for n in gpu.notes)
    meanwise = plan_run(cfg, [], folds, budget=1000.0, calibration={**calibration, "aggregation": "mean"})
    assert meanwise.explicit == set() and "fitted at 32 frames" in "\n".join(meanwise.notes)
    from dfdc.aggregate import apply_calibration

    applied = apply_calibration(cpu.cfg.predict, calibration, cpu.explicit)  # what predict_videos does with it
    assert (applied.aggregation, applied.temperature, applied.clip) == ("mean", 1.4, 0.02)
    uncalibrated = plan_run(cfg, [], folds, budget=1000.0, calibration=None)  # predict.aggregation: confident
    assert uncalibrated.cfg.predict.aggregation == "mean" and uncalibrated.explicit == {"aggregation"}
    at_eight = {**calibration, "frames": 8}  # fitted at the CPU plan's own frames: its choice stands
    assert plan_run(cfg, [], folds, budget=1000.0, calibration=at_eight).explicit == set()


def test_cuda_probe_reports_why_a_device_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A P100 under today's torch: is_available() is True, the first real op fails."""
    from dfdc.kaggle.runtime import probe_cuda

    class NoKernelImage(RuntimeError):
        pass

    def broken(*args: object, **kwargs: object) -> None:
        raise NoKernelImage("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (6, 0))
    monkeypatch.setattr(torch, "randn", broken)
    lines: list[str] = []
    ok, bad = probe_cuda(lines.append)
    assert ok == [] and "no kernel image" in bad["cuda:0"]
    assert "CUDA probe cuda:0: FAILED, NoKernelImage: CUDA error: no kernel image" in lines[0]


def test_verdict_counts_only_failures_that_are_not_the_videos_own() -> None:
    from dfdc.kaggle.runtime import verdict
    from dfdc.predict import PredictReport

    cfg = load_config("smoke-random")

    def report(reasons: list[str], videos: int = 10) -> PredictReport:
        return PredictReport(videos, videos - len(reasons), {f"v{i}": r for i, r in enumerate(reasons)}, {}, {}, 1,
                             Path("s.csv"), Path("p.csv"))

    ok, text = verdict(report(["no face: in 32 frames"] * 5 + ["unreadable: x", "missing"]), cfg)
    assert ok and "0 of 10 videos" in text  # bad videos are not the system's fault
    ok, text = verdict(report(["timeout: no result after 60 s", "error: model: CUDA error"]), cfg)
    assert ok and "2 of 10 videos (20%)" in text  # at the limit: still ok
    ok, text = verdict(report(["error: ModuleNotFoundError: facenet_pytorch"] * 2 + ["worker died: exit -9"]), cfg)
    assert not ok and "error: 2, worker died: 1" in text
    # the time budget is no breakage: a run that predicted half the videos in time is ok, degraded
    ok, text = verdict(report(["time budget: projected finish beyond 30600 s"] * 5), cfg)
    assert ok and text.startswith("degraded: 5 videos over the time budget got the fallback 0.5") and "0 of 10" in text
    ok, text = verdict(report(["time budget: x"] * 4 + ["timeout: no result after 60 s"] * 3), cfg)
    assert not ok and text.startswith("3 of 10 videos (30%)") and "also 4 videos over the time budget" in text


def test_shipped_calibration_resolves_local_paths_and_keeps_user_keys(run_dir: Path, tmp_path: Path) -> None:
    from dfdc.kaggle.bundle import _shipped_calibration

    cfg = load_config("smoke-random", ["predict.clip=0.05"])
    shipped, calibration = _shipped_calibration(run_dir, cfg, {"clip"})
    assert calibration == {**CALIBRATION, "clip": 0.05}  # the user's --set wins over the run's file
    assert shipped.predict.calibration == "auto"  # the kernel reads the shipped file
    local = tmp_path / "mine.json"  # a path of this machine: resolved here, never shipped as a path
    local.write_text(json.dumps({"aggregation": "confident", "temperature": 2.0, "clip": 0.03}))
    cfg = load_config("smoke-random", [f"predict.calibration={local}"])
    shipped, calibration = _shipped_calibration(run_dir, cfg, set())
    assert calibration == {"aggregation": "confident", "temperature": 2.0, "clip": 0.03}
    assert shipped.predict.calibration == "auto" and str(local) not in str(shipped.to_dict())
    shipped, calibration = _shipped_calibration(run_dir, load_config("smoke-random", ["predict.calibration=none"]), set())
    assert calibration is None
