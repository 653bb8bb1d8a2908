"""The faces index: one CSV of crop rows per extraction shard, appended as videos finish.

Per shard ``i`` of ``N`` the faces folder holds two append-only files (for ``N = 1`` the
plain names; ``faces.csv`` is then the index training reads)::

    faces.csv  | faces_{i}of{N}.csv   crop rows (``ROW_COLUMNS``), a video's rows at a time
    done.csv   | done_{i}of{N}.csv    one line per indexed video: video, part, label, crops,
                                      dropped, end (the rows file's size after its rows)

Commit protocol (kill -9 at any point leaves a readable index): a video's crops and its
manifest are written first (``dfdc.extract``; the manifest is the video's commit point);
then its rows are appended to the rows file, then its line to the done file. On opening,
a torn last line of the done file is cut, and the rows file is cut back to the last done
line's ``end``: rows without a done line never count. Finished videos whose manifest
exists but that are not in the done file are appended from their manifests
(``dfdc.extract``), so nothing is lost either. A rows file shorter than ``end`` (lost
data, e.g. a crash of the machine without the page cache written) or rows without a done
file (an index from an older kit version or a merge) are rebuilt from the manifests.

So a rerun reads one small done file instead of 119k manifests, and no stage stats the
1.7 M crop files. ``merge`` builds the one ``faces.csv`` of a sharded extraction (with the
``done.csv`` that fits it, so an unsharded rerun on the same folder finds everything indexed).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.io import atomic_write_bytes, atomic_write_csv

ROW_COLUMNS = ["video", "part", "label", "original", "frame", "face", "track", "path", "box", "prob", "landmarks"]
# landmarks: MTCNN's 5 points (eyes, nose, mouth corners) as "x y" pairs in the crop's own pixels ("" when
# the detector gave none; a fake's are its original's, as its box): what landmark augmentation reads
DONE_COLUMNS = ["video", "part", "label", "crops", "dropped", "end"]
INDEX = "faces.csv"  # the index training reads (the only one of an unsharded extraction)
DONE_FILE = re.compile(r"done_(\d+)of(\d+)\.csv")
ROW_ORDER = ["video", "frame", "face"]  # canonical order of a merged index (one row per crop)


LANDMARK_COUNT = 5  # MTCNN: left eye, right eye, nose, left and right mouth corner


def parse_landmarks(text: str) -> np.ndarray | None:
    """A ``landmarks`` cell ("x y" pairs, crop pixels) as a 5 x 2 array; None when empty."""
    values = str(text).split()
    if len(values) != 2 * LANDMARK_COUNT:
        return None
    return np.asarray(values, dtype=np.float64).reshape(LANDMARK_COUNT, 2)


class FaceIndexError(RuntimeError):
    """An index that cannot be read or merged (names the file and the fix)."""


def shard_files(shard: tuple[int, int]) -> tuple[str, str]:
    """(rows file, done file) names of ``shard`` = (i, N)."""
    if shard[1] == 1:
        return INDEX, "done.csv"
    return f"faces_{shard[0]}of{shard[1]}.csv", f"done_{shard[0]}of{shard[1]}.csv"


def _header() -> bytes:
    return (",".join(ROW_COLUMNS) + "\n").encode("utf-8")


def committed(data: bytes) -> bytes:
    """The committed lines of an append-only file's bytes: up to its last newline (a line
    torn by a kill is not committed). The one reader of done files (``open`` and ``merge``)."""
    return data[: data.rfind(b"\n") + 1]


def _cut_torn_line(path: Path) -> bytes:
    """``committed`` bytes of the file; a torn last line is cut from the file too."""
    data = path.read_bytes()
    keep = committed(data)
    if len(keep) < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(keep))
    return keep


def read_done(data: bytes) -> pd.DataFrame:
    if not data.strip():
        return pd.DataFrame(columns=DONE_COLUMNS)
    return pd.read_csv(io.BytesIO(data), dtype={"video": str, "part": str, "label": str}, keep_default_na=False)


@dataclass
class ShardIndex:
    """This shard's index files: opened (repaired after a kill), then appended video by video."""

    out_dir: Path
    shard: tuple[int, int] = (0, 1)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # video -> its done line
    rebuilt: str = ""  # why the index was started afresh ("" = it was not)

    @property
    def rows_path(self) -> Path:
        return Path(self.out_dir) / shard_files(self.shard)[0]

    @property
    def done_path(self) -> Path:
        return Path(self.out_dir) / shard_files(self.shard)[1]

    def open(self) -> ShardIndex:
        """Read the done file and cut both files back to what it commits."""
        if not self.done_path.is_file():
            if self.rows_path.is_file():
                self.rebuilt = f"{self.rows_path.name} has no {self.done_path.name} (older kit or merged index)"
            return self._reset()
        try:
            table = read_done(_cut_torn_line(self.done_path))
            if list(table.columns) != DONE_COLUMNS:
                raise ValueError(f"columns {list(table.columns)}")
        except (ValueError, pd.errors.ParserError) as exc:
            self.rebuilt = f"{self.done_path.name} is unreadable ({exc})"
            return self._reset()
        end = int(table["end"].iloc[-1]) if len(table) else len(_header())
        size = self.rows_path.stat().st_size if self.rows_path.is_file() else -1
        if size > 0 and self.rows_path.read_bytes()[:len(_header())] != _header():
            self.rebuilt = f"{self.rows_path.name} has the columns of an older kit (today: {', '.join(ROW_COLUMNS)})"
            return self._reset()
        if size < end:
            self.rebuilt = f"{self.rows_path.name} is shorter than {self.done_path.name} commits ({size} < {end} bytes)"
            return self._reset()
        if size > end:  # rows appended without their done line: not committed
            with open(self.rows_path, "r+b") as handle:
                handle.truncate(end)
        self.done = {str(r["video"]): r for r in table.to_dict("records")}
        return self

    def _reset(self) -> ShardIndex:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows_path.write_bytes(_header())
        self.done_path.write_bytes((",".join(DONE_COLUMNS) + "\n").encode("utf-8"))
        self.done = {}
        return self

    def append(self, video: str, part: str, label: str, rows: list[dict[str, Any]], dropped: int) -> None:
        """Commit one finished video: its rows, then its done line."""
        text = pd.DataFrame(rows, columns=ROW_COLUMNS).to_csv(header=False, index=False) if rows else ""
        with open(self.rows_path, "ab") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            end = handle.tell()
        line = {"video": video, "part": part, "label": label, "crops": len(rows), "dropped": int(dropped), "end": end}
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([line[c] for c in DONE_COLUMNS])
        with open(self.done_path, "ab") as handle:
            handle.write(buffer.getvalue().encode("utf-8"))
            handle.flush()
        self.done[video] = line

    def rows(self) -> pd.DataFrame:
        """The committed crop rows (reads the rows file up to the last done line's end)."""
        end = max((int(d["end"]) for d in self.done.values()), default=len(_header()))
        with open(self.rows_path, "rb") as handle:
            data = handle.read(end)
        return read_rows(data, self.rows_path)

    def totals(self) -> dict[str, int]:
        """Crops per label and dropped-identical crops over the indexed videos."""
        out = {"REAL": 0, "FAKE": 0, "dropped": 0}
        for line in self.done.values():
            out[str(line["label"])] = out.get(str(line["label"]), 0) + int(line["crops"])
            out["dropped"] += int(line["dropped"])
        return out


