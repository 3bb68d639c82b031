"""Held-out large tasks: what ``--recipe auto`` ships against the exact probe, and the large
recipe as it was against today's, side by side.

Each draw of each large family (bench/heldout_data.py, ``LARGE_FAMILIES``: at least 2,000
training images) runs, each as its own process with a cold feature cache:

* ``sklearn``: bench/sklearn_probe.py, the by-hand LogisticRegressionCV on the top features;
* ``auto``: ``tlkit finetune --recipe auto`` with today's recipes. The run fits the exact probe
  first, fine-tunes, and ships the probe, the fine-tuned model or their ensemble by validation
  (``best.ckpt``, :func:`tlkit.floor.ship`); its metrics.json holds the test and validation
  accuracy of all three.
* ``old`` (``--old`` draws only, default the first): the cell's recipe with the settings it had
  before (``OLD``: 20 epochs for large-different, 15 for large-similar, the whole network, fp32
  in contiguous memory), the cell and probe as auto measured them.

Reported per task: the probe's, the fine-tuned, the ensemble's and the shipped test accuracy,
fit seconds (in process) and whole-process wall seconds, and the old / new ratio of both; and
what other ways of choosing among the three would have shipped on the same runs.

Run: python bench/large.py --draws report [--old 4]     (draws never tuned on)
     python bench/large.py --draws tuning --old          (the draws the rules were tuned on;
                                                          a bare --old runs no old recipe)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import write
from heldout import HERE, _run
from heldout_data import LARGE_FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task

from tlkit.floor import ship

TLKIT = [str(Path(sys.executable).parent / "tlkit")]
#: The reading of the report draws' figures (written by hand from them), appended to them.
FINDINGS = HERE / "large_findings.md"
TUNING_FINDINGS = HERE / "large_tuning_findings.md"
#: The large recipes' settings before this benchmark, as overrides of today's.
OLD = {
    "large-different": ["--epochs", "20", "--model.channels_last", "false",
                        "--model.strategy_args.stage", "null"],
    "large-similar": ["--epochs", "15", "--model.channels_last", "false"],
}  # fmt: skip


def _finetune(argv: list[str], out: Path, cache: Path) -> dict:
    wall, _ = _run([*TLKIT, "finetune", *argv, "--out", str(out)], cache)
    m = json.loads((out / "metrics.json").read_text())
    return {
        "recipe": m["recipe"],
        "probe": m["probe"]["name"],
        "shipped": m.get("shipped"),
        "test_acc": m["test_acc"],
        "finetuned_test_acc": m.get("finetuned_test_acc", m["test_acc"]),
        "probe_test_acc": m["probe_test_acc"],
        "val_acc": m["val_acc"],
        "finetuned_val_acc": m.get("finetuned_val_acc", m["val_acc"]),
        "probe_val_acc": m.get("probe_val_acc"),
        "pooled_probe_test_acc": pooled_probe(m, "test"),
        "pooled_probe_val_acc": pooled_probe(m, "val"),
        "spatial": "pooled" in m["probe"],
        "ensemble_val_acc": m.get("ensemble_val_acc"),
        "ensemble_test_acc": m.get("ensemble_test_acc"),
        "ensemble_head_seconds": m.get("ensemble_head", {}).get("seconds"),
        "val_count": m.get("num_val"),
        "epochs": m["epochs"],
        "fit_seconds": m["fit_seconds"],
        "wall_seconds": round(wall, 1),
    }


def sklearn_probe(task: Path, size: int, work: Path) -> dict:
    """The by-hand baseline (bench/sklearn_probe.py) on one task, as its own process."""
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        command = [sys.executable, str(HERE / "sklearn_probe.py"), str(task), "--image-size",
                   str(size)]  # fmt: skip
        wall, out = _run(command, Path(scratch) / "cache")
    return {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": round(wall, 1)}


def run_task(task: Path, size: int, old: bool, work: Path) -> dict:
    row: dict = {"task": task.name, "sklearn": sklearn_probe(task, size, work)}
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        common = ["--data", str(task), "--image-size", str(size)]
        row["auto"] = _finetune(["--recipe", "auto", *common], Path(scratch) / "auto",
                                Path(scratch) / "auto-cache")  # fmt: skip
        if old:
            recipe = row["auto"]["recipe"]
            row["old"] = _finetune(["--recipe", recipe, *common, *OLD[recipe]],
                                   Path(scratch) / "old", Path(scratch) / "old-cache")  # fmt: skip
    return row


def _with_val(a: dict, test: str, val: str) -> str:
    if a.get(test) is None:
        return "-"
    return f"{100 * a[test]:.1f}" + (f" ({100 * a[val]:.1f})" if a.get(val) is not None else "")


def _pct(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def _side_by_side(old: dict | None, new: dict, key: str) -> str:
    if old is None:
        return f"- / {new[key]:.0f}"
    return f"{old[key]:.0f} / {new[key]:.0f} ({new[key] / old[key]:.2f}x)"


def _ensembles(runs: list[dict]) -> str:
    values = [a["ensemble_test_acc"] for a in runs if a.get("ensemble_test_acc") is not None]
    return _pct(values) if len(values) == len(runs) else "-"


def _shipped(a: dict) -> str:
    return f"{100 * a['test_acc']:.1f} ({a['shipped']})"


def pooled_probe(metrics: dict, split: str) -> float | None:
    """``split``'s accuracy of the exact probe on advise's pooled features, from a run's
    metrics.json: the floor's ``pooled`` record when the spatial readout replaced it, else the
    floor itself (``None`` where the run fitted none)."""
    probe = metrics.get("probe") if isinstance(metrics.get("probe"), dict) else {}
    return probe.get("pooled", {}).get(f"{split}_acc", metrics.get(f"probe_{split}_acc"))


def pooled(a: dict) -> float:
    """A recorded run's test accuracy of that probe (runs from before the spatial readout
    recorded only the floor, which was that probe)."""
    return a.get("pooled_probe_test_acc", a["probe_test_acc"])


def strict_rule(a: dict) -> str:
    tuned, probe, mean = a["finetuned_val_acc"], a["probe_val_acc"], a["ensemble_val_acc"]
    if mean > max(tuned, probe):
        return "ensemble"
    return "finetuned" if tuned > probe else "probe"


#: Ways to choose the shipped model from the three validation accuracies, replayed on the
#: recorded runs: each returns ``probe``, ``finetuned`` or ``ensemble``.
RULES = {
    "probe only": lambda a: "probe",
    "fine-tuned only": lambda a: "finetuned",
    "ensemble only": lambda a: "ensemble",
    "best on validation, ties to the simpler": strict_rule,
    "tlkit (floor.ship): ensemble unless a member beats it by more than the noise": lambda a: ship(
        a["finetuned_val_acc"], a["probe_val_acc"], a["ensemble_val_acc"], a["val_count"]
    ),
}


def rules_table(rows: list[dict]) -> list[str]:
    """What each selection rule would have shipped on these runs: test accuracy minus the
    probe's, mean ± std over tasks, and how often it picked each model."""
    runs = [r["auto"] for r in rows if r["auto"].get("ensemble_val_acc") is not None]
    if not runs or any("val_count" not in a for a in runs):
        return []
    test = {"probe": "probe_test_acc", "finetuned": "finetuned_test_acc",
            "ensemble": "ensemble_test_acc"}  # fmt: skip
    lines = ["| rule | shipped - floor (points) | worst | picks (floor / fine-tuned / ensemble) |",
             "|---|---|---|---|"]  # fmt: skip
    for name, rule in RULES.items():
        picks = [rule(a) for a in runs]
        gain = [a[test[p]] - a["probe_test_acc"] for a, p in zip(runs, picks, strict=True)]
        counts = " / ".join(str(picks.count(k)) for k in test)
        lines.append(f"| {name} | {_pct(gain)} | {100 * min(gain):+.1f} | {counts} |")
    return [f"Selection rules replayed on these {len(runs)} runs (each from the same three "
            "validation accuracies):", "", *lines, ""]  # fmt: skip


