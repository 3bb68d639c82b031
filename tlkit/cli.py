"""The ``tlkit`` command: ``finetune``, ``recipes`` and Lightning CLI subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlkit.errors import ArgumentParser, TlkitError

__all__ = ["main"]

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_RUN_DIR_ENV = "TLKIT_RUN_DIR"
_AUTO_ENV = "TLKIT_AUTO_DECISION"
_PASSTHROUGH = (
    "--trainer.",
    "--model.",
    "--data.",
    "--checkpoint.",
    "--progress_bar.",
    "--lr_monitor.",
)


def _rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


USAGE = """usage: tlkit COMMAND [options]

commands:
  finetune   fine-tune with a recipe, test, write a run directory (start here)
  advise     measure data size and similarity: which matrix cell, which recipe
  pretrain   train a backbone from scratch on a source dataset (for --weights)
  recipes    list the recipes, or `tlkit recipes show NAME`
  predict    top-k labels for images (CSV), one checkpoint or an ensemble
  evaluate   metrics, per-class accuracy, confusion matrix on labelled data
  export     safetensors (timm-loadable), ONNX or TorchScript
  fit, validate, test, predict
             Lightning CLI subcommands (e.g. `tlkit fit --config recipes/small-similar.yaml`)

example:
  tlkit finetune --recipe small-similar
  tlkit finetune --recipe small-similar --data path/to/images --epochs 5
  tlkit finetune --recipe auto --data path/to/images
  tlkit advise --data path/to/images --json

