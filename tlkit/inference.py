"""Load checkpoints safely; predict and evaluate with one model or an ensemble of them."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from tlkit.backbones.weights import UNSAFE_GLOBAL as _UNSAFE_GLOBAL
from tlkit.data.images import load_image
from tlkit.data.transforms import PipelineSpec, data_config_for, eval_transform
from tlkit.errors import TlkitError
from tlkit.module import TransferModule

__all__ = [
    "LoadedModel",
    "ensemble_probabilities",
    "load_checkpoint",
    "read_checkpoint",
    "snapshot_members",
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
    accepted = inspect.signature(TransferModule.__init__).parameters
    hparams = {k: v for k, v in hparams.items() if k in accepted}
    hparams.update(pretrained=False, weights=None)
    model = TransferModule(**hparams)
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
                "whose loading can run arbitrary code; pass --trust-weights if you trust the file"
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


def snapshot_members(loaded: LoadedModel) -> list[LoadedModel]:
    """The snapshot-ensemble members stored in a checkpoint, or ``[loaded]`` when it has none.

    :class:`~tlkit.callbacks.SnapshotEnsemble` keeps, per snapshot, the tensors that changed
    (trainable weights, BN statistics); each member is the checkpoint's model with one snapshot's
    tensors loaded over it.
    """
    states = (loaded.checkpoint.get("callbacks") or {}).items()
    snapshots = next(
        (state["snapshots"] for key, state in states
         if str(key).startswith("SnapshotEnsemble") and state.get("snapshots")),
        None,
    )  # fmt: skip
    if not snapshots:
        return [loaded]
    members = []
    for snapshot in snapshots:
        model = copy.deepcopy(loaded.model)
        model.load_state_dict(snapshot["tensors"], strict=False)
        members.append(dataclasses.replace(loaded, model=model.eval()))
    return members


def _check_compatible(models: Sequence[LoadedModel]) -> None:
    first = models[0]
    for other in models[1:]:
        if other.class_names != first.class_names:
            raise TlkitError(
                f"checkpoints {first.path} and {other.path} have different classes; "
                "an ensemble needs models trained on the same classes"
            )


@torch.inference_mode()
def ensemble_probabilities(
    models: Sequence[LoadedModel],
    items: Sequence[str | np.ndarray],
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Mean softmax of one or more models over images.

    Each model preprocesses the images with its own size and normalisation.

    Args:
        models: Loaded checkpoints (same classes).
        items: Image paths or RGB arrays.
        batch_size: Images per forward pass.
        progress: Show a progress bar.

    Returns:
        ``(len(items), num_classes)`` probabilities.
    """
    if not models:
        raise TlkitError("no checkpoint given; pass --checkpoint FILE [FILE ...]")
    _check_compatible(models)
    transforms = [eval_transform(m.pipeline()) for m in models]
    total = torch.zeros(len(items), len(models[0].class_names))
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("predicting", total=len(items))
        for start in range(0, len(items), batch_size):
            images = [load_image(item) for item in items[start : start + batch_size]]
            for loaded, transform in zip(models, transforms, strict=True):
                batch = torch.stack([transform(image=image)["image"] for image in images])
                total[start : start + len(images)] += loaded.model(batch).softmax(-1)
            bar.advance(task, len(images))
    return total / len(models)