def read_rows(data: bytes, source: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(data), dtype={"video": str, "part": str, "label": str, "original": str,
                                                   "path": str, "box": str, "landmarks": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise FaceIndexError(f"{source}: unreadable faces index ({exc}); rerun `dfdc faces` on this folder") from None


LABEL_NAMES = ("REAL", "FAKE")  # the labels a faces index may hold
INDEX_NEEDED = ("video", "label", "frame", "path")  # columns no reader of the index can do without
INDEX_FIX = "build it with `python -m dfdc faces` (make faces); after sharded runs `python -m dfdc faces --merge`"
FILLED = "filled"  # ``read_index(...).attrs[FILLED]``: the columns the file lacked (filled with defaults)


def read_index(faces_dir: Path, error: type[Exception] = FaceIndexError) -> pd.DataFrame:
    """The faces index of a faces folder (``faces.csv``), one row per crop in canonical order
    (``ROW_ORDER``: the order every reader uses; the file itself is appended as videos finish).

    The one reader of ``faces.csv`` (training, embeddings, identity folds, leak reports), so
    one rule fills what an older index lacks: ``original`` None, ``part`` "", ``face`` 0 and
    ``track`` = ``face`` (an index built before face tracks: the in-frame rank, most confident
    first, is the best guess of who is who). ``attrs[FILLED]`` names the filled columns (a
    fingerprint of the file leaves them out). Problems raise ``error`` naming the file and fix.
    """
    from dfdc.io import read_table

    path = Path(faces_dir) / INDEX
    table = read_table(path, INDEX_NEEDED, error=error, what="faces table", fix=INDEX_FIX,
                       dtype={"video": str, "label": str, "path": str, "part": str, "original": object})
    bad = sorted(set(table["label"].dropna()) - set(LABEL_NAMES)) + (["<empty>"] if table["label"].isna().any() else [])
    if bad:
        raise error(f"{path}: labels must be REAL or FAKE, found {', '.join(map(str, bad))}; rebuild it ({INDEX_FIX})")
    filled = [c for c in ("original", "part", "face", "track", "landmarks") if c not in table.columns]
    defaults = {"original": None, "part": "", "face": 0, "landmarks": ""}
    for column in filled:
        table[column] = table["face"] if column == "track" else defaults[column]
    table["original"] = table["original"].where(table["original"].notna() & (table["original"] != ""), None)
    table["part"] = table["part"].fillna("")
    table["landmarks"] = table["landmarks"].fillna("").astype(str)
    table["track"] = table["track"].fillna(table["face"]).astype(int)
    table = table.sort_values(ROW_ORDER, kind="mergesort").reset_index(drop=True)
    table.attrs[FILLED] = filled
    return table


def spaced_rows(index: pd.DataFrame, label: str, per_video: int) -> np.ndarray:
    """Mask of the rows of ``label`` crops, at most ``per_video`` evenly spaced ones of each
    video in index order (0 = all of them): what identity folds cluster (``label`` REAL,
    ``folds.identity_crops``), so ``dfdc embed`` can embed exactly those."""
    rows = np.flatnonzero((index["label"] == label).to_numpy())
    if per_video <= 0:
        keep = np.zeros(len(index), bool)
        keep[rows] = True
        return keep
    keep = np.zeros(len(index), bool)
    videos = index["video"].to_numpy()[rows]
    for members in pd.Series(rows).groupby(videos, sort=False).indices.values():
        members = rows[members]
        keep[members[np.unique(np.linspace(0, len(members) - 1, min(per_video, len(members))).round().astype(int))]] = True
    return keep


@dataclass
class MergeReport:
    shards: int = 0
    videos: int = 0
    real_crops: int = 0
    fake_crops: int = 0
    failed: int = 0  # videos a shard tried and failed (listed in its failures file)
    index: str = ""

    def format(self) -> str:
        return (f"merged {self.shards} shards: {self.videos} videos, crops REAL {self.real_crops} FAKE "
                f"{self.fake_crops}; {self.failed} videos failed in their shard (see failures_*.csv) -> {self.index}")


def shard_counts(out_dir: Path) -> list[int]:
    """The shard counts N of the done files present (``done_{i}of{N}.csv``)."""
    return sorted({int(m.group(2)) for p in Path(out_dir).glob("done_*of*.csv") if (m := DONE_FILE.fullmatch(p.name))})


def merge(out_dir: Path, planned: list[set[str]], failed: list[set[str]]) -> MergeReport:
    """Build ``faces.csv`` from the N shard indexes of ``out_dir`` (N = ``len(planned)``).

    ``planned[i]``: the videos shard i had to do; ``failed[i]``: those it reported failed.
    Refuses (``FaceIndexError``, nothing written) when a shard index is absent, a planned video
    is neither indexed nor failed (a shard did not finish), a video is indexed by two shards
    or by a shard that was not to do it, or a crop row appears twice.
    """
    n = len(planned)
    out_dir = Path(out_dir)
    parts, problems, owner, failures, lines = [], [], {}, 0, {}
    for i in range(n):
        index = ShardIndex(out_dir, (i, n))
        if not index.done_path.is_file():
            problems.append(f"shard {i}/{n} has no index ({index.done_path.name}): run `dfdc faces --shard {i}/{n}` "
                            "(or copy its output folder's files here)")
            continue
        if not index.rows_path.is_file():
            problems.append(f"{index.done_path.name} has no {index.rows_path.name}: rerun `dfdc faces --shard {i}/{n}`")
            continue
        try:  # committed lines only: a line torn by a kill leaves its video unindexed (rerun the shard)
            done = read_done(committed(index.done_path.read_bytes()))
        except (ValueError, pd.errors.ParserError) as exc:
            problems.append(f"{index.done_path.name} is unreadable ({exc}): rerun `dfdc faces --shard {i}/{n}`")
            continue
        index.done = {str(r["video"]): r for r in done.to_dict("records")}
        missing = planned[i] - set(index.done) - failed[i]
        failures += len(failed[i] - set(index.done))
        if missing:
            problems.append(f"shard {i}/{n} is missing {len(missing)} of its {len(planned[i])} videos (e.g. "
                            f"{', '.join(sorted(missing)[:3])}): rerun `dfdc faces --shard {i}/{n}` to finish it")
        stray = set(index.done) - planned[i]
        if stray:
            problems.append(f"{index.done_path.name} indexes {len(stray)} videos shard {i}/{n} was not to do (e.g. "
                            f"{', '.join(sorted(stray)[:3])}): was it run on other metadata?")
        lines.update(index.done)
        for video in index.done:
            if video in owner:
                problems.append(f"video {video} is indexed by shards {owner[video]} and {i}")
            owner.setdefault(video, i)
        parts.append(index.rows())
    if problems:
        raise FaceIndexError("cannot merge the faces index of " + str(out_dir) + ":\n  " + "\n  ".join(problems[:20]))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=ROW_COLUMNS)
    dup = table.duplicated(ROW_ORDER, keep=False)
    if dup.any():
        first = table.loc[dup].iloc[0]
        raise FaceIndexError(f"cannot merge the faces index of {out_dir}: {int(dup.sum())} crop rows appear twice "
                          f"(e.g. {first['video']} frame {first['frame']} face {first['face']})")
    table = table.sort_values(ROW_ORDER, kind="mergesort").reset_index(drop=True)
    _write_unsharded(out_dir, table, lines)
    return MergeReport(shards=n, videos=len(owner), real_crops=int((table["label"] == "REAL").sum()),
                       fake_crops=int((table["label"] == "FAKE").sum()),
                       failed=failures, index=str(out_dir / INDEX))


def _write_unsharded(out_dir: Path, table: pd.DataFrame, lines: dict[str, dict[str, Any]]) -> None:
    """Write ``table`` (sorted by video) as the unsharded index: faces.csv and a done.csv whose
    end offsets fit it, so a later unsharded run (``make train`` runs ``make faces``) finds
    every video indexed. The old done.csv goes first: a kill in between leaves faces.csv
    without done.csv, which the next run rebuilds from the manifests, never a mismatch."""
    rows_name, done_name = shard_files((0, 1))
    (out_dir / done_name).unlink(missing_ok=True)
    data = table[ROW_COLUMNS].to_csv(index=False).encode("utf-8")
    atomic_write_bytes(out_dir / rows_name, data)
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1  # [0]: header, [k]: row k - 1
    last_row = {v: i for i, v in enumerate(table["video"])}  # a video's rows are contiguous (sorted)
    done = pd.DataFrame([{**line, "end": int(ends[last_row[v] + 1] if v in last_row else ends[0])}
                         for v, line in lines.items()], columns=DONE_COLUMNS)
    atomic_write_csv(out_dir / done_name, done.sort_values("end", kind="mergesort"))  # file order