options for every command: --debug (show tracebacks)
"""


# Lightning warnings that are expected in every tlkit run: frozen parts run in eval mode by
# design, small datasets load in the main process on purpose, the CLI is always given its
# arguments, and the rest is upstream deprecation noise.
_EXPECTED_WARNINGS = (
    r"LightningCLI's args parameter is intended",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"The '\w+' does not have many workers",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",
)


def _quiet_lightning() -> None:
    """Hide the expected warnings and the seed log line (the seed is in config.yaml)."""
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


def _argument_error(err: BaseException) -> TlkitError:
    """One line from a (multi-line) jsonargparse or Lightning configuration error."""
    lines = [line.strip().lstrip("- ") for line in str(err).splitlines()]
    lines = [line for line in lines if line] or [type(err).__name__]
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    if key is None:
        message = lines[0]
    else:
        given = next((x[12:].strip() for x in lines if x.startswith("Given value:")), "")
        kinds = next((x[9:].strip() for x in lines if x.startswith("Subtypes:")), "")
        detail = f"expected one of {kinds}, got {given}" if kinds else " ".join(lines[1:2])
        detail = re.sub(r"Expected a (.+?)\. Got value: (.*)", r"expected \1, got \2", detail)
        message = f"invalid value for --{key[1]}: {detail}"
    message = re.sub(r"<class '([\w.]+)'>", r"\1", message).rstrip(".")
    return TlkitError(f"{message}; fix the option (see `tlkit finetune --help`)")


def _lightning_cli(args: Sequence[str], run: bool = True, one_line_errors: bool = False):
    """Build the Lightning CLI; ``one_line_errors`` turns configuration errors into TlkitError."""
    _quiet_lightning()
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    from tlkit.checkpointing import protect_checkpoints
    from tlkit.data import TransferDataModule
    from tlkit.module import TransferModule

    class TlkitCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("model.backbone", "data.backbone")
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val_acc",
                    "checkpoint.mode": "max",
                    "checkpoint.filename": "best",
                    "checkpoint.save_last": True,
                    "checkpoint.enable_version_counter": False,
                }
            )
            parser.add_lightning_class_args(RichProgressBar, "progress_bar")
            parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
            parser.set_defaults({"lr_monitor.logging_interval": "step"})

        def before_instantiate_classes(self) -> None:
            # The rich progress bar is always registered; `enable_progress_bar false` turns it
            # off through its refresh rate instead of clashing with it.
            config = self.config.get(str(self.subcommand), self.config)
            if config.trainer.enable_progress_bar is False:
                config.trainer.enable_progress_bar = True
                config.progress_bar.refresh_rate = 0

        def instantiate_trainer(self, **kwargs):
            return protect_checkpoints(super().instantiate_trainer(**kwargs))

    kwargs: dict[str, Any] = {"save_config_kwargs": {"overwrite": True}}
    if not one_line_errors:
        return TlkitCLI(TransferModule, TransferDataModule, args=list(args), run=run, **kwargs)
    try:
        return TlkitCLI(
            TransferModule,
            TransferDataModule,
            args=list(args),
            run=run,
            parser_kwargs={"exit_on_error": False},
            **kwargs,
        )
    except (ArgumentError, MisconfigurationException) as err:
        raise _argument_error(err) from err


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
        probe = path / ".tlkit-write-test"
        probe.write_text("")
        probe.unlink()
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


def _auto_decision(opts: argparse.Namespace) -> dict[str, Any]:
    """``--recipe auto``: measure the data like ``tlkit advise`` (once, shared with DDP ranks)."""
    from rich.console import Console

    from tlkit.advise_cli import auto_recipe

    saved = os.environ.get(_AUTO_ENV)
    if saved:
        return json.loads(saved)
    _, report = auto_recipe(
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
        Console(stderr=True).print(
            f"[bold]tlkit advise[/]: cell [cyan]{report['cell']}[/] -> recipe "
            f"[cyan]{report['recipe']}[/]. {reason}"
        )
    return report


def finetune(argv: Sequence[str]) -> int:
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
    else:
        from tlkit.recipes import recipe_path

        decision = _auto_decision(opts) if opts.recipe == "auto" else None
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
                args += ["--model.strategy_args.stage", str(decision["probe_stage"])]
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
    if opts.lr_find and not opts.resume:
        from tlkit.lr_find import find_lr

        found = find_lr(trainer, model, datamodule, run_dir / "plots" / "lr_find.png")
        cli.config.model.lr = found
        if _rank_zero():  # a resumed run must use the LR that was found
            (run_dir / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
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
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        from tlkit.report import write_run_report

        confusion = model.last_test_confusion
        write_run_report(
            run_dir,
            metrics,
            confusion.tolist() if confusion is not None else None,
            datamodule.class_names,
            sorted(
                [*run_dir.glob("plots/lr_find.png"), *run_dir.rglob("augmentation-preview.png")]
            ),
        )
        _print_results(metrics, run_dir)
    return 0


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
        best_checkpoint=str(best) if best else None,
        **datamodule.describe(),
    )
    return record


def _print_plan(model, datamodule, recipe: str, run_dir: Path, epochs: int) -> None:
    """Before training: what runs on what, and which layer groups train when, at which LR."""
    from rich.console import Console
    from rich.table import Table

    if not _rank_zero():
        return
    info = datamodule.describe()
    console = Console(stderr=True, highlight=False)
    console.print(
        f"[bold]tlkit[/] recipe [cyan]{recipe}[/], backbone [cyan]{model.hparams.backbone}[/] "
        f"({model.weights_source}), strategy [cyan]{model.strategy.name}[/], optimizer "
        f"[cyan]{model.hparams.optimizer}[/]\n"
        f"data {info['data']}: {info['num_classes']} classes, {info['num_train']} train / "
        f"{info['num_val']} val / {info['num_test']} test, {info['image_size']} px; "
        f"run directory {run_dir}"
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
    code = finetune(["--recipe", "pretrain", *argv])
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


def recipes_command(argv: Sequence[str]) -> int:
    """``tlkit recipes [list | show NAME]``."""
    from tlkit.recipes import list_recipes, recipe_path, recipe_summary

    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: tlkit recipes [list | show NAME]\n\nexample: tlkit recipes show small-similar"
        )
        return 0
    if len(argv) >= 2 and argv[0] == "show":
        print(recipe_path(argv[1]).read_text(), end="")
        return 0
    if argv and argv[0] != "list":
        raise TlkitError(
            f"unknown recipes command {argv[0]!r}; use `tlkit recipes [list | show NAME]`"
        )
    for name in list_recipes():
        print(f"{name:22s} {recipe_summary(name)}")
    return 0


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "finetune":
        return finetune(rest)
    if command == "recipes":
        return recipes_command(rest)
    if command == "pretrain":
        return pretrain_command(rest)
    if command == "advise":
        from tlkit.advise_cli import advise_command

        return advise_command(rest)
    lightning_predict = command == "predict" and any(a.startswith("--config") for a in rest)
    if command in ("predict", "evaluate", "export") and not lightning_predict:
        from tlkit import predict_cli

        return getattr(predict_cli, f"{command}_command")(rest)
    if command in LIGHTNING_SUBCOMMANDS:
        _lightning_cli(argv)
        return 0
    if command in ("-V", "--version"):
        from tlkit import __version__

        print(__version__)
        return 0
    raise TlkitError(f"unknown command {command!r}; run `tlkit --help` for the list")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tlkit`` console script.

    User errors print one line ``tlkit: error: ...`` and exit with code 2; ``--debug`` shows the
    traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        return _dispatch(args)
    except TlkitError as err:
        if debug:
            raise
        print(f"tlkit: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tlkit: interrupted", file=sys.stderr)
        return 130
