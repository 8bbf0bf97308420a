"""Shared fixtures (helpers live in helpers.py so test modules can import them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY, TINY_DDPM, TINY_NET, tiny_cache_at, write_brats_case
from semiseg.progress import set_enabled


def pytest_configure(config: pytest.Config) -> None:
    set_enabled(False)


@pytest.fixture
def brats_dataset(tmp_path: Path) -> Path:
    """Six labelled BraTS 2021 cases and one unlabelled one."""
    root = tmp_path / "brats"
    for i in range(6):
        write_brats_case(root, f"BraTS2021_{i:05d}", seed=i)
    write_brats_case(root, "BraTS2021_00099", label=False, seed=99)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared cache of eight labelled and one unlabelled small cases (32 px slices, 2D and 3D)."""
    return tiny_cache_at(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_ddpm(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DDPM run trained for a few steps on tiny_cache."""
    from semiseg.runs import train

    out = tmp_path_factory.mktemp("ddpm") / "run"
    train(tiny_cache, "ddpm", out, preset="small", overrides=TINY_DDPM)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2D supervised run of a few steps on tiny_cache (3 labelled slices)."""
    from semiseg.runs import train

    out = tmp_path_factory.mktemp("sup2d") / "run"
    train(tiny_cache, "supervised", out, preset="small", n_labelled=3, overrides=TINY + TINY_NET + ["dims=2"])
    return out
