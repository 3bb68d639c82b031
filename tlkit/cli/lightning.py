"""The Lightning CLI of tlkit: the parser with its checkpoint, progress bar and LR monitor, and
its configuration errors as one line."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

from tlkit.errors import TlkitError

__all__ = [
    "GLOBAL_FLAGS",
    "LIGHTNING_SUBCOMMANDS",
    "PASSTHROUGH",
    "argument_error",
    "lightning_cli",
    "quiet_lightning",
    "rank_zero",
    "set_verbose",
    "verbose",
]

#: Lightning CLI subcommands ``tlkit`` passes through.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Options every command accepts: ``--debug`` (tracebacks), ``--verbose`` (Lightning's info).
GLOBAL_FLAGS = ("--debug", "--verbose")
#: Option prefixes ``tlkit finetune`` hands to the Lightning CLI as they are.
PASSTHROUGH = (
    "--trainer.",
    "--model.",
    "--data.",
    "--checkpoint.",
    "--progress_bar.",
    "--lr_monitor.",
)

# Lightning warnings that are expected in every tlkit run: frozen parts run in eval mode by
# design, small datasets load in the main process on purpose and have fewer batches than the
# step-logging interval (tlkit reports per epoch), the CLI is always given its arguments, and
# the rest is upstream deprecation noise.
_EXPECTED_WARNINGS = (
    r"LightningCLI's args parameter is intended",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"The '\w+' does not have many workers",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",
)
_VERBOSE = {"on": False}


def set_verbose(on: bool) -> None:
    """``--verbose``: show Lightning's own info lines (device banner, tips, model summary)."""
    _VERBOSE["on"] = on


def verbose() -> bool:
    """Whether the command line was given ``--verbose``."""
    return _VERBOSE["on"]


def rank_zero() -> bool:
    """Whether this process is rank zero (always, outside distributed runs)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def quiet_lightning() -> None:
    """Hide the expected warnings, the seed log line (the seed is in config.yaml) and, unless
    ``--verbose``, Lightning's info lines: users see what tlkit does, not third-party banners."""
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    import lightning.pytorch  # noqa: F401  (it sets its own logger level on import)

    level = logging.INFO if _VERBOSE["on"] else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)


def argument_error(err: BaseException) -> TlkitError:
    """One line from a (multi-line) jsonargparse or Lightning configuration error.

    jsonargparse reports a bad value only as text (its ``ArgumentError`` carries no key and no
    value), ``Parser key "KEY":`` then indented ``Field: value`` lines; the text is read as
    those fields, so the one line can name the option, what it expects and what it got.
    """
    lines = [line.strip().lstrip("- ") for line in str(err).splitlines()]
    lines = [line for line in lines if line] or [type(err).__name__]
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    if key is None:
        message = lines[0]
    else:
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        if "Subtypes" in fields:
            detail = f"expected one of {fields['Subtypes']}, got {fields.get('Given value', '')}"
        else:
            detail = lines[1] if len(lines) > 1 else ""
            detail = re.sub(r"Expected a (.+?)\. Got value: (.*)", r"expected \1, got \2", detail)
        message = f"invalid value for --{key[1]}: {detail}"
    message = re.sub(r"<class '([\w.]+)'>", r"\1", message).rstrip(".")
    return TlkitError(f"{message}; fix the option (see `tlkit finetune --help`)")


def _cli_class():
    """The LightningCLI subclass (built on first use: importing Lightning takes seconds)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    from tlkit.checkpointing import protect_checkpoints

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

    return TlkitCLI


def lightning_cli(args: Sequence[str], run: bool = True, one_line_errors: bool = False):
    """Build tlkit's Lightning CLI over ``args``.

    Args:
        args: Lightning CLI arguments (a subcommand first when ``run``).
        run: Run the subcommand (``False``: parse and instantiate only).
        one_line_errors: Raise configuration errors as a one-line :class:`TlkitError`.

    Returns:
        The ``LightningCLI``.
    """
    quiet_lightning()
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from tlkit.data import TransferDataModule
    from tlkit.module import TransferModule

    kwargs: dict[str, Any] = {"save_config_kwargs": {"overwrite": True}, "run": run}
    if one_line_errors:
        kwargs["parser_kwargs"] = {"exit_on_error": False}
    try:
        return _cli_class()(TransferModule, TransferDataModule, args=list(args), **kwargs)
    except (ArgumentError, MisconfigurationException) as err:
        if not one_line_errors:
            raise
        raise argument_error(err) from err
