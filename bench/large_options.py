"""Held-out large tasks: settings of the large recipe tried as overrides of ``--recipe auto``.

Each (variant, draw) runs ``tlkit finetune --recipe auto`` as its own process, with the
variant's overrides (``VARIANTS``), one torch thread each, and keeps the run under
``--work/runs``. Recorded from the run's metrics.json: the exact probe's, the fine-tuned
model's, the ensemble's and the shipped test accuracy, fit and whole-process wall seconds.
Reported: each variant's gain over the probe and its difference from ``base`` (the recipe as it
ships), paired by draw.

Run: python bench/large_options.py --draws tuning --work /tmp/large-options
     [--variants base lpft ...] [--tasks fashion10-400-64px:1001 ...]
Two processes over different --tasks share a --work (they append to one file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write
from heldout import HERE
from heldout_data import LARGE_FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task

TLKIT = str(Path(sys.executable).parent / "tlkit")
MIXUP = {"class_path": "tlkit.callbacks.MixUp",
         "init_args": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}}  # fmt: skip
#: Overrides of ``tlkit finetune --recipe auto`` per variant.
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "ep14": ["--epochs", "14"],
    "heavy": ["--data.augment", "heavy"],
    "mix14": ["--epochs", "14", "--trainer.callbacks+=" + json.dumps(MIXUP)],
    "lpft": ["--model.strategy_args.head_init", "probe"],
}
#: The reading of the figures (written by hand from them), appended to them.
FINDINGS = HERE / "large_options_findings.md"
DESCRIBED = {
    "base": "the recipe as it ships (10 epochs, medium augmentation, random head)",
    "ep14": "14 epochs",
    "heavy": "heavy augmentation (+ blur, noise, coarse dropout)",
    "mix14": "MixUp 0.8 / CutMix 1.0 (timm's Mixup), 14 epochs",
    "lpft": "head started from the exact probe (`head_init: probe`)",
}


def run(work: Path, variant: str, task: Path, size: int) -> dict | None:
    out = work / "runs" / f"{variant}-{task.name}"
    if (out / "metrics.json").exists():
        return None
    env = {**os.environ, "TLKIT_CACHE_DIR": str(work / "cache" / out.name),
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [TLKIT, "finetune", "--recipe", "auto", "--data", str(task), "--image-size",
               str(size), "--out", str(out), *VARIANTS[variant]]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"variant": variant, "task": task.name, "wall": round(wall), "fit": m["fit_seconds"],
            "probe": m["probe_test_acc"], "ft": m.get("finetuned_test_acc", m["test_acc"]),
            "ens": m.get("ensemble_test_acc"), "shipped": m["test_acc"],
            "ship": m.get("shipped")}  # fmt: skip


def _pm(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.1f}" if values else "-"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}"


def summarise(rows: list[dict], draws: str) -> str:
    by = {(r["variant"], r["task"]): r for r in rows}
    tasks = sorted({r["task"] for r in rows})
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    lines = [
        f"Draws: **{draws}**. `tlkit finetune --recipe auto` with each variant's overrides, one "
        "torch thread, two runs side by side on 2 cores. Test accuracy in points; gains are "
        "paired by draw (mean ± std over the draws both ran on).",
        "",
        "| variant | draws | shipped - probe | fine-tuned - probe | ensemble - probe "
        "| shipped - base | fit s vs base |",
        "|---|---|---|---|---|---|---|",
    ]

    def rel(v: str, key: str, t: str) -> float:
        return 100 * (by[v, t][key] - by[v, t]["probe"])

    for v in variants:
        mine = [t for t in tasks if (v, t) in by]
        both = [t for t in mine if ("base", t) in by]
        vs = [100 * (by[v, t]["shipped"] - by["base", t]["shipped"]) for t in both]
        fit = [by[v, t]["fit"] / by["base", t]["fit"] for t in both]
        lines.append(
            f"| {v}: {DESCRIBED[v]} | {len(mine)} | {_pm([rel(v, 'shipped', t) for t in mine])} "
            f"| {_pm([rel(v, 'ft', t) for t in mine])} | {_pm([rel(v, 'ens', t) for t in mine])} "
            f"| {_pm(vs) if v != 'base' else '-'} "
            f"| {f'{statistics.mean(fit):.2f}x' if v != 'base' and fit else '-'} |"
        )
    lines += ["", "Per draw: test accuracy % of the probe, then fine-tuned / ensemble / shipped.",
              "", "| variant | " + " | ".join(tasks) + " |",
              "|---|" + "---|" * len(tasks)]  # fmt: skip
    probe = {t: r["probe"] for (_, t), r in by.items()}
    lines.append("| exact probe | " + " | ".join(f"{100 * probe[t]:.1f}" for t in tasks) + " |")
    for v in variants:
        cells = []
        for t in tasks:
            r = by.get((v, t))
            accs = (r["ft"], r["ens"], r["shipped"]) if r else ()
            cells.append(" / ".join(f"{100 * a:.1f}" for a in accs) or "-")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=("report", "tuning"), default="tuning")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="family:seed pairs (default: every family's every draw)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("/tmp/large-options"))
    parser.add_argument("--report-only", action="store_true")
    opts = parser.parse_args()
    seeds = REPORT_SEEDS if opts.draws == "report" else TUNING_SEEDS
    jobs = opts.tasks or [f"{f}:{s}" for f in LARGE_FAMILIES for s in seeds]
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / "large-options.jsonl"
    for job in [] if opts.report_only else jobs:
        name, seed = job.rsplit(":", 1)
        if int(seed) not in seeds:
            parser.error(f"{job}: seed {seed} is not a {opts.draws} draw {seeds}")
        family = LARGE_FAMILIES[name]
        task = build_task(opts.work / "tasks", family, int(seed))
        for variant in opts.variants:
            row = run(opts.work, variant, task, family.image_size)
            if row is not None:
                print(json.dumps(row), flush=True)
                with log.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if opts.report_only:
        sys.argv.remove("--report-only")
    text = summarise(rows, opts.draws)
    if FINDINGS.exists() and opts.draws == "tuning":
        text += "\n\n" + FINDINGS.read_text().strip()
    write(f"Large recipe settings on held-out tasks ({opts.draws} draws)", text,
          {"draws": opts.draws, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
