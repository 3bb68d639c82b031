"""Snapshot ensemble vs a single model vs independent ensembles, at the same epoch budget.

The settings are those of ``recipes/snapshot-ensemble.yaml`` (model, data, cycles, epochs E),
read from the recipe so that the benchmark measures what the recipe ships. For each seed:

- (a) single: one model trained E epochs with the module's cosine schedule (a plain fit);
- (b) snapshot: one fit of E epochs with the SnapshotEnsemble callback (M cyclic cosine cycles),
  the softmax mean of its snapshots; its last snapshot alone is reported too;
- (c1) independent x M at E epochs each (M times the cost; the first member is (a));
- (c2) independent x M at E/M epochs each (the same cost as (a) and (b)).

Every ensemble averages its members' softmax outputs on the test split. The data split is fixed;
seeds change the head's initialisation, dropout and (for the independent members) nothing else.
Reports test accuracy and NLL (mean, std, min-max over seeds), the ensemble's gain over (a)
paired by seed, the mean pairwise disagreement of the members, and the cost in epochs and
seconds. Validation is skipped (nothing is selected on it).

    python bench/ensemble.py [--seeds 3] [--epochs E] [--cycles M] [--set model.lr=0.1 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from itertools import combinations

import lightning as L
import torch
import yaml
from common import write

from tlkit import TransferDataModule, TransferModule
from tlkit.callbacks import SnapshotEnsemble
from tlkit.recipes import recipe_path

# Settings tried while tuning recipes/snapshot-ensemble.yaml: the paired gain of the snapshot
# ensemble over the single model, in accuracy points, mean over seeds (min..max), and that of
# the same-cost independent ensemble (c2). Filled in from runs of this script.
TUNED = [  # (setting, options added to the command, seeds, (b) accuracy, gain of (b), of (c2))
    (
        "linear_probe on cached features (the previous recipe), 5 cycles, 30 epochs",
        "--epochs 30 --cycles 5 --no-c1 --set model.strategy=linear_probe "
        "--set 'model.strategy_args={bn: frozen_eval}' --set data.cache_features=true",
        3,
        "77.47 ± 0.70 (76.80..78.20)",
        "2.53 ± 1.51 (0.80..3.60)",
        "2.47 ± 0.61 (1.80..3.00)",
    ),
    (
        "partial k=2, 5 cycles, 15 epochs",
        "--cycles 5 --no-c1",
        3,
        "77.67 ± 0.70 (77.00..78.40)",
        "0.93 ± 2.02 (-1.40..2.20)",
        "-8.33 ± 1.53 (-10.00..-7.00)",
    ),
    (
        "partial k=2, 3 cycles, 24 epochs (measured on the previous recipe with these options)",
        "--seeds 2 --epochs 24 --cycles 3 --no-c1 --image-size 96 "
        "--set model.strategy=partial --set 'model.strategy_args={k: 2}'",
        2,
        "78.60 ± 0.57 (78.20..79.00)",
        "0.60 ± 1.13 (-0.20..1.40)",
        "0.30 ± 0.14 (0.20..0.40)",
    ),
]
TUNING = (
    "\nSettings tried while tuning the recipe, all on the demo data at 96 px with the recipe's "
    "head and optimizer; each row is `python bench/ensemble.py --seeds 3` with the options "
    "shown (accuracy of (b) in %, paired gains over (a) in points, mean ± std "
    "(min..max); the table above is the recipe as shipped):\n\n"
    "| setting | options | seeds | accuracy of (b) | gain of (b) | gain of (c2) |\n"
    "|---|---|---|---|---|---|\n"
    + "".join(f"| {s} | `{o}` | {n} | {a} | {b} | {c} |\n" for s, o, n, a, b, c in TUNED)
)


@dataclass
class Run:
    """Test-set softmax outputs of one fit (several for a snapshot ensemble) and its cost."""

    members: list[torch.Tensor]
    seconds: float
    epochs: int
    extra: dict = field(default_factory=dict)


def load_settings(opts: argparse.Namespace) -> dict:
    """Model, data and snapshot settings from the recipe, with the command-line overrides."""
    recipe = yaml.safe_load(recipe_path(opts.recipe).read_text())
    snapshot = next(
        cb["init_args"]
        for cb in recipe["trainer"].get("callbacks", [])
        if cb["class_path"].endswith("SnapshotEnsemble")
    )
    settings = {
        "model": dict(recipe["model"]),
        "data": dict(recipe["data"]),
        "snapshot": dict(snapshot),
        "epochs": int(recipe["trainer"]["max_epochs"]),
    }
    settings["data"].pop("backbone", None)
    for item in opts.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("model", "data", "snapshot") or not name:
            raise SystemExit(f"--set {item}: use model.KEY=VALUE, data.KEY=VALUE or snapshot.KEY")
        settings[section][name] = yaml.safe_load(value)
    for section, name, value in (
        ("data", "data", opts.data),
        ("data", "shots", opts.shots),
        ("data", "image_size", opts.image_size),
        ("snapshot", "cycles", opts.cycles),
    ):
        if value is not None:
            settings[section][name] = value
    if opts.epochs is not None:
        settings["epochs"] = opts.epochs
    settings["snapshot"]["ensemble_val"] = False
    settings["snapshot"].pop("dirpath", None)
    return settings


@torch.no_grad()
def test_probs(model: TransferModule, data: TransferDataModule) -> torch.Tensor:
    """Softmax outputs of ``model`` on the test split (cached features when the data has them)."""
    model.eval()
    return torch.cat([model(batch[0]).softmax(-1) for batch in data.test_dataloader()])


def test_targets(data: TransferDataModule) -> torch.Tensor:
    return torch.cat([batch[1] for batch in data.test_dataloader()])


def fit(
    settings: dict, seed: int, epochs: int, snapshot: bool, check: bool = False
) -> tuple[Run, TransferDataModule]:
    """Train one model (with the SnapshotEnsemble callback when ``snapshot``) and predict.

    With ``check``, the snapshot fit is also tested through Lightning so that the callback's own
    ``test_acc_ensemble`` can be compared with the ensemble computed here.
    """
    L.seed_everything(seed, verbose=False)
    data = TransferDataModule(backbone=settings["model"]["backbone"], **settings["data"])
    model_args = dict(settings["model"])
    callbacks = []
    if snapshot:
        callback = SnapshotEnsemble(**settings["snapshot"])
        callbacks.append(callback)
        model_args["scheduler"] = "constant"
        model_args["warmup_epochs"] = 0.0
    else:
        model_args["scheduler"] = "cosine"
    model = TransferModule(num_classes=data.num_classes, class_names=data.class_names, **model_args)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        deterministic=True, limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    if not snapshot:
        return Run([test_probs(model, data)], seconds, epochs), data
    current = {name: t.clone() for name, t in model.state_dict().items()}
    members = []
    for tensors in callback.snapshots:
        model.load_state_dict(tensors, strict=False)
        members.append(test_probs(model, data))
    model.load_state_dict(current)
    extra = {}
    if check:
        logged = trainer.test(model, datamodule=data, verbose=False)[0]
        extra["callback_test_acc_ensemble"] = logged.get("test_acc_ensemble")
    return Run(members, seconds, epochs, extra), data


def scores(members: list[torch.Tensor], targets: torch.Tensor) -> dict[str, float]:
    """Accuracy and NLL of the softmax mean of ``members``, and their pairwise disagreement."""
    mean = torch.stack(members).mean(0)
    picked = mean.gather(1, targets.view(-1, 1)).clamp_min(1e-12)
    preds = [m.argmax(-1) for m in members]
    pairs = list(combinations(preds, 2))
    disagree = sum((a != b).float().mean().item() for a, b in pairs) / len(pairs) if pairs else 0.0
    return {
        "acc": (mean.argmax(-1) == targets).float().mean().item(),
        "nll": -picked.log().mean().item(),
        "disagreement": disagree,
    }


def summary(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    scaled = [v * scale for v in values]
    mean = statistics.mean(scaled)
    std = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
    low, high = min(scaled), max(scaled)
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({low:.{digits}f}..{high:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="snapshot-ensemble")
    parser.add_argument("--seeds", type=int, default=3, help="replicates (seeds 0..N-1)")
    parser.add_argument("--epochs", type=int, help="total epoch budget E (default: the recipe's)")
    parser.add_argument("--cycles", type=int, help="snapshots M (default: the recipe's)")
    parser.add_argument("--data", help="default: the recipe's")
    parser.add_argument("--shots", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting: model.lr=0.1, data.augment=light, snapshot.keep_last=3",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: small models train faster on a busy machine)",
    )
    parser.add_argument("--no-c1", action="store_true", help="skip the M x cost ensemble")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    settings = load_settings(opts)
    epochs, cycles = settings["epochs"], settings["snapshot"]["cycles"]
    short = max(epochs // cycles, 1)
    own_cache = "TLKIT_CACHE_DIR" not in os.environ
    if own_cache:
        os.environ["TLKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tlkit-bench-ensemble-")
    warmup = time.perf_counter()
    _, data = fit(settings, 10_000, 1, snapshot=False)
    warmup = time.perf_counter() - warmup
    targets = test_targets(data)
    kinds = ["single", "snapshot", "last_snapshot", "c2"] + ([] if opts.no_c1 else ["c1"])
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    extras = []
    for s in range(opts.seeds):
        seed = 1000 * s
        single, _ = fit(settings, seed, epochs, snapshot=False)
        snap, _ = fit(settings, seed, epochs, snapshot=True, check=s == 0)
        shorts = [fit(settings, seed + j, short, snapshot=False)[0] for j in range(cycles)]
        runs = {
            "single": (single.members, single.seconds),
            "snapshot": (snap.members, snap.seconds),
            "last_snapshot": (snap.members[-1:], snap.seconds),
            "c2": ([r.members[0] for r in shorts], sum(r.seconds for r in shorts)),
        }
        if not opts.no_c1:
            longs = [single] + [fit(settings, seed + j, epochs, False)[0] for j in range(1, cycles)]
            runs["c1"] = ([r.members[0] for r in longs], sum(r.seconds for r in longs))
        per_snapshot = [scores([m], targets)["acc"] for m in snap.members]
        extras.append({"seed": seed, "snapshot_member_acc": per_snapshot, **snap.extra})
        for kind, (members, secs) in runs.items():
            results[kind].append(scores(members, targets))
            seconds[kind].append(secs)
        line = ", ".join(f"{k} {results[k][-1]['acc']:.4f}" for k in runs)
        print(f"seed {seed}: {line}; snapshots {', '.join(f'{a:.3f}' for a in per_snapshot)}")
    if own_cache:
        shutil.rmtree(os.environ.pop("TLKIT_CACHE_DIR"), ignore_errors=True)

    labels = {
        "single": ("(a) single model", epochs),
        "snapshot": (f"(b) snapshot ensemble, {cycles} cycles", epochs),
        "last_snapshot": ("(b) its last snapshot alone", epochs),
        "c1": (f"(c1) {cycles} independent x {epochs} epochs", cycles * epochs),
        "c2": (f"(c2) {cycles} independent x {short} epochs", cycles * short),
    }
    base = results["single"]
    gains = {k: [r["acc"] - b["acc"] for r, b in zip(results[k], base, strict=True)] for k in kinds}
    rows = "".join(
        f"| {labels[k][0]} | {labels[k][1]} | {statistics.mean(seconds[k]):.1f} | "
        f"{summary([r['acc'] for r in results[k]], 100)} | "
        f"{summary([r['nll'] for r in results[k]], 1, 3)} | "
        f"{summary(gains[k], 100) if k != 'single' else '-'} | "
        f"{statistics.mean(r['disagreement'] for r in results[k]) * 100:.1f} |\n"
        for k in ["single", "snapshot", "last_snapshot", "c1", "c2"]
        if k in kinds
    )
    gain = gains["snapshot"]
    if min(gain) > 0:
        verdict = f"**The snapshot ensemble gains on every seed** ({summary(gain, 100)} points)"
    elif statistics.mean(gain) > 0:
        verdict = (
            f"**The snapshot ensemble gains on average but not on every seed** "
            f"({summary(gain, 100)} points)"
        )
    else:
        verdict = f"**The snapshot ensemble does not gain** ({summary(gain, 100)} points)"
    model = settings["model"]
    data_desc = settings["data"]
    warmed = (
        "it computes the cached features"
        if data_desc.get("cache_features")
        else "one epoch; it loads the backbone and decodes the images"
    )
    table = (
        "| model | cost (epochs) | fit seconds | test accuracy % | test NLL | "
        "gain over (a), points | disagreement % |\n|---|---|---|---|---|---|---|\n"
        + rows
        + f"\n{verdict} over a single model trained for the same {epochs} epochs; the same-cost "
        f"independent ensemble (c2) gains {summary(gains['c2'], 100)}"
        + (f", the {cycles}x-cost one (c1) {summary(gains['c1'], 100)}" if "c1" in gains else "")
        + ". Mean ± std (min..max) over "
        f"{opts.seeds} seeds; gains paired by seed; disagreement is the mean pairwise share of "
        "test images on which two members predict differently.\n\n"
        f"Setting: {model['backbone']} with strategy {model['strategy']} "
        f"{model.get('strategy_args') or ''}, head_hidden {model.get('head_hidden', 0)}, "
        f"dropout {model.get('dropout', 0.0)}, {model.get('optimizer')} lr {model.get('lr')}, "
        f"weight decay {model.get('weight_decay')}; data {data_desc.get('data')} "
        f"(shots {data_desc.get('shots')}, image size {data_desc.get('image_size')}, "
        f"augment {data_desc.get('augment')}, batch {data_desc.get('batch_size')}; "
        f"{len(data.source.train)} train / {len(targets)} test images); snapshot settings "
        f"{settings['snapshot']}. Fit seconds exclude a one-time warm-up fit of "
        f"{warmup:.1f} s ({warmed}).\n" + TUNING
    )
    write(
        "Snapshot ensemble vs single model vs independent ensembles",
        table,
        {
            "settings": settings,
            "seeds": opts.seeds,
            "results": results,
            "seconds": seconds,
            "gains": gains,
            "snapshots": extras,
            "warmup_seconds": warmup,
        },
    )


if __name__ == "__main__":
    main()
