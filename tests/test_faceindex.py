"""dfdc.faceindex.read_index: the one reader of faces.csv and its one rule for older indexes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_data import make_tiny_faces

from dfdc.data import DataError, load_training_data
from dfdc.embed import read_faces_index
from dfdc.faceindex import FILLED, FaceIndexError, read_index


def test_one_rule_for_an_index_without_tracks(tmp_path: Path) -> None:
    faces, folds = make_tiny_faces(tmp_path, n_real=2, fakes_per_real=1)
    table = pd.read_csv(faces / "faces.csv")
    table["face"] = table["frame"] % 2  # two people in turn
    table.drop(columns=["original", "part"]).sample(frac=1.0, random_state=0).to_csv(faces / "faces.csv", index=False)
    index = read_index(faces)
    assert index.attrs[FILLED] == ["original", "part", "track", "landmarks"]  # this index has no landmarks
    assert (index["track"] == index["face"]).all() and set(index["track"]) == {0, 1}  # the in-frame rank
    assert index[["video", "frame", "face"]].equals(index[["video", "frame", "face"]].sort_values(
        ["video", "frame", "face"], kind="mergesort"))  # canonical order whatever the file's
    # training and embeddings read it alike
    assert load_training_data(faces, folds).table["track"].tolist() == index["track"].tolist()
    assert read_faces_index(faces)["track"].tolist() == index["track"].tolist()
    table.to_csv(faces / "faces.csv", index=False)
    with_tracks = table.assign(track=1 - table["face"])
    with_tracks.to_csv(faces / "faces.csv", index=False)
    reread = read_index(faces)
    assert (reread["track"] == 1 - reread["face"]).all() and reread.attrs[FILLED] == ["landmarks"]


def test_bad_labels_and_missing_files_name_the_index(tmp_path: Path) -> None:
    faces, _ = make_tiny_faces(tmp_path, n_real=1, fakes_per_real=1)
    with pytest.raises(FaceIndexError, match="faces table .* not found"):
        read_index(tmp_path / "nowhere")
    table = pd.read_csv(faces / "faces.csv")
    table.loc[0, "label"] = "MAYBE"
    table.to_csv(faces / "faces.csv", index=False)
    with pytest.raises(DataError, match="labels must be REAL or FAKE, found MAYBE"):
        read_index(faces, error=DataError)
