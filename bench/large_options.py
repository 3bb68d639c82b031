"""Held-out large tasks: settings of the large recipe tried as overrides of ``--recipe auto``.

Each (variant, draw) runs ``tlkit finetune --recipe auto`` as its own process, with the
variant's overrides (``VARIANTS``), one torch thread each, and keeps the run under
``--work/runs``. Recorded from the run's metrics.json: the exact probe's, the fine-tuned
model's, the ensemble's and the shipped test accuracy, fit and whole-process wall seconds.
Reported: each variant's gain over the probe and its difference from ``base`` (the recipe as it
ships), paired by draw. ``snap2`` runs also keep their two snapshots
(:class:`tlkit.callbacks.SnapshotEnsemble`); each is then scored with the other and with the
exact probe as members (what a three-member ensemble would ship; the run itself ships as usual).

Run: python bench/large_options.py --draws tuning --work /tmp/large-options
     [--variants base lpft ...] [--tasks fashion10-400-64px:1001 ...]
Two processes over different --tasks share a --work (they append to one file). Fitting times
are compared with the ``base`` run of the same ``--batch`` (a label of runs made at the same
time: this machine's speed drifts from hour to hour).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from common import write
from heldout import HERE, _run
from heldout_data import LARGE_FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task

TLKIT = str(Path(sys.executable).parent / "tlkit")
MIXUP = {"class_path": "tlkit.callbacks.MixUp",
         "init_args": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}}  # fmt: skip
SNAPSHOTS = {
    "class_path": "tlkit.callbacks.SnapshotEnsemble",
    "init_args": {"cycles": 2, "ensemble_val": False, "dirpath": "RUN/snapshots"},
}
#: Overrides of ``tlkit finetune --recipe auto`` per variant (``RUN``: the run directory).
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "ep14": ["--epochs", "14"],
    "heavy": ["--data.augment", "heavy"],
    "mix14": ["--epochs", "14", "--trainer.callbacks+=" + json.dumps(MIXUP)],
    "lpft": ["--model.strategy_args.head_init", "probe"],
    "snap2": ["--trainer.callbacks+=" + json.dumps(SNAPSHOTS)],
    "light": ["--data.augment", "light"],
    "lr04": ["--model.lr", "0.04"],
    "ld7": ["--model.strategy_args.layer_decay", "0.7"],
    "ld1": ["--model.strategy_args.layer_decay", "1.0"],
    "ls0": ["--model.label_smoothing", "0.0"],
    "os8": ["--model.output_stride", "8"],
    "os8e6": ["--model.output_stride", "8", "--epochs", "6"],
}
#: The reading of the figures (written by hand from them), appended to them.
FINDINGS = HERE / "large_options_findings.md"
DESCRIBED = {
    "base": "the recipe as it ships (10 epochs, medium augmentation, random head)",
    "ep14": "14 epochs",
    "heavy": "heavy augmentation (+ blur, noise, coarse dropout)",
    "mix14": "MixUp 0.8 / CutMix 1.0 (timm's Mixup), 14 epochs",
    "lpft": "head started from the exact probe (`head_init: probe`)",
    "snap2": "snapshot ensemble, 2 cosine cycles of 5 epochs (what ships is unchanged)",
    "light": "light augmentation (crop and flip only)",
    "lr04": "peak LR 0.04 (twice the recipe's)",
    "ld7": "layer-wise LR decay 0.7 (the recipe: 0.9)",
    "ld1": "no layer-wise LR decay (1.0)",
    "ls0": "no label smoothing (the recipe: 0.1)",
    "os8": "dilated to output stride 8 (timm `output_stride`; the recipe: 32)",
    "os8e6": "output stride 8, 6 epochs",
}


def run(work: Path, variant: str, task: Path, size: int, batch: int) -> dict | None:
    out = work / "runs" / f"{variant}-{task.name}"
    if (out / "metrics.json").exists():
        return None
    command = [TLKIT, "finetune", "--recipe", "auto", "--data", str(task), "--image-size",
               str(size), "--out", str(out),
               *(a.replace("RUN/", f"{out}/") for a in VARIANTS[variant])]  # fmt: skip
    wall, _ = _run(command, work / "cache" / out.name)  # one torch thread: OMP_NUM_THREADS
    m = json.loads((out / "metrics.json").read_text())
    return {"variant": variant, "task": task.name, "wall": round(wall), "fit": m["fit_seconds"],
            "probe": m["probe_test_acc"], "ft": m.get("finetuned_test_acc", m["test_acc"]),
            "ens": m.get("ensemble_test_acc"), "shipped": m["test_acc"],
            "ship": m.get("shipped"), "batch": batch}  # fmt: skip


def score_snapshots(work: Path, out: Path) -> dict:
    """Test accuracy of each snapshot of a ``snap2`` run, their mean, and each with the exact
    probe (fitted on train and val, as the floor fits it) as one more member."""
    import torch
    from large_variants import load_run
    from safetensors.torch import load_file

    from tlkit.advise import feature_stages
    from tlkit.probe import fit_probe, rescale_l2

    tuned, dm, decision, features = load_run(out, work / "cache" / out.name)
    labels = features.labels("test")
    probs = {}
    for path in sorted((out / "snapshots").glob("snapshot-*.safetensors")):
        tuned.load_state_dict(load_file(str(path)), strict=False)
        tuned.eval()
        with torch.no_grad():
            probs[path.stem] = torch.cat([tuned(x).softmax(-1) for x, _ in dm.test_dataloader()])
    probe = decision["probe"]
    stages = feature_stages(probe["stage"])
    x = torch.cat([features.select(s, stages) for s in ("train", "val")])
    y = torch.cat([features.labels(s) for s in ("train", "val")])
    measured = decision["evidence"]["images_measured"]
    fitted = fit_probe(x, y, rescale_l2(probe["l2"], measured, len(y)), dm.num_classes)
    with torch.no_grad():
        probs["probe"] = fitted.logits(features.select("test", stages)).softmax(-1).float()
    members = {"snapshot 2": ["snapshot-2"], "snapshots 1+2": ["snapshot-1", "snapshot-2"],
               "snapshot 2 + probe": ["snapshot-2", "probe"],
               "snapshots 1+2 + probe": ["snapshot-1", "snapshot-2", "probe"]}  # fmt: skip
    return {
        name: float((sum(probs[m] for m in group).argmax(-1) == labels).float().mean())
        for name, group in members.items()
    }


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

    # fitting time is compared with the base run of the same batch (runs made at the same time)
    base_fit = {(r["task"], r.get("batch", 1)): r["fit"] for r in rows if r["variant"] == "base"}

    def rel(v: str, key: str, t: str) -> float:
        return 100 * (by[v, t][key] - by[v, t]["probe"])

    for v in variants:
        mine = [t for t in tasks if (v, t) in by]
        both = [t for t in mine if ("base", t) in by]
        vs = [100 * (by[v, t]["shipped"] - by["base", t]["shipped"]) for t in both]
        fit = [by[v, t]["fit"] / base_fit[t, by[v, t].get("batch", 1)] for t in both
               if (t, by[v, t].get("batch", 1)) in base_fit]  # fmt: skip
        lines.append(
            f"| {v}: {DESCRIBED[v]} | {len(mine)} | {_pm([rel(v, 'shipped', t) for t in mine])} "
            f"| {_pm([rel(v, 'ft', t) for t in mine])} | {_pm([rel(v, 'ens', t) for t in mine])} "
            f"| {_pm(vs) if v != 'base' else '-'} "
            f"| {f'{statistics.mean(fit):.2f}x' if v != 'base' and fit else '-'} |"
        )
    snaps = [r for r in rows if "snapshots" in r]
    if snaps:
        lines += [
            "",
            "The `snap2` runs' snapshots as members (test accuracy, points; the probe fitted "
            "on train and val, as the floor fits it):",
            "",
            "| members | draws | - probe | - base's shipped model |",
            "|---|---|---|---|",
        ]
        for name in snaps[0]["snapshots"]:
            gain = [100 * (r["snapshots"][name] - r["probe"]) for r in snaps]
            vs = [100 * (r["snapshots"][name] - by["base", r["task"]]["shipped"]) for r in snaps
                  if ("base", r["task"]) in by]  # fmt: skip
            lines.append(f"| {name} | {len(snaps)} | {_pm(gain)} | {_pm(vs)} |")
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
    parser.add_argument("--batch", type=int, default=1,
                        help="label of runs made together; fit times compare in one")  # fmt: skip
    opts = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # one torch thread per run (two fit side by side)
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
            row = run(opts.work, variant, task, family.image_size, opts.batch)
            if row is not None:
                print(json.dumps(row), flush=True)
                with log.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for row in rows:  # snapshot runs are scored once, after they ran
        out = opts.work / "runs" / f"{row['variant']}-{row['task']}"
        if "snapshots" not in row and (out / "snapshots").is_dir():
            row["snapshots"] = score_snapshots(opts.work, out)
            log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if opts.report_only:
        sys.argv.remove("--report-only")
    text = summarise(rows, opts.draws)
    if FINDINGS.exists() and opts.draws == "tuning":
        text += "\n\n" + FINDINGS.read_text().strip()
    write(f"Large recipe settings on held-out tasks ({opts.draws} draws)", text,
          {"draws": opts.draws, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
