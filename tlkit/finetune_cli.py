"""``tlkit finetune`` and ``tlkit pretrain``: a recipe, a run directory, a report at the end."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlkit.advise_cli import stage_option
from tlkit.cli import (
    _AUTO_ENV,
    _PASSTHROUGH,
    _RUN_DIR_ENV,
    _lightning_cli,
    _rank_zero,
)
from tlkit.errors import ArgumentParser, TlkitError
from tlkit.finetune_exact import ExactRun

__all__ = ["finetune_command", "pretrain_command"]


def _finetune_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tlkit finetune",
        description="Fine-tune a pretrained backbone with a recipe, test it and write a run "
        "directory (checkpoints, config.yaml, metrics.json, logs). Any other "
        "--trainer.*, --model.*, --data.* option is passed to the Lightning CLI.",
        epilog="example: tlkit finetune --recipe small-similar --data path/to/images --epochs 5",
    )
    parser.add_argument(
        "--recipe",
        default="small-similar",
        help="recipe name, YAML path, or auto (measure the data with `tlkit advise` first)",
    )
    parser.add_argument("--data", help="demo | fashion-mnist | image folder | IDX folder | CSV")
    parser.add_argument("--backbone", help="timm model name (default: the recipe's)")
    parser.add_argument("--weights", help="backbone weight file (.pth, .safetensors, .ckpt)")
    parser.add_argument(
        "--trust-weights", action="store_true", help="allow pickled code in --weights"
    )
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--shots", type=int, help="training images per class")
    parser.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    parser.add_argument("--batch-size", type=int, help="batch size")
    parser.add_argument("--lr", type=float, help="learning rate of the head")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--out", help="run directory (default runs/RECIPE-TIMESTAMP)")
    parser.add_argument("--strict", action="store_true", help="stop on undecodable images")
    parser.add_argument(
        "--lr-find", action="store_true", help="pick the LR with Lightning's LR range test first"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its saved config",
    )
    return parser


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise TlkitError(f"{name} must be positive, got {value}")


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe file of its own: runs started together may share the folder.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tlkit-write-test-"):
            pass
    except OSError as err:
        raise TlkitError(
            f"cannot write to output directory {path} ({err.strerror}); pass --out DIR"
        ) from err
    return path


def _new_run_dir(parent: Path, recipe_name: str) -> Path:
    """A run directory no other run uses, even one started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _writable_dir(parent)
    for n in range(1, 1000):
        path = parent / (f"{recipe_name}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise TlkitError(
                f"cannot write to output directory {path} ({err.strerror}); pass --out DIR"
            ) from err
        return path
    raise TlkitError(f"too many runs named {recipe_name}-{stamp} in {parent}; pass --out DIR")


def _recipe_args(opts: argparse.Namespace, recipe: Path, run_dir: Path) -> list[str]:
    """Lightning CLI arguments: the recipe, the finetune options, the run directory."""
    args = ["--config", str(recipe), "--seed_everything", str(opts.seed)]
    overrides = {
        "--data.data": opts.data,
        "--model.backbone": opts.backbone,
        "--model.weights": opts.weights,
        "--trainer.max_epochs": opts.epochs,
        "--data.shots": opts.shots,
        "--data.image_size": opts.image_size,
        "--data.batch_size": opts.batch_size,
        "--model.lr": opts.lr,
    }
    for key, value in overrides.items():
        if value is not None:
            args += [key, str(value)]
    if opts.trust_weights:
        args += ["--model.trust_weights", "true"]
    if opts.strict:
        args += ["--data.strict", "true"]
    return [
        *args,
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run_dir),
        "--trainer.logger.name", "logs",
        "--trainer.logger.version", "",
        "--checkpoint.dirpath", str(run_dir / "checkpoints"),
    ]  # fmt: skip


