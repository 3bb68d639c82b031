"""Run directories: a fresh one per run, writable, and what a resumed run needs in it."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tlkit.errors import TlkitError

__all__ = ["new_run_dir", "resumable_run", "writable_dir"]


def writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        TlkitError: When it cannot be created or written.
    """
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


def new_run_dir(parent: Path, recipe_name: str) -> Path:
    """A run directory no other run uses, even one started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    writable_dir(parent)
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


def resumable_run(out: str | None, rank_zero: bool) -> tuple[Path, Path, str]:
    """The run directory to resume, its saved config and its recipe name.

    Args:
        out: The ``--out`` directory.
        rank_zero: Whether this process may move files (the earlier metrics log).

    Raises:
        TlkitError: Without ``--out``, or when the run has no config or last checkpoint.
    """
    if not out:
        raise TlkitError("--resume needs --out RUN_DIR: the run directory to continue")
    run_dir = Path(out)
    config, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not config.is_file() or not last.is_file():
        raise TlkitError(
            f"nothing to resume in {run_dir}: it needs config.yaml and checkpoints/last.ckpt "
            "(written after the first epoch); start a new run without --resume"
        )
    writable_dir(run_dir)
    log = run_dir / "logs" / "metrics.csv"
    if log.is_file() and rank_zero:
        # The logger starts a fresh metrics.csv: keep the earlier part beside it for the report.
        part = len(list(log.parent.glob("metrics.part*.csv")))
        log.rename(log.with_name(f"metrics.part{part}.csv"))
    try:
        recipe_name = json.loads((run_dir / "run.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError):
        recipe_name = run_dir.name
    return run_dir, config, recipe_name
