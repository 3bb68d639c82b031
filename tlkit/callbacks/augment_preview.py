"""AugmentationPreview: a PNG grid of augmented training samples."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from tlkit.callbacks.augment_schedule import datamodule_spec
from tlkit.errors import TlkitError
from tlkit.utils import atomic_path

__all__ = ["AugmentationPreview"]

_CAPTION = 14  # label strip under each tile, in pixels
_PAD = 4  # white space between tiles and around the grid


@contextlib.contextmanager
def _kept_rng() -> Iterator[None]:
    """Leave the global random states (Python, NumPy, torch) as they were."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _unit_range(
    image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """A normalised CHW image back in ``[0, 1]`` RGB (min-max scaled without mean/std)."""
    x = image.detach().float().cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return x.clamp(0, 1)


def _captioned(image: torch.Tensor, text: str, tile: int) -> torch.Tensor:
    """``image`` scaled to ``tile`` pixels (nearest neighbour) over a strip showing ``text``."""
    # make_grid places tiles but draws no text: the caption is a PIL strip under each tile.
    scaled = to_pil_image(image).resize((tile, tile), Image.NEAREST)
    cell = Image.new("RGB", (tile, tile + _CAPTION), "white")
    cell.paste(scaled, (0, 0))
    ImageDraw.Draw(cell).text((0, tile + 1), text[: tile // 6], fill="black")
    return pil_to_tensor(cell).float() / 255


class AugmentationPreview(Callback):
    """Save a PNG grid of augmented training samples, de-normalised, when fitting starts.

    Samples are spread evenly over the training set and drawn through its current transform
    (after any :class:`AugmentationSchedule`), each captioned with its class. Rank zero writes.

    Args:
        n: Number of samples.
        path: PNG path; default ``augmentation-preview.png`` in the logger's directory (or
            ``trainer.default_root_dir``).
        tile: Side of each tile in pixels (samples are scaled with nearest-neighbour).
        mean: Normalisation mean to undo; default the datamodule's (a TransferDataModule).
        std: Normalisation std to undo; default the datamodule's. Without either, each image is
            min-max scaled.
    """

    def __init__(
        self,
        n: int = 16,
        path: str | None = None,
        tile: int = 96,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TlkitError(f"AugmentationPreview: n must be an integer >= 1, got {n!r}")
        if path is not None and Path(path).suffix.lower() != ".png":
            raise TlkitError(f"AugmentationPreview: path must end in .png, got {path}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
            raise TlkitError(f"AugmentationPreview: tile must be an integer >= 8, got {tile!r}")
        if (mean is None) != (std is None):
            raise TlkitError("AugmentationPreview: pass both mean and std, or neither")
        self.n = n
        self.path = path
        self.tile = tile
        self.mean = mean
        self.std = std
        self.written: Path | None = None
        self._pending = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._pending:
            return
        self._pending = False
        target = self._target(trainer)  # on every rank: trainer.log_dir is a collective
        if trainer.is_global_zero:
            self.written = self.render(trainer, target)

    def _target(self, trainer: L.Trainer) -> Path:
        if self.path is not None:
            return Path(self.path)
        root = trainer.log_dir or trainer.default_root_dir
        return Path(root) / "augmentation-preview.png"

    def _normalisation(
        self, trainer: L.Trainer
    ) -> tuple[Sequence[float] | None, Sequence[float] | None]:
        spec = datamodule_spec(trainer)
        if self.mean is None and spec is not None:
            return spec.mean, spec.std
        return self.mean, self.std

    def render(self, trainer: L.Trainer, path: str | Path | None = None) -> Path | None:
        """Draw the grid now and write it to ``path`` (default: see the class).

        Returns:
            The written path, or ``None`` when the training samples are not images.
        """
        dataset = trainer.train_dataloader.dataset
        count = min(self.n, len(dataset))
        indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
        with _kept_rng():
            samples = [dataset[int(i)] for i in indices]
        if not samples or not (torch.is_tensor(samples[0][0]) and samples[0][0].ndim == 3):
            rank_zero_warn(
                "AugmentationPreview: the training samples are not images (cached features?); "
                "no preview written"
            )
            return None
        names = getattr(trainer.datamodule, "class_names", None)
        mean, std = self._normalisation(trainer)
        cells = []
        for image, label in samples:
            label = int(label)
            text = str(names[label]) if names and 0 <= label < len(names) else str(label)
            cells.append(_captioned(_unit_range(image, mean, std), text, self.tile))
        columns = math.ceil(math.sqrt(count))
        grid = make_grid(cells, nrow=columns, padding=_PAD, pad_value=1.0)
        target = Path(path) if path is not None else self._target(trainer)
        with atomic_path(target) as tmp:
            to_pil_image(grid).save(tmp, format="PNG")
        return target
