"""Shared fixtures: an isolated feature cache and small generated image folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import write_shapes


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` each worker, and what it starts, gets its share of the cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the feature cache (``$TLKIT_CACHE_DIR``) at a fresh folder for every test."""
    root = tmp_path / "tlkit-cache"
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(root))
    return root


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are fastest so, and do not stall a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_shapes(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_shapes(name="shapes", per_class=12, size=32, seed=0)`` -> folder path."""

    def make(name: str = "shapes", **kwargs) -> Path:
        return write_shapes(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    """Run in a scratch folder on one torch thread (runs write their folders to the cwd)."""
    monkeypatch.chdir(tmp_path)
