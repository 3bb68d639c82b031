"""The ``tlkit`` command: ``finetune``, ``recipes`` and Lightning CLI subcommands."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from tlkit.errors import TlkitError

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

options for every command: --debug (show tracebacks), --verbose (Lightning's own info lines)
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


#: ``--verbose``: show Lightning's own info lines (device banner, tips, model summary).
_VERBOSE = {"on": False}


def _quiet_lightning() -> None:
    """Hide the expected warnings, the seed log line (the seed is in config.yaml) and, unless
    ``--verbose``, Lightning's info lines: users see what tlkit does, not third-party banners."""
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    import lightning.pytorch  # noqa: F401  (it sets its own logger level on import)

    level = logging.INFO if _VERBOSE["on"] else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)


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
            # Lightning's model summary is shown with --verbose only.
            parser.set_defaults({"trainer.enable_model_summary": _VERBOSE["on"]})
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
    if command in ("finetune", "pretrain"):
        from tlkit import finetune_cli

        return getattr(finetune_cli, f"{command}_command")(rest)
    if command == "recipes":
        return recipes_command(rest)
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
    _VERBOSE["on"] = "--verbose" in args
    args = [a for a in args if a not in ("--debug", "--verbose")]
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
