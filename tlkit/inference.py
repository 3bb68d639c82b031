"""Load checkpoints safely; predict and evaluate with one model or an ensemble of them."""

from __future__ import annotations

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

from tlkit.data.images import load_image
from tlkit.data.transforms import PipelineSpec, data_config_for, eval_transform
from tlkit.errors import TlkitError
from tlkit.module import TransferModule

__all__ = ["LoadedModel", "ensemble_probabilities", "load_checkpoint"]


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
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "global" in str(err).lower():
            raise TlkitError(
                f"checkpoint {path} holds Python objects whose loading can run arbitrary code; "
                "pass --trust-weights if you trust the file"
            ) from None
        raise TlkitError(f"checkpoint {path} is corrupt or not a checkpoint ({err})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise TlkitError(f"checkpoint {path} is corrupt or not a checkpoint ({err})") from None
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
        first = str(err).splitlines()[0]
        raise TlkitError(f"checkpoint {path} does not fit its own model config ({first})") from None
    model.eval()
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    names = hparams.get("class_names") or [str(i) for i in range(hparams["num_classes"])]
    return LoadedModel(model, path, list(names), data_hparams.get("image_size"), checkpoint)


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
