"""What a user waits for, start to finish: ``tlkit finetune --recipe auto`` and ``tlkit advise``
against the by-hand scikit-learn script, and against the same tlkit commands at an earlier
commit (``--baseline REF``: a git worktree of that commit, run with this venv).

Two tasks, the images written as PNG files (Fashion-MNIST, upscaled as a user's folder would
be read): 500 images at 224 px (10 classes, 20 labelled and 30 test images per class) and 600
images at 96 px (5 classes, 20 labelled and 100 test images per class). Every contender is its
own process with a cold feature and export cache, interleaved over the repeats, so what differs
between them is the code. Reported: whole-process wall seconds (median), ratios, and the test
accuracy each run reached.

Run: python bench/wall.py [--repeats 3] [--baseline 1a7c807]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write
from heldout import HERE, _run
from heldout_data import Family, build_task

TASKS = (
    Family("fashion10-20+30test-224px-wall", "fashion", 10, 20, 0, 30, 224),
    Family("fashion5-20+100test-96px-wall", "fashion", 5, 20, 0, 100, 96),
)
ROOT = HERE.parent


def _worktree(ref: str, where: Path) -> Path:
    """A checkout of ``ref`` at ``where`` (its tlkit runs with this venv's packages)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)  # fmt: skip
    return where


def contenders(task: Path, size: int, out: Path, old: Path | None) -> dict[str, tuple]:
    """``name -> (command, environment, run directory or None)``."""
    python = sys.executable
    sk = [python, str(HERE / "sklearn_probe.py"), str(task), "--image-size", str(size)]
    runs = {"sklearn script": (sk, {}, None)}
    for label, code in (("tlkit", ROOT), ("tlkit baseline", old)):
        if code is None:
            continue
        env = {"PYTHONPATH": str(code)}
        fine = [python, "-m", "tlkit", "finetune", "--recipe", "auto", "--data", str(task),
                "--image-size", str(size), "--out", str(out / label.replace(" ", "-"))]  # fmt: skip
        advise = [python, "-m", "tlkit", "advise", "--data", str(task), "--image-size", str(size)]
        runs[f"{label} finetune auto"] = (fine, env, out / label.replace(" ", "-"))
        runs[f"{label} advise"] = (advise, env, None)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="git commit to compare with (e.g. 1a7c807)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wall")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    old = None
    if opts.baseline:
        old = _worktree(opts.baseline, Path(tempfile.mkdtemp(dir=opts.work)) / "baseline")
    results = []
    try:
        for family in TASKS:
            task = build_task(opts.work / "tasks", family, seed=7)
            walls: dict[str, list[float]] = {}
            accuracy: dict[str, float] = {}
            for _ in range(opts.repeats):
                with tempfile.TemporaryDirectory(dir=opts.work) as scratch:
                    scratch = Path(scratch)
                    runs = contenders(task, family.image_size, scratch, old)
                    for name, (command, env, run_dir) in runs.items():
                        seconds, stdout = _run(command, scratch / f"cache-{len(walls)}-{name}", env)
                        walls.setdefault(name, []).append(seconds)
                        if run_dir is not None:
                            metrics = json.loads((run_dir / "metrics.json").read_text())
                            accuracy[name] = metrics["test_acc"]
                        elif name == "sklearn script":
                            accuracy[name] = json.loads(stdout.strip().splitlines()[-1])["test_acc"]
            results.append({"task": family.name, "walls": walls, "accuracy": accuracy})
            print(results[-1], flush=True)
    finally:
        if old is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False, capture_output=True)  # fmt: skip
    rows = [
        "| task | contender | wall s (median) | runs | test accuracy |",
        "|---|---|---|---|---|",
    ]
    ratios = []
    for result in results:
        med = {name: statistics.median(v) for name, v in result["walls"].items()}
        for name, values in result["walls"].items():
            acc = result["accuracy"].get(name)
            shown = "" if acc is None else f"{100 * acc:.1f}"
            runs = ", ".join(f"{v:.1f}" for v in values)
            rows.append(f"| {result['task']} | {name} | {med[name]:.1f} | {runs} | {shown} |")
        line = (
            f"{result['task']}: tlkit finetune auto / sklearn script "
            f"**{med['tlkit finetune auto'] / med['sklearn script']:.2f}x**"
        )
        if "tlkit baseline advise" in med:
            advise = med["tlkit advise"] / med["tlkit baseline advise"]
            auto = med["tlkit finetune auto"] / med["tlkit baseline finetune auto"]
            line += (
                f"; advise / baseline **{advise:.2f}x**; finetune auto / baseline **{auto:.2f}x**"
            )
        ratios.append(line)
    text = "\n".join(rows) + "\n\n" + "\n".join(f"- {r}" for r in ratios)
    text += (
        f"\n\nBaseline: commit `{opts.baseline}`." if opts.baseline else ""
    ) + f" {opts.repeats} interleaved repeats, 2 cores, cold caches."
    write("Whole-process wall time: tlkit against the scikit-learn script", text,
          {"results": results, "baseline": opts.baseline})  # fmt: skip


if __name__ == "__main__":
    main()
