"""``tlkit advise``: measure a dataset's size and similarity, name its cell and recipe."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from tlkit.errors import ArgumentParser, TlkitError

__all__ = ["advise_command", "auto_recipe"]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Progress and cache notes go to stderr, so stdout carries only the result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tlkit advise",
        description="Measure how much labelled data there is and how similar it is to the "
        "backbone's pretraining data (linear probes on each stage's features), and name the "
        "cell of the transfer-learning matrix and the recipe to use.",
        epilog="example: tlkit advise --data path/to/images --image-size 128",
    )
    parser.add_argument("--data", default="demo", help="demo | fashion-mnist | folder | CSV")
    parser.add_argument("--backbone", help="timm model name (default tf_efficientnet_lite0)")
    parser.add_argument("--weights", help="backbone weight file (.pth, .safetensors, .ckpt)")
    parser.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    parser.add_argument("--shots", type=int, help="training images per class you will use")
    parser.add_argument(
        "--max-per-class", type=int, default=50, help="images per class measured (default 50)"
    )
    parser.add_argument(
        "--max-images", type=int, default=1000, help="images measured in all (default 1000)"
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    parser.add_argument("--repeats", type=int, default=3, help="cross-validation repeats (3)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser


def _check(opts: argparse.Namespace) -> None:
    for name in ("image_size", "shots", "folds", "repeats"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise TlkitError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if opts.folds < 2:
        raise TlkitError(f"--folds must be at least 2, got {opts.folds}")


def _measure(**kwargs: Any) -> dict[str, Any]:
    from tlkit.strategies.advise import measure

    with _stdout_to_stderr():
        return measure(**kwargs)


def _next_command(report: dict[str, Any], data: str) -> str:
    command = f"tlkit finetune --recipe {report['recipe']} --data {data}"
    if report["recipe"] == "small-different":
        command += f" --model.strategy_args.stage {report['probe_stage']}"
    return command


def _baseline(report: dict[str, Any], data: str) -> str | None:
    """For the large cells: the frozen probe to fit first, with its measured accuracy.

    Fine-tuning is slow and the measured probe is fast (cached features), and a good probe can
    match it: in bench/quadrants one large row in four was won by a frozen probe_stage.
    """
    if not report["recipe"].startswith("large"):
        return None
    best = max(report["evidence"]["stages"], key=lambda stage: stage["accuracy"])
    if best["index"] is None:
        command = f"tlkit finetune --recipe small-similar --data {data}"
    else:
        command = (
            f"tlkit finetune --recipe small-different --data {data} "
            f"--model.strategy_args.stage {best['index']}"
        )
    return (
        f"baseline: a frozen probe on {best['name']} scores {best['accuracy']:.3f} here; it fits "
        f"in seconds on cached features, so fit it first to see what fine-tuning adds: {command}"
    )


def _print_summary(report: dict[str, Any], data: str) -> None:
    from rich.console import Console
    from rich.table import Table

    evidence = report["evidence"]
    table = Table(
        title=f"linear-probe accuracy per stage ({evidence['backbone']}, "
        f"{evidence['images_measured']} images at {evidence['image_size']} px, "
        f"{evidence['folds']}-fold x {evidence['repeats']})"
    )
    for column, justify in (
        ("stage", "left"),
        ("index", "right"),
        ("channels", "right"),
        ("accuracy", "right"),
        ("± std", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify)
    for stage in evidence["stages"]:
        note = ""
        if stage["index"] is None:
            note = "top (linear_probe)"
        elif stage["index"] == report["probe_stage"]:
            note = "best earlier stage"
        table.add_row(
            stage["name"],
            "-" if stage["index"] is None else str(stage["index"]),
            str(stage["channels"]),
            f"{stage['accuracy']:.3f}",
            f"{stage['std']:.3f}",
            note,
        )
    console = Console()
    console.print(table)
    console.print(
        f"chance {evidence['chance']:.3f}; top minus best earlier stage {evidence['gap']:+.3f} "
        f"(noise {evidence['noise']:.3f})"
    )
    console.print(
        f"cell [bold]{report['cell']}[/]: {report['samples_per_class']:g} images per class, "
        f"{report['num_classes']} classes, {report['similarity']} -> recipe "
        f"[cyan]{report['recipe']}[/]"
    )
    console.print(f"why: {evidence['reason']}", highlight=False)
    console.print(f"next: {_next_command(report, data)}", highlight=False)
    baseline = _baseline(report, data)
    if baseline:
        console.print(baseline, highlight=False)


def advise_command(argv: list[str]) -> int:
    """``tlkit advise``: print the measured cell, recipe and evidence.

    Args:
        argv: Command-line arguments after ``advise`` (see ``tlkit advise --help``).

    Returns:
        The exit code (0).

    Raises:
        TlkitError: For bad options or data.
    """
    opts = _parser().parse_args(argv)
    _check(opts)
    report = _measure(
        data=opts.data,
        backbone=opts.backbone,
        image_size=opts.image_size,
        weights=opts.weights,
        shots=opts.shots,
        max_per_class=opts.max_per_class,
        max_images=opts.max_images,
        folds=opts.folds,
        repeats=opts.repeats,
        seed=opts.seed,
    )
    if opts.json:
        print(json.dumps(report))
    else:
        _print_summary(report, opts.data)
    return 0


def auto_recipe(
    data: str,
    backbone: str | None,
    image_size: int | None,
    seed: int,
    shots: int | None = None,
    weights: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Measure ``data`` like ``tlkit advise`` and return the recipe of its cell.

    Args:
        data: The data source.
        backbone: timm model name (``None``: the default backbone).
        image_size: Input size of the measurement (``None``: the backbone's).
        seed: Seed of the subsample and the folds.
        shots: Training images per class the run will use (``None``: the whole split).
        weights: Backbone weight file the run will use (``None``: bundled or hub weights).

    Returns:
        ``(recipe name, report)``. For ``small-different``, ``report["probe_stage"]`` is the
        stage to pass as ``--model.strategy_args.stage``.
    """
    report = _measure(
        data=data, backbone=backbone, image_size=image_size, seed=seed, shots=shots, weights=weights
    )
    return report["recipe"], report