def _resume_args(opts: argparse.Namespace) -> tuple[Path, list[str], str]:
    """The run directory, its saved config and recipe name, checked for a checkpoint to resume."""
    if not opts.out:
        raise TlkitError("--resume needs --out RUN_DIR: the run directory to continue")
    run_dir = Path(opts.out)
    config, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not config.is_file() or not last.is_file():
        raise TlkitError(
            f"nothing to resume in {run_dir}: it needs config.yaml and checkpoints/last.ckpt "
            "(written after the first epoch); start a new run without --resume"
        )
    _writable_dir(run_dir)
    log = run_dir / "logs" / "metrics.csv"
    if log.is_file() and _rank_zero():
        # The logger starts a fresh metrics.csv: keep the earlier part beside it for the report.
        part = len(list(log.parent.glob("metrics.part*.csv")))
        log.rename(log.with_name(f"metrics.part{part}.csv"))
    try:
        recipe_name = json.loads((run_dir / "run.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError):
        recipe_name = run_dir.name
    return run_dir, ["--config", str(config)], recipe_name


def _auto_decision(opts: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """``--recipe auto``: measure the data like ``tlkit advise`` (once, shared with DDP ranks).

    Returns:
        The report and the measured features (``None`` on a DDP rank that was handed the
        report: only rank zero fits exact probes).
    """
    from rich.console import Console

    from tlkit.advise_cli import auto_recipe

    saved = os.environ.get(_AUTO_ENV)
    if saved:
        return json.loads(saved), None
    _, report, features = auto_recipe(
        opts.data or "demo",
        opts.backbone,
        opts.image_size,
        opts.seed,
        shots=opts.shots,
        weights=opts.weights,
    )
    os.environ[_AUTO_ENV] = json.dumps(report)
    if _rank_zero():
        reason = (report.get("evidence") or {}).get("reason", "")
        expected = report["expected_accuracy"]
        Console(stderr=True, highlight=False).print(
            f"[bold]tlkit advise[/]: cell [cyan]{report['cell']}[/] -> recipe "
            f"[cyan]{report['recipe']}[/], probe on {report['probe']['name']} (expected accuracy "
            f"{expected['estimate']:.3f}, {expected['low']:.3f}-{expected['high']:.3f}). {reason}"
        )
    return report, features


def finetune_command(argv: Sequence[str]) -> int:
    """``tlkit finetune``: fit, test, write the run directory, print the results."""
    # The run directory and the --recipe auto decision reach DDP ranks through the environment;
    # restore it afterwards, so a later finetune in the same process (a notebook) starts afresh.
    saved = {key: os.environ.get(key) for key in (_RUN_DIR_ENV, _AUTO_ENV)}
    try:
        return _finetune(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _finetune(argv: Sequence[str]) -> int:
    opts, extra = _finetune_parser().parse_known_args(argv)
    for name in ("epochs", "shots", "image_size", "batch_size", "lr"):
        _positive("--" + name.replace("_", "-"), getattr(opts, name))
    for item in extra:
        if _is_number(item):
            continue  # a negative value, e.g. --trainer.max_epochs -1
        if item.startswith("-") and not item.startswith(_PASSTHROUGH):
            raise TlkitError(f"unknown option {item}; see `tlkit finetune --help`")

    if opts.resume:
        from tlkit.inference import read_checkpoint

        last = Path(opts.out or ".") / "checkpoints" / "last.ckpt"
        if last.is_file():  # refuse a damaged or code-carrying checkpoint before touching the run
            read_checkpoint(last, opts.trust_weights, "start a new run without --resume")
        run_dir, args, recipe_name = _resume_args(opts)
        resume_from = run_dir / "checkpoints" / "last.ckpt"
        decision, features = None, None
    else:
        from tlkit.recipes import recipe_path

        decision, features = _auto_decision(opts) if opts.recipe == "auto" else (None, None)
        recipe = recipe_path(decision["recipe"] if decision else opts.recipe)
        recipe_name = recipe.stem
        # DDP re-launches this command on every rank: they share rank zero's run directory.
        shared = os.environ.get(_RUN_DIR_ENV)
        if opts.out or shared:
            run_dir = Path(opts.out or shared)
            fresh = not run_dir.exists()
            _writable_dir(run_dir)
        else:
            run_dir, fresh = _new_run_dir(Path("runs"), recipe_name), True
        os.environ[_RUN_DIR_ENV] = str(run_dir)
        args = [*_recipe_args(opts, recipe, run_dir), *extra]
        if decision is not None:
            if decision.get("probe_stage") is not None and recipe_name == "small-different":
                args += ["--model.strategy_args.stage", stage_option(decision["probe_stage"])]
            if _rank_zero():
                (run_dir / "advise.json").write_text(json.dumps(decision, indent=2) + "\n")
        resume_from = None
    try:
        cli = _lightning_cli(args, run=False, one_line_errors=True)
        cli.datamodule.check_images()  # skip, or with --strict refuse, undecodable images now
    except BaseException:
        if not opts.resume and fresh and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that never started leaves nothing behind
        raise
    if not opts.resume and _rank_zero():
        (run_dir / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
        (run_dir / "run.json").write_text(json.dumps({"recipe": recipe_name, "argv": list(argv)}))
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if model.exact:
        from tlkit.finetune_exact import finetune_exact

        _print_exact_plan(model, datamodule, recipe_name, run_dir)
        metrics = finetune_exact(model, datamodule, ExactRun(run_dir, recipe_name, opts.seed,
                                                            decision, features))  # fmt: skip
        _print_results(metrics, run_dir)
        return 0
    if opts.lr_find and not opts.resume:
        from tlkit.lr_find import find_lr

        found = find_lr(trainer, model, datamodule, run_dir / "plots" / "lr_find.png")
        cli.config.model.lr = found
        if _rank_zero():  # a resumed run must use the LR that was found
            (run_dir / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
    baseline = None
    if not opts.resume and _rank_zero():
        run = ExactRun(run_dir, recipe_name, opts.seed, decision, features)
        baseline = _probe_first(model, datamodule, run)
    _print_plan(model, datamodule, recipe_name, run_dir, int(trainer.max_epochs or 1))

    start = time.perf_counter()
    trainer.fit(
        model, datamodule=datamodule, ckpt_path=resume_from, weights_only=not opts.trust_weights
    )
    fit_seconds = time.perf_counter() - start
    last_val = trainer.callback_metrics.get("val_acc")
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    tested = trainer.test(
        model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
    )
    metrics = _metrics_record(
        trainer, model, datamodule, tested, recipe_name, fit_seconds, best, last_val
    )
    if resume_from is not None:
        metrics["resumed_from"] = str(resume_from)
    if baseline is not None and metrics.get("test_acc") is not None:
        from tlkit.finetune_exact import probe_verdict

        metrics.update(baseline, probe_verdict=probe_verdict(metrics["test_acc"], baseline))
    if trainer.is_global_zero:
        _write_run(run_dir, metrics, model, datamodule)
    return 0


def _probe_first(model, datamodule, run: ExactRun) -> dict[str, Any] | None:
    """Large cells: fit the exact probe before fine-tuning and say how it tests."""
    from rich.console import Console

    from tlkit.finetune_exact import probe_baseline

    baseline = probe_baseline(datamodule, run, model)
    if baseline is not None:
        Console(stderr=True, highlight=False).print(
            f"exact probe first (the baseline to beat): {baseline['probe']['name']} tests at "
            f"{baseline['probe_test_acc']:.4f}, fitted in {baseline['probe_fit_seconds']:.1f} s"
        )
    return baseline


def _write_run(run_dir: Path, metrics: dict[str, Any], model, datamodule) -> None:
    """metrics.json, the report and the results table of a run trained by epochs."""
    from tlkit.report import write_run_report

    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    confusion = model.last_test_confusion
    write_run_report(
        run_dir,
        metrics,
        confusion.tolist() if confusion is not None else None,
        datamodule.class_names,
        sorted([*run_dir.glob("plots/lr_find.png"), *run_dir.rglob("augmentation-preview.png")]),
    )
    _print_results(metrics, run_dir)


def _metrics_record(
    trainer, model, datamodule, tested, recipe, fit_seconds, best, last_val
) -> dict[str, Any]:
    """metrics.json: test metrics, the best (or, without a monitor, the last) val_acc, facts."""
    record: dict[str, Any] = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    checkpoint = trainer.checkpoint_callback
    score = checkpoint.best_model_score if checkpoint is not None else None
    score = score if score is not None else last_val
    record["val_acc"] = float(score) if score is not None else None
    record.update(
        epochs=int(trainer.current_epoch),
        fit_seconds=round(fit_seconds, 3),
        recipe=recipe,
        backbone=model.hparams.backbone,
        weights=model.weights_source,
        strategy=model.strategy.describe(),
        plan=model.plan(int(trainer.max_epochs or trainer.current_epoch or 1)),
        best_checkpoint=str(best) if best else None,
        **datamodule.describe(),
    )
    return record


def _print_exact_plan(model, datamodule, recipe: str, run_dir: Path) -> None:
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


def _print_plan(model, datamodule, recipe: str, run_dir: Path, epochs: int) -> None:
    """Before training: what runs on what, and which layer groups train when, at which LR."""
    from rich.console import Console
    from rich.table import Table

    if not _rank_zero():
        return
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


def _print_results(metrics: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

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
    expected = metrics.get("expected_accuracy")
    if expected:
        console.print(
            f"expected accuracy (cross-validated, before the test): {expected['estimate']:.3f}, "
            f"90 % interval {expected['low']:.3f}-{expected['high']:.3f}",
            highlight=False,
        )
    if metrics.get("probe_verdict"):
        console.print(metrics["probe_verdict"], highlight=False)
    console.print(f"run directory: {run_dir}")


def pretrain_command(argv: Sequence[str]) -> int:
    """``tlkit pretrain``: train a backbone from scratch, save weights ``--weights`` accepts."""
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: tlkit pretrain --data PATH --backbone NAME --out DIR [finetune options]\n\n"
            "Trains the backbone from random weights on a source dataset (recipe `pretrain`) and\n"
            "writes DIR/backbone.safetensors for `tlkit finetune --weights`.\n\n"
            "example: tlkit pretrain --data fashion-mnist --backbone resnet18 --out pre "
            "--epochs 5 --image-size 32\n"
            "         tlkit finetune --recipe small-similar --backbone resnet18 "
            "--weights pre/backbone.safetensors"
        )
        return 0
    if "--recipe" in argv:
        raise TlkitError("tlkit pretrain uses the `pretrain` recipe; drop --recipe")
    opts, _ = _finetune_parser().parse_known_args(argv)
    if not opts.out:
        raise TlkitError("tlkit pretrain needs --out DIR: where backbone.safetensors goes")
    code = finetune_command(["--recipe", "pretrain", *argv])
    if code == 0 and _rank_zero():
        from safetensors.torch import save_file

        from tlkit.inference import load_checkpoint

        record = json.loads((Path(opts.out) / "metrics.json").read_text())
        loaded = load_checkpoint(record["best_checkpoint"])
        state = {k: v.contiguous() for k, v in loaded.model.backbone.state_dict().items()}
        target = Path(opts.out) / "backbone.safetensors"
        save_file(state, str(target), metadata={"backbone": loaded.model.hparams.backbone})
        print(f"wrote {target}: use it with --backbone {loaded.model.hparams.backbone} "
              f"--weights {target}")  # fmt: skip
    return code
