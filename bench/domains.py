"""Held-out few-shot tasks from new image sources (bench/domains_data.py): icons with
transparency, glyphs of unseen fonts, crops of textures and photos.

Side by side in one run, each contender its own process with a cold feature cache:

* ``sklearn-pil``: bench/sklearn_probe.py as a user writes it (ImageFolder's
  ``convert("RGB")``: transparent pixels turn black), StandardScaler, LogisticRegressionCV;
* ``sklearn``: the same with tlkit's decoding (transparency composited on white);
* ``sklearn-raw``: tlkit's decoding, no StandardScaler;
* ``top``: ``tlkit finetune --recipe small-similar`` (the exact probe on the top features);
* ``auto``: ``tlkit finetune --recipe auto``.

Reported: test accuracy and balanced test accuracy (icon contexts have unequal test splits),
auto's stage, and whether auto's predicted interval holds the test metric it predicts.

Run: python bench/domains.py --draws tuning|report [--work /tmp/domains]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import write_draws
from domains_data import DOMAIN_FAMILIES, build_domain_task
from heldout import TLKIT, _run
from heldout_data import REPORT_SEEDS, TUNING_SEEDS

HERE = Path(__file__).resolve().parent
PEERS = {
    "sklearn-pil": [],
    "sklearn": ["--decode", "tlkit"],
    "sklearn-raw": ["--decode", "tlkit", "--no-scaler"],
}
RECIPES = {"top": "small-similar", "auto": "auto"}


def run_task(task: Path, size: int | None, work: Path) -> dict:
    """Every contender on one task."""
    row: dict = {"task": task.name}
    sized = [] if size is None else ["--image-size", str(size)]
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        for name, extra in PEERS.items():
            command = [sys.executable, str(HERE / "sklearn_probe.py"), str(task), *sized, *extra]
            seconds, out = _run(command, Path(scratch) / f"{name}-cache")
            row[name] = {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": seconds}
        for name, recipe in RECIPES.items():
            out_dir = Path(scratch) / name
            command = [*TLKIT, "finetune", "--recipe", recipe, "--data", str(task), *sized,
                       "--out", str(out_dir)]  # fmt: skip
            seconds, _ = _run(command, Path(scratch) / f"{name}-cache")
            metrics = json.loads((out_dir / "metrics.json").read_text())
            strategy = metrics.get("strategy") or {}
            row[name] = {
                "test_acc": metrics["test_acc"],
                "balanced_acc": metrics["test_balanced_acc"],
                "wall_seconds": seconds,
                "recipe": metrics["recipe"],
                "stage": (strategy.get("init_args") or strategy).get("stage"),
                "expected_accuracy": metrics.get("expected_accuracy"),
            }
    return row


def _score(entry: dict) -> float:
    return entry["balanced_acc"]


def summarise(rows: list[dict], draws: str) -> str:
    """Markdown: per family, then per task with auto's stage and interval."""
    contenders = [*PEERS, *RECIPES]
    seeds = TUNING_SEEDS if draws == "tuning" else REPORT_SEEDS
    lines = [
        f"Draws: **{draws}** (seeds {', '.join(map(str, seeds))}). Balanced test accuracy in %, "
        "mean ± std over draws.",
        "",
        "| family | " + " | ".join(contenders) + " | auto - best peer |",
        "|" + "---|" * (len(contenders) + 2),
    ]
    gaps = []
    for family in DOMAIN_FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        if not mine:
            continue
        cells = []
        for c in contenders:
            values = [_score(r[c]) for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}")
        best = max(statistics.mean(_score(r[c]) for r in mine) for c in PEERS)
        gap = statistics.mean(_score(r["auto"]) for r in mine) - best
        gaps.append(gap)
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {100 * gap:+.1f} |")
    held, widths = [], []
    table = [
        "| task | " + " | ".join(contenders) + " | auto's stage | predicted | in |",
        "|" + "---|" * (len(contenders) + 4),
    ]
    for r in rows:
        e = r["auto"]["expected_accuracy"] or {}
        metric = "balanced_acc" if e.get("metric") == "balanced_accuracy" else "test_acc"
        measured = r["auto"][metric]
        ok = e.get("low", 2) <= measured <= e.get("high", -1)
        held.append(ok)
        widths.append(e.get("high", 0) - e.get("low", 0))
        cells = " | ".join(f"{100 * _score(r[c]):.1f}" for c in contenders)
        table.append(
            f"| {r['task']} | {cells} | {r['auto']['stage'] or 'top'} | "
            f"{100 * e.get('low', 0):.1f}-{100 * e.get('high', 0):.1f} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        f"Mean over families of auto - best peer: **{100 * statistics.mean(gaps):+.1f}** points. "
        f"auto's predicted interval holds the test metric it predicts on {sum(held)} of "
        f"{len(held)} tasks; median width {100 * statistics.median(widths):.1f} points.",
        "",
        *table,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=["tuning", "report"], default="report")
    parser.add_argument("--families", nargs="*", default=list(DOMAIN_FAMILIES))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "domains")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    seeds = TUNING_SEEDS if opts.draws == "tuning" else REPORT_SEEDS
    rows = []
    for name in opts.families:
        family = DOMAIN_FAMILIES[name]
        for seed in seeds:
            task = build_domain_task(opts.work / "tasks", family, seed)
            row = {"family": name, "seed": seed, **run_task(task, family.image_size, opts.work)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_draws("Held-out tasks from new image sources", opts.draws, summarise(rows, opts.draws),
                {"rows": rows}, HERE / "findings" / "domains.md")  # fmt: skip


if __name__ == "__main__":
    main()