def summarise(rows: list[dict], draws: str) -> str:
    lines = [
        f"Draws: **{draws}** ({'never tuned on' if draws == 'report' else 'used for tuning'}). "
        "Test accuracy in %; `shipped` is what best.ckpt holds (chosen on validation: "
        "tlkit.floor.ship).",
        "",
        "`exact probe` is the exact probe on the features advise scores (each stage's map "
        "pooled to one vector); `floor` is the probe the run fitted as its floor (that one, or "
        "its spatial readout when that cross-validates higher: tlkit.readout).",
        "",
        "| family | sklearn probe | exact probe | floor | auto fine-tuned | ensemble | "
        "auto shipped | shipped - exact probe | shipped - floor | shipped - sklearn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    gaps, over_floor, by_hand = [], [], []
    for family in sorted({r["family"] for r in rows}, key=list(LARGE_FAMILIES).index):
        mine = [r["auto"] for r in rows if r["family"] == family]
        sklearn = [r["sklearn"]["test_acc"] for r in rows if r["family"] == family]
        gap = [a["test_acc"] - pooled(a) for a in mine]
        gaps += gap
        floor = [a["test_acc"] - a["probe_test_acc"] for a in mine]
        over_floor += floor
        versus = [a["test_acc"] - s for a, s in zip(mine, sklearn, strict=True)]
        by_hand += versus
        lines.append(
            f"| {family} | {_pct(sklearn)} | {_pct([pooled(a) for a in mine])} | "
            f"{_pct([a['probe_test_acc'] for a in mine])} | "
            f"{_pct([a['finetuned_test_acc'] for a in mine])} | {_ensembles(mine)} | "
            f"{_pct([a['test_acc'] for a in mine])} | {_pct(gap)} | {_pct(floor)} | "
            f"{_pct(versus)} |"
        )
    lines += ["", "Mean over tasks of shipped - exact probe: "
              f"**{100 * statistics.mean(gaps):+.1f}** points (worst {100 * min(gaps):+.1f}; "
              f"above on {sum(g > 0 for g in gaps)} of "
              f"{len(gaps)}); shipped - floor: {100 * statistics.mean(over_floor):+.1f} (worst "
              f"{100 * min(over_floor):+.1f}); shipped - scikit-learn's "
              f"LogisticRegressionCV probe (bench/sklearn_probe.py, the top features): "
              f"**{100 * statistics.mean(by_hand):+.1f}** (worst {100 * min(by_hand):+.1f}).",
              ""]  # fmt: skip
    lines += rules_table(rows)
    paired = [r for r in rows if "old" in r]
    if paired:
        diff = [r["auto"]["finetuned_test_acc"] - r["old"]["finetuned_test_acc"] for r in paired]
        behind = [r["old"]["finetuned_test_acc"] - r["old"]["probe_test_acc"] for r in paired]
        fit = [r["auto"]["fit_seconds"] / r["old"]["fit_seconds"] for r in paired]
        wall = [r["auto"]["wall_seconds"] / r["old"]["wall_seconds"] for r in paired]
        lines += [
            f"New recipe - old recipe, fine-tuned models paired by draw: **{_pct(diff)}** points "
            f"(n={len(diff)}); fitting time {statistics.mean(fit):.2f}x and whole-process wall "
            f"time {statistics.mean(wall):.2f}x the old recipe's (means of the per-draw ratios). "
            f"The old recipe's fine-tuned model minus the probe: {_pct(behind)} points, below "
            f"the probe on {sum(b < 0 for b in behind)} of {len(behind)} draws.",
            "",
        ]
    lines += [
        "Per task: test accuracy % (validation accuracy % in brackets: what chose the shipped "
        "model).",
        "",
        "| task | recipe (floor) | exact probe | floor | old fine-tuned | new fine-tuned | "
        "ensemble | shipped | fit s old / new | wall s old / new |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, o = r["auto"], r.get("old")
        old_acc = f"{100 * o['finetuned_test_acc']:.1f}" if o else "-"
        fit, wall = (_side_by_side(o, a, key) for key in ("fit_seconds", "wall_seconds"))
        lines.append(
            f"| {r['task']} | {a['recipe']} ({a['probe']}) | "
            f"{_with_val(a, 'pooled_probe_test_acc', 'pooled_probe_val_acc')} | "
            f"{_with_val(a, 'probe_test_acc', 'probe_val_acc')} | {old_acc} | "
            f"{_with_val(a, 'finetuned_test_acc', 'finetuned_val_acc')} | "
            f"{_with_val(a, 'ensemble_test_acc', 'ensemble_val_acc')} | {_shipped(a)} | "
            f"{fit} | {wall} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=("report", "tuning"), default="report")
    parser.add_argument("--families", nargs="*", default=list(LARGE_FAMILIES))
    parser.add_argument("--old", nargs="*", type=int, default=None,
                        help="seeds that also run the old recipe (default: the first)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "large")
    parser.add_argument("--report-only", action="store_true")
    opts = parser.parse_args()
    seeds = REPORT_SEEDS if opts.draws == "report" else TUNING_SEEDS
    old = set(seeds[:1] if opts.old is None else opts.old)
    opts.work.mkdir(parents=True, exist_ok=True)
    runs = opts.work / f"large-{opts.draws}.jsonl"
    rows = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    for row in rows:  # rows measured before the by-hand contender joined get it now
        if "sklearn" not in row and not opts.report_only:
            family = LARGE_FAMILIES[row["family"]]
            task = build_task(opts.work / "tasks", family, row["seed"])
            row["sklearn"] = sklearn_probe(task, family.image_size, opts.work)
            runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = {(r["family"], r["seed"]) for r in rows}
    for name in [] if opts.report_only else opts.families:
        for seed in seeds:
            if (name, seed) in done:
                continue
            family = LARGE_FAMILIES[name]
            task = build_task(opts.work / "tasks", family, seed)
            row = {"family": name, "seed": seed,
                   **run_task(task, family.image_size, seed in old, opts.work)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            with runs.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    if opts.report_only:  # the section names the command that measured it
        sys.argv.remove("--report-only")
    text = summarise(rows, opts.draws)
    findings = FINDINGS if opts.draws == "report" else TUNING_FINDINGS
    if findings.exists():
        text += "\n\n" + findings.read_text().strip()
    write(f"Large held-out tasks ({opts.draws} draws)", text,
          {"draws": opts.draws, "rows": rows})  # fmt: skip
    results = Path(__file__).resolve().parent / "results"
    name = "large-report" if opts.draws == "report" else "large-tuning-runs"
    for suffix in (".md", ".json"):
        (results / f"large{suffix}").replace(results / f"{name}{suffix}")


if __name__ == "__main__":
    main()
