"""dfdc.embed: pooled features per crop, the index, resume after a kill, the one reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc import embed as embed_module
from dfdc.cli import main
from dfdc.config import load_config
from dfdc.embed import (
    ARRAY_FILE, INDEX_COLUMNS, EmbedError, embed_faces, load_embeddings, read_faces_index,
)
from dfdc.models import create_model, save_checkpoint
from tests.test_data import make_tiny_faces


def _cfg(*overrides: str):
    return load_config("smoke-random", ["embed.loader_workers=0", "embed.size=32", "embed.center=1.0", *overrides])


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    faces_dir, _ = make_tiny_faces(tmp_path, n_real=3, fakes_per_real=1, crops_real=4, crops_fake=2)
    return faces_dir  # 18 crops of 6 videos


def test_embeds_every_crop_with_its_index(faces: Path, tmp_path: Path) -> None:
    report = embed_faces(faces, "tiny-cnn", tmp_path / "emb", _cfg())
    array, index = load_embeddings(tmp_path / "emb")
    table = pd.read_csv(faces / "faces.csv").sort_values(["video", "frame", "face"]).reset_index(drop=True)
    assert array.shape == (len(table), 64) and array.dtype == np.float32 and report.rows == len(table)
    assert list(index.columns) == INDEX_COLUMNS
    assert index["video"].tolist() == table["video"].tolist() and index["path"].tolist() == table["path"].tolist()
    assert (index["track"] == index["face"]).all()  # faces.csv without a track column: read_index's one rule
    assert np.isfinite(array).all() and array.std(0).max() > 0
    stored, _ = load_embeddings(tmp_path / "emb", dtype=None)
    assert stored.dtype == np.float16  # embed.dtype default
    # row i is the model's features of crop i, as the predictor prepares it
    cfg = _cfg()
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.__class__(**{**cfg.model.__dict__, "arch": "tiny-cnn"}), 32).eval()
    embed_module.calibrate_batchnorm(model, [torch.stack([embed_module._Crops(
        [str(faces / p) for p in table["path"]], 32, 1.0)[i] for i in range(len(table))])], torch.device("cpu"))
    crop = embed_module._Crops([str(faces / table["path"][5])], 32, 1.0)[0][None]
    with torch.no_grad():
        expected = model.features(crop).numpy()[0]
    np.testing.assert_allclose(array[5], expected, rtol=2e-2, atol=2e-3)


def test_track_column_is_used_when_present(faces: Path) -> None:
    table = pd.read_csv(faces / "faces.csv")
    table["track"] = np.arange(len(table)) % 2
    table.to_csv(faces / "faces.csv", index=False)
    index = read_faces_index(faces)
    assert index["track"].tolist() == table.set_index("path").loc[index["path"], "track"].tolist()
    assert set(index["track"]) == {0, 1}


def test_random_init_efficientnet_gives_usable_features(faces: Path, tmp_path: Path) -> None:
    # eval-mode b0 from random init gives ~1e-13 features (zero in float16) without the
    # BatchNorm re-estimation
    embed_faces(faces, "efficientnet-b0", tmp_path / "b0", _cfg())
    array, _ = load_embeddings(tmp_path / "b0")
    assert array.shape[1] == 1280 and array.std(0).mean() > 1e-3
    embed_faces(faces, "efficientnet-b0", tmp_path / "raw", _cfg("embed.bn_calibration=0"))
    raw, _ = load_embeddings(tmp_path / "raw")
    assert raw.std(0).mean() < 1e-6


def test_resumes_after_a_kill_and_reruns_do_nothing(faces: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg("embed.chunk_size=5")
    embed_faces(faces, "tiny-cnn", tmp_path / "whole", cfg)
    whole, _ = load_embeddings(tmp_path / "whole", dtype=None)

    real_save = embed_module._save_npy
    saved: list[str] = []

    def dying(path, array):
        if Path(path).name.startswith("chunk_") and len(saved) == 2:
            raise KeyboardInterrupt  # killed while the third chunk is due
        saved.append(Path(path).name)
        return real_save(path, array)

    monkeypatch.setattr(embed_module, "_save_npy", dying)
    with pytest.raises(KeyboardInterrupt):
        embed_faces(faces, "tiny-cnn", tmp_path / "b", cfg)
    assert not (tmp_path / "b" / ARRAY_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "b" / "chunks").glob("*.npy")) == ["chunk_00000.npy", "chunk_00001.npy"]
    monkeypatch.setattr(embed_module, "_save_npy", real_save)
    report = embed_faces(faces, "tiny-cnn", tmp_path / "b", cfg)
    assert (report.chunks_reused, report.chunks_done) == (2, 2)
    resumed, _ = load_embeddings(tmp_path / "b", dtype=None)
    np.testing.assert_array_equal(resumed, whole)
    assert not (tmp_path / "b" / "chunks").exists()
    assert embed_faces(faces, "tiny-cnn", tmp_path / "b", cfg).skipped


def test_refuses_other_settings_and_bad_inputs(faces: Path, tmp_path: Path) -> None:
    embed_faces(faces, "tiny-cnn", tmp_path / "emb", _cfg())
    with pytest.raises(EmbedError, match="made otherwise"):
        embed_faces(faces, "pixels", tmp_path / "emb", _cfg())
    with pytest.raises(EmbedError, match="neither a registered model"):
        embed_faces(faces, "no-such-model", tmp_path / "x", _cfg())
    with pytest.raises(EmbedError, match="embed.center"):
        embed_faces(faces, "tiny-cnn", tmp_path / "x", _cfg("embed.center=0"))
    with pytest.raises(EmbedError, match="faces table .* not found"):
        embed_faces(tmp_path / "nowhere", "tiny-cnn", tmp_path / "x", _cfg())
    with pytest.raises(EmbedError, match="no finished embeddings"):
        load_embeddings(tmp_path / "x")
    (faces / pd.read_csv(faces / "faces.csv")["path"][0]).unlink()
    with pytest.raises(EmbedError, match="missing"):
        embed_faces(faces, "tiny-cnn", tmp_path / "y", _cfg())


def test_a_training_run_folder_embeds_with_its_checkpoint(faces: Path, tmp_path: Path) -> None:
    cfg = _cfg()
    cfg.model.arch = "tiny-cnn"
    model = create_model(cfg.model, 40)
    run = tmp_path / "runs" / "r"
    save_checkpoint(run / "fold1" / "best.pt", model, cfg, {"fold": 1})
    cfg = load_config("smoke-random", ["embed.loader_workers=0"])
    report = embed_faces(faces, str(run), tmp_path / "emb", cfg)
    meta = embed_module.embeddings_meta(tmp_path / "emb")
    assert report.dim == 64 and meta["input"]["size"] == 40 and meta["weights"] == "checkpoint"
    with pytest.raises(EmbedError, match="no fold 3"):
        embed_faces(faces, str(run), tmp_path / "emb3", load_config("smoke-random", ["embed.fold=3"]))


def test_cli(faces: Path, tmp_path: Path, capsys) -> None:
    argv = ["embed", "--faces", str(faces), "--model", "grey-pixels", "--center", "0.625", "--profile", "smoke-random",
            "--set", "embed.loader_workers=0"]
    assert main(argv) == 0
    assert "crops/s" in capsys.readouterr().out
    array, _ = load_embeddings(faces.parent / "embeddings")
    assert array.shape[1] == 32 * 32
    assert main(argv) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["embed", "--faces", str(faces), "--model", "tiny-cnn", "--profile", "smoke-random"]) == 1
    assert "made otherwise" in capsys.readouterr().err


def test_a_model_over_a_backbone_embeds_with_its_backbone(faces: Path, tmp_path: Path) -> None:
    """lstm / gru (and the baselines) have no features of their own: their backbone's are used."""
    cfg = _cfg("model.backbone=tiny-cnn", "model.rnn_hidden=128")
    report = embed_faces(faces, "lstm", tmp_path / "lstm", cfg)
    plain = embed_faces(faces, "tiny-cnn", tmp_path / "tiny", cfg)
    assert report.dim == plain.dim == 64
    assert "its backbone tiny-cnn" in embed_module.embeddings_meta(tmp_path / "lstm")["arch"]
    gru = _cfg("model.arch=gru", "model.backbone=tiny-cnn", "model.rnn_hidden=128")
    run = tmp_path / "runs" / "seq"
    save_checkpoint(run / "fold0" / "best.pt", create_model(gru.model, 32), gru, {"fold": 0})
    assert embed_faces(faces, str(run), tmp_path / "run", cfg).dim == 64


