"""Task shapes no recipe or rule was tuned on: `--recipe auto` against the by-hand probe.

The held-out benchmarks (bench/heldout.py, bench/large.py) tune and report on fixed families.
This one builds tasks of other shapes, the same way (bench/heldout_data.py: other class subsets,
labelled images per class, input sizes, folders with and without ``val/``), on draws of their
own, and runs each as a user would: bench/sklearn_probe.py (LogisticRegressionCV on the top
features) and ``tlkit finetune --recipe auto``, each as its own process with a cold cache.

Families straddle the matrix's size line (100 labelled images per class that train): few-shot
tasks, 75 per class, 100 per class without ``val/`` (80 train once validation is held out: a
small task), and large cells of 600 images, of 2,500 at the native 28 px and of 1,800 at 96 px.
Nothing here feeds back into a recipe: the figures only report.

Run: python bench/shapes.py [--seeds 7 8] [--families NAME ...]
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
from heldout_data import SHAPE_FAMILIES, SHAPE_SEEDS, build_task
from large import pooled, pooled_probe, sklearn_probe

#: The reading of the figures (written by hand from them), appended to them.
FINDINGS = HERE / "shapes_findings.md"


def run_auto(task: Path, size: int, work: Path) -> dict:
    """``tlkit finetune --recipe auto`` on one task: what it chose, shipped and scored."""
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        out = Path(scratch) / "auto"
        command = [*TLKIT, "finetune", "--recipe", "auto", "--data", str(task),
                   "--image-size", str(size), "--out", str(out)]  # fmt: skip
        wall, _ = _run(command, Path(scratch) / "cache")
        m = json.loads((out / "metrics.json").read_text())
    keys = ("recipe", "test_acc", "probe_test_acc", "finetuned_test_acc", "ensemble_test_acc",
            "shipped", "fit_seconds")  # fmt: skip
    floor = m["probe"].get("name") if isinstance(m.get("probe"), dict) else None
    return {**{k: m.get(k) for k in keys}, "pooled_probe_test_acc": pooled_probe(m, "test"),
            "floor": floor, "wall_seconds": round(wall, 1)}  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> str:
    lines = [
        "Draws: seeds "
        + ", ".join(str(s) for s in sorted({r["seed"] for r in rows}))
        + " of families used nowhere else (never tuned on). Test accuracy in %; for large "
        "cells the exact probe on advise's pooled features, the run's floor (that probe, or its "
        "spatial readout when that cross-validates higher: tlkit.readout), the fine-tuned "
        "model, their ensemble and what best.ckpt holds (in brackets).",
        "",
        "| task | labelled images | recipe | sklearn probe | exact probe | floor | fine-tuned | "
        "ensemble | auto | auto - sklearn | wall s sklearn / auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    gaps = []
    for r in rows:
        a, s, f = r["auto"], r["sklearn"], SHAPE_FAMILIES[r["family"]]
        gaps.append(a["test_acc"] - s["test_acc"])
        tuned = a["finetuned_test_acc"]
        if tuned is None and a["shipped"] == "finetuned":  # best.ckpt is the fine-tuned model
            tuned = a["test_acc"]
        shipped = _pct(a["test_acc"]) + (f" ({a['shipped']})" if a.get("shipped") else "")
        lines.append(
            f"| {r['family']}-s{r['seed']} | {f.classes * f.train}"
            f"{f' + {f.classes * f.val} val' if f.val else ''} | {a['recipe']} | "
            f"{_pct(s['test_acc'])} | {_pct(pooled(a))} | {_pct(a['probe_test_acc'])} | "
            f"{_pct(tuned)} | {_pct(a['ensemble_test_acc'])} | {shipped} | {100 * gaps[-1]:+.1f} | "
            f"{s['wall_seconds']:.0f} / {a['wall_seconds']:.0f} |"
        )
    large = [r["auto"] for r in rows if r["auto"].get("probe_test_acc") is not None]
    lines += [
        "",
        f"auto - sklearn over {len(rows)} tasks: **{100 * statistics.mean(gaps):+.1f}** "
        f"± {100 * _std(gaps):.1f} points (mean ± std over draws; worst "
        f"{100 * min(gaps):+.1f}, below on {sum(g < 0 for g in gaps)}).",
    ]
    if large:
        over = [a["test_acc"] - pooled(a) for a in large]
        floor = [a["test_acc"] - a["probe_test_acc"] for a in large]
        lines.append(
            f"Large cells, shipped - exact probe over {len(large)} tasks: "
            f"**{100 * statistics.mean(over):+.1f}** ± {100 * _std(over):.1f} "
            f"(worst {100 * min(over):+.1f}); shipped - floor {100 * statistics.mean(floor):+.1f}"
            f" (worst {100 * min(floor):+.1f})."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SHAPE_SEEDS))
    parser.add_argument("--families", nargs="*", default=list(SHAPE_FAMILIES))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "shapes")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    runs = opts.work / "shapes.jsonl"
    rows = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    done = {(r["family"], r["seed"]) for r in rows}
    for seed in opts.seeds:
        for name in opts.families:
            if (name, seed) in done:
                continue
            family = SHAPE_FAMILIES[name]
            task = build_task(opts.work / "tasks", family, seed)
            row = {"family": name, "seed": seed,
                   "sklearn": sklearn_probe(task, family.image_size, opts.work),
                   "auto": run_auto(task, family.image_size, opts.work)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            with runs.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    order = list(SHAPE_FAMILIES)
    rows.sort(key=lambda r: (order.index(r["family"]), r["seed"]))
    text = summarise(rows)
    if FINDINGS.exists():
        text += "\n\n" + FINDINGS.read_text().strip()
    write("Other task shapes (draws never tuned on)", text, {"rows": rows})


if __name__ == "__main__":
    sys.exit(main())
