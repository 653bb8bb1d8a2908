"""The README and docs/: short README, every make target and variable documented, links that
resolve, configuration keys that exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dfdc.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAKE_DOC = DOCS / "make.md"
README_MAX_LINES = 250  # what it is, how to start, where to go next; the reference lives in docs/
README_COMMANDS = ("make demo", "make test", "make folds train", "make kernel")
TARGET = re.compile(r"^([a-z][a-z0-9-]*)\s*:(?!=)", re.M)  # `name:` rules (not `:=` assignments)
USER_VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*\?=", re.M)  # what `make X=...` may set
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
KEY = re.compile(r"`[^`]*?\b([a-z]+)\.([a-z_][a-z0-9_]*)\b[^`]*`")  # `section.key` inside code spans
# Keys the docs describe whose code lands with a parallel change; once dfdc.config has one, the
# test below asks for it to be removed from here, so the list empties itself.
DOCUMENTED_AHEAD: set[str] = set()  # keys named in the docs before the change that adds them lands
NOT_KEYS = {"csv", "json", "yaml", "py", "png", "pt", "md", "npy", "txt", "jpg", "mp4", "joblib", "sh"}  # file names


def _docs() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_readme_is_short_and_names_the_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for command in README_COMMANDS:
        assert command in text, command


def test_every_make_target_and_variable_is_in_docs_make() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    doc = MAKE_DOC.read_text(encoding="utf-8")
    targets = set(TARGET.findall(makefile))
    assert {"demo", "test", "folds", "train", "kernel", "clean"} <= targets  # the parser reads the Makefile
    missing = sorted(t for t in targets if f"`{t}`" not in doc)
    assert not missing, f"make targets not documented in {MAKE_DOC.name}: {missing}"
    variables = set(USER_VARIABLE.findall(makefile)) | {"SET", "BENCH_ARGS"}
    missing = sorted(v for v in variables if f"`{v}`" not in doc)
    assert not missing, f"make variables not documented in {MAKE_DOC.name}: {missing}"


def _anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page, as GitHub makes them (lower case, punctuation
    dropped, spaces to hyphens)."""
    headings = re.findall(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, *_docs()], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = page.parent / path if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_readme_links_every_docs_page() -> None:
    text = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in _docs() if f"docs/{p.name}" not in text]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_configuration_keys_in_the_docs_exist() -> None:
    """Every `section.key` the docs name is a field of dfdc.config (a renamed key breaks this)."""
    cfg = Config()
    sections = {f.name: {g.name for g in dataclasses.fields(getattr(cfg, f.name))}
                for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}
    unknown = []
    for page in [README, *_docs()]:
        for section, key in KEY.findall(page.read_text(encoding="utf-8")):
            name = f"{section}.{key}"
            if section not in sections or key in NOT_KEYS or name in DOCUMENTED_AHEAD:
                continue
            if key not in sections[section]:
                unknown.append(f"{page.name}: {name}")
    assert not unknown, f"configuration keys that dfdc/config.py does not have: {sorted(set(unknown))}"
    landed = sorted(k for k in DOCUMENTED_AHEAD if k.split(".")[1] in sections.get(k.split(".")[0], ()))
    assert not landed, f"these keys exist now: remove them from DOCUMENTED_AHEAD in {Path(__file__).name}: {landed}"


def test_every_registered_model_is_in_the_model_table() -> None:
    from dfdc.models import list_models

    table = (DOCS / "models.md").read_text(encoding="utf-8")
    missing = [name for name in list_models() if f"`{name}`" not in table]
    assert not missing, f"models registered but not in docs/models.md: {missing}"


def test_every_compare_system_is_in_the_compare_page() -> None:
    from dfdc.compare import STUDY_SYSTEMS

    page = (DOCS / "compare.md").read_text(encoding="utf-8")
    names = [system.name for system in STUDY_SYSTEMS]  # the kit's own (other tests register extra ones)
    missing = [name for name in names if f"`{name}`" not in page]
    assert {"efficientnet-b7", "lstm", "svm"} <= set(names)  # the table was read
    assert not missing, f"compare systems not in docs/compare.md: {missing}"
