"""``tlkit finetune`` and ``tlkit pretrain``: a recipe, a run directory, a report at the end."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.cli.advise import STAGE_OPTION, announce, auto_recipe, stage_option
from tlkit.cli.lightning import GLOBAL_FLAGS, PASSTHROUGH, lightning_cli, rank_zero
from tlkit.cli.printing import print_baseline, print_exact_plan, print_plan, print_results
from tlkit.cli.run_dir import new_run_dir, resumable_run, writable_dir
from tlkit.errors import ArgumentParser, TlkitError
from tlkit.exact import ExactRun
from tlkit.recipes import is_large_cell

__all__ = ["finetune_command", "pretrain_command"]


def _finetune_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tlkit finetune",
        description="Fine-tune a pretrained backbone with a recipe, test it and write a run "
        "directory (checkpoints, config.yaml, metrics.json, logs). Any other "
        "--trainer.*, --model.*, --data.* option is passed to the Lightning CLI.",
        epilog="example: tlkit finetune --recipe small-similar --data path/to/images --epochs 5",
    )
    add = parser.add_argument
    add(
        "--recipe",
        default="small-similar",
        help="recipe name, YAML path, or auto (measure the data with `tlkit advise` first)",
    )
    add("--data", help="demo | fashion-mnist | image folder | IDX folder | CSV")
    add("--backbone", help="timm model name (default: the recipe's)")
    add("--weights", help="backbone weight file (.pth, .safetensors, .ckpt)")
    add("--trust-weights", action="store_true", help="allow pickled code in --weights")
    add("--epochs", type=int, help="training epochs")
    add("--shots", type=int, help="training images per class")
    add("--image-size", type=int, help="input size (default: the backbone's)")
    add("--batch-size", type=int, help="batch size")
    add("--lr", type=float, help="learning rate of the head")
    add("--seed", type=int, default=42, help="random seed (default 42)")
    add("--out", help="run directory (default runs/RECIPE-TIMESTAMP)")
    add("--strict", action="store_true", help="stop on undecodable images")
    add("--lr-find", action="store_true", help="pick the LR with Lightning's LR range test first")
    add(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its saved config",
    )
    return parser  # fmt: skip


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """tlkit's own options, and the Lightning CLI options passed through (checked by prefix)."""
    opts, extra = _finetune_parser().parse_known_args(argv)
    for name in ("epochs", "shots", "image_size", "batch_size", "lr"):
        value = getattr(opts, name)
        if value is not None and value <= 0:
            raise TlkitError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for item in extra:
        if _is_number(item):
            continue  # a negative value, e.g. --trainer.max_epochs -1
        if item.startswith("-") and not item.startswith(PASSTHROUGH):
            raise TlkitError(f"unknown option {item}; see `tlkit finetune --help`")
    return opts, extra


@dataclass
class _Run:
    """A finetune as the launching process resolved it; every DDP rank runs the same.

    Attributes:
        opts: tlkit's options.
        run_dir: The run directory.
        recipe: Recipe name, for the records.
        args: The Lightning CLI arguments.
        relaunch: finetune options that carry the resolved recipe, stage and run directory.
        fresh: The run directory was made by this run (removed again if the run never starts).
        resume_from: The checkpoint a resumed run continues from.
        decision: ``--recipe auto``'s advise report, on the process that measured it.
        features: The features advise measured, on that process.
    """

    opts: argparse.Namespace
    run_dir: Path
    recipe: str
    args: list[str]
    relaunch: list[str] = field(default_factory=list)
    fresh: bool = False
    resume_from: Path | None = None
    decision: dict[str, Any] | None = None
    features: Any = None