def test_identity_selection_and_the_default_side(faces: Path, tmp_path: Path) -> None:
    """embed.select identity embeds what identity folds cluster (REAL crops, at most
    folds.identity_crops per video); a named model's side is capped at the crops' (32 px here)."""
    from dfdc.identity import cluster_identities, identities_from_embeddings

    cfg = _cfg("embed.size=0", "embed.select=identity", "folds.identity_crops=3")
    embed_faces(faces, "efficientnet-b0", tmp_path / "b0", cfg)  # its own side is 224
    meta = embed_module.embeddings_meta(tmp_path / "b0")
    assert meta["input"]["size"] == 32 and meta["selection"] == {"select": "identity", "label": "REAL", "per_video": 3}
    embed_faces(faces, "pixels", tmp_path / "sel", cfg)  # no BatchNorm: features independent of the selection
    array, index = load_embeddings(tmp_path / "sel")
    assert set(index["label"]) == {"REAL"} and index.groupby("video").size().tolist() == [3, 3, 3]  # of 4 REAL crops
    embed_faces(faces, "pixels", tmp_path / "all", _cfg("embed.size=0"))
    whole, whole_index = load_embeddings(tmp_path / "all")
    assert len(whole_index) == 18
    keep = whole_index["path"].isin(set(index["path"])).to_numpy()
    np.testing.assert_array_equal(whole[keep], array)  # the same rows, the same features
    analyze = load_config("smoke-random", ["analyze.threads=1"]).analyze
    pd.testing.assert_frame_equal(identities_from_embeddings(tmp_path / "sel", analyze, crops=3).table,
                                  cluster_identities(whole, whole_index, analyze, crops=3).table)


