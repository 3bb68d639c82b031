"""Evaluation figures and the run report: metrics, confusion matrix, curves, LR schedule."""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: The metrics shown in the results table and at the top of the report, in order.
RESULT_KEYS = (
    "test_acc",
    "test_balanced_acc",
    "test_top5",
    "test_f1",
    "test_loss",
    "val_acc",
    "cv_acc",
    "probe_test_acc",
    "epochs",
    "fit_seconds",
)

__all__ = [
    "RESULT_KEYS",
    "confusion_matrix_png",
    "effective_lr",
    "evaluation_metrics",
    "lr_find_png",
    "print_evaluation",
    "read_logs",
    "write_run_report",
]


def evaluation_metrics(probs: torch.Tensor, targets: torch.Tensor, names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy (mean per-class recall), top-5, macro F1, per-class
    accuracy (recall) and the confusion matrix.

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` true class indices.
        names: Class names, index order.

    Returns:
        Plain data (JSON-serialisable).
    """
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
    )

    num = len(names)
    result: dict[str, Any] = {
        "num_samples": len(targets),
        "acc": float(multiclass_accuracy(probs, targets, num, average="micro")),
        "f1": float(multiclass_f1_score(probs, targets, num, average="macro")),
    }
    if num > 5:
        result["top5"] = float(multiclass_accuracy(probs, targets, num, top_k=5, average="micro"))
    confusion = multiclass_confusion_matrix(probs, targets, num)
    result["per_class_acc"] = per_class_accuracy(confusion, names)
    recalls = [v for v in result["per_class_acc"].values() if v is not None]
    result["balanced_acc"] = sum(recalls) / len(recalls) if recalls else float("nan")
    result["confusion_matrix"] = confusion.tolist()
    return result


def per_class_accuracy(confusion: torch.Tensor | Sequence, names: Sequence[str]) -> dict:
    """Recall of each class (diagonal over row sums); ``None`` for classes without samples."""
    confusion = torch.as_tensor(confusion)
    rows = confusion.sum(dim=1)
    return {
        name: (float(confusion[i, i] / rows[i]) if rows[i] > 0 else None)
        for i, name in enumerate(names)
    }


def print_evaluation(result: dict) -> None:
    """Print the metrics and the per-class accuracy as tables."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluation ({result['num_samples']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("acc", "balanced_acc", "top5", "f1"):
        if key in result:
            table.add_row(key, f"{result[key]:.4f}")
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    for name, acc in result["per_class_acc"].items():
        per_class.add_row(name, "-" if acc is None else f"{acc:.3f}")
    console = Console()
    console.print(table)
    console.print(per_class)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path)


def confusion_matrix_png(confusion: Sequence, names: Sequence[str], path: str | Path) -> Path:
    """Save a confusion matrix (rows: true class, columns: predicted) as a PNG."""
    plt = _pyplot()
    matrix = torch.as_tensor(confusion, dtype=torch.float64)
    size = max(4.0, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:
        peak = float(matrix.max()) or 1.0
        for (i, j), value in ((ij, matrix[ij]) for ij in _cells(len(names))):
            colour = "white" if value > peak / 2 else "black"
            ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("confusion matrix")
    return _save(fig, path)


def _cells(n: int):
    return ((i, j) for i in range(n) for j in range(n))


def _read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]


def read_logs(log_dir: Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv``, preceded by the parts of earlier, resumed attempts.

    A resumed run repeats the steps after its last checkpoint; those rows of the earlier part
    are dropped.
    """
    parts = sorted(log_dir.glob("metrics.part*.csv"), key=lambda p: int(p.stem[12:] or 0))
    parts += [log_dir / "metrics.csv"]
    rows: list[dict[str, float]] = []
    for part in (p for p in parts if p.is_file()):
        new = _read_csv(part)
        steps = [r["step"] for r in new if "step" in r]
        if steps:
            rows = [r for r in rows if r.get("step", -1) < min(steps)]
        rows += new
    return rows


def _series(rows: list[dict[str, float]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[y]) for r in rows if x in r and y in r and math.isfinite(r[y])]
    return [p[0] for p in points], [p[1] for p in points]


def _curves_png(rows: list[dict[str, float]], path: Path) -> Path | None:
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = False
    for key, ax in (("train_loss_epoch", loss_ax), ("val_loss", loss_ax), ("val_acc", acc_ax)):
        xs, ys = _series(rows, "epoch", key)
        if xs:
            ax.plot(xs, ys, marker="o", label=key)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in ((loss_ax, "loss"), (acc_ax, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def effective_lr(
    rows: list[dict[str, float]], plan: Sequence[dict[str, Any]] | None = None
) -> tuple[dict[str, tuple[list[float], list[float]]], list[str]]:
    """The LR each param group trains at, per optimizer step, from the run's logs.

    The optimizer holds a nominal LR for frozen groups; the plan (``TransferModule.plan``)
    says when each group trains, so the LR is 0 before that epoch, and groups that never train
    are left out.

    Returns:
        ``{param group: (steps, lrs)}`` and the names of the layer groups that never train.
    """
    starts = {row["group"]: row["trains_from_epoch"] for row in plan or ()}
    keys = sorted({k for r in rows for k in r if k.startswith("lr")})
    never = sorted(
        {k.split("/")[1] for k in keys if len(k.split("/")) > 1}
        & {g for g, start in starts.items() if start is None}
    )
    # LR rows carry no epoch: an epoch's rows carry the step it ended at.
    ends: dict[int, float] = {}
    for r in rows:
        if "epoch" in r and "step" in r:
            ends[int(r["epoch"])] = max(ends.get(int(r["epoch"]), r["step"]), r["step"])

    epochs = sorted(ends)
    last_steps = [ends[e] for e in epochs]

    def epoch_of(step: float) -> int:
        i = bisect.bisect_left(last_steps, step)
        return epochs[i] if i < len(epochs) else (epochs[-1] + 1 if epochs else 0)

    series = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) > 1 and parts[1] in never:
            continue
        start = starts.get(parts[1]) if len(parts) > 1 else None
        points = [
            (r["step"], 0.0 if start and epoch_of(r["step"]) < start else r[key])
            for r in rows
            if "step" in r and key in r and math.isfinite(r[key])
        ]
        series[key.split("/", 1)[-1]] = ([p[0] for p in points], [p[1] for p in points])
    return series, never


def _lr_png(
    rows: list[dict[str, float]], path: Path, plan: Sequence[dict[str, Any]] | None = None
) -> Path | None:
    series, never = effective_lr(rows, plan)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    title = "learning rate of each param group (0 while frozen)"
    if never:
        title += f"; never trained, not shown: {len(never)} groups"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) <= 20:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], chosen: int, path: Path) -> Path:
    """The LR range test: smoothed loss against LR (log scale), the chosen LR marked."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses)
    ax.plot([lrs[chosen]], [losses[chosen]], "o", color="tab:red", label=f"lr = {lrs[chosen]:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title("LR finder")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _per_class_png(per_class: dict[str, float | None], path: Path) -> Path:
    plt = _pyplot()
    names = list(per_class)
    values = [per_class[n] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title("per-class test accuracy")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _snapshots_png(metrics: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy of each snapshot of a snapshot ensemble, and of their average."""
    prefix = "test_acc_snapshot_"
    snapshots = sorted(
        (int(k[len(prefix) :]), v) for k, v in metrics.items() if k.startswith(prefix)
    )
    ensemble = metrics.get("test_acc_ensemble")
    if not snapshots or ensemble is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    cycles = [c for c, _ in snapshots]
    ax.plot(cycles, [v for _, v in snapshots], "o-", label="each snapshot alone")
    ax.axhline(ensemble, color="tab:red", linestyle="--", label=f"ensemble of all: {ensemble:.3f}")
    ax.set_xticks(cycles)
    ax.set_xlabel("snapshot (end of cycle)")
    ax.set_ylabel("test accuracy")
    ax.set_title("snapshot ensemble")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _figures(
    run_dir: Path,
    metrics: dict[str, Any],
    confusion: Sequence | None,
    class_names: Sequence[str] | None,
) -> list[tuple[str, Path | None]]:
    """The report's figures, drawn into ``run_dir/plots`` (``None`` where there is nothing)."""
    plots = run_dir / "plots"
    rows = read_logs(run_dir / "logs")
    figures: list[tuple[str, Path | None]] = [
        ("Learning curves", _curves_png(rows, plots / "curves.png")),
        ("Learning rate per param group", _lr_png(rows, plots / "lr.png", metrics.get("plan"))),
    ]
    if confusion is not None and class_names:
        matrix = confusion_matrix_png(confusion, class_names, plots / "confusion_matrix.png")
        figures.append(("Confusion matrix (test)", matrix))
        per_class = per_class_accuracy(confusion, class_names)
        figures.append(
            ("Per-class test accuracy", _per_class_png(per_class, plots / "per_class.png"))
        )
    figures.append(("Snapshot ensemble", _snapshots_png(metrics, plots / "snapshots.png")))
    return figures


def _summary_lines(metrics: dict[str, Any], run_name: str) -> list[str]:
    """The report's title, results table and one line on backbone, strategy and data."""
    lines = [
        f"# Run report: {metrics.get('recipe', run_name)}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in RESULT_KEYS:
        if metrics.get(key) is not None:
            value = metrics[key]
            lines.append(
                f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
            )
    return [
        *lines,
        "",
        f"Backbone `{metrics.get('backbone')}` ({metrics.get('weights')}), strategy "
        f"`{(metrics.get('strategy') or {}).get('name')}`; data `{metrics.get('data')}`: "
        f"{metrics.get('num_classes')} classes, {metrics.get('num_train')} train / "
        f"{metrics.get('num_val')} val / {metrics.get('num_test')} test images at "
        f"{metrics.get('image_size')} px.",
        "",
    ]


def write_run_report(
    run_dir: str | Path,
    metrics: dict[str, Any],
    confusion: Sequence | None = None,
    class_names: Sequence[str] | None = None,
    extra_images: Sequence[Path] = (),
) -> Path:
    """Write ``report.md`` with learning curves, LR schedule, confusion matrix, per-class accuracy.

    Args:
        run_dir: The run directory (``logs/metrics.csv`` is read from it).
        metrics: The run's ``metrics.json`` content.
        confusion: Test confusion matrix (rows true, columns predicted).
        class_names: Class names, index order.
        extra_images: Further PNGs in the run directory to show (e.g. augmentation preview).

    Returns:
        The path of ``report.md``.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figures = _figures(run_dir, metrics, confusion, class_names)
    figures += [(p.stem.replace("_", " ").capitalize(), p) for p in extra_images]
    lines = _summary_lines(metrics, run_dir.name)
    for title, path in figures:
        if path is not None:
            lines += [f"## {title}", "", f"![{title}]({path.relative_to(run_dir)})", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
