"""What ``tlkit finetune`` prints: the plan before training, the results after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["print_baseline", "print_exact_plan", "print_plan", "print_results"]


def print_exact_plan(model, datamodule, recipe: str, run_dir: Path) -> None:
    """Before an exact fit: what runs on what."""
    from rich.console import Console

    stage = model.strategy.describe().get("stage", "top")
    Console(stderr=True, highlight=False).print(
        f"[bold]tlkit[/] recipe [cyan]{recipe}[/], backbone [cyan]{model.hparams.backbone}[/] "
        f"({model.weights_source}) frozen; head: exact logistic probe on features "
        f"[cyan]{json.dumps(stage)}[/], L2 chosen by cross-validation over train + val, "
        f"refitted on both\n{_data_line(datamodule, run_dir)}"
    )


def _data_line(datamodule, run_dir: Path) -> str:
    """What data the run uses, and where it writes."""
    info = datamodule.describe()
    return (
        f"data {info['data']}: {info['num_classes']} classes, {info['num_train']} train / "
        f"{info['num_val']} val / {info['num_test']} test, {info['image_size']} px; "
        f"run directory {run_dir}"
    )


def print_plan(model, datamodule, recipe: str, run_dir: Path, epochs: int) -> None:
    """Before training: what runs on what, and which layer groups train when, at which LR."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, highlight=False)
    console.print(
        f"[bold]tlkit[/] recipe [cyan]{recipe}[/], backbone [cyan]{model.hparams.backbone}[/] "
        f"({model.weights_source}), strategy [cyan]{model.strategy.name}[/], optimizer "
        f"[cyan]{model.hparams.optimizer}[/]\n{_data_line(datamodule, run_dir)}"
    )
    table = Table(title="fine-tune plan", title_justify="left")
    for column in ("layer group", "params", "trains", "lr", "BN while frozen"):
        table.add_column(column, justify="left" if column == "layer group" else "right")
    for row in model.plan(epochs):
        start = row["trains_from_epoch"]
        trains = "never" if start is None else ("always" if start == 0 else f"from epoch {start}")
        table.add_row(
            row["group"], f"{row['params']:,}", trains, f"{row['lr']:.2e}", row["bn_while_frozen"]
        )
    console.print(table)


def print_results(metrics: dict[str, Any], run_dir: Path) -> None:
    """The results table, the expected accuracy and the probe verdict, on stdout."""
    from rich.console import Console
    from rich.table import Table

    from tlkit.balance import IMBALANCE_RATIO
    from tlkit.report import RESULT_KEYS

    table = Table(title="tlkit results")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in RESULT_KEYS:
        value = metrics.get(key)
        if value is not None:
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(table)
    ratio = metrics.get("imbalance_ratio", 1.0)
    if ratio >= IMBALANCE_RATIO:
        counts = metrics.get("train_class_counts") or []
        console.print(
            f"the classes are imbalanced ({min(c for c in counts if c)} to {max(counts)} training "
            f"images, {ratio:.1f}x): on a test set with equal classes, expect test_balanced_acc",
            highlight=False,
        )
    expected = metrics.get("expected_accuracy")
    if expected:
        metric = expected.get("metric", "accuracy").replace("_", " ")
        console.print(
            f"expected {metric} (cross-validated, before the test): {expected['estimate']:.3f}, "
            f"90 % interval {expected['low']:.3f}-{expected['high']:.3f}",
            highlight=False,
        )
    if metrics.get("probe_verdict"):
        console.print(metrics["probe_verdict"], highlight=False)
    console.print(f"run directory: {run_dir}")


def print_baseline(baseline: dict[str, Any], note: str | None = None) -> None:
    """The exact probe fitted before fine-tuning: the baseline to beat (and ``note``, what the
    fine-tune takes from it)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    console.print(
        f"exact probe first (the baseline to beat): {baseline['probe']['name']} tests at "
        f"{baseline['probe_test_acc']:.4f}, fitted in {baseline['probe_fit_seconds']:.1f} s"
    )
    probe, pooled = baseline["probe"], baseline["probe"].get("pooled")
    if pooled is not None:
        console.print(
            f"  read out in cells, it cross-validated at {100 * probe['accuracy']:.1f} % against "
            f"{100 * pooled['accuracy']:.1f} % for {pooled['name']} pooled (which tests at "
            f"{pooled['test_acc']:.4f})"
        )
    if note is not None:
        console.print(note)
