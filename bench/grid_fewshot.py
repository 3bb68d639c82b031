"""Few-shot held-out tasks: the probe ``tlkit advise`` chooses, read globally pooled (as it
ships) or in a 2x2 grid (``strategy_args.grid: 2``).

bench/grid_readout.py measures the grid readout on the large tasks (32-64 px). This bench asks
the same of the few-shot families of bench/heldout.py (5 to 50 labelled images per class,
64-128 px, folders with and without ``val/``), whose stage maps are larger (blocks.4 is 4x4 to
8x8, blocks.6 2x2 to 4x4): for each draw, advise measures the task as ``--recipe auto`` does and
chooses its candidate; the same exact probe (:func:`tlkit.exact.fit_exact`: L2 by
cross-validation over train and val, fitted on both) is then fitted on that candidate's features
pooled and in a 2x2 grid (the top features stay pooled), and tested. ``grid if CV`` takes the
grid only where its cross-validated accuracy is the higher, as advise would if it scored both.

Run: python bench/grid_fewshot.py --draws tuning
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from common import append_row, pm, read_rows, write_draws
from grid_readout import readouts
from heldout_data import FAMILIES, FIRST_REPORT_SEEDS, REPORT_SEEDS, TUNING_SEEDS, build_task

from tlkit.advise import measure
from tlkit.data import TransferDataModule
from tlkit.exact import fit_exact
from tlkit.floor import probe_spec
from tlkit.head_refit import eval_loader
from tlkit.probe_ensemble import frozen_probe

BACKBONE = "tf_efficientnet_lite0"
#: The reading of the report draws' figures (written by hand from them), appended to them.
FINDINGS = Path(__file__).resolve().parent / "grid_fewshot_findings.md"
SEEDS = {"tuning": TUNING_SEEDS, "first-report": FIRST_REPORT_SEEDS, "report": REPORT_SEEDS}


def score(task: Path, size: int, cache: Path) -> dict:
    """Cross-validated and test accuracy of advise's probe, pooled and in a grid."""
    start = time.perf_counter()
    os.environ["TLKIT_CACHE_DIR"] = str(cache)
    dm = TransferDataModule(data=str(task), image_size=size, num_workers=0)
    decision, _ = measure(str(task), backbone=BACKBONE, seed=42, with_test=True, datamodule=dm)
    dm.setup("fit")
    dm.setup("test")
    chosen = next(c for c in decision["evidence"]["candidates"]
                  if c["name"] == decision["probe"]["name"])  # fmt: skip
    row: dict = {"probe": chosen["name"], "cell": decision["cell"]}
    if chosen["stage"] is None:  # the top features alone: nothing to read in a grid
        return {**row, "seconds": round(time.perf_counter() - start, 1)}
    settings = {"num_classes": dm.num_classes, "backbone": BACKBONE, "weights": None,
                "pretrained": True, "trust_weights": False, "class_names": None}  # fmt: skip
    network = frozen_probe(settings, probe_spec(chosen["stage"])).eval()
    stage = network.strategy.feature_stage
    stages = stage if isinstance(stage, tuple) else (stage,)
    loaders = {"train": eval_loader(dm, "train"), "val": dm.val_dataloader(),
               "test": dm.test_dataloader()}  # fmt: skip
    per = {s: readouts(network.backbone, ld, stages, False) for s, ld in loaders.items()}
    for view in ("pooled", "grid"):
        split = {s: per[s][view] for s in per}
        fit = fit_exact(split, view, (None,), dm.num_classes)
        with torch.no_grad():
            hit = fit.probe.logits(split["test"][0]).argmax(-1) == split["test"][1]
        row[view] = {"cv": round(fit.candidate.mean, 4), "test": float(hit.float().mean())}
    better = row["grid"]["cv"] > row["pooled"]["cv"]
    row["grid if CV"] = row["grid" if better else "pooled"]
    return {**row, "seconds": round(time.perf_counter() - start, 1)}


def summarise(rows: list[dict], draws: str) -> str:
    graded = [r for r in rows if "grid" in r]
    lines = [
        f"Draws: **{draws}** ({'used for tuning' if draws == 'tuning' else 'never tuned on'}), "
        f"{len(rows)} tasks of the few-shot families; {len(rows) - len(graded)} whose probe "
        "reads the top features alone are left out. Test points over the pooled probe (mean ± "
        "std over tasks, worst) and in how many tasks above / below it.",
        "",
        "| readout | test - pooled | worst | above / below |",
        "|---|---|---|---|",
    ]
    for name in ("grid", "grid if CV"):
        d = [r[name]["test"] - r["pooled"]["test"] for r in graded]
        lines.append(f"| {name} | {pm(d)} | {100 * min(d):+.1f} | {sum(x > 0 for x in d)} / "
                     f"{sum(x < 0 for x in d)} |")  # fmt: skip
    lines += ["", "| task | cell | probe | pooled: CV, test % | grid: CV, test % |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [f"{100 * r[v]['cv']:.1f}, {100 * r[v]['test']:.1f}" if v in r else "-"
                 for v in ("pooled", "grid")]  # fmt: skip
        lines.append(f"| {r['task']} | {r['cell']} | {r['probe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=tuple(SEEDS), default="tuning")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "grid-fewshot")  # fmt: skip
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / f"grid-fewshot-{opts.draws}.jsonl"
    rows = read_rows(log)
    done = {r["task"] for r in rows}
    for name in opts.families:
        for seed in SEEDS[opts.draws]:
            task = build_task(opts.work / "tasks", FAMILIES[name], seed)
            if task.name in done:
                continue
            row = {
                "task": task.name,
                "family": name,
                "seed": seed,
                **score(task, FAMILIES[name].image_size, opts.work / "cache" / task.name),
            }
            rows.append(row)
            append_row(log, row)
    rows.sort(key=lambda r: (list(FAMILIES).index(r["family"]), r["seed"]))
    write_draws("Grid readout on few-shot held-out tasks", opts.draws, summarise(rows, opts.draws),
                {"draws": opts.draws, "rows": rows}, FINDINGS)  # fmt: skip


if __name__ == "__main__":
    main()
