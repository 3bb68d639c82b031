"""Shared fixtures: an isolated feature cache and small generated image folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import write_shapes


def _cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per core this process may run on, at most 8 (each holds models)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist reads it
    return min(_cores(), 8)


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` each worker, and what it starts, gets its share of the cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, _cores() // int(workers))
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
