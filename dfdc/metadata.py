"""DFDC metadata: every ``metadata.json`` under a data root -> one validated table.

Layouts accepted (any mix)::

    ROOT/dfdc_train_part_N/metadata.json      the 50 training parts
    ROOT/train_sample_videos/metadata.json    the Kaggle sample of 400 videos
    ROOT/metadata.json                        ROOT is itself one such folder

Each ``metadata.json`` maps a file name to ``{"label": "REAL"|"FAKE", "split": "train",
"original": "src.mp4"|null}``. ``load_metadata`` returns one row per usable video with the
columns ``video, path, part, label, original, split`` and a ``MetadataReport`` of what was
wrong. Problems never stop a normal run (the faulty row, or a malformed file's part, is
skipped and counted); with ``strict=True`` the first one raises ``MetadataError``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

METADATA_NAME = "metadata.json"
PART_PATTERN = "dfdc_train_part_*"  # DFDC's 50 training zips unpack to these folders
SAMPLE_FOLDER = "train_sample_videos"  # the Kaggle competition files' labelled sample
LABELS = ("REAL", "FAKE")
COLUMNS = ["video", "path", "part", "label", "original", "split"]
SHOW_NAMES = 5  # names quoted in a problem message before "..."
LAYOUT_HELP = (
    f"expected ROOT/dfdc_train_part_N/{METADATA_NAME} and/or ROOT/{SAMPLE_FOLDER}/{METADATA_NAME} "
    f"(as unpacked from the DFDC zips), or ROOT being one such folder"
)

# Problem kinds, in the order a report lists them.
KINDS = (
    "no_metadata",  # a part folder without metadata.json (partial download?)
    "bad_json",  # malformed JSON, or not a mapping of name -> record
    "bad_record",  # a record that is not a mapping
    "bad_name",  # a name that is not a plain file name (../x.mp4, /abs.mp4, a/b.mp4)
    "bad_label",  # a label other than REAL/FAKE
    "duplicate",  # the same video listed twice (in two parts or twice in one file)
    "missing_video",  # listed in metadata.json but no such file on disk
    "missing_original",  # a FAKE whose original is not in the data
)


class MetadataError(ValueError):
    """Metadata that cannot be used as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.file}: {self.message}"


@dataclass
class MetadataReport:
    """Problems found while loading metadata, and the files read."""

    strict: bool = False
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, kind: str, file: Path | str, message: str) -> None:
        """Record a problem; in strict mode raise it instead."""
        if kind not in KINDS:
            raise ValueError(f"unknown metadata problem kind {kind!r}")
        problem = Problem(kind, str(file), message)
        if self.strict:
            raise MetadataError(f"{problem} [strict: fix this, or run without --strict to skip it]")
        self.problems.append(problem)

    def counts(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {kind: counts[kind] for kind in KINDS if counts[kind]}

    def __len__(self) -> int:
        return len(self.problems)

    def format(self) -> str:
        """Human-readable list of problems (empty string when there are none)."""
        if not self.problems:
            return ""
        order = {kind: i for i, kind in enumerate(KINDS)}
        lines = [f"{len(self.problems)} metadata problem(s): " + ", ".join(f"{k} {n}" for k, n in self.counts().items())]
        lines += [f"  {p}" for p in sorted(self.problems, key=lambda p: order[p.kind])]
        return "\n".join(lines)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOW_NAMES])
    return shown + (f", ... ({len(names) - SHOW_NAMES} more)" if len(names) > SHOW_NAMES else "")


_UNSAFE = re.compile(r"[/\\:\x00]")


def is_plain_name(name: Any) -> bool:
    """True for a bare file name that stays in its folder (no separators, no ``..``)."""
    return (
        isinstance(name, str)
        and name.strip() == name
        and bool(name)
        and not name.startswith(".")
        and not _UNSAFE.search(name)
        and not os.path.isabs(name)
    )


