"""Shared fixtures: tiny data made on the fly (no downloads, CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfdc.config import SynthConfig

# The tests' mini DFDC: smaller than the demo's so the whole suite stays fast.
TEST_SYNTH = SynthConfig(videos=12, test_videos=4, parts=2, width=320, height=240, seconds=1.0, fps=10, seed=7)


@pytest.fixture(scope="session")
def mini_dfdc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated mini DFDC (train parts, test_videos, sample_submission, test_labels)."""
    from dfdc.synth import generate

    out = tmp_path_factory.mktemp("mini_dfdc") / "data"
    generate(out, TEST_SYNTH)
    return out
