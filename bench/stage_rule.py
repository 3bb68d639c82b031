"""advise's choice among the deep candidates, replayed: the best mean (as shipped) against the
top features unless a deep candidate beats them by more than the noise.

On every family of bench/probe_scale.py's task list, one draw at a time: the candidates are
scored on the shared folds as ``tlkit advise`` scores them; each rule picks its features; the
exact probe (:func:`tlkit.exact.fit_exact`, as ``--recipe auto`` fits it) on the picked
features is scored on the test split (balanced accuracy). A study on the tuning draws.

Run: python bench/stage_rule.py --draws tuning [--work /tmp/interval]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import write_draws
from probe_scale import SEEDS, _tasks

from tlkit.advise.candidates import _noise, choose
from tlkit.advise.measure import _CrossValidation, measure
from tlkit.balance import balanced_accuracy
from tlkit.exact import fit_exact

HERE = Path(__file__).resolve().parent


def _margin(candidates, test_fraction: float):
    """The top features unless another deep candidate beats them by more than the noise."""
    top = candidates[0]
    wins = [
        c for c in candidates[1:] if c.deep and c.mean - top.mean > _noise(c, top, test_fraction)
    ]
    return max(wins, key=lambda c: c.mean) if wins else top


def run_task(task: Path, size: int | None) -> dict:
    report, features = measure(str(task), image_size=size, with_test=True)
    candidates, _, k = _CrossValidation(2000, 5, None, 42).score(features)
    picks = {"shipped": choose(candidates, 1.0 / k)[0], "margin": _margin(candidates, 1.0 / k)}
    row: dict = {"task": task.name}
    for rule, chosen in picks.items():
        split = {
            s: (features.select(s, chosen.stages), features.labels(s)) for s in features.splits
        }
        fit = fit_exact(split, chosen.name, chosen.stages, int(report["num_classes"]))
        test_x, test_y = split["test"]
        predicted = fit.probe.logits(test_x).argmax(1)
        row[rule] = {"features": chosen.name, "test": balanced_accuracy(predicted, test_y)}
    return row


def summarise(rows: list[dict], draws: str) -> str:
    lines = [
        f"Draws: **{draws}**. Balanced test accuracy of the exact probe on each rule's features, "
        "in %, mean over draws; how often the rule took the top features.",
        "",
        "| family | shipped | margin | margin - shipped | margin took top |",
        "|---|---|---|---|---|",
    ]
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        a = statistics.mean(100 * r["shipped"]["test"] for r in mine)
        b = statistics.mean(100 * r["margin"]["test"] for r in mine)
        tops = sum(r["margin"]["features"] == "top" for r in mine)
        lines.append(f"| {family} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {tops}/{len(mine)} |")
    diffs = [100 * (r["margin"]["test"] - r["shipped"]["test"]) for r in rows]
    lines += [
        "",
        f"Mean over {len(rows)} tasks of margin - shipped: **{statistics.mean(diffs):+.1f}**.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=list(SEEDS), default="tuning")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "interval")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TLKIT_CACHE_DIR", str(opts.work / "cache"))
    rows = []
    for family, task, size in _tasks(opts.work, SEEDS[opts.draws]):
        rows.append({"family": family, **run_task(task, size)})
        print(json.dumps(rows[-1]), flush=True)
    title = "advise's choice among deep candidates, replayed"
    findings = HERE / "findings" / "stage_rule.md"
    write_draws(title, opts.draws, summarise(rows, opts.draws), {"rows": rows}, findings)


if __name__ == "__main__":
    main()
