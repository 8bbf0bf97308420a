"""Fixtures of the study tests: the small study swept the plain way, which the parallel ways must match."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import small_study


@pytest.fixture(scope="session")
def study_data(tiny_cache: Path) -> Path:
    """The dataset tiny_cache was prepared from (studies prepare their own caches of it)."""
    return tiny_cache.parent / "data"


@pytest.fixture(scope="session")
def sequential(study_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`helpers.small_study` swept the plain way: one process, one run after another, 1 torch thread."""
    folder = tmp_path_factory.mktemp("sequential")
    proc = subprocess.run([sys.executable, "-m", "semiseg", "sweep", str(small_study(folder, study_data, "seq")), "--threads", "1"],
                          capture_output=True, text=True, env={**os.environ, "SEMISEG_PROGRESS": "0"}, cwd=folder, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "seq"
