"""How the exact probe scales its features: per feature, globally, or chosen by cross-validation.

On every family of bench/heldout_data.py, bench/domains_data.py and bench/imbalance.py, one
draw at a time: advise's features (one pass, with the test split), then ``fit_exact`` on the top
features and on the features advise chose, with ``scales`` set to ``feature`` (each feature
divided by its own standard deviation, what StandardScaler does), ``global`` (all divided by one
number, so the backbone's feature scales stay, like raw features up to the L2 grid) and both
(the cross-validation chooses). Reported: balanced test accuracy of each, and which one the
cross-validation chose.

The tuning draws chose ``global`` for one stage (ahead of ``feature`` and ``cv`` on the mean);
the report draws, seen next, put ``cv`` ahead and ``global`` behind ``feature`` on the stages
advise chose, so the shipped rule became ``cv`` (:func:`tlkit.probe.scales_for`) and the fresh
draws, first drawn after that, report it.

Run: python bench/probe_scale.py --draws tuning|report|fresh [--work /tmp/probe-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import write_draws
from domains_data import DOMAIN_FAMILIES, build_domain_task
from heldout_data import FAMILIES, FINAL_SEEDS, FRESH_SEEDS, REPORT_SEEDS, TUNING_SEEDS, build_task
from imbalance import FAMILIES as LONG_TAILS
from imbalance import build_task as build_long_tail

from tlkit.advise import feature_stages
from tlkit.advise.measure import measure
from tlkit.balance import balanced_accuracy
from tlkit.exact import fit_exact

HERE = Path(__file__).resolve().parent
SEEDS = {
    "tuning": TUNING_SEEDS,
    "report": REPORT_SEEDS,
    "fresh": FRESH_SEEDS,
    "final": FINAL_SEEDS,
}
CHOICES = {"feature": ("feature",), "global": ("global",), "cv": ("feature", "global")}


def _tasks(work: Path, seeds) -> list[tuple[str, Path, int | None]]:
    out = []
    for seed in seeds:
        for f in FAMILIES.values():
            out.append((f.name, build_task(work / "tasks", f, seed), f.image_size))
        for f in DOMAIN_FAMILIES.values():
            out.append((f.name, build_domain_task(work / "tasks", f, seed), f.image_size))
        for f in LONG_TAILS.values():
            out.append((f.name, build_long_tail(work / "tasks", f, seed), f.image_size))
    return out


def run_task(task: Path, size: int | None) -> dict:
    """Every scaling on the top features and on advise's choice."""
    report, features = measure(str(task), image_size=size, with_test=True)
    row: dict = {"task": task.name, "advised": report["probe_stage"]}
    sets = {"top": (None,), "advised": feature_stages(report["probe_stage"])}
    classes = int(report["num_classes"])
    for where, stages in sets.items():
        split = {k: (features.select(k, stages), features.labels(k)) for k in features.splits}
        test_x, test_y = split["test"]
        for name, scales in CHOICES.items():
            fit = fit_exact(split, where, stages, classes, scales=scales)
            predicted = fit.probe.logits(test_x).argmax(1)
            row[f"{where}/{name}"] = balanced_accuracy(predicted, test_y)
            if name == "cv":
                row[f"{where}/chosen"] = fit.probe.scale
    return row


def summarise(rows: list[dict], draws: str) -> str:
    columns = [f"{w}/{n}" for w in ("top", "advised") for n in CHOICES]
    lines = [
        f"Draws: **{draws}**. Balanced test accuracy in %, mean over draws; `cv`: the "
        "cross-validation chooses the scaling (times it chose `global`).",
        "",
        "| family | " + " | ".join(columns) + " | cv chose global |",
        "|" + "---|" * (len(columns) + 2),
    ]
    families = list(dict.fromkeys(r["family"] for r in rows))
    gains = {c: [] for c in columns}
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        cells = []
        for c in columns:
            value = statistics.mean(r[c] for r in mine)
            gains[c].append(value)
            cells.append(f"{100 * value:.1f}")
        chose = sum(r[f"{w}/chosen"] == "global" for r in mine for w in ("top", "advised"))
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {chose}/{2 * len(mine)} |")
    means = " | ".join(f"{100 * statistics.mean(gains[c]):.1f}" for c in columns)
    lines.append(f"| **mean over families** | {means} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=list(SEEDS), default="tuning")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "probe-scale")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TLKIT_CACHE_DIR", str(opts.work / "cache"))
    rows = []
    seeds = SEEDS[opts.draws]
    for family, task, size in _tasks(opts.work, seeds):
        rows.append({"family": family, **run_task(task, size)})
        print(json.dumps(rows[-1]), flush=True)
    write_draws("The exact probe's feature scaling", opts.draws, summarise(rows, opts.draws),
                {"rows": rows}, HERE / "findings" / "probe_scale.md")  # fmt: skip


if __name__ == "__main__":
    main()
