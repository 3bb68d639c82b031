"""Held-out large tasks: a 2x2 grid readout of the feature map against global pooling, for the
exact probe and for the fine-tuned member of what ``--recipe auto`` ships.

At 32-64 px the probe's stage (blocks.4 of EfficientNet-Lite0) leaves a 2x2 to 4x4 map, and
global average pooling throws away where in the image each feature fired. Read out instead as
the map average-pooled to 2x2 and flattened (4x the width), the same exact logistic probe
(:func:`tlkit.exact.fit_exact`: standardised, L2 by cross-validation over train and val, fitted
on train alone to score validation and on train and val for test) sees the layout of the
garment. This bench measures that readout on the runs bench/large_variants.py keeps, for:

* the probe: the chosen stage's pretrained map (``probe``: pooled, as the floor fits it;
  ``grid probe``: 2x2);
* the fine-tuned member: the fine-tuned network's map (``fine-tuned``: pooled, the refitted head
  that ships; ``grid fine-tuned``: 2x2);
* the ensembles of the two (mean of class probabilities): ``shipped`` (pooled + pooled, what the
  floor ships), ``grid pair`` (2x2 + 2x2).

A joined probe (the top with a stage) keeps the top's pooled features beside the stage's grid.

Reported: test accuracy of each, the gain of each over the pooled probe (the floor as it
ships) and over the grid probe, mean ± std over runs.

Run: python bench/grid_readout.py --draws tuning   (after bench/large_variants.py --draws
     python bench/grid_readout.py --draws report    tuning / report with the same --work)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import append_row, pm, read_rows, write_draws
from heldout_data import LARGE_FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task
from large_variants import load_run

from tlkit.exact import fit_exact
from tlkit.floor import probe_spec
from tlkit.head_refit import eval_loader
from tlkit.heads import pooled_features
from tlkit.probe_ensemble import frozen_probe

GRID = 2
#: The reading of the report draws' figures (written by hand from them), appended to them.
FINDINGS = Path(__file__).resolve().parent / "grid_readout_findings.md"
PAIRS = {"shipped": ("fine-tuned", "probe"), "grid pair": ("grid fine-tuned", "grid probe")}


@torch.no_grad()
def readouts(backbone, loader, stages, channels_last: bool) -> dict[str, tuple]:
    """Pooled and 2x2-grid features of ``stages`` (``None``: the top, pooled in both) over
    ``loader`` (:func:`tlkit.heads.pooled_features`, what ``strategy_args.grid`` reads), with
    the labels."""
    pooled, grid, labels = [], [], []
    for images, targets in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pooled.append(pooled_features(backbone, images, stages).float())
        grid.append(pooled_features(backbone, images, stages, GRID).float())
        labels.append(targets)
    y = torch.cat(labels)
    return {"pooled": (torch.cat(pooled), y), "grid": (torch.cat(grid), y)}


def _stages(model) -> tuple:
    """What ``model``'s head reads, as a tuple of feature indices (``None``: the top)."""
    stage = model.strategy.feature_stage
    return stage if isinstance(stage, tuple) else (stage,)


def _probs(split: dict, classes: int) -> dict[str, torch.Tensor]:
    """Exact probe on ``split``: val probabilities from the fit on train, test from train + val."""
    fit = fit_exact(split, "readout", (None,), classes)
    with torch.no_grad():
        return {"val": fit.on_train.logits(split["val"][0]).softmax(-1).float(),
                "test": fit.probe.logits(split["test"][0]).softmax(-1).float()}  # fmt: skip


