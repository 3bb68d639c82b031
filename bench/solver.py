"""The exact probe's solver: scipy's compiled L-BFGS-B (what tlkit runs, per fold or over all
folds at once) against torch's ``torch.optim.LBFGS`` with autograd (what it ran before), on the
same cross-validated L2 paths.

Real features: every stage of the bundled Lite0 on a 100-image Fashion-MNIST draw (5 classes),
the demo's train + val images (300, 10 classes) and a 1,000-image Fashion-MNIST draw, the
candidates advise scores (the top, each stage, the top joined with each of the last two
stages). For each, :func:`tlkit.probe.cv_path` on advise's folds with each solver in turn,
interleaved. Reported: seconds of each, the chosen L2, and the largest difference of held-out
accuracy along the path.

Run: python bench/solver.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write
from heldout_data import Family, build_task

import tlkit.probe as probe
from tlkit.advise.measure import measure
from tlkit.probe import cv_repeats, stratified_folds

FASHION = Family("fashion10-100-64px-solver", "fashion", 10, 100, 0, 10, 64)
SMALL = Family("fashion5-20-96px-solver", "fashion", 5, 20, 0, 10, 96)


def torch_lbfgs(x, y, classes, l2, init=None, max_iter=300, tolerance_grad=1e-6, weight=None):
    """The previous solver: torch's L-BFGS with a strong-Wolfe line search and autograd."""
    x = x.double()
    loss_weight = None if weight is None else weight.double()
    if init is None:
        w = torch.zeros(classes, x.shape[1], dtype=torch.float64)
        b = torch.zeros(classes, dtype=torch.float64)
    else:
        w, b = (t.detach().clone().double() for t in init)
    w.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tolerance_grad,
        tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        ce = torch.nn.functional.cross_entropy(torch.addmm(b, x, w.T), y, weight=loss_weight)
        loss = ce + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def problems(data: str, size: int) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """``(name, features, labels)`` of each candidate advise scores on ``data``."""
    _, stages = measure(data, image_size=size, cache_dir=None)
    y = np.concatenate([stages.labels("train").numpy(), stages.labels("val").numpy()])
    count = len(stages.widths)
    picks = {"top": [None], **{stages.names[i]: [i] for i in range(count - 1)}}
    picks.update({f"top+{stages.names[i]}": [None, i] for i in (count - 3, count - 2)})
    out = []
    for name, chosen in picks.items():
        x = torch.cat([stages.select("train", chosen), stages.select("val", chosen)])
        out.append((name, x, y))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    datasets = {
        "fashion5-20 (100 images, 96 px)": (str(build_task(work, SMALL, seed=11)), 96),
        "demo (300 images, 224 px)": ("demo", 224),
        "fashion10-100 (1,000 images, 64 px)": (str(build_task(work, FASHION, seed=11)), 64),
    }
    shipped = (probe.fit_logistic, probe._JOINT_SIZE)
    solvers = {
        "torch LBFGS": (torch_lbfgs, 0),
        "scipy per fold": (shipped[0], 0),
        "scipy, as shipped": shipped,
    }
    rows = []
    for label, (data, size) in datasets.items():
        for name, x, y in problems(data, size):
            splits = stratified_folds(y, 5, seed=42, repeats=cv_repeats(len(y)))
            seconds: dict[str, list[float]] = {s: [] for s in solvers}
            paths = {}
            for _ in range(opts.rounds):
                for solver, (fn, joint) in solvers.items():
                    probe.fit_logistic, probe._JOINT_SIZE = fn, joint
                    start = time.perf_counter()
                    paths[solver] = probe.cv_path(x, y, splits)
                    seconds[solver].append(time.perf_counter() - start)
            probe.fit_logistic, probe._JOINT_SIZE = shipped
            old, new = paths["torch LBFGS"], paths["scipy, as shipped"]
            common = min(len(old.l2), len(new.l2))
            gap = float(np.abs(old.accuracy[:common] - new.accuracy[:common]).mean(1).max())
            rows.append(
                {
                    "data": label,
                    "candidate": name,
                    "width": int(x.shape[1]),
                    "seconds": seconds,
                    "l2": [old.l2[old.best], new.l2[new.best]],
                    "cv_acc": [float(old.folds().mean()), float(new.folds().mean())],
                    "max_path_acc_gap": gap,
                }
            )
            print(rows[-1], flush=True)
    table = [
        "| data | candidate | features | torch LBFGS s | scipy per fold s | shipped s | speed-up "
        "| L2 (torch / shipped) | CV acc (torch / shipped) | largest gap on the path |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        old, per_fold, new = (statistics.median(r["seconds"][s]) for s in solvers)
        table.append(
            f"| {r['data']} | {r['candidate']} | {r['width']} | {old:.2f} | {per_fold:.2f} "
            f"| {new:.2f} | {old / new:.1f}x | {r['l2'][0]:g} / {r['l2'][1]:g} "
            f"| {100 * r['cv_acc'][0]:.1f} / {100 * r['cv_acc'][1]:.1f} "
            f"| {100 * r['max_path_acc_gap']:.2f} pts |"
        )
    total = [sum(statistics.median(r["seconds"][s]) for r in rows) for s in solvers]
    same = sum(r["l2"][0] == r["l2"][1] for r in rows)
    table += [
        "",
        f"All candidates: torch {total[0]:.1f} s, scipy per fold {total[1]:.1f} s, as shipped "
        f"{total[2]:.1f} s (**{total[0] / total[2]:.1f}x**); the same L2 chosen on {same} of "
        f"{len(rows)}. Shipped: folds of under {probe._JOINT_SIZE} training entries solved as "
        "one problem (`tlkit.probe.Folds`), larger ones one by one. "
        f"Median of {opts.rounds} interleaved rounds, advise's folds (5-fold, repeated).",
    ]
    write("The exact probe's solver", "\n".join(table), {"rows": rows})


if __name__ == "__main__":
    main()