def _tlkit_values(opts: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """tlkit's options as Lightning CLI config values (``None``: the recipe's)."""
    model = {"backbone": opts.backbone, "weights": opts.weights, "lr": opts.lr}
    data = {"data": opts.data, "shots": opts.shots, "image_size": opts.image_size,
            "batch_size": opts.batch_size}  # fmt: skip
    if opts.trust_weights:
        model["trust_weights"] = True
    if opts.strict:
        data["strict"] = True
    logger = {"save_dir": str(run_dir), "name": "logs", "version": ""}
    trainer = {
        "max_epochs": opts.epochs,
        "default_root_dir": str(run_dir),
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": logger},
    }
    return {
        "seed_everything": opts.seed,
        "model": {k: v for k, v in model.items() if v is not None},
        "data": {k: v for k, v in data.items() if v is not None},
        "trainer": {k: v for k, v in trainer.items() if v is not None},
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
    }


def _started(opts: argparse.Namespace, extra: list[str]) -> _Run:
    """A new run: the recipe (measured with ``--recipe auto``), its run directory, its config."""
    from tlkit.recipes import recipe_path

    decision = features = None
    recipe_name = opts.recipe
    if opts.recipe == "auto":
        recipe_name, decision, features = auto_recipe(
            opts.data or "demo", opts.backbone, opts.image_size, opts.seed,
            shots=opts.shots, weights=opts.weights,
        )  # fmt: skip
        if rank_zero():
            announce(decision)
    from tlkit.advise import plan_from

    stage = plan_from(decision).stage if decision is not None else None
    resolved = [STAGE_OPTION, stage_option(stage)] if stage is not None else []
    recipe = recipe_path(recipe_name)
    if opts.out:
        run_dir, fresh = Path(opts.out), not Path(opts.out).exists()
        writable_dir(run_dir)
    else:
        run_dir, fresh = new_run_dir(Path("runs"), recipe.stem), True
    if decision is not None and rank_zero():
        (run_dir / "advise.json").write_text(json.dumps(decision, indent=2) + "\n")
    # tlkit's options are one config document between the recipe and the options passed
    # through, so they override the recipe and --model.* etc. override them.
    values = json.dumps(_tlkit_values(opts, run_dir))
    args = ["--config", str(recipe), "--config", values, *extra, *resolved]
    relaunch = ["--recipe", recipe_name, *resolved, "--out", str(run_dir)]
    return _Run(opts, run_dir, recipe.stem, args, relaunch, fresh,
                decision=decision, features=features)  # fmt: skip


def _resumed(opts: argparse.Namespace) -> _Run:
    """A run continued from its last checkpoint, with its saved config."""
    from tlkit.inference import read_checkpoint

    last = Path(opts.out or ".") / "checkpoints" / "last.ckpt"
    if last.is_file():  # refuse a damaged or code-carrying checkpoint before touching the run
        read_checkpoint(last, opts.trust_weights, "start a new run without --resume")
    run_dir, config, recipe_name = resumable_run(opts.out, rank_zero())
    return _Run(opts, run_dir, recipe_name, ["--config", str(config)],
                resume_from=run_dir / "checkpoints" / "last.ckpt")  # fmt: skip


@contextmanager
def _command_line(argv: Sequence[str], relaunch: list[str]) -> Iterator[None]:
    """DDP starts the other ranks by running this process's command line again: while the run
    lasts, ``sys.argv`` carries what this process resolved (recipe, stage, run directory), so
    every rank runs the same. A call from Python (a notebook) leaves ``sys.argv`` alone."""
    launched = sys.argv
    given = [a for a in launched[1:] if a not in GLOBAL_FLAGS]
    if given == ["finetune", *argv]:
        flags = [a for a in launched[1:] if a in GLOBAL_FLAGS]
        sys.argv = [launched[0], *flags, "finetune", *argv, *relaunch]
    try:
        yield
    finally:
        sys.argv = launched


def finetune_command(argv: Sequence[str]) -> int:
    """``tlkit finetune``: fit, test, write the run directory, print the results.

    Args:
        argv: Command-line arguments after ``finetune`` (see ``tlkit finetune --help``).

    Returns:
        The exit code (0).

    Raises:
        TlkitError: For bad options, data or run directories.
    """
    opts, extra = _parse(argv)
    run = _resumed(opts) if opts.resume else _started(opts, extra)
    with _command_line(argv, run.relaunch):
        try:
            cli = lightning_cli(run.args, run=False, one_line_errors=True)
            cli.datamodule.check_images()  # skip, or with --strict refuse, undecodable images
        except BaseException:
            if run.fresh and not any(run.run_dir.iterdir()):
                run.run_dir.rmdir()  # a run that never started leaves nothing behind
            raise
        if run.resume_from is None and rank_zero():
            (run.run_dir / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
            record = {"recipe": run.recipe, "argv": list(argv)}
            (run.run_dir / "run.json").write_text(json.dumps(record))
        if cli.model.exact:
            return _exact(cli, run)
        return _trained(cli, run)


def _exact(cli, run: _Run) -> int:
    """A ``solver: exact`` run: features, the head solved, the run directory."""
    from tlkit.exact import finetune_exact

    model, datamodule = cli.model, cli.datamodule
    print_exact_plan(model, datamodule, run.recipe, run.run_dir)
    exact = ExactRun(run.run_dir, run.recipe, run.opts.seed, run.decision, run.features)
    print_results(finetune_exact(model, datamodule, exact), run.run_dir)
    return 0


def _trained(cli, run: _Run) -> int:
    """A run trained by epochs: LR finder, exact baseline, fit, test, the run directory."""
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if run.opts.lr_find and run.resume_from is None:
        from tlkit.lr_find import find_lr

        found = find_lr(trainer, model, datamodule, run.run_dir / "plots" / "lr_find.png")
        cli.config.model.lr = found
        if rank_zero():  # a resumed run must use the LR that was found
            config = cli.parser.dump(cli.config, skip_none=False)
            (run.run_dir / "config.yaml").write_text(config)
    floor = None  # the exact probe to beat: needs features a fresh backbone reproduces
    pretrained = model.weights_source != "none"
    if run.resume_from is None and rank_zero() and is_large_cell(run.recipe) and pretrained:
        from tlkit.floor import probe_floor, start_head_from_probe

        floor = probe_floor(datamodule, model, run.decision, run.features, run.opts.seed)
        print_baseline(floor.record(), start_head_from_probe(floor, model, datamodule))
    if rank_zero():
        print_plan(model, datamodule, run.recipe, run.run_dir, int(trainer.max_epochs or 1))
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume_from,
                weights_only=not run.opts.trust_weights)  # fmt: skip
    fit_seconds = time.perf_counter() - start
    last_val = trainer.callback_metrics.get("val_acc")
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    tested = trainer.test(
        model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
    )
    metrics = _metrics_record(trainer, model, datamodule, tested, run.recipe, fit_seconds, best,
                              last_val)  # fmt: skip
    if run.resume_from is not None:
        metrics["resumed_from"] = str(run.resume_from)
    confusion = None
    if floor is not None and metrics.get("test_acc") is not None and best:
        from tlkit.floor import settle

        confusion = settle(floor, metrics, model, datamodule, run.opts.seed)
    if trainer.is_global_zero:
        if confusion is None and model.last_test_confusion is not None:
            confusion = model.last_test_confusion.tolist()
        _write_run(run.run_dir, metrics, confusion, datamodule)
    return 0


def _write_run(run_dir: Path, metrics: dict[str, Any], confusion, datamodule) -> None:
    """metrics.json, the report and the results table of a run trained by epochs."""
    from tlkit.report import per_class_accuracy, write_run_report

    if confusion is not None:
        metrics["per_class_test_acc"] = per_class_accuracy(confusion, datamodule.class_names)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_run_report(
        run_dir,
        metrics,
        confusion,
        datamodule.class_names,
        sorted([*run_dir.glob("plots/lr_find.png"), *run_dir.rglob("augmentation-preview.png")]),
    )
    print_results(metrics, run_dir)


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
        class_balance=model.class_balance.balance.name,
        plan=model.plan(int(trainer.max_epochs or trainer.current_epoch or 1)),
        best_checkpoint=str(best) if best else None,
        **datamodule.describe(),
    )
    return record


