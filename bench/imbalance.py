"""Held-out long-tailed tasks: tlkit's class-balanced exact probe against scikit-learn's probe.

Each family fixes the source, the training images of each class (a long tail, assigned to
randomly drawn classes per draw), a balanced test split and the input size; a draw (a seed)
picks the classes, which class gets which count, and the images. Side by side in one run, each
as its own process with a cold feature cache:

* ``sklearn``: bench/sklearn_probe.py, LogisticRegressionCV on the top pooled features;
* ``sklearn-balanced``: the same with ``class_weight="balanced"``;
* ``auto``: ``tlkit finetune --recipe auto``.

Reported: balanced test accuracy (the test split has equal classes, so it equals plain
accuracy up to rounding), and whether the interval ``auto`` predicted before testing holds it.
Nothing in tlkit was tuned on these draws.

Run: python bench/imbalance.py --work /tmp/imbalance
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import write
from heldout import TLKIT, _run
from heldout_data import REPORT_SEEDS, _digits, _fashion, _write

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class LongTail:
    """A long-tailed task: source, training images per class (largest first), test per class."""

    name: str
    source: str
    counts: tuple[int, ...]
    test: int
    image_size: int


FAMILIES = {
    f.name: f
    for f in (
        LongTail("fashion6-200to3-64px", "fashion", (200, 80, 30, 12, 6, 3), 100, 64),
        LongTail("digits5-100to10-64px", "digits", (100, 50, 25, 15, 10), 40, 64),
        LongTail("fashion5-300to3-48px", "fashion", (300, 100, 30, 10, 3), 100, 48),
    )
}


def build_task(root: Path, family: LongTail, seed: int) -> Path:
    """Write draw ``seed`` of ``family`` as ``root/{train,test}/<class>/*.png``."""
    folder = root / f"{family.name}-s{seed}"
    if (folder / "test").is_dir():
        return folder
    rng = np.random.default_rng(seed)
    classes = rng.permutation(10)[: len(family.counts)]  # classes[i] gets counts[i]
    if family.source == "fashion":
        from tlkit.data.sources import FASHION_MNIST_CLASSES

        names = list(FASHION_MNIST_CLASSES)
        train_x, train_y, test_x, test_y = _fashion()
    else:
        names = [f"c{c}" for c in range(10)]
        train_x, train_y = _digits()
        test_x, test_y = train_x, train_y
    tmp = folder.with_name(folder.name + ".tmp")
    for c, count in zip(classes, family.counts, strict=True):
        members = rng.permutation(np.flatnonzero(train_y == c))
        tests = members[count:] if family.source == "digits" else rng.permutation(
            np.flatnonzero(test_y == c))  # fmt: skip
        _write(tmp, "train", train_x[members[:count]], np.full(count, c), names)
        _write(tmp, "test", test_x[tests[: family.test]], np.full(family.test, c), names)
    tmp.rename(folder)
    return folder


def run_task(task: Path, size: int, work: Path) -> dict:
    """The three contenders on one task."""
    row: dict = {"task": task.name}
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        for name, extra in (("sklearn", []), ("sklearn-balanced", ["--class-weight", "balanced"])):
            command = [sys.executable, str(HERE / "sklearn_probe.py"), str(task),
                       "--image-size", str(size), *extra]  # fmt: skip
            seconds, out = _run(command, Path(scratch) / f"{name}-cache")
            row[name] = {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": seconds}
        out_dir = Path(scratch) / "auto"
        command = [*TLKIT, "finetune", "--recipe", "auto", "--data", str(task),
                   "--image-size", str(size), "--out", str(out_dir)]  # fmt: skip
        seconds, _ = _run(command, Path(scratch) / "auto-cache")
        metrics = json.loads((out_dir / "metrics.json").read_text())
        row["auto"] = {
            "test_acc": metrics["test_acc"],
            "balanced_acc": metrics["test_balanced_acc"],
            "wall_seconds": seconds,
            "recipe": metrics["recipe"],
            "balance": metrics.get("balance") or (metrics.get("probe") or {}).get("balance"),
            "expected_accuracy": metrics.get("expected_accuracy"),
            "imbalance_ratio": metrics.get("imbalance_ratio"),
        }
    return row


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def summarise(rows: list[dict]) -> str:
    """Markdown: per family, then per task with auto's predicted interval."""
    contenders = ["sklearn", "sklearn-balanced", "auto"]
    lines = [
        "Draws: **report** (seeds 4-6; nothing was tuned on them). Balanced test accuracy in %, "
        "mean ± std over draws; the test splits have equal classes.",
        "",
        "| family | " + " | ".join(contenders) + " | auto - best peer |",
        "|---|---|---|---|---|",
    ]
    gaps = []
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        if not mine:
            continue
        cells = [_mean_std([r[c]["balanced_acc"] for r in mine]) for c in contenders]
        best = max(statistics.mean(r[c]["balanced_acc"] for r in mine) for c in contenders[:2])
        gap = statistics.mean(r["auto"]["balanced_acc"] for r in mine) - best
        gaps.append(gap)
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {100 * gap:+.1f} |")
    held, widths = [], []
    for r in rows:
        e = r["auto"]["expected_accuracy"] or {}
        held.append(e.get("low", 2) <= r["auto"]["balanced_acc"] <= e.get("high", -1))
        widths.append(e.get("high", 0) - e.get("low", 0))
    lines += [
        "",
        f"Mean over families of auto - best peer: **{100 * statistics.mean(gaps):+.1f}** points. "
        f"auto's predicted interval (of balanced accuracy) holds the balanced test accuracy on "
        f"{sum(held)} of {len(held)} tasks; median width {100 * statistics.median(widths):.1f} "
        "points.",
        "",
        "| task | ratio | sklearn | sklearn-balanced | auto | class treatment | predicted | in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, ok in zip(rows, held, strict=True):
        a, e = r["auto"], r["auto"]["expected_accuracy"] or {}
        lines.append(
            f"| {r['task']} | {a['imbalance_ratio']:.0f}x | "
            f"{100 * r['sklearn']['balanced_acc']:.1f} | "
            f"{100 * r['sklearn-balanced']['balanced_acc']:.1f} | {100 * a['balanced_acc']:.1f} | "
            f"{a['balance']} | {100 * e.get('low', 0):.1f}-{100 * e.get('high', 0):.1f} | "
            f"{'yes' if ok else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imbalance")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in opts.families:
        family = FAMILIES[name]
        for seed in REPORT_SEEDS:
            task = build_task(opts.work / "tasks", family, seed)
            row = {"family": name, "seed": seed, **run_task(task, family.image_size, opts.work)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write("Held-out long-tailed tasks (report draws)", summarise(rows), {"rows": rows})


if __name__ == "__main__":
    main()
