"""What ``tlkit advise`` costs on one torch thread and on all of them, side by side.

``tlkit advise`` (and so every ``tlkit finetune --recipe auto`` run, which measures first)
scores each stage's exact probe by cross-validation: hundreds of small L-BFGS solves. Each
solve runs on one thread (bit-for-bit results); the folds are solved side by side, one per
torch thread (tlkit.probe.cv_path). This bench runs ``tlkit advise --json`` as its own process
with ``OMP_NUM_THREADS=1`` (the folds one after another) and with torch's default thread
count, interleaved, a fresh feature cache each time, and reports whole-process wall seconds
and whether the two reports agree to the last digit.

Tasks (bench/heldout_data.py): the smallest large family (2,000 images at 32 px), the largest
(4,000 at 64 px; the folds are drawn from a 2,000-image subsample) and the frozen small-data
run's task (500 images at 128 px, two repeats of the folds).

Run: python bench/advise_threads.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import write
from heldout import TLKIT, _run
from heldout_data import LARGE_FAMILIES, TUNING_SEEDS, build_task
from probe_wall import TASK as WALL_TASK

TASKS = [
    (LARGE_FAMILIES["fashion10-200-32px"], TUNING_SEEDS[0]),
    (LARGE_FAMILIES["fashion10-400-64px"], TUNING_SEEDS[0]),
    (WALL_TASK, 7),
]


def _advise(task: Path, size: int, threads: int | None, cache: Path) -> tuple[float, dict]:
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    command = [*TLKIT, "advise", "--data", str(task), "--image-size", str(size), "--json"]
    seconds, out = _run(command, cache, env)
    return seconds, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "heldout")
    opts = parser.parse_args()
    rows = [
        "| task | images measured | folds x repeats | wall s, 1 thread | wall s, "
        f"{os.cpu_count()} threads | ratio | reports identical |",
        "|---|---|---|---|---|---|---|",
    ]
    data = []
    for family, seed in TASKS:
        task = build_task(opts.work / "tasks", family, seed)
        walls: dict[str, list[float]] = {"one": [], "all": []}
        reports: dict[str, dict] = {}
        for _ in range(opts.repeats):
            for name, threads in (("one", 1), ("all", None)):
                with tempfile.TemporaryDirectory(dir=opts.work) as scratch:
                    seconds, report = _advise(task, family.image_size, threads, Path(scratch))
                walls[name].append(seconds)
                reports[name] = report
        same = reports["one"] == reports["all"]
        evidence = reports["all"]["evidence"]
        one, both = (statistics.median(walls[k]) for k in ("one", "all"))
        rows.append(
            f"| {task.name} | {evidence['images_measured']} | {evidence['folds']} x "
            f"{evidence['repeats']} | {one:.1f} | {both:.1f} | {both / one:.2f}x | "
            f"{'yes' if same else 'no'} |"
        )
        data.append({"task": task.name, "walls": walls, "identical": same})
    rows += [
        "",
        f"Median of {opts.repeats} interleaved runs each; whole process (imports, feature "
        "extraction on a cold cache, the cross-validation of every candidate, the report). "
        "`OMP_NUM_THREADS=1` also puts feature extraction on one thread; it is a few seconds "
        "of each run.",
    ]
    write("tlkit advise: one thread against all", "\n".join(rows), {"tasks": data})


if __name__ == "__main__":
    main()
