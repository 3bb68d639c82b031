"""The transfer-learning matrix, measured: every strategy in all four cells, two backbones.

Data (bench/quadrants_data.py, built offline under --work): Fashion-MNIST split by class
(Yosinski et al. 2014): classes 0-4 pretrain a backbone from scratch (`tlkit pretrain`), classes
5-9 are the *similar* target; scikit-learn's digits upscaled to 28x28 are the *different*
target. *small* trains on --shots images per class (a new draw per seed), *large* on the whole
train split (1,000 Fashion images / 1,147 digits); val and test splits are fixed.

Backbones: tf_efficientnet_lite0 pretrained on the source half ("fmnist-src"; for it the Fashion
target is similar by construction) and the same architecture with its real ImageNet weights
("imagenet"; Fashion-MNIST and digits are both far from ImageNet).

Every strategy runs with the hyperparameters of the recipe that ships it: linear_probe with
small-similar, probe_stage with small-different, lp_ft and partial with large-similar, full and
gradual with large-different; trainable ones with `prior: zero` (weight decay) or `prior:
pretrained` (L2-SP, "+L2SP"). By default every cell runs every configuration on every seed;
--small-configs / --large-configs run a subset (e.g. the two frozen strategies and the two large
recipes' configurations, about half the time). All runs of a cell train for the same number of
epochs, and the final weights are tested (no checkpoint selection). `advise`
(tlkit.advise.measure, the code behind `tlkit advise` and `--recipe auto`) runs once
per cell and backbone; its recipe's configuration is compared with the
best one. Every run is appended to WORK/runs.jsonl, so a rerun resumes, and two processes (one
per backbone, --backbones) can share the work; the last one to finish writes the results, with
the reading of them in bench/quadrants_findings.md appended (written by hand from the figures).

    python bench/quadrants.py [--seeds 3] [--shots 10] [--image-size 32] [--small-epochs 20]
        [--large-epochs 10] [--pretrain-epochs 4] [--work /tmp/quadrants] [--backbones ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from common import RESULTS, write
from quadrants_data import build_all

from tlkit import TransferDataModule, TransferModule
from tlkit.advise import measure
from tlkit.cli import main as tlkit_main
from tlkit.recipes import recipe_path

BACKBONE = "tf_efficientnet_lite0"
#: Trainable strategies also run with the L2-SP prior (the others only with weight decay).
L2SP_STRATEGIES = ("full", "lp_ft")
#: (label, strategy, recipe that ships it, prior or None for frozen strategies)
CONFIGS: list[tuple[str, str, str, str | None]] = [
    ("linear_probe", "linear_probe", "small-similar", None),
    ("probe_stage", "probe_stage", "small-different", None),
    *[
        (f"{strategy}{'+L2SP' if prior == 'pretrained' else ''}", strategy, recipe, prior)
        for strategy, recipe in (
            ("partial", "large-similar"),
            ("full", "large-different"),
            ("gradual", "large-different"),
            ("lp_ft", "large-similar"),
        )
        for prior in (("zero", "pretrained") if strategy in L2SP_STRATEGIES else ("zero",))
    ],
]


def recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load(recipe_path(name).read_text())


def recipe_config(name: str) -> str:
    """The configuration label of what recipe ``name`` runs (its strategy, and its prior)."""
    model = recipe(name)["model"]
    prior = (model.get("strategy_args") or {}).get("prior")
    strategy = model["strategy"]
    return f"{strategy}+L2SP" if strategy in L2SP_STRATEGIES and prior == "pretrained" else strategy


#: The configuration each recipe (each cell's answer) runs.
RECIPE_CONFIG = {
    cell: recipe_config(cell)
    for cell in ("small-similar", "small-different", "large-similar", "large-different")
}
#: What runs by default: every configuration.
SMALL_CONFIGS = tuple(name for name, *_ in CONFIGS)
LARGE_CONFIGS = SMALL_CONFIGS
#: The cell each target was built to be in, per backbone.
NOMINAL = {
    ("fmnist-src", "similar"): "similar",
    ("fmnist-src", "different"): "different",
    ("imagenet", "similar"): "different",
    ("imagenet", "different"): "different",
}
#: Target names in the tables.
TARGET = {"similar": "fashion 5-9", "different": "digits"}
FROZEN = ("linear_probe", "probe_stage", "probe_stage@advised")
#: The reading of the figures (agreements, disagreements, what changed), appended to the results.
FINDINGS = Path(__file__).resolve().parent / "quadrants_findings.md"
CELLS = [("small", "similar"), ("small", "different"), ("large", "similar"), ("large", "different")]


def strategy_args(strategy: str, recipe_args: dict[str, Any], prior: str | None) -> dict:
    """The recipe's settings that apply to ``strategy``, with ``prior`` set."""
    keep = {
        "linear_probe": ("bn",),
        "probe_stage": ("stage", "standardize", "bn"),
        "partial": ("k", "layer_decay", "bn"),
        "full": ("layer_decay", "bn"),
        "gradual": ("every", "layer_decay", "bn"),
        "lp_ft": ("probe_epochs", "layer_decay", "bn"),
    }[strategy]
    args = {k: v for k, v in recipe_args.items() if k in keep}
    if prior is not None:
        args["prior"] = prior
        if prior == "pretrained" and "prior_strength" in recipe_args:
            args["prior_strength"] = recipe_args["prior_strength"]
    return args


