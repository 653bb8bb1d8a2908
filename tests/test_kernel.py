"""The Kaggle kernel bundle, its push through the real kaggle client, and the local run."""

from __future__ import annotations

import json
import os
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
from dfdc.kernel import (
    Bundle,
    KernelError,
    blocked_network_env,
    build_bundle,
    find_credentials,
    push_bundle,
    run_local,
    verify_bundle,
)
from dfdc.models import create_model, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from kaggle_stub import KaggleStub  # noqa: E402

SECRET = "planted-secret-key-4f0c2a9d"  # a fake API key that must never reach the bundle
KAGGLE_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME")
CALIBRATION = {"aggregation": "mean", "temperature": 1.0, "clip": 0.02}


def _cfg(wheel_cache: Path) -> Config:
    cfg = load_config("smoke")
    cfg.predict.frames = 2  # keep the local kernel run short
    cfg.predict.workers = 0  # inline decode + detect
    cfg.kernel.wheel_cache = str(wheel_cache)
    return cfg


@pytest.fixture(scope="module")
def kdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel")


@pytest.fixture(scope="module")
def run_dir(kdir: Path) -> Path:
    """Two folds of randomly initialised tiny b0 checkpoints, plus files that must not ship."""
    torch.manual_seed(0)
    cfg = load_config("smoke")
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
    ]
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
    assert "TIME_BUDGET = 30600.0" in script  # 8.5 h
    compile(script, "inference.py", "exec")


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
            push_bundle(bundle, timeout=60)
        code = main(["kernel", "--profile", "smoke", "--models", str(run_dir), "--out", str(tmp_path / "b"), "--push"])
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


def test_push_with_the_real_client(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub() as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        report = push_bundle(bundle, timeout=120)
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
    (save,) = stub.bodies("SaveKernel")
    assert save["slug"] == "alice/dfdc-kit-inference"
    assert save["enableGpu"] is True and save["enableInternet"] is False and save["isPrivate"] is True
    assert save["competitionDataSources"] == ["deepfake-detection-challenge"]
    assert save["datasetDataSources"] == ["alice/dfdc-kit-models"]
    assert save["text"] == (bundle.kernel_dir / "inference.py").read_text()
    assert names.index("CreateDataset") < names.index("SaveKernel")
    assert report.kernel_url and "alice/dfdc-kit-inference" in report.kernel_url


def test_existing_dataset_gets_a_new_version(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KaggleStub(existing_datasets=("alice/dfdc-kit-models",)) as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        report = push_bundle(bundle, timeout=120)
    assert report.dataset_action == "version"
    assert "CreateDataset" not in stub.names() and len(stub.bodies("CreateDatasetVersion")) == 1
    assert len(stub.bodies("SaveKernel")) == 1


def test_server_rejection_fails_the_command(
    bundle: Bundle, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import dfdc.cli.kernel as cli_kernel

    def prebuilt(run: Path, out: Path, cfg: Config, username: str, explicit: object = ()) -> Bundle:
        assert (Path(run), username) == (run_dir, "alice")
        return bundle  # the module's bundle: the rejection is what is under test

    monkeypatch.setattr(cli_kernel, "build_bundle", prebuilt)
    with KaggleStub(reject_kernel="The following are not valid dataset sources: alice/dfdc-kit-models") as stub:
        _stub_env(monkeypatch, stub, tmp_path)
        code = main(["kernel", "--profile", "smoke", "--models", str(run_dir), "--push", "--timeout", "120"])
    assert len(stub.bodies("SaveKernel")) == 1  # the client did send it, and exits 0 itself
    assert code != 0
    assert "Kernel push error" in capsys.readouterr().err


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


def test_local_kernel_run_on_the_mini_dfdc(bundle: Bundle, mini_dfdc: Path, tmp_path: Path) -> None:
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

    report = run_local(bundle, data, _cfg(tmp_path), work_dir=tmp_path / "local")

    log = report.log.read_text()
    assert report.status == "ok", log
    assert "dfdc from " in log and "dfdc-wheels-" in log  # ran the bundled wheel, not the checkout
    assert "calibration.json" in log  # the run's calibration travelled with the dataset
    got = pd.read_csv(report.submission)
    assert got["filename"].tolist() == sample["filename"].tolist()
    assert got["label"].between(0.0, 1.0).all()
    labels = dict(zip(got["filename"], got["label"]))
    assert labels["emptyvideo.mp4"] == 0.5 and labels["truncatedv.mp4"] == 0.5
    predicted = [labels[v] for v in videos]
    assert all(0.02 <= p <= 0.98 for p in predicted)  # the calibration's clip
    assert report.rows == 4 and report.fallback_rows == 2


def test_kernel_falls_back_when_the_dataset_is_missing(bundle: Bundle, mini_dfdc: Path, tmp_path: Path) -> None:
    """No weights attached: the kernel still writes every video at the fallback."""
    root = tmp_path / "kaggle"
    comp = root / "input" / "deepfake-detection-challenge"
    comp.mkdir(parents=True)
    shutil.copyfile(mini_dfdc / "sample_submission.csv", comp / "sample_submission.csv")
    env = dict(os.environ, DFDC_KAGGLE_ROOT=str(root))
    out = subprocess.run(
        [sys.executable, str(bundle.kernel_dir / "inference.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "DFDC-KERNEL-STATUS: fallback" in out.stdout
    got = pd.read_csv(root / "working" / "submission.csv")
    want = pd.read_csv(mini_dfdc / "sample_submission.csv")
    assert got["filename"].tolist() == want["filename"].tolist() and (got["label"] == 0.5).all()


def test_shipped_calibration_resolves_local_paths_and_keeps_user_keys(run_dir: Path, tmp_path: Path) -> None:
    from dfdc.kernel import _shipped_calibration

    cfg = load_config("smoke", ["predict.clip=0.05"])
    shipped, calibration = _shipped_calibration(run_dir, cfg, {"clip"})
    assert calibration == {**CALIBRATION, "clip": 0.05}  # the user's --set wins over the run's file
    assert shipped.predict.calibration == "auto"  # the kernel reads the shipped file
    local = tmp_path / "mine.json"  # a path of this machine: resolved here, never shipped as a path
    local.write_text(json.dumps({"aggregation": "confident", "temperature": 2.0, "clip": 0.03}))
    cfg = load_config("smoke", [f"predict.calibration={local}"])
    shipped, calibration = _shipped_calibration(run_dir, cfg, set())
    assert calibration == {"aggregation": "confident", "temperature": 2.0, "clip": 0.03}
    assert shipped.predict.calibration == "auto" and str(local) not in str(shipped.to_dict())
    shipped, calibration = _shipped_calibration(run_dir, load_config("smoke", ["predict.calibration=none"]), set())
    assert calibration is None