def test_the_loop_gives_torch_this_process_share_of_the_cores(faces: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks sharing a machine (the frozen features under torchrun) pass their share of the
    cores; torch gets that share less the loader workers, not the whole machine's spare cores."""
    import contextlib

    asked: list[int] = []

    @contextlib.contextmanager
    def record(threads: int):
        asked.append(threads)
        yield

    monkeypatch.setattr(embed_module, "torch_threads", record)
    import dfdc.threads

    monkeypatch.setattr(dfdc.threads, "available_cores", lambda: 64)  # a big machine
    net = create_model(_cfg().model).eval()
    files = sorted(str(p) for p in faces.rglob("*.png"))[:4]
    assert len(files) == 4
    kwargs = dict(chunk_size=4, batch_size=4, workers=0, device=torch.device("cpu"))
    embed_module.embed_chunks(net, files, 32, tmp_path / "alone", **kwargs)
    embed_module.embed_chunks(net, files, 32, tmp_path / "shared", cores=3, **kwargs)
    assert asked == [64, 3]


def test_a_full_disk_ends_embed_with_one_line_and_the_rerun_resumes_exactly(faces: Path, tmp_path: Path,
                                                                             monkeypatch, capsys) -> None:
    """ENOSPC injected into the atomic writer at the third chunk: `dfdc embed` ends with one
    line naming the folder; the same command then reuses the two chunks written and ends with
    the embeddings of a run the disk never stopped."""
    import contextlib
    import errno

    from dfdc import io

    argv = ["embed", "--faces", str(faces), "--model", "tiny-cnn", "--profile", "smoke", "--set",
            "embed.loader_workers=0", "--set", "embed.size=32", "--set", "embed.center=1.0", "--set",
            "embed.chunk_size=5"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole, _ = load_embeddings(tmp_path / "whole", dtype=None)
    chunks: list[Path] = []

    @contextlib.contextmanager
    def filling(path, mode="w", **kwargs):  # noqa: ANN001, ANN003, ANN202
        with io.atomic_open(path, mode, **kwargs) as handle:
            if Path(path).name.startswith("chunk_"):
                chunks.append(Path(path))
                if len(chunks) == 3:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
            yield handle

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(embed_module, "atomic_open", filling)
        assert main([*argv, "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"error: {chunks[-1].parent}: no space left on the device")
    assert err.strip().endswith("free space and rerun: it resumes")
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    resumed, _ = load_embeddings(tmp_path / "b", dtype=None)
    np.testing.assert_array_equal(resumed, whole)
