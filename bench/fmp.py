"""Fractional max pooling (Graham 2014) on the large recipe: ``pool: fmp`` against ``avg``.

FMP draws a pseudo-random grid of overlapping 2x2 pools on the backbone's last feature map in
training (a regulariser), the fixed middle grid in evaluation. On EfficientNet-Lite0 (stride 32)
the grid is only random from a 5x5 map on, i.e. inputs of 160 px and more: at 32-64 px the map
is 1x1 or 2x2 and FMP changes nothing or is a plain 2x2 max pool, at 96-128 px the 2x2 output
grid is fixed. So this is measured at 160 px, where it can act.

Data: tuning-style draws of Fashion-MNIST, 5 random classes, 100 training images per class, 20
validation, 60 test (bench/heldout_data.py's builder, seeds 1001-1003: draws for tuning, since
the result decides a default). ``large-similar`` with each pool, paired by seed (same head init,
data order and augmentation), final weights tested.

Run: python bench/fmp.py [--epochs 3] [--image-size 160] [--work /tmp/fmp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import yaml
from common import write
from heldout_data import TUNING_SEEDS, Family, build_task

from tlkit import TransferDataModule, TransferModule
from tlkit.recipes import recipe_path

RECIPE = "large-similar"


def run_one(task: Path, pool: str, epochs: int, seed: int, size: int) -> dict:
    spec = yaml.safe_load(recipe_path(RECIPE).read_text())
    model_cfg = {**spec["model"], "pool": pool}
    backbone = model_cfg.pop("backbone")
    L.seed_everything(seed, verbose=False)
    dm = TransferDataModule(**{**spec["data"], "data": str(task)}, backbone=backbone,
                            image_size=size, seed=seed, num_workers=0)  # fmt: skip
    model = TransferModule(num_classes=dm.num_classes, backbone=backbone, **model_cfg)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    test = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    return {"test_acc": test, "fit_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fmp"))
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    family = Family("fashion5-100+20val", "fashion", 5, 100, 20, 60, opts.image_size)
    runs_file = opts.work / "runs.jsonl"
    runs = [json.loads(x) for x in runs_file.read_text().splitlines()] if runs_file.exists() else []
    done = {(r["seed"], r["pool"]) for r in runs}
    for seed in TUNING_SEEDS:
        task = build_task(opts.work / "tasks", family, seed)
        for pool in ("avg", "fmp"):
            if (seed, pool) in done:
                continue
            run = {"seed": seed, "pool": pool,
                   **run_one(task, pool, opts.epochs, seed, opts.image_size)}  # fmt: skip
            print(json.dumps(run), flush=True)
            runs.append(run)
            with runs_file.open("a") as handle:
                handle.write(json.dumps(run) + "\n")
    acc = {(r["seed"], r["pool"]): r["test_acc"] for r in runs}
    seeds = sorted({s for s, _ in acc if (s, "fmp") in acc and (s, "avg") in acc})
    gains = [100 * (acc[(s, "fmp")] - acc[(s, "avg")]) for s in seeds]
    lines = ["| pool | test acc % (mean ± std) | fit s (mean) |", "|---|---|---|"]
    for pool in ("avg", "fmp"):
        mine = [r for r in runs if r["pool"] == pool]
        values = [100 * r["test_acc"] for r in mine]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        seconds = statistics.mean(r["fit_seconds"] for r in mine)
        lines.append(f"| {pool} | {statistics.mean(values):.1f} ± {spread:.1f} | {seconds:.0f} |")
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    text = (
        f"`{RECIPE}`, {opts.epochs} epochs, {opts.image_size} px, 500 training images (5 "
        f"Fashion-MNIST classes), 300 test images, tuning draws {', '.join(map(str, seeds))}.\n\n"
        + "\n".join(lines)
        + f"\n\nGain of `pool: fmp`, paired by seed: **{statistics.mean(gains):+.1f} ± "
        f"{spread:.1f}** points (n={len(gains)})."
    )
    write("Fractional max pooling on the large recipe", text, {"runs": runs})


if __name__ == "__main__":
    main()