def _part_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def find_metadata_files(root: Path) -> tuple[list[Path], list[Path]]:
    """``(metadata files, part folders lacking one)`` under ``root``, in part order."""
    root = Path(root)
    if not root.is_dir():
        raise MetadataError(f"data root {root} is not a folder; {LAYOUT_HELP}")
    if (root / METADATA_NAME).is_file():
        return [root / METADATA_NAME], []
    folders = sorted((p for p in root.glob(PART_PATTERN) if p.is_dir()), key=_part_number)
    if (root / SAMPLE_FOLDER).is_dir():
        folders.append(root / SAMPLE_FOLDER)
    found = [f / METADATA_NAME for f in folders if (f / METADATA_NAME).is_file()]
    lacking = [f for f in folders if not (f / METADATA_NAME).is_file()]
    if not found:
        deeper = sorted({str(p.parent.parent) for p in root.glob(f"*/{PART_PATTERN}/{METADATA_NAME}")}
                        | {str(p.parent.parent) for p in root.glob(f"*/{SAMPLE_FOLDER}/{METADATA_NAME}")})
        hint = f"; did you mean --data {deeper[0]}?" if deeper else ""
        raise MetadataError(f"no {METADATA_NAME} found under {root}; {LAYOUT_HELP}{hint}")
    return found, lacking


def _read_json(path: Path, report: MetadataReport) -> dict[str, Any] | None:
    repeated: list[list[str]] = []  # per JSON object, innermost first: the top level is last

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        counts = Counter(key for key, _ in items)
        repeated.append([key for key, n in counts.items() if n > 1])
        return dict(items)  # the last value of a repeated key wins, as in json.loads

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.add("bad_json", path, f"cannot read the file ({exc}); re-extract this part; its videos are skipped")
        return None
    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        report.add(
            "bad_json",
            path,
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
            "re-extract this part from its zip (or fix the file); its videos are skipped",
        )
        return None
    if not isinstance(data, dict):
        report.add(
            "bad_json",
            path,
            f"expected a JSON object mapping file names to records, got {type(data).__name__}; "
            "re-extract this part; its videos are skipped",
        )
        return None
    duplicates = repeated[-1] if repeated else []
    if duplicates:
        report.add("duplicate", path, f"{len(duplicates)} name(s) listed twice in this file (last kept): {_names(duplicates)}")
    return data


def _read_part(path: Path, report: MetadataReport) -> list[dict[str, Any]]:
    data = _read_json(path, report)
    if data is None:
        return []
    folder = Path(os.path.abspath(path.parent))  # normalised, symlinks kept: part = folder name as given
    on_disk = {e.name for e in os.scandir(folder) if e.is_file()}
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for name, record in data.items():
        if not is_plain_name(name):
            report.add("bad_name", path, f"{name!r} is not a plain file name inside the folder; record rejected")
            continue
        if not isinstance(record, dict):
            report.add("bad_record", path, f"{name}: the record is a {type(record).__name__}, expected a mapping "
                       '{"label": ..., "split": ..., "original": ...}; skipped')
            continue
        label = record.get("label")
        if label not in LABELS:
            report.add("bad_label", path, f"{name}: label {label!r} is not REAL or FAKE; skipped")
            continue
        original = record.get("original") if label == "FAKE" else None
        if original is not None and not is_plain_name(original):
            report.add("bad_name", path, f"{name}: original {original!r} is not a plain file name; original ignored")
            original = None
        if name not in on_disk:
            missing.append(name)
            continue
        rows.append(
            {
                "video": name,
                "path": str(folder / name),
                "part": folder.name,
                "label": label,
                "original": original,
                "split": str(record.get("split", "train")),
            }
        )
    if missing:
        report.add(
            "missing_video",
            path,
            f"{len(missing)} listed video(s) not on disk, skipped: {_names(missing)}; "
            "the part may be partly extracted (re-extract its zip)",
        )
    return rows


