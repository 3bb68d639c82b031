"""Held-out few-shot benchmark: tlkit's choice against the by-hand scikit-learn probe.

For every draw of every family (bench/heldout_data.py), side by side in one run, each as its own
process (so the wall time is what a user waits for, imports included), each with a cold feature
cache:

* ``sklearn``: bench/sklearn_probe.py, LogisticRegressionCV on the top pooled features;
* ``auto``: ``tlkit finetune --recipe auto``;
* each small recipe: ``tlkit finetune --recipe small-similar`` / ``small-different``.

Reported: test accuracy mean ± std per family, whole-process wall seconds, and whether the
interval ``auto`` predicted before testing holds the measured test accuracy.

Run: python bench/heldout.py --draws report            (the reported draws, never tuned on)
     python bench/heldout.py --draws tuning            (the draws rules were tuned on)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write
from heldout_data import FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task

HERE = Path(__file__).resolve().parent
TLKIT = [str(Path(sys.executable).parent / "tlkit")]


def _run(command: list[str], cache: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of ``command`` as its own process, with its feature cache at
    ``cache`` and ``env`` added to the environment."""
    env = {**os.environ, "TLKIT_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore", **(env or {})}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def run_task(task: Path, size: int, recipes: list[str], work: Path) -> dict:
    """Every contender on one task; accuracy and wall seconds of each."""
    row: dict = {"task": task.name}
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        seconds, out = _run(
            [sys.executable, str(HERE / "sklearn_probe.py"), str(task), "--image-size", str(size)],
            Path(scratch) / "sk-cache",
        )
        row["sklearn"] = {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": seconds}
        for recipe in recipes:
            out_dir = Path(scratch) / recipe
            command = [*TLKIT, "finetune", "--recipe", recipe, "--data", str(task),
                       "--image-size", str(size), "--out", str(out_dir)]  # fmt: skip
            seconds, _ = _run(command, Path(scratch) / f"{recipe}-cache")
            metrics = json.loads((out_dir / "metrics.json").read_text())
            row[recipe] = {
                "test_acc": metrics["test_acc"],
                "wall_seconds": seconds,
                "fit_seconds": metrics["fit_seconds"],
                "recipe": metrics["recipe"],
                "probe": (metrics.get("strategy") or {}).get("stage"),
                "expected_accuracy": metrics.get("expected_accuracy"),
            }
    return row


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def summarise(rows: list[dict], recipes: list[str], draws: str) -> str:
    """Markdown: per family, per task, and the calibration of auto's interval."""
    contenders = ["sklearn", *recipes]
    lines = [
        f"Draws: **{draws}** ({'never tuned on' if draws == 'report' else 'used for tuning'}). "
        "Test accuracy in %, mean ± std over draws; wall = whole process, imports included, "
        "cold feature cache.",
        "",
        "| family | " + " | ".join(contenders) + " | auto - sklearn | wall s (sklearn / auto) |",
        "|---|" + "---|" * (len(contenders) + 2),
    ]
    families = sorted({r["family"] for r in rows}, key=list(FAMILIES).index)
    gaps = []
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        cells = [_mean_std([r[c]["test_acc"] for r in mine]) for c in contenders]
        gap = statistics.mean(r["auto"]["test_acc"] - r["sklearn"]["test_acc"] for r in mine)
        gaps.append(gap)
        wall = (
            f"{statistics.mean(r['sklearn']['wall_seconds'] for r in mine):.1f} / "
            f"{statistics.mean(r['auto']['wall_seconds'] for r in mine):.1f}"
        )
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {100 * gap:+.1f} | {wall} |")
    lines += ["", f"Mean over families of auto - sklearn: **{100 * statistics.mean(gaps):+.1f}** "
              "points.", ""]  # fmt: skip
    held = [
        r["auto"]["expected_accuracy"]["low"]
        <= r["auto"]["test_acc"]
        <= r["auto"]["expected_accuracy"]["high"]
        for r in rows
    ]
    lines += [
        f"auto's predicted interval holds the test accuracy on {sum(held)} of {len(held)} "
        f"tasks ({100 * sum(held) / max(len(held), 1):.0f} %).",
        "",
        "| task | sklearn | auto (probe) | predicted | in | " + " | ".join(recipes[1:]) + " |",
        "|---|---|---|---|---|" + "---|" * len(recipes[1:]),
    ]
    for r, ok in zip(rows, held, strict=True):
        e = r["auto"]["expected_accuracy"]
        others = " | ".join(f"{100 * r[c]['test_acc']:.1f}" for c in recipes[1:])
        lines.append(
            f"| {r['task']} | {100 * r['sklearn']['test_acc']:.1f} | "
            f"{100 * r['auto']['test_acc']:.1f} ({r['auto']['probe']}) | "
            f"{100 * e['low']:.1f}-{100 * e['high']:.1f} | {'yes' if ok else 'no'} | {others} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=("report", "tuning"), default="report")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument(
        "--recipes", nargs="*", default=["auto", "small-similar", "small-different"]
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "heldout")
    opts = parser.parse_args()
    seeds = REPORT_SEEDS if opts.draws == "report" else TUNING_SEEDS
    opts.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in opts.families:
        family = FAMILIES[name]
        for seed in seeds:
            task = build_task(opts.work / "tasks", family, seed)
            result = run_task(task, family.image_size, opts.recipes, opts.work)
            row = {"family": name, "seed": seed, **result}
            rows.append(row)
            print(json.dumps(row), flush=True)
            partial = opts.work / f"heldout-{opts.draws}.jsonl"
            with partial.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    markdown = summarise(rows, opts.recipes, opts.draws)
    write(f"Held-out few-shot tasks ({opts.draws} draws)", markdown,
          {"draws": opts.draws, "rows": rows})  # fmt: skip
    for suffix in (".md", ".json"):  # one file per set of draws
        (HERE / "results" / f"heldout{suffix}").replace(
            HERE / "results" / f"heldout-{opts.draws}{suffix}"
        )


if __name__ == "__main__":
    main()
