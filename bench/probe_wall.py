"""What a user waits for: a frozen small-data run against the by-hand scikit-learn script.

One task of ~800 images at 128 px (Fashion-MNIST, 10 classes, 50 labelled per class in train/,
30 per class in test/). Side by side, interleaved, each a fresh process with a cold feature
cache: ``tlkit finetune --recipe small-similar`` and ``bench/sklearn_probe.py`` (timm features,
StandardScaler, LogisticRegressionCV). Reported: whole-process wall seconds (median of the
repeats, imports included) and test accuracy.

Run: python bench/probe_wall.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import write
from heldout import HERE, TLKIT, _run
from heldout_data import Family, build_task

TASK = Family("fashion10-50-128px-wall", "fashion", 10, 50, 0, 30, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "heldout")
    opts = parser.parse_args()
    task = build_task(opts.work / "tasks", TASK, seed=7)
    size = str(TASK.image_size)
    walls: dict[str, list[float]] = {"sklearn script": [], "tlkit small-similar": []}
    accuracy: dict[str, float] = {}
    parts: list[dict[str, float]] = []
    for _ in range(opts.repeats):
        with tempfile.TemporaryDirectory(dir=opts.work) as scratch:
            scratch = Path(scratch)
            seconds, out = _run(
                [sys.executable, str(HERE / "sklearn_probe.py"), str(task), "--image-size", size],
                scratch / "c1",
            )
            walls["sklearn script"].append(seconds)
            accuracy["sklearn script"] = float(out.split('"test_acc": ')[1].split(",")[0])
            run = scratch / "run"
            command = [*TLKIT, "finetune", "--recipe", "small-similar", "--data", str(task),
                       "--image-size", size, "--out", str(run)]  # fmt: skip
            seconds, _ = _run(command, scratch / "c2")
            walls["tlkit small-similar"].append(seconds)
            metrics = json.loads((run / "metrics.json").read_text())
            accuracy["tlkit small-similar"] = metrics["test_acc"]
            inside = sum(metrics["seconds"].values())
            parts.append(
                {**metrics["seconds"], "start-up (imports, model, data listing)": seconds - inside}
            )
    rows = [
        "| contender | wall s (median) | runs | test accuracy |",
        "|---|---|---|---|",
    ]
    for name, values in walls.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        rows.append(
            f"| {name} | {statistics.median(values):.1f} | {shown} | {100 * accuracy[name]:.1f} |"
        )
    ratio = statistics.median(walls["tlkit small-similar"]) / statistics.median(
        walls["sklearn script"]
    )
    rows += [
        "",
        f"tlkit / sklearn wall time: **{ratio:.2f}x** (800 images at 128 px, 2 cores).",
        "",
    ]
    rows += ["Where tlkit's wall time goes (median seconds over the repeats):", ""]
    rows += ["| part | seconds |", "|---|---|"]
    for key in parts[0]:
        rows.append(f"| {key} | {statistics.median(p[key] for p in parts):.2f} |")
    write("Frozen small-data run vs the scikit-learn script", "\n".join(rows),
          {"walls": walls, "accuracy": accuracy, "ratio": ratio, "parts": parts})  # fmt: skip


if __name__ == "__main__":
    main()
