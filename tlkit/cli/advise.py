"""``tlkit advise``: measure a dataset's size and similarity, name its cell, recipe and plan."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from tlkit.errors import ArgumentParser, TlkitError

__all__ = [
    "STAGE_OPTION",
    "advise_command",
    "announce",
    "auto_recipe",
    "baseline_line",
    "next_command",
    "stage_option",
]

#: The finetune option that hands the probe stage to the recipe's strategy.
STAGE_OPTION = "--model.strategy_args.stage"


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Progress and cache notes go to stderr, so stdout carries only the result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tlkit advise",
        description="Measure how much labelled data there is and which frozen features of the "
        "backbone separate its classes best (exact logistic probes on every stage, the top and "
        "a multi-stage join, on the same folds), predict the probe's accuracy, and name the "
        "cell of the transfer-learning matrix and the recipe to use.",
        epilog="example: tlkit advise --data path/to/images --image-size 128",
    )
    parser.add_argument("--data", default="demo", help="demo | fashion-mnist | folder | CSV")
    parser.add_argument("--backbone", help="timm model name (default tf_efficientnet_lite0)")
    parser.add_argument("--weights", help="backbone weight file (.pth, .safetensors, .ckpt)")
    parser.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    parser.add_argument("--shots", type=int, help="training images per class you will use")
    parser.add_argument(
        "--max-images", type=int, default=2000, help="labelled images measured (default 2000)"
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    parser.add_argument(
        "--repeats", type=int, help="cross-validation repeats (default: 3, fewer on more data)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser


def _check(opts: argparse.Namespace) -> None:
    for name in ("image_size", "shots", "folds", "repeats", "max_images"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise TlkitError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if opts.folds < 2:
        raise TlkitError(f"--folds must be at least 2, got {opts.folds}")
    if opts.max_images < 2:
        raise TlkitError(f"--max-images must be at least 2, got {opts.max_images}")


def _measure(**kwargs: Any) -> tuple[dict[str, Any], Any]:
    from tlkit.advise import measure

    with _stdout_to_stderr():
        return measure(**kwargs)


def stage_option(stage: Any) -> str:
    """The value of :data:`STAGE_OPTION` for a probe's stage (an index, or a list as YAML)."""
    return json.dumps(stage)


def next_command(report: dict[str, Any], data: str) -> str:
    """The ``tlkit finetune`` command of the advised recipe and probe."""
    from tlkit.advise.plan import plan_from

    command = f"tlkit finetune --recipe {report['recipe']} --data {data}"
    stage = plan_from(report).stage
    if stage is not None:
        command += f" {STAGE_OPTION} '{stage_option(stage)}'"
    return command


def baseline_line(report: dict[str, Any]) -> str | None:
    """For the large cells: the exact probe's expected accuracy, the bar fine-tuning must clear."""
    from tlkit.recipes import is_large_cell

    if not is_large_cell(report["recipe"]):
        return None
    expected = report["expected_accuracy"]
    return (
        f"baseline: the exact probe on {report['probe']['name']} is expected to score "
        f"{expected['estimate']:.3f} ({expected['low']:.3f}-{expected['high']:.3f}); "
        "`tlkit finetune` fits it first and reports the fine-tuned model next to it"
    )


def _print_summary(report: dict[str, Any], data: str) -> None:
    from rich.console import Console
    from rich.table import Table

    evidence = report["evidence"]
    table = Table(
        title=f"exact probe accuracy per feature set ({evidence['backbone']}, "
        f"{evidence['images_measured']} images at {evidence['image_size']} px, "
        f"{evidence['folds']}-fold x {evidence['repeats']})"
    )
    for column, justify in (
        ("features", "left"),
        ("stage", "right"),
        ("channels", "right"),
        ("accuracy", "right"),
        ("± std", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify)
    for candidate in evidence["candidates"]:
        note = "chosen" if candidate["name"] == report["probe"]["name"] else ""
        if not candidate["deep"]:
            note = note or "shallow: must win by the noise"
        stage = candidate["stage"]
        table.add_row(
            candidate["name"],
            "top" if stage is None else stage_option(stage),
            str(candidate["channels"]),
            f"{candidate['accuracy']:.3f}",
            f"{candidate['std']:.3f}",
            note,
        )
    console = Console()
    console.print(table)
    expected = report["expected_accuracy"]
    metric = expected.get("metric", "accuracy").replace("_", " ")
    console.print(
        f"chance {evidence['chance']:.3f}; expected {metric} of the chosen probe "
        f"{expected['estimate']:.3f} (90 % interval {expected['low']:.3f}-{expected['high']:.3f}, "
        f"selection bias {expected['bias']:.3f} removed)"
    )
    console.print(
        f"cell [bold]{report['cell']}[/]: {report['samples_per_class']:g} images per class, "
        f"{report['num_classes']} classes, {report['similarity']} -> recipe "
        f"[cyan]{report['recipe']}[/]"
    )
    console.print(f"why: {evidence['reason']}", highlight=False)
    console.print(f"next: {next_command(report, data)}", highlight=False)
    baseline = baseline_line(report)
    if baseline:
        console.print(baseline, highlight=False)


def advise_command(argv: list[str]) -> int:
    """``tlkit advise``: print the measured cell, recipe, probe and evidence.

    Args:
        argv: Command-line arguments after ``advise`` (see ``tlkit advise --help``).

    Returns:
        The exit code (0).

    Raises:
        TlkitError: For bad options or data.
    """
    opts = _parser().parse_args(argv)
    _check(opts)
    report, _ = _measure(
        data=opts.data,
        backbone=opts.backbone,
        image_size=opts.image_size,
        weights=opts.weights,
        shots=opts.shots,
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
) -> tuple[str, dict[str, Any], Any]:
    """Measure ``data`` like ``tlkit advise`` (test split included) for ``--recipe auto``.

    Args:
        data: The data source.
        backbone: timm model name (``None``: the default backbone).
        image_size: Input size of the measurement (``None``: the backbone's).
        seed: Seed of the subsample and the folds.
        shots: Training images per class the run will use (``None``: the whole split).
        weights: Backbone weight file the run will use (``None``: bundled or hub weights).

    Returns:
        ``(recipe name, report, features)``: ``report["probe_stage"]`` is the stage to pass as
        ``--model.strategy_args.stage`` (``None``: the top features), ``features`` the
        :class:`~tlkit.advise.StageFeatures` of train, val and test.
    """
    report, features = _measure(
        data=data,
        backbone=backbone,
        image_size=image_size,
        seed=seed,
        shots=shots,
        weights=weights,
        with_test=True,
    )
    return report["recipe"], report, features


def announce(report: dict[str, Any]) -> None:
    """One line on stderr: what ``--recipe auto`` measured and chose."""
    from rich.console import Console

    from tlkit.advise import plan_from

    plan = plan_from(report)
    reason = (report.get("evidence") or {}).get("reason", "")
    expected = plan.expected_accuracy
    Console(stderr=True, highlight=False).print(
        f"[bold]tlkit advise[/]: cell [cyan]{plan.cell}[/] -> recipe [cyan]{plan.recipe}[/], "
        f"probe on {plan.probe} (expected accuracy {expected['estimate']:.3f}, "
        f"{expected['low']:.3f}-{expected['high']:.3f}). {reason}"
    )