def score(run: Path, cache: Path) -> dict:
    """Accuracy of each readout and pair on the run's validation and test splits."""
    start = time.perf_counter()
    tuned, dm, decision, _ = load_run(run, cache)
    hp = tuned.hparams
    chosen = next(c for c in decision["evidence"]["candidates"]
                  if c["name"] == decision["probe"]["name"])  # fmt: skip
    settings = {**dict(hp), "pretrained": True, "weights": None}  # the run's own backbone
    pretrained = frozen_probe(settings, probe_spec(chosen["stage"])).eval()
    tuned.eval()
    members = {
        "": (pretrained.backbone, _stages(pretrained), False),
        "fine-tuned": (tuned.backbone, _stages(tuned), bool(hp.channels_last)),
    }
    loaders = {"train": eval_loader(dm, "train"), "val": dm.val_dataloader(),
               "test": dm.test_dataloader()}  # fmt: skip
    probs, labels = {}, {}
    for member, (backbone, stages, channels_last) in members.items():
        per = {s: readouts(backbone, ld, stages, channels_last) for s, ld in loaders.items()}
        for s in ("val", "test"):
            if not torch.equal(labels.setdefault(s, per[s]["pooled"][1]), per[s]["pooled"][1]):
                raise RuntimeError(f"{run}: the members' {s} images differ in order")
        for view in ("pooled", "grid"):
            name = ("grid " if view == "grid" else "") + (member or "probe")
            probs[name.strip()] = _probs({s: per[s][view] for s in per}, dm.num_classes)
    for pair, names in PAIRS.items():
        probs[pair] = {s: sum(probs[n][s] for n in names) for s in ("val", "test")}
    acc = {split: {name: float((p[split].argmax(-1) == labels[split]).float().mean())
                   for name, p in probs.items()} for split in ("val", "test")}  # fmt: skip
    return {"probe": chosen["name"], **acc, "seconds": round(time.perf_counter() - start, 1)}


def summarise(rows: list[dict], draws: str) -> str:
    names = list(rows[0]["test"])
    lines = [
        f"Draws: **{draws}** ({'never tuned on' if draws == 'report' else 'used for tuning'}), "
        f"{len(rows)} kept runs of `tlkit finetune --recipe auto` (bench/large_variants.py). "
        "Test points over the pooled probe (the floor as it ships) and over the 2x2 grid probe "
        "(mean ± std over runs, worst), and in how many runs each is above / below the pooled "
        "probe.",
        "",
        "| readout | test - pooled probe | worst | above / below | test - grid probe |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        d = [r["test"][name] - r["test"]["probe"] for r in rows]
        g = [r["test"][name] - r["test"]["grid probe"] for r in rows]
        lines.append(f"| {name} | {pm(d)} | {100 * min(d):+.1f} | {sum(x > 0 for x in d)} / "
                     f"{sum(x < 0 for x in d)} | {pm(g)} |")  # fmt: skip
    lines += ["", "Per task: test accuracy % (validation in brackets).", "",
              "| task | probe stage | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]  # fmt: skip
    for r in rows:
        cells = [f"{100 * r['test'][n]:.1f} ({100 * r['val'][n]:.1f})" for n in names]
        lines.append(f"| {r['task']} | {r['probe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=("report", "tuning"), default="tuning")
    parser.add_argument("--families", nargs="*", default=list(LARGE_FAMILIES))
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "large-variants")  # fmt: skip
    opts = parser.parse_args()
    seeds = REPORT_SEEDS if opts.draws == "report" else TUNING_SEEDS
    log = opts.work / f"grid-{opts.draws}.jsonl"
    rows = read_rows(log)
    done = {r["task"] for r in rows}
    for name in opts.families:
        for seed in seeds:
            task = build_task(opts.work / "tasks", LARGE_FAMILIES[name], seed)
            run = opts.work / "runs" / task.name
            if task.name in done:
                continue
            if not (run / "metrics.json").exists():
                raise SystemExit(f"no kept run at {run}: run bench/large_variants.py --draws "
                                 f"{opts.draws} --work {opts.work} first")  # fmt: skip
            row = {"task": task.name, "family": name, "seed": seed,
                   **score(run, opts.work / "cache" / task.name)}  # fmt: skip
            rows.append(row)
            append_row(log, row)
    rows.sort(key=lambda r: (list(LARGE_FAMILIES).index(r["family"]), r["seed"]))
    write_draws("Grid readout on large held-out tasks", opts.draws, summarise(rows, opts.draws),
                {"draws": opts.draws, "rows": rows}, FINDINGS)  # fmt: skip


if __name__ == "__main__":
    main()
