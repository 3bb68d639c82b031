"""Do the fast runtimes change what a run ships? ``tlkit finetune --recipe auto`` on the held-out
few-shot report draws (bench/heldout_data.py, one draw per family), once per runtime
(``TLKIT_RUNTIME=torch``, ``onnxruntime``, ``openvino``), then ``tlkit predict`` of its
checkpoint on the test images with the same runtime.

Reported per task: advise's choice, test accuracy and expected accuracy under each runtime, the
share of test images whose predicted label equals torch's, and the whole-process wall seconds;
beside them the figures bench/heldout.py recorded for the same draw (``results/
heldout-report.json``: torch eager and the earlier solver), so the table also shows whether the
solver change moved anything.

Run: python bench/runtime_agreement.py [--seed 4]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

from common import RESULTS, write
from heldout import TLKIT, _run
from heldout_data import FAMILIES, build_task

RUNTIMES = ("torch", "onnxruntime", "openvino")


def one_run(task: Path, size: int, runtime: str, scratch: Path) -> dict:
    out = scratch / runtime
    env = {"TLKIT_RUNTIME": runtime}
    command = [*TLKIT, "finetune", "--recipe", "auto", "--data", str(task),
               "--image-size", str(size), "--out", str(out)]  # fmt: skip
    seconds, _ = _run(command, scratch / f"cache-{runtime}", env)
    metrics = json.loads((out / "metrics.json").read_text())
    predict = [*TLKIT, "predict", "--checkpoint", str(out / "checkpoints" / "best.ckpt"),
               "--data", str(task / "test"), "--out", str(out / "predictions.csv")]  # fmt: skip
    predict_seconds, _ = _run(predict, scratch / f"cache-{runtime}", env)
    with open(out / "predictions.csv", newline="") as handle:
        labels = {row["path"]: row["label_1"] for row in csv.DictReader(handle)}
    return {
        "recipe": metrics["recipe"],
        "test_acc": metrics["test_acc"],
        "expected": (metrics.get("expected_accuracy") or {}).get("estimate"),
        "wall_seconds": seconds,
        "predict_seconds": predict_seconds,
        "labels": labels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "heldout")
    opts = parser.parse_args()
    recorded = {
        row["task"]: row["auto"]
        for row in json.loads((RESULTS / "heldout-report.json").read_text())["rows"]
    }
    rows = []
    for family in FAMILIES.values():
        task = build_task(opts.work / "tasks", family, opts.seed)
        with tempfile.TemporaryDirectory(dir=opts.work) as scratch:
            runs = {r: one_run(task, family.image_size, r, Path(scratch)) for r in RUNTIMES}
        torch_labels = runs["torch"]["labels"]
        for run in runs.values():
            labels = run.pop("labels")
            run["same_labels_as_torch"] = sum(
                labels[p] == torch_labels[p] for p in torch_labels
            ) / len(torch_labels)
        rows.append({"task": task.name, "runs": runs, "recorded": recorded.get(task.name)})
        print(rows[-1], flush=True)
    table = [
        "| task | runtime | recipe | test acc | expected | labels = torch's | finetune s "
        "| predict s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        old = row["recorded"]
        if old is not None:
            expected = old["expected_accuracy"]["estimate"]
            table.append(
                f"| {row['task']} | recorded (torch, earlier solver) | {old['recipe']} "
                f"| {100 * old['test_acc']:.1f} | {100 * expected:.1f} | | "
                f"{old['wall_seconds']:.1f} | |"
            )
        for name, run in row["runs"].items():
            table.append(
                f"| {row['task']} | {name} | {run['recipe']} | {100 * run['test_acc']:.1f} "
                f"| {100 * (run['expected'] or 0):.1f} | {100 * run['same_labels_as_torch']:.1f} % "
                f"| {run['wall_seconds']:.1f} | {run['predict_seconds']:.1f} |"
            )
    same = [r["runs"][n]["same_labels_as_torch"] for r in rows for n in RUNTIMES[1:]]
    table += ["", f"Predicted test labels equal to torch's: {100 * min(same):.1f} % at worst "
              f"over {len(rows)} tasks and {len(RUNTIMES) - 1} runtimes."]  # fmt: skip
    write("Fast runtimes: the same runs, the same predictions", "\n".join(table),
          {"rows": rows, "seed": opts.seed})  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
