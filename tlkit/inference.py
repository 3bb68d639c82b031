"""Load checkpoints safely; predict with one model or an ensemble through ``Trainer.predict``."""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from tlkit.backbones.weights import UNSAFE_GLOBAL as _UNSAFE_GLOBAL
from tlkit.callbacks import FlipTTA, SnapshotEnsemble
from tlkit.data.images import load_image
from tlkit.data.sources import Item
from tlkit.errors import TlkitError
from tlkit.module import TransferModule
from tlkit.probe_ensemble import ProbeEnsemble, is_ensemble
from tlkit.transforms import PipelineSpec, data_config_for, eval_transform

__all__ = [
    "ImageItems",
    "LoadedModel",
    "ensemble_probabilities",
    "ensemble_size",
    "load_checkpoint",
    "predict_probabilities",
    "read_checkpoint",
    "snapshot_ensemble",
]


@dataclass
class LoadedModel:
    """A model restored from a checkpoint, with what it needs to preprocess images."""

    model: TransferModule
    path: Path
    class_names: list[str]
    image_size: int | None
    checkpoint: dict[str, Any]

    def pipeline(self) -> PipelineSpec:
        """Size and normalisation the model was trained with."""
        return PipelineSpec(data_config_for(self.model.hparams.backbone), self.image_size)


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> LoadedModel:
    """Restore a TransferModule from a Lightning checkpoint (``weights_only`` unless trusted).

    Args:
        path: A ``.ckpt`` written by tlkit.
        trust: Allow checkpoints whose unpickling needs arbitrary code (``--trust-weights``).

    Returns:
        The model in eval mode, its class names and its training image size.
    """
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"checkpoint {path} does not exist; pass the path of a .ckpt file")
    checkpoint = read_checkpoint(path, trust)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise TlkitError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "num_classes" not in hparams:
        raise TlkitError(f"{path} was not written by tlkit (no num_classes in hyper_parameters)")
    accepted = set(inspect.signature(TransferModule.__init__).parameters)
    cls = ProbeEnsemble if is_ensemble(hparams) else TransferModule
    if cls is ProbeEnsemble:
        accepted.add("probe_partner")
    hparams = {k: v for k, v in hparams.items() if k in accepted}
    hparams.update(pretrained=False, weights=None)
    model = cls(**hparams)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        first = (lines or [str(err)])[0][:200]
        raise TlkitError(
            f"checkpoint {path} does not fit its own model config ({first}); "
            "pass a checkpoint written by tlkit finetune"
        ) from None
    model.eval()
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    names = hparams.get("class_names") or [str(i) for i in range(hparams["num_classes"])]
    return LoadedModel(model, path, list(names), data_hparams.get("image_size"), checkpoint)


_FIX = "pass a .ckpt written by tlkit finetune"


