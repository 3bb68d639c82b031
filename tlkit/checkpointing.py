"""Checkpoints a crash cannot lose: a ``last.ckpt`` after every epoch, written atomically.

Two gaps in Lightning's defaults are closed here:

* Since Lightning 2.6, ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only at steps
  where it also saves a top-k checkpoint, i.e. when the monitored metric improves; a run whose
  validation accuracy plateaus keeps an old ``last.ckpt`` and ``--resume`` repeats every epoch
  since. :class:`LastCheckpoint` writes it after every validation.
* Lightning stages a checkpoint in the system temporary folder and moves it into place. When
  that folder is on another filesystem than the run directory (a tmpfs ``/tmp``, a container
  volume) the move is a copy onto the existing ``last.ckpt``, and a process killed during the
  copy leaves a truncated file. :class:`AtomicCheckpointIO` writes beside the target and renames.
"""

from __future__ import annotations

import io
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tlkit.utils import atomic_path

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "protect_checkpoints", "self_contained"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write local checkpoints to a temporary file in the same folder and ``os.replace`` them.

    A reader (or a resumed run) sees either the previous complete checkpoint or the new one,
    never a partial file, whatever filesystem holds the system temporary folder. Remote paths
    (``s3://...``) keep Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in os.fspath(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())


class LastCheckpoint(ModelCheckpoint):
    """Write ``dirpath/last.ckpt`` after every validation, whether or not the metric improved.

    Args:
        dirpath: The checkpoint folder (``None``: Lightning's default, as for ModelCheckpoint).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
        )


def protect_checkpoints(trainer: L.Trainer) -> L.Trainer:
    """Give ``trainer`` atomic checkpoint writes and a ``last.ckpt`` after every epoch.

    The atomic writer replaces Lightning's default one only (a custom CheckpointIO is kept). A
    ``checkpoint_callback`` with ``save_last=True`` hands ``last.ckpt`` to a
    :class:`LastCheckpoint` in the same folder.

    Args:
        trainer: A trainer that has not started fitting.

    Returns:
        ``trainer``.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    best = trainer.checkpoint_callback
    if best is not None and best.save_last is True:
        best.save_last = False
        trainer.callbacks.append(LastCheckpoint(best.dirpath))
    return trainer


def self_contained(checkpoint: dict[str, Any], weights_source: str) -> None:
    """Make a TransferModule checkpoint reload without its pretrained weights.

    The checkpoint holds every weight, so its hyperparameters are rewritten to build the backbone
    without pretrained weights (``pretrained: false``, no ``weights`` file); where the weights
    came from is kept under ``init_weights``.

    Args:
        checkpoint: The checkpoint dict Lightning is about to save, changed in place.
        weights_source: Where the backbone's starting weights came from.
    """
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict):
        checkpoint["init_weights"] = weights_source
        hparams.update(pretrained=False, weights=None)
