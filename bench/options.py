"""Every optional training piece, measured against the large-data recipe it would join.

Each row adds one piece to the `large-similar` recipe (LP-FT with layer decay, SGD Nesterov,
cosine LR, light augmentation, dropout 0.1, label smoothing 0.1) and reports the test accuracy of
the final weights against the recipe alone, paired by seed (same head init, data order and
augmentation draws):

* callbacks: `MixUp` (alpha 0.2), `DropConnect` on the head (p 0.3), `LRDecay` (exponential,
  0.8 per epoch, replacing the cosine), `AugmentationSchedule` (`medium`, the last two epochs
  without augmentation), `FlipTTA` at test time on the recipe's own models;
* weight averaging from Lightning: `EMAWeightAveraging` (decay 0.99: a half-life of about 70
  steps, a quarter of these runs' 320) and
  `StochasticWeightAveraging` (last 30 % of the epochs);
* WiSE-FT (Wortsman et al. 2022): the fine-tuned weights mixed with those at the end of LP-FT's
  probe epoch, the coefficient chosen on validation, BatchNorm statistics recomputed;
* the model's own regularisers: stochastic depth (`drop_path_rate` 0.1) and no dropout.

Data: the large cells of the matrix benchmark (bench/quadrants_data.py): Fashion-MNIST classes
5-9 (1,000 training images) and scikit-learn's digits (1,147), 32 px, 500 fixed test images each,
with the bundled ImageNet weights of tf_efficientnet_lite0. These targets serve for the matrix
benchmark too; they are not the held-out benchmark's draws.

    python bench/options.py [--seeds 3] [--epochs 10] [--image-size 32] [--work /tmp/options]
        [--options ROW ...] [--targets similar different]

Every run is appended to WORK/runs.jsonl, so a rerun resumes; --report-only writes the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from common import write
from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging
from quadrants_data import build_all
from torch.optim.swa_utils import update_bn

from tlkit import TransferDataModule, TransferModule
from tlkit.callbacks import AugmentationSchedule, DropConnect, FlipTTA, LRDecay, MixUp
from tlkit.recipes import recipe_path

BACKBONE = "tf_efficientnet_lite0"
RECIPE = "large-similar"
TARGETS = {"similar": "fashion 5-9", "different": "digits"}
#: The reading of the figures (written by hand from them), appended to the results.
FINDINGS = Path(__file__).resolve().parent / "options_findings.md"


def _options(epochs: int) -> dict[str, tuple[dict[str, Any], list[Any]]]:
    """Row name -> (changes to the recipe's model settings, callbacks)."""
    swa_start = max(1, round(0.7 * epochs))
    return {
        "recipe": ({}, []),
        "+MixUp": ({}, [MixUp(mixup_alpha=0.2)]),
        "+DropConnect": ({}, [DropConnect(p=0.3)]),
        "+LRDecay(exp 0.8)": ({"scheduler": "constant"}, [LRDecay("exponential", gamma=0.8)]),
        "+AugmentationSchedule": ({}, [AugmentationSchedule({0: "medium", -2: "none"})]),
        "+EMA": ({}, [EMAWeightAveraging(decay=0.99)]),
        "+SWA": ({}, [StochasticWeightAveraging(swa_lrs=0.005, swa_epoch_start=swa_start)]),
        "drop_path 0.1": ({"drop_path_rate": 0.1}, []),
        "dropout 0": ({"dropout": 0.0}, []),
        "+WiSE-FT (LP to FT)": ({}, [ProbeWeights()]),
    }


class ProbeWeights(L.Callback):
    """The weights at the end of LP-FT's probe epoch: a linear probe on the pretrained backbone."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.state = copy.deepcopy(pl_module.state_dict())


def wise_ft(model, dm, start: dict, alphas=(0.0, 0.25, 0.5, 0.75, 1.0)) -> dict[str, float]:
    """WiSE-FT between the probe's weights and the fine-tuned ones (Wortsman et al. 2022): the
    mixing coefficient with the best validation accuracy, BatchNorm statistics recomputed on the
    training images for every mix; returns its test accuracy and the coefficient."""
    final = copy.deepcopy(model.state_dict())
    evaluator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False)  # fmt: skip
    best = None
    for alpha in alphas:
        mixed = {
            k: (1 - alpha) * start[k] + alpha * v if v.is_floating_point() else v
            for k, v in final.items()
        }
        model.load_state_dict(mixed)
        update_bn(dm.train_dataloader(), model)
        val = evaluator.validate(model, datamodule=dm, verbose=False)[0]["val_acc"]
        if best is None or val > best[0]:
            best = (val, alpha, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    test = evaluator.test(model, datamodule=dm, verbose=False)[0]["test_acc"]
    return {"test_acc": float(test), "alpha": best[1], "val_acc": float(best[0])}


def run_one(data: str, name: str, epochs: int, seed: int, size: int) -> dict[str, Any]:
    """Fit the recipe with option ``name`` and test its final weights (and, for the recipe, with
    flip TTA)."""
    spec = yaml.safe_load(recipe_path(RECIPE).read_text())
    changes, callbacks = _options(epochs)[name]
    model_cfg = {**spec["model"], **changes}
    model_cfg.pop("backbone")
    L.seed_everything(seed, verbose=False)
    dm = TransferDataModule(
        **{**spec["data"], "data": data}, backbone=BACKBONE, image_size=size, seed=seed,
        num_workers=0,
    )  # fmt: skip
    model = TransferModule(num_classes=dm.num_classes, backbone=BACKBONE, **model_cfg)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    row = {"test_acc": float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])}
    row["fit_seconds"] = round(time.perf_counter() - start, 2)
    probe = next((c for c in callbacks if isinstance(c, ProbeWeights)), None)
    if probe is not None:
        row["final_acc"] = row["test_acc"]
        row.update(wise_ft(model, dm, probe.state))
    if name == "recipe":
        tta = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[FlipTTA(stages="test")],
        )  # fmt: skip
        row["tta_acc"] = float(tta.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    return row


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def _paired(base: dict[int, float], other: dict[int, float]) -> tuple[float, float, int]:
    seeds = sorted(set(base) & set(other))
    diffs = [100 * (other[s] - base[s]) for s in seeds]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), sd, len(seeds)


def report(runs: list[dict[str, Any]], epochs: int, size: int) -> None:
    rows = [*_options(epochs), "FlipTTA (test)"]
    by: dict[tuple[str, str], dict[int, float]] = {}
    seconds: dict[str, list[float]] = {}
    for run in runs:
        by.setdefault((run["target"], run["option"]), {})[run["seed"]] = run["test_acc"]
        seconds.setdefault(run["option"], []).append(run["fit_seconds"])
        if "tta_acc" in run:
            by.setdefault((run["target"], "FlipTTA (test)"), {})[run["seed"]] = run["tta_acc"]
    head = "| option | " + " | ".join(f"{t} acc | {t} gain (paired)" for t in TARGETS.values())
    lines = [head + " | fit s (mean) |", "|---" * (2 * len(TARGETS) + 2) + "|"]
    for row in rows:
        cells = []
        for target in TARGETS:
            accs, base = by.get((target, row), {}), by.get((target, "recipe"), {})
            if not accs:
                cells += ["-", "-"]
                continue
            gain = "" if row == "recipe" else "{:+.1f} ± {:.1f} (n={})".format(*_paired(base, accs))
            cells += [_mean_std(list(accs.values())), gain]
        fit = seconds.get("recipe" if row == "FlipTTA (test)" else row, [])
        cells.append(f"{statistics.mean(fit):.0f}" if fit else "-")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    text = (
        f"Test accuracy %, mean ± std over seeds; gain = option - recipe, paired by seed (mean ± "
        f"std of the per-seed difference). `{RECIPE}` recipe, {epochs} epochs, {size} px, "
        f"{BACKBONE} with ImageNet weights, final weights tested on 500 fixed test images. "
        "FlipTTA averages the logits of the image and its mirror at test time on the recipe's "
        "own models. Fit seconds on 2 cores, one torch thread, alongside other work.\n\n"
        + "\n".join(lines)
    )
    if FINDINGS.exists():
        text += "\n\n" + FINDINGS.read_text().strip()
    write("Optional pieces on the large recipe", text, {"runs": runs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/options"))
    parser.add_argument("--options", nargs="*", default=None, help="rows to run (default all)")
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--report-only", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / "runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not opts.report_only:
        data = build_all(opts.work / "data")
        names = opts.options or list(_options(opts.epochs))
        done = {(r["target"], r["option"], r["seed"]) for r in runs}
        for seed in range(opts.seeds):
            for target in opts.targets:
                for name in names:
                    if (target, name, seed) in done:
                        continue
                    row = run_one(str(data[target]), name, opts.epochs, seed, opts.image_size)
                    row.update(target=target, option=name, seed=seed)
                    print(json.dumps(row), flush=True)
                    runs.append(row)
                    with log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    report(runs, opts.epochs, opts.image_size)


if __name__ == "__main__":
    main()