def read_checkpoint(path: str | os.PathLike, trust: bool = False, fix: str = _FIX) -> Any:
    """``torch.load`` a checkpoint on CPU, ``weights_only`` unless trusted, with one-line errors.

    Args:
        path: The checkpoint file.
        trust: Allow unpickling arbitrary Python objects (``--trust-weights``).
        fix: What the error message tells the user to do when the file is damaged.

    Returns:
        The loaded object.

    Raises:
        TlkitError: If the file needs ``trust`` or is damaged.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = _UNSAFE_GLOBAL.search(str(err))
        if found is not None:
            raise TlkitError(
                f"checkpoint {path} holds Python objects ({found.group(1)}) "
                "whose loading can run arbitrary code; pass `trust=True` if you trust the file"
            ) from None
        raise _corrupt(path, err, fix) from None
    except Exception as err:  # torch.load raises many types on damaged files
        raise _corrupt(path, err, fix) from None


def _corrupt(path: Path, err: BaseException, fix: str) -> TlkitError:
    text = " ".join(str(err).split())
    if isinstance(err, EOFError) or not text:
        reason = "file is empty or truncated"
    elif isinstance(err, pickle.UnpicklingError):
        detail = text.rpartition("Unpickler error:")[2].split(" Check the documentation")[0]
        reason = f"not a valid pickle: {detail.strip()[:80]}"
    else:
        reason = text.split(". ")[0][:160]
    return TlkitError(f"checkpoint {path} is corrupt or not a checkpoint ({reason}); {fix}")


class ImageItems(Dataset):
    """Images (paths or RGB arrays) decoded and preprocessed for prediction, in order.

    Args:
        items: Image paths or RGB arrays.
        transform: An albumentations pipeline ending in a tensor.
    """

    def __init__(self, items: Sequence[Item], transform: A.Compose) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(image=load_image(self.items[index]))["image"]


def _snapshot_state(loaded: LoadedModel) -> dict[str, Any] | None:
    """The ``SnapshotEnsemble`` state a checkpoint holds, if it holds any snapshots."""
    states = (loaded.checkpoint.get("callbacks") or {}).items()
    return next(
        (state for key, state in states
         if str(key).startswith("SnapshotEnsemble") and state.get("snapshots")),
        None,
    )  # fmt: skip


def snapshot_ensemble(loaded: LoadedModel) -> SnapshotEnsemble | None:
    """The :class:`~tlkit.callbacks.SnapshotEnsemble` stored in a checkpoint, with its snapshots.

    Returns:
        The callback restored from the checkpoint, or ``None`` when it holds no snapshots.
    """
    state = _snapshot_state(loaded)
    if state is None:
        return None
    callback = SnapshotEnsemble(cycles=state["cycles"])
    callback.load_state_dict(state)
    return callback


def ensemble_size(loaded: LoadedModel) -> int:
    """How many models a checkpoint predicts with: its snapshots, or 1 without any."""
    state = _snapshot_state(loaded)
    return len(state["snapshots"]) if state is not None else 1


def predict_probabilities(
    loaded: LoadedModel,
    items: Sequence[Item],
    batch_size: int = 64,
    tta: bool = False,
    progress: bool = False,
    verbose: bool = False,
) -> torch.Tensor:
    """Softmax of one checkpoint over images, through ``Trainer.predict``.

    The model's ``predict_step`` runs on the best available accelerator, averaged over the
    checkpoint's snapshots when it holds a snapshot ensemble and over mirror images with ``tta``.

    Args:
        loaded: A checkpoint from :func:`load_checkpoint`.
        items: Image paths or RGB arrays, preprocessed as the model was trained.
        batch_size: Images per forward pass.
        tta: Also average the horizontally flipped images (:class:`~tlkit.callbacks.FlipTTA`).
        progress: Show a progress bar.
        verbose: Show Lightning's info lines (accelerator banner) and warnings.

    Returns:
        ``(len(items), num_classes)`` probabilities on the CPU; the model is back on the CPU too.
    """
    if len(items) == 0:
        return torch.zeros(0, len(loaded.class_names))
    callbacks: list[Callback] = [FlipTTA(stages="predict")] if tta else []
    snapshot = snapshot_ensemble(loaded)
    if snapshot is not None:
        callbacks.append(snapshot)
    dataset = ImageItems(items, eval_transform(loaded.pipeline()))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with _lightning_output(verbose):
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
        )
        batches = trainer.predict(loaded.model, dataloaders=loader)
    return torch.cat([batch.float().cpu() for batch in batches])


@contextmanager
def _lightning_output(verbose: bool) -> Iterator[None]:
    """Hide Lightning's upstream deprecation noise and, unless ``verbose``, its info lines and
    the warning that prediction loads images in the main process (no worker start-up)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
        if not verbose:
            warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
            for logger in loggers:
                logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _check_compatible(models: Sequence[LoadedModel]) -> None:
    if not models:
        raise TlkitError("no checkpoint given; pass `checkpoints=FILE`")
    first = models[0]
    for other in models[1:]:
        if other.class_names != first.class_names:
            raise TlkitError(
                f"checkpoints {first.path} and {other.path} have different classes; "
                "an ensemble needs models trained on the same classes"
            )


def ensemble_probabilities(
    models: Sequence[LoadedModel],
    items: Sequence[Item],
    batch_size: int = 64,
    progress: bool = True,
    tta: bool = False,
    verbose: bool = False,
) -> torch.Tensor:
    """Mean softmax of one or more checkpoints over images.

    Every model of the ensemble counts once: a checkpoint holding a snapshot ensemble counts as
    many times as it has snapshots (:func:`ensemble_size`). Each checkpoint preprocesses the
    images with its own size and normalisation (:func:`predict_probabilities`).

    Args:
        models: Loaded checkpoints (same classes).
        items: Image paths or RGB arrays.
        batch_size: Images per forward pass.
        progress: Show a progress bar.
        tta: Also average the horizontally flipped images.
        verbose: Show Lightning's info lines and warnings.

    Returns:
        ``(len(items), num_classes)`` probabilities.
    """
    _check_compatible(models)
    total = torch.zeros(len(items), len(models[0].class_names))
    count = 0
    for loaded in models:
        weight = ensemble_size(loaded)
        probs = predict_probabilities(loaded, items, batch_size, tta, progress, verbose)
        total += weight * probs
        count += weight
    return total / count