def run_one(
    data: str,
    weights: str | None,
    config: tuple[str, str, str, str | None],
    shots: int | None,
    epochs: int,
    seed: int,
    size: int,
    stage: int | None = None,
) -> dict[str, Any]:
    """Fit one configuration and test its final weights."""
    _, strategy, recipe_name, prior = config
    spec = recipe(recipe_name)
    model_cfg = dict(spec["model"])
    args = strategy_args(strategy, model_cfg.pop("strategy_args") or {}, prior)
    if stage is not None:
        args["stage"] = stage
    model_cfg.pop("strategy")
    model_cfg.pop("backbone")
    L.seed_everything(seed, verbose=False)
    dm = TransferDataModule(
        **{**spec["data"], "data": data}, backbone=BACKBONE, image_size=size, shots=shots,
        seed=seed, num_workers=0,
    )  # fmt: skip
    model = TransferModule(
        num_classes=dm.num_classes, backbone=BACKBONE, weights=weights, strategy=strategy,
        strategy_args=args, **model_cfg,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    acc = trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"]
    return {"test_acc": float(acc), "fit_seconds": round(seconds, 2), "strategy_args": args}


def pretrain(data: Path, out: Path, epochs: int, size: int) -> dict[str, Any]:
    """`tlkit pretrain` on the source half (skipped when its weights exist)."""
    weights = out / "backbone.safetensors"
    if not weights.is_file():
        code = tlkit_main(
            ["pretrain", "--data", str(data), "--backbone", BACKBONE, "--out", str(out),
             "--epochs", str(epochs), "--image-size", str(size), "--data.num_workers", "0"]
        )  # fmt: skip
        if code != 0:
            raise SystemExit(f"tlkit pretrain failed with exit code {code}")
    record = json.loads((out / "metrics.json").read_text())
    return {"weights": str(weights), "test_acc": record.get("test_acc"),
            "fit_seconds": record.get("fit_seconds"), "epochs": epochs}  # fmt: skip


def summary(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def heatmap(rows: list[str], cols: list[str], means, chosen, best, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array([[np.nan if v is None else v * 100 for v in row] for row in means])
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.55 * len(rows) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isnan(grid[i, j]):
                continue
            mark = "*" if best[i] == cols[j] else ""
            mark += "\n[advise]" if chosen[i] == cols[j] else ""
            ax.text(j, i, f"{grid[i, j]:.1f}{mark}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < np.nanmean(grid[i]) else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="test accuracy %, mean")
    ax.set_title(
        "Test accuracy per cell and backbone (* best; [advise] = advise's configuration;\n"
        "probe_stage@advised: probe_stage at the stage advise picked; n=k: fewer seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--small-epochs", type=int, default=20)
    parser.add_argument("--large-epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--work", default="/tmp/quadrants")
    parser.add_argument(
        "--small-configs", nargs="*", default=list(SMALL_CONFIGS),
        help="configurations run in the small cells (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--large-configs", nargs="*", default=list(LARGE_CONFIGS),
        help="configurations run in the large cells (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--backbones", nargs="*", default=["fmnist-src", "imagenet"],
        help="run these backbones (two processes can split them; results meet in --work)",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="write results from --work")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per process (1: more threads only spin on a shared 2-core machine)",
    )  # fmt: skip
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    work = Path(opts.work)
    os.environ.setdefault("TLKIT_CACHE_DIR", str(work / "cache"))
    started = time.perf_counter()
    paths = build_all(work / "data")
    source_dir = work / "pretrain"
    if "fmnist-src" in opts.backbones and not opts.report_only:
        pretrain(paths["source"], source_dir, opts.pretrain_epochs, opts.image_size)
    weights = str(source_dir / "backbone.safetensors")
    backbones = {b: (weights if b == "fmnist-src" else None) for b in opts.backbones}
    wanted = {"small": opts.small_configs, "large": opts.large_configs}

    # Raw runs are appended to a log so an interrupted benchmark resumes where it stopped.
    log = work / "runs.jsonl"
    done = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["cell"], r["backbone"], r["config"], r["seed"])] = r

    advice_file = work / "advice.json"
    advice: dict[str, dict[str, Any]] = (
        json.loads(advice_file.read_text()) if advice_file.is_file() else {}
    )
    stamp = work / "started"
    if not stamp.is_file():
        stamp.write_text(str(time.time()))
    if opts.report_only:
        report_from_disk(opts, work)
        return
    for size, sim in CELLS:
        cell = f"{size}-{sim}"
        shots = opts.shots if size == "small" else None
        for bname, weights in backbones.items():
            report, _ = measure(
                data=str(paths[sim]), backbone=BACKBONE, image_size=opts.image_size,
                weights=weights, shots=shots, seed=0,
            )  # fmt: skip
            ev = report["evidence"]
            advice[f"{cell}|{bname}"] = {
                "cell": report["cell"], "recipe": report["recipe"],
                "probe_stage": report["probe_stage"], "probe": report["probe"]["name"],
                "candidates": [(c["name"], c["accuracy"]) for c in ev["candidates"]],
            }  # fmt: skip
            # Two processes may add their backbones' advice: merge with what is on disk.
            on_disk = json.loads(advice_file.read_text()) if advice_file.is_file() else {}
            advice = {**on_disk, **advice}
            advice_file.write_text(json.dumps(advice, indent=2))

    for seed in range(opts.seeds):
        for size, sim in CELLS:
            cell = f"{size}-{sim}"
            shots = opts.shots if size == "small" else None
            epochs = opts.small_epochs if size == "small" else opts.large_epochs
            for bname, weights in backbones.items():
                extra = []
                adv = advice[f"{cell}|{bname}"]
                if adv["recipe"] == "small-different" and adv["probe_stage"] not in (None, 3, -2):
                    extra = [("probe_stage@advised", "probe_stage", "small-different", None)]
                configs = [c for c in CONFIGS if c[0] in wanted[size]]
                for config in configs + extra:
                    key = (cell, bname, config[0], seed)
                    if key in done:
                        continue
                    stage = adv["probe_stage"] if config[0] == "probe_stage@advised" else None
                    result = run_one(
                        str(paths[sim]), weights, config, shots, epochs, seed, opts.image_size,
                        stage,
                    )  # fmt: skip
                    record = {
                        "cell": cell, "backbone": bname, "config": config[0], "seed": seed,
                        "epochs": epochs, "finished": time.time(), **result,
                    }  # fmt: skip
                    done[key] = record
                    with log.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(
                        f"{cell:16s} {bname:10s} {config[0]:22s} seed {seed} "
                        f"acc {result['test_acc']:.4f} ({result['fit_seconds']:.1f}s)",
                        flush=True,
                    )

    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    # The process that finishes last writes the results of every backbone.
    report_from_disk(opts, work)


def report_from_disk(opts: argparse.Namespace, work: Path) -> None:
    """Write the results from the run log, the advice and the pretraining record in ``work``."""
    done = {}
    for line in (work / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        done[(r["cell"], r["backbone"], r["config"], r["seed"])] = r
    advice = json.loads((work / "advice.json").read_text())
    record = work / "pretrain" / "metrics.json"
    metrics = json.loads(record.read_text()) if record.is_file() else {}
    source = {"epochs": opts.pretrain_epochs, "test_acc": metrics.get("test_acc"),
              "fit_seconds": metrics.get("fit_seconds")}  # fmt: skip
    last = max(r["finished"] for r in done.values())
    report_results(opts, source, advice, done, last - float((work / "started").read_text()))


def _cell_stats(runs: dict[str, dict[int, float]], pick: str) -> dict[str, Any]:
    """Mean/std per configuration, the best one, and how far ``pick`` is from it.

    Only configurations run on every seed of the row compete for "best" (a single lucky seed
    does not win)."""
    per = {k: summary(list(v.values())) for k, v in runs.items()}
    most = max(len(v) for v in runs.values())
    top = max((k for k in per if len(runs[k]) == most), key=lambda k: per[k][0])
    out: dict[str, Any] = {"best": top, "pick": pick}
    if pick in per:
        seeds = sorted(set(runs[top]) & set(runs[pick]))
        diffs = [runs[top][s] - runs[pick][s] for s in seeds]
        gap = per[top][0] - per[pick][0]
        noise = max(per[top][1], per[pick][1])
        out.update(
            gap=gap, noise=noise, paired=summary(diffs) if diffs else None,
            verdict="best" if pick == top else "within noise" if gap <= noise else "worse",
        )  # fmt: skip
    return out


def _fmt(mean_std: tuple[float, float]) -> str:
    return f"{mean_std[0] * 100:.1f} ± {mean_std[1] * 100:.1f}"


def report_results(opts, source, advice, done, seconds) -> None:
    seeds_per: dict[tuple[str, str, str], int] = {}
    for c, b, lab, _ in done:
        seeds_per[c, b, lab] = seeds_per.get((c, b, lab), 0) + 1
    labels = [c[0] for c in CONFIGS if any(lab == c[0] for _, _, lab in seeds_per)]
    cols = [*labels, "probe_stage@advised"]
    rows, means, chosen, best, table, bullets = [], [], [], [], [], []
    stats: dict[str, dict[str, Any]] = {}
    for size, sim in CELLS:
        cell = f"{size}-{sim}"
        for bname in ("fmnist-src", "imagenet"):
            row_key = f"{cell}|{bname}"
            runs: dict[str, dict[int, float]] = {}
            for (c, b, lab, seed), r in done.items():
                if c == cell and b == bname:
                    runs.setdefault(lab, {})[seed] = r["test_acc"]
            if not runs or row_key not in advice:
                continue
            per = {k: summary(list(v.values())) for k, v in runs.items()}
            adv = advice[row_key]
            pick = RECIPE_CONFIG[adv["recipe"]]
            if adv["recipe"] == "small-different" and "probe_stage@advised" in runs:
                pick = "probe_stage@advised"
            nominal = f"{size}-{NOMINAL[bname, sim]}"
            a = _cell_stats(runs, pick)
            m = _cell_stats(runs, RECIPE_CONFIG[nominal])
            stats[row_key] = {
                "results": {
                    k: {"mean": per[k][0], "std": per[k][1], "runs": runs[k]} for k in runs
                },
                "advise": adv, "advise_vs_best": a, "nominal_cell": nominal,
                "nominal_vs_best": m,
            }  # fmt: skip
            rows.append(f"{size} {TARGET[sim]} / {bname}")
            means.append([per[lab][0] if lab in per else None for lab in cols])
            chosen.append(pick)
            best.append(a["best"])
            cells = [
                ("**" + _fmt(per[lab]) + "**" if lab == a["best"] else _fmt(per[lab]))
                + ("" if len(runs[lab]) >= opts.seeds else f" (n={len(runs[lab])})")
                if lab in per else "-"
                for lab in cols
                if lab in labels or lab in per
            ]  # fmt: skip
            if "probe_stage@advised" not in per:
                cells.append("-")

            def verdict(v: dict[str, Any]) -> str:
                if "verdict" not in v:
                    return "n/a"
                if v["verdict"] == "best":
                    return "best"
                d = v["paired"]
                return (
                    f"{v['verdict']}: -{v['gap'] * 100:.1f} (paired {d[0] * 100:.1f} ± "
                    f"{d[1] * 100:.1f})"
                )

            table.append(
                f"| {size} | {TARGET[sim]} | {bname} | " + " | ".join(cells)
                + f" | {nominal} → {RECIPE_CONFIG[nominal]}: {verdict(m)}"
                + f" | {adv['cell']} (gap {adv['gap']:+.3f}, noise {adv['noise']:.3f}) → "
                + f"{pick}: {verdict(a)} |"
            )  # fmt: skip
            full_seeds = [k for k in per if len(runs[k]) == max(len(v) for v in runs.values())]
            frozen = max(("linear_probe", "probe_stage"), key=lambda k: per.get(k, (-1,))[0])
            trained = max(
                (k for k in full_seeds if k not in FROZEN), key=lambda k: per[k][0], default=None
            )
            trained_text = f"{trained} {_fmt(per[trained])}" if trained else "n/a"
            l2sp = ", ".join(
                f"{s}: {(per[s + '+L2SP'][0] - per[s][0]) * 100:+.1f}"
                for s in L2SP_STRATEGIES
                if s in per and s + "+L2SP" in per
            )
            lift = (per["probe_stage"][0] - per["linear_probe"][0]) * 100
            bullets.append(
                f"- **{size} {TARGET[sim]} / {bname}**: best frozen {frozen} "
                f"{_fmt(per[frozen])} vs best fine-tuned (all seeds) {trained_text}; "
                f"probe_stage - linear_probe {lift:+.1f}; L2-SP minus weight decay: "
                f"{l2sp or 'n/a'}."
            )
    if not rows:
        print("no configuration has enough seeds yet; nothing written")
        return
    RESULTS.mkdir(exist_ok=True)
    heatmap(rows, cols, means, chosen, best, RESULTS / "quadrants.png")
    header = (
        "| size | target | backbone | " + " | ".join(cols)
        + " | matrix by construction → recipe's config | advise (evidence) → config |\n|"
        + "---|" * (len(cols) + 5) + "\n"
    )  # fmt: skip
    src_acc = source.get("test_acc")
    markdown = (
        f"Test accuracy %, mean ± std over {opts.seeds} seeds (a seed changes the head init, the "
        f"data order and, in small cells, the {opts.shots}-shot draw); bold = best in the row. "
        f"{opts.image_size} px, tf_efficientnet_lite0, {opts.small_epochs} epochs in small "
        f"cells, {opts.large_epochs} in large cells, final weights tested on 500 fixed test "
        "images per target. Backbones: `fmnist-src` = `tlkit pretrain` "
        f"{source.get('epochs')} epochs from scratch on Fashion-MNIST classes 0-4 (5,000 "
        f"images; source test accuracy {src_acc if src_acc is None else round(src_acc, 3)}); "
        "`imagenet` = the bundled ImageNet weights. Each strategy uses the hyperparameters of "
        "the recipe that ships it (see the script's docstring). \"Matrix by construction\": "
        "the cell the data was built to be in (for the ImageNet backbone both targets count as "
        "different: grey 32 px clothing and digits). A configuration is `best`, `within noise` "
        "(gap to the best ≤ the larger of the two stds) or `worse`; `paired` is the mean ± std "
        "over seeds of the per-seed difference. Compute: the runs in the table fit in "
        f"{sum(r['fit_seconds'] for r in done.values()) / 60:.0f} min in all, the source "
        f"backbone's pretraining in {(source.get('fit_seconds') or 0) / 60:.0f} min; run as two "
        "processes (one per backbone, one torch thread each) on a "
        f"{os.cpu_count()}-core machine, the wall time is about half the sum.\n\n"
        "Run as two processes that share the work directory: `python bench/quadrants.py "
        "--backbones fmnist-src & python bench/quadrants.py --backbones imagenet` (plain "
        "`python bench/quadrants.py` runs both backbones in one process). Every cell runs "
        f"{', '.join(SMALL_CONFIGS)} on every seed; a configuration run on fewer seeds than the "
        "others of its row (`--small-configs` / `--large-configs` pick a subset) is marked n=k "
        "and does not compete for best.\n\n"
        + header + "\n".join(table)
        + "\n\n![quadrants](results/quadrants.png)\n\n### Per row\n\n"
        + "\n".join(bullets) + "\n"
    )  # fmt: skip
    if FINDINGS.is_file():
        markdown += "\n" + FINDINGS.read_text()
    write(
        "Quadrants: the transfer-learning matrix, measured",
        markdown,
        {
            **vars(opts),
            "source": source,
            "cells": stats,
            "seconds": round(seconds, 1),
            "runs": sorted(done.values(), key=lambda r: r["finished"]),
        },
    )


if __name__ == "__main__":
    main()
