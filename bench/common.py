"""Shared helpers of the benchmarks: machine facts, timing, and writing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds taken by ``fn()`` and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each measurement ``repeats`` times, alternating A, B, A, B, so that noise from other
    work on the machine hits every contender alike. Each callable returns its own figure."""
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            figures[name].append(run())
    return figures


def median(values: list[float]) -> float:
    return statistics.median(values)


def write(name: str, markdown: str, data: dict) -> None:
    """Save a benchmark's markdown section and raw figures under ``bench/results/``."""
    RESULTS.mkdir(exist_ok=True)
    command = "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    header = f"## {name}\n\nCommand: `{command}`\n\n"
    (RESULTS / f"{Path(sys.argv[0]).stem}.md").write_text(header + markdown.strip() + "\n")
    payload = {"command": command, "machine": machine(), **data}
    (RESULTS / f"{Path(sys.argv[0]).stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(header + markdown)


def pm(values: list[float]) -> str:
    """Accuracy differences (fractions) as signed points, mean ± std over runs."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):+.1f} ± {100 * spread:.1f}"


def read_rows(log: Path) -> list[dict]:
    """The rows a resumable benchmark has appended to ``log`` (JSON lines; none yet: ``[]``)."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def append_row(log: Path, row: dict) -> None:
    """Print ``row`` and append it to ``log``, so that a rerun resumes after it."""
    print(json.dumps(row), flush=True)
    with log.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def write_draws(name: str, draws: str, markdown: str, data: dict, findings: Path) -> None:
    """:func:`write` a section measured on ``draws`` as ``results/<script>-<draws>.*``, the
    hand-written ``findings`` appended to the report draws' text when they exist."""
    if draws == "report" and findings.exists():
        markdown += "\n\n" + findings.read_text().strip()
    write(f"{name} ({draws} draws)", markdown, data)
    stem = Path(sys.argv[0]).stem
    for suffix in (".md", ".json"):
        (RESULTS / f"{stem}{suffix}").replace(RESULTS / f"{stem.replace('_', '-')}-{draws}{suffix}")
