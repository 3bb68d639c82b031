"""The extended held-out benchmark: ``--recipe auto`` against scikit-learn probes at their best,
on every family: Fashion-MNIST and digits (bench/heldout_data.py), new image sources
(bench/domains_data.py: icons with transparency, glyphs of unseen fonts, texture and photo
crops) and long tails (bench/imbalance.py, 10x to 100x, balanced test splits).

Side by side in one run, each contender its own process with a cold feature cache, on the same
folders:

* ``sklearn``: bench/sklearn_probe.py with tlkit's decoding (transparency composited on white,
  as tlkit does), StandardScaler, LogisticRegressionCV on the top pooled features;
* ``sklearn-raw``: the same without StandardScaler;
* ``sklearn-balanced``: the same as ``sklearn`` with ``class_weight="balanced"``, on the
  long-tailed families;
* ``auto``: ``tlkit finetune --recipe auto``.

Scored on balanced test accuracy (the same as accuracy on the balanced test splits; the icon
contexts' test splits are unequal). Reported per family: mean ± std over draws, auto minus the
best peer's mean; per task: whether auto's predicted interval (made before testing) holds the
test metric it predicts, and its width.

Run: python bench/extended.py --draws final [--work /tmp/extended] [--contenders sklearn,...]
(each contender's result is kept under WORK/results and reused by a later run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import write_draws
from heldout import TLKIT, _run
from imbalance import FAMILIES as LONG_TAILS
from probe_scale import SEEDS, _tasks

HERE = Path(__file__).resolve().parent
PEERS = {
    "sklearn": ["--decode", "tlkit"],
    "sklearn-raw": ["--decode", "tlkit", "--no-scaler"],
    "sklearn-balanced": ["--decode", "tlkit", "--class-weight", "balanced"],
}


def _contender(name: str, task: Path, work: Path, run) -> dict:
    """One contender's result on ``task``: kept under ``work/results`` so that a rerun of the
    benchmark (``--contenders auto`` after the peers) reuses what does not change."""
    kept = work / "results" / task.name / f"{name}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    result = run()
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result))
    return result


def _peer(task: Path, sized: list[str], extra: list[str], scratch: Path) -> dict:
    command = [sys.executable, str(HERE / "sklearn_probe.py"), str(task), *sized, *extra]
    seconds, out = _run(command, scratch / "cache")
    return {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": seconds}


def _auto(task: Path, sized: list[str], scratch: Path) -> dict:
    out_dir = scratch / "auto"
    command = [*TLKIT, "finetune", "--recipe", "auto", "--data", str(task), *sized,
               "--out", str(out_dir)]  # fmt: skip
    seconds, _ = _run(command, scratch / "auto-cache")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    strategy = metrics.get("strategy") or {}
    return {
        "test_acc": metrics["test_acc"],
        "balanced_acc": metrics["test_balanced_acc"],
        "wall_seconds": seconds,
        "recipe": metrics["recipe"],
        "stage": (strategy.get("init_args") or strategy).get("stage"),
        "scale": metrics.get("scale"),
        "balance": metrics.get("balance"),
        "expected_accuracy": metrics.get("expected_accuracy"),
    }


def run_task(family: str, task: Path, size: int | None, work: Path, only: set[str]) -> dict:
    """Every contender in ``only`` on one task."""
    row: dict = {"family": family, "task": task.name}
    sized = [] if size is None else ["--image-size", str(size)]
    peers = PEERS if family in LONG_TAILS else {k: v for k, v in PEERS.items() if "bal" not in k}
    for name, extra in peers.items():
        if name in only:
            with tempfile.TemporaryDirectory(dir=work) as scratch:
                run = lambda: _peer(task, sized, extra, Path(scratch))  # noqa: B023, E731
                row[name] = _contender(name, task, work, run)
    if "auto" in only:
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            row["auto"] = _contender("auto", task, work, lambda: _auto(task, sized, Path(scratch)))
    return row


def _held(row: dict) -> tuple[bool, float]:
    """Whether auto's interval holds the metric it predicts, and the interval's width."""
    e = row["auto"]["expected_accuracy"] or {}
    metric = "balanced_acc" if e.get("metric") == "balanced_accuracy" else "test_acc"
    measured = row["auto"][metric]
    return e.get("low", 2) <= measured <= e.get("high", -1), e.get("high", 0) - e.get("low", 0)


def summarise(rows: list[dict], draws: str) -> str:
    """Markdown: per family, then per task."""
    contenders = [*PEERS, "auto"]
    lines = [
        f"Draws: **{draws}** (seeds {', '.join(map(str, SEEDS[draws]))}). Balanced test "
        "accuracy in %, mean ± std over draws (-: not run on that family).",
        "",
        "| family | " + " | ".join(contenders) + " | auto - best peer | interval held |",
        "|" + "---|" * (len(contenders) + 3),
    ]
    gaps = []
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        cells, peers = [], []
        for c in contenders:
            if c not in mine[0]:
                cells.append("-")
                continue
            values = [r[c]["balanced_acc"] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}")
            if c != "auto":
                peers.append(statistics.mean(values))
        gap = statistics.mean(r["auto"]["balanced_acc"] for r in mine) - max(peers)
        gaps.append(gap)
        held = sum(_held(r)[0] for r in mine)
        lines.append(f"| {family} | {' | '.join(cells)} | {100 * gap:+.1f} | {held}/{len(mine)} |")
    held = [_held(r) for r in rows]
    ahead = sum(g >= 0 for g in gaps)
    lines += [
        "",
        f"Mean over families of auto - best peer: **{100 * statistics.mean(gaps):+.1f}** points; "
        f"auto at least the best peer's mean on {ahead} of {len(gaps)} families. auto's "
        f"predicted interval holds the test metric it predicts on **{sum(h for h, _ in held)} of "
        f"{len(held)}** tasks ({100 * sum(h for h, _ in held) / len(held):.0f} %); median width "
        f"{100 * statistics.median(w for _, w in held):.1f} points.",
        "",
        "| task | " + " | ".join(contenders) + " | stage | scale | predicted | in |",
        "|" + "---|" * (len(contenders) + 5),
    ]
    for r in rows:
        e = r["auto"]["expected_accuracy"] or {}
        cells = " | ".join(
            f"{100 * r[c]['balanced_acc']:.1f}" if c in r else "-" for c in contenders
        )
        lines.append(
            f"| {r['task']} | {cells} | {r['auto']['stage'] or 'top'} | {r['auto']['scale']} | "
            f"{100 * e.get('low', 0):.1f}-{100 * e.get('high', 0):.1f} | "
            f"{'yes' if _held(r)[0] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=list(SEEDS), default="fresh")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "extended")
    parser.add_argument(
        "--contenders",
        default=",".join([*PEERS, "auto"]),
        help="comma-separated; results already under WORK/results are reused",
    )
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    only = set(opts.contenders.split(","))
    rows = []
    for family, task, size in _tasks(opts.work, SEEDS[opts.draws]):
        rows.append(run_task(family, task, size, opts.work, only))
        print(json.dumps(rows[-1]), flush=True)
    if only != {*PEERS, "auto"}:
        return
    write_draws("The extended held-out benchmark", opts.draws, summarise(rows, opts.draws),
                {"rows": rows}, HERE / "findings" / "extended.md")  # fmt: skip


if __name__ == "__main__":
    main()
