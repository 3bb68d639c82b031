"""The loss of epoch-trained recipes on long-tailed classes: none, class-balanced weights or
the logit-adjusted loss (Menon et al., ICLR 2021), side by side.

On the long-tailed families of bench/imbalance.py (balanced test splits), ``tlkit finetune
--recipe large-similar`` (LP-FT, fine-tuning everything) runs once per ``--model.class_balance``
setting, each its own process with a cold feature cache, on the same folder and seed. Reported:
the fine-tuned network's balanced test accuracy (before the run compares it with its frozen
floor, which does not depend on the loss), the shipped model's, and the wall time. ``auto``,
the default, is what :data:`tlkit.balance.TRAINING_BALANCE` names on imbalanced classes; it was
chosen on the tuning draws and is reported on the report draws.

Run: python bench/balanced_loss.py --draws tuning|report [--epochs 3] [--work /tmp/balanced_loss]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import append_row, read_rows, write_draws
from heldout import TLKIT, _run
from heldout_data import REPORT_SEEDS, TUNING_SEEDS
from imbalance import FAMILIES, build_task

HERE = Path(__file__).resolve().parent
TREATMENTS = ("none", "balanced", "logit-adjusted")
USED = ("fashion6-200to3-64px", "digits5-100to10-64px")


def run_task(task: Path, size: int, epochs: int, work: Path) -> dict:
    """Every treatment on one task."""
    row: dict = {"task": task.name}
    for name in TREATMENTS:
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            out = Path(scratch) / "run"
            command = [*TLKIT, "finetune", "--recipe", "large-similar", "--data", str(task),
                       "--image-size", str(size), "--epochs", str(epochs), "--out", str(out),
                       f"--model.class_balance={name}"]  # fmt: skip
            seconds, _ = _run(command, Path(scratch) / "cache")
            m = json.loads((out / "metrics.json").read_text())
        row[name] = {
            # the test splits have equal classes: plain accuracy is balanced accuracy
            "finetuned": m["finetuned_test_acc"],
            "shipped": m["test_balanced_acc"],
            "used": m["class_balance"],
            "wall_seconds": round(seconds, 1),
        }
    return row


def summarise(rows: list[dict], draws: str, epochs: int) -> str:
    lines = [
        f"Draws: **{draws}**; `--recipe large-similar --epochs {epochs}`. Balanced test accuracy "
        "of the fine-tuned network in %, mean ± std over draws; minus `none`, paired by draw.",
        "",
        "| family | " + " | ".join(TREATMENTS) + " | balanced - none | logit-adjusted - none |",
        "|" + "---|" * (len(TREATMENTS) + 3),
    ]
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        cells = []
        for name in TREATMENTS:
            values = [100 * r[name]["finetuned"] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        gaps = []
        for n in ("balanced", "logit-adjusted"):
            paired = [100 * (r[n]["finetuned"] - r["none"]["finetuned"]) for r in mine]
            gaps.append(f"{statistics.mean(paired):+.1f}")
        lines.append(f"| {family} | {' | '.join(cells)} | {' | '.join(gaps)} |")
    lines += ["", "| task | " + " | ".join(f"{n} (shipped)" for n in TREATMENTS) + " |"]
    lines.append("|" + "---|" * (len(TREATMENTS) + 1))
    for r in rows:
        cells = " | ".join(
            f"{100 * r[n]['finetuned']:.1f} ({100 * r[n]['shipped']:.1f})" for n in TREATMENTS
        )
        lines.append(f"| {r['task']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=["tuning", "report"], default="tuning")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "balanced_loss")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    seeds = (TUNING_SEEDS if opts.draws == "tuning" else REPORT_SEEDS)[:2]
    log = opts.work / f"rows-{opts.draws}-{opts.epochs}.jsonl"  # a rerun resumes after it
    rows = read_rows(log)
    done = {r["task"] for r in rows}
    for name in USED:
        family = FAMILIES[name]
        for seed in seeds:
            task = build_task(opts.work / "tasks", family, seed)
            if task.name not in done:
                row = {"family": name, **run_task(task, family.image_size, opts.epochs, opts.work)}
                append_row(log, row)
                rows.append(row)
    write_draws("The loss on long tails", opts.draws, summarise(rows, opts.draws, opts.epochs),
                {"rows": rows}, HERE / "findings" / "balanced_loss.md")  # fmt: skip


if __name__ == "__main__":
    main()