_PRETRAIN_HELP = (
    "usage: tlkit pretrain --data PATH --backbone NAME --out DIR [finetune options]\n\n"
    "Trains the backbone from random weights on a source dataset (recipe `pretrain`) and\n"
    "writes DIR/backbone.safetensors for `tlkit finetune --weights`.\n\n"
    "example: tlkit pretrain --data fashion-mnist --backbone resnet18 --out pre "
    "--epochs 5 --image-size 32\n"
    "         tlkit finetune --recipe small-similar --backbone resnet18 "
    "--weights pre/backbone.safetensors"
)


def pretrain_command(argv: Sequence[str]) -> int:
    """``tlkit pretrain``: train a backbone from scratch, save weights ``--weights`` accepts.

    Args:
        argv: Command-line arguments after ``pretrain`` (``tlkit finetune``'s, less ``--recipe``).

    Returns:
        The exit code.
    """
    if any(a in ("-h", "--help") for a in argv):
        print(_PRETRAIN_HELP)
        return 0
    if "--recipe" in argv:
        raise TlkitError("tlkit pretrain uses the `pretrain` recipe; drop --recipe")
    opts, _ = _finetune_parser().parse_known_args(argv)
    if not opts.out:
        raise TlkitError("tlkit pretrain needs --out DIR: where backbone.safetensors goes")
    code = finetune_command(["--recipe", "pretrain", *argv])
    if code == 0 and rank_zero():
        from safetensors.torch import save_file

        from tlkit.inference import load_checkpoint

        record = json.loads((Path(opts.out) / "metrics.json").read_text())
        loaded = load_checkpoint(record["best_checkpoint"])
        state = {k: v.contiguous() for k, v in loaded.model.backbone.state_dict().items()}
        target = Path(opts.out) / "backbone.safetensors"
        backbone = loaded.model.hparams.backbone
        save_file(state, str(target), metadata={"backbone": backbone})
        print(f"wrote {target}: use it with --backbone {backbone} --weights {target}")
    return code
