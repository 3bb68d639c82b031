"""The ``tlkit`` command: dispatch to one module per command, errors as one line.

``finetune``/``pretrain`` (:mod:`tlkit.cli.finetune`), ``advise`` (:mod:`tlkit.cli.advise`),
``recipes`` (:mod:`tlkit.cli.recipes`), ``predict``/``evaluate``/``export``
(:mod:`tlkit.cli.predict`) and the Lightning CLI subcommands (:mod:`tlkit.cli.lightning`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tlkit.errors import TlkitError

__all__ = ["USAGE", "main"]

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

options for every command: --debug (show tracebacks), --verbose (Lightning's own info lines),
  --runtime auto|torch|onnxruntime|openvino (frozen passes on the CPU; default auto, the
  fastest installed; also TLKIT_RUNTIME)
"""


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("finetune", "pretrain"):
        from tlkit.cli import finetune

        return getattr(finetune, f"{command}_command")(rest)
    if command == "recipes":
        from tlkit.cli.recipes import recipes_command

        return recipes_command(rest)
    if command == "advise":
        from tlkit.cli.advise import advise_command

        return advise_command(rest)
    lightning_predict = command == "predict" and any(a.startswith("--config") for a in rest)
    if command in ("predict", "evaluate", "export") and not lightning_predict:
        from tlkit.cli import predict

        return getattr(predict, f"{command}_command")(rest)
    from tlkit.cli.lightning import LIGHTNING_SUBCOMMANDS, lightning_cli

    if command in LIGHTNING_SUBCOMMANDS:
        lightning_cli(argv)
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

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    from tlkit.cli.flags import as_flags
    from tlkit.cli.lightning import GLOBAL_FLAGS, set_verbose

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    set_verbose("--verbose" in args)
    args = [a for a in args if a not in GLOBAL_FLAGS]
    command = args[0] if args else ""
    try:
        args = _take_runtime(args)
    except TlkitError as err:
        print(f"tlkit: error: {as_flags(str(err), command)}", file=sys.stderr)
        return err.exit_code
    if command == "predict" and any(a.startswith("--config") for a in args):
        command = "lightning-predict"  # the Lightning subcommand: --model.* / --data.* flags
    try:
        return _dispatch(args)
    except TlkitError as err:
        if debug:
            raise
        print(f"tlkit: error: {as_flags(str(err), command)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tlkit: interrupted", file=sys.stderr)
        return 130


def _take_runtime(args: list[str]) -> list[str]:
    """``args`` without ``--runtime NAME`` (or ``--runtime=NAME``), which becomes
    ``TLKIT_RUNTIME`` for this process once checked."""
    out, name, rest = [], None, iter(args)
    for arg in rest:
        if arg == "--runtime":
            name = next(rest, "")
        elif arg.startswith("--runtime="):
            name = arg.split("=", 1)[1]
        else:
            out.append(arg)
    if name is not None:
        from tlkit.runtimes import selected_runtime

        selected_runtime(name or "?")
        os.environ["TLKIT_RUNTIME"] = name
    return out