def load_metadata(root: Path, strict: bool = False) -> tuple[pd.DataFrame, MetadataReport]:
    """Read every DFDC ``metadata.json`` under ``root`` into one validated table.

    Args:
        root: folder holding ``dfdc_train_part_*/`` and/or ``train_sample_videos/``, or one
            such folder itself.
        strict: raise ``MetadataError`` (naming the file) on the first problem instead of
            skipping the faulty rows.

    Returns:
        ``(table, report)``: one row per video present on disk with columns ``video``
        (file name), ``path`` (absolute), ``part`` (folder name), ``label`` (REAL/FAKE),
        ``original`` (source video of a FAKE, None for REAL), ``split``; and the problems.

    Rules: a malformed file skips its part; a row with a bad name, record or label, or
    whose mp4 is missing, is skipped; a name found in two parts keeps its first part (in
    part order); a FAKE whose original is not in the data is kept (detection can run on
    the fake itself) and reported.
    """
    root = Path(os.path.abspath(root))
    report = MetadataReport(strict=strict)
    files, lacking = find_metadata_files(root)
    for folder in lacking:
        report.add("no_metadata", folder, f"part folder without {METADATA_NAME} (partial download?); skipped")
    rows: list[dict[str, Any]] = []
    first_part: dict[str, str] = {}
    for path in files:
        report.files.append(str(path))
        part_rows = _read_part(path, report)
        clashes = [r["video"] for r in part_rows if r["video"] in first_part]
        if clashes:
            report.add(
                "duplicate",
                path,
                f"{len(clashes)} video name(s) already listed in another part, kept there: {_names(clashes)} "
                f"(first seen in {first_part[clashes[0]]})",
            )
        for row in part_rows:
            if row["video"] not in first_part:
                first_part[row["video"]] = row["part"]
                rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"original": object})
    if len(table):
        table["original"] = table["original"].where(table["original"].notna(), None)
    fakes = table[table["label"] == "FAKE"]
    lost = fakes[fakes["original"].notna() & ~fakes["original"].isin(first_part)]
    no_source = fakes[fakes["original"].isna()]
    for part, group in lost.groupby("part", sort=False):
        report.add(
            "missing_original",
            Path(group["path"].iloc[0]).parent / METADATA_NAME,
            f"{len(group)} FAKE video(s) whose original is not in the data (kept; faces are detected on "
            f"the fake itself): {_names([f'{v} -> {o}' for v, o in zip(group['video'], group['original'])])}",
        )
    for part, group in no_source.groupby("part", sort=False):
        report.add(
            "missing_original",
            Path(group["path"].iloc[0]).parent / METADATA_NAME,
            f"{len(group)} FAKE video(s) without an original (kept): {_names(list(group['video']))}",
        )
    if table.empty:
        raise MetadataError(
            f"no usable videos under {root} ({len(files)} metadata file(s) read, "
            f"{len(report)} problem(s)):\n{report.format()}"
        )
    return table.reset_index(drop=True), report


def summarize(df: pd.DataFrame) -> str:
    """Videos per label and per part, and fakes per original (mean/min/max)."""
    if df.empty:
        return "no videos"
    lines = [f"{len(df)} videos in {df['part'].nunique()} part(s)"]
    by_label = df["label"].value_counts()
    lines.append("  " + ", ".join(f"{label} {int(by_label.get(label, 0))}" for label in LABELS))
    table = pd.crosstab(df["part"], df["label"]).reindex(columns=list(LABELS), fill_value=0)
    table["total"] = table.sum(axis=1)
    lines.append(table.to_string())
    fakes = df[(df["label"] == "FAKE") & df["original"].notna()]
    if len(fakes):
        per = fakes.groupby("original").size()
        lines.append(
            f"fakes per original: mean {per.mean():.2f}, min {per.min()}, max {per.max()} "
            f"over {len(per)} original(s)"
        )
    reals = set(df.loc[df["label"] == "REAL", "video"])
    unused = len(reals - set(fakes["original"]))
    if reals:
        lines.append(f"REAL videos with no fake in the data: {unused}")
    return "\n".join(lines)
